//! How demonstrations are laid out in an in-context prompt, and the [`PromptFormat`] trait for
//! layouts of one's own.
//!
//! The built-in [`FewShot`] puts them inline (the paper's: one user message, a header, each
//! worked example, a footer, then the problem) or as turns (each demonstration a user turn and
//! an assistant turn before the problem's user turn: the usual multi-turn few-shot layout for
//! chat models). A type implementing [`PromptFormat`] replaces it entirely (TRL's and verl's
//! prompt formatting functions); [`crate::PromptBuilder`] renders its messages with the
//! checkpoint's chat template, keeps the prompt within `max_prompt_tokens`, and the trainer's
//! plain and Implicit Expert Forcing prompts both come from it.

use std::fmt::Debug;

use icpo_policy::ChatMessage;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RolloutError};
use crate::prompts::Demo;

/// Where the demonstrations of an in-context prompt go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DemoLayout {
    /// In the problem's user message, before it (default; the paper's): `header`, each
    /// demonstration as `item`, `footer`, then the problem and instruction.
    #[default]
    Inline,
    /// Each demonstration as a user turn (its problem and the instruction) and an assistant
    /// turn (its solution), then the problem's user turn.
    Turns,
}

/// The built-in few-shot format (`[data.few_shot]` in a training config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FewShot {
    /// Inline (default) or turns.
    pub layout: DemoLayout,
    /// Text before the demonstrations (inline only). Default
    /// `"Here are examples of problems with worked solutions:\n\n"`.
    pub header: String,
    /// One demonstration (inline only), with `{problem}` and `{solution}` replaced. Default
    /// `"Problem:\n{problem}\n\nSolution:\n{solution}\n\n"`.
    pub item: String,
    /// Text after the demonstrations, before the problem (inline only). Default
    /// `"Now solve the following problem.\n\n"`.
    pub footer: String,
}

impl Default for FewShot {
    fn default() -> Self {
        FewShot {
            layout: DemoLayout::Inline,
            header: "Here are examples of problems with worked solutions:\n\n".into(),
            item: "Problem:\n{problem}\n\nSolution:\n{solution}\n\n".into(),
            footer: "Now solve the following problem.\n\n".into(),
        }
    }
}

impl FewShot {
    /// Checks the item template: it must show the demonstration's problem and solution.
    pub fn validate(&self) -> Result<()> {
        for field in ["{problem}", "{solution}"] {
            if !self.item.contains(field) {
                return Err(RolloutError::Input(format!(
                    "few_shot.item must contain {field} (it is `{}`)",
                    self.item.escape_debug()
                )));
            }
        }
        Ok(())
    }

    /// The demonstrations as inline text: header, items, footer (empty without demonstrations).
    pub fn block(&self, demos: &[&Demo]) -> String {
        if demos.is_empty() {
            return String::new();
        }
        let mut s = self.header.clone();
        for d in demos {
            // One pass over the template, so a `{solution}` inside a problem stays literal.
            s.push_str(&fill(&self.item, &d.problem, &d.solution));
        }
        s.push_str(&self.footer);
        s
    }
}

/// `template` with `{problem}` and `{solution}` replaced, each once per occurrence in the
/// template only (never inside the inserted text).
fn fill(template: &str, problem: &str, solution: &str) -> String {
    let mut out = String::with_capacity(template.len() + problem.len() + solution.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{problem}") {
            out.push_str(problem);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{solution}") {
            out.push_str(solution);
            rest = t;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// What a prompt is made of, given to a [`PromptFormat`].
#[derive(Debug, Clone, Copy)]
pub struct PromptParts<'a> {
    /// The system text (empty: no system turn).
    pub system: &'a str,
    /// The problem as given.
    pub problem: &'a str,
    /// The instruction the builder appends to problems.
    pub instruction: &'a str,
    /// The user query: the problem with the instruction, as
    /// [`crate::PromptBuilder::user_message`] makes it.
    pub query: &'a str,
    /// The demonstrations (none for a plain prompt).
    pub demos: &'a [&'a Demo],
}

/// A prompt format: the chat messages of a prompt from its parts. Implement it for a layout of
/// one's own and set it as [`crate::PromptBuilder::format`] (the trainer takes it through
/// `Trainer::set_prompt_format`); the builder renders the messages with the checkpoint's chat
/// template and keeps in-context prompts within `max_prompt_tokens` by dropping trailing
/// demonstrations.
pub trait PromptFormat: Send + Sync + Debug {
    /// The messages, in order; the last is the user turn the response answers.
    fn messages(&self, parts: &PromptParts<'_>) -> Vec<ChatMessage>;
}

impl PromptFormat for FewShot {
    fn messages(&self, parts: &PromptParts<'_>) -> Vec<ChatMessage> {
        let mut m = Vec::with_capacity(2 + 2 * parts.demos.len());
        if !parts.system.is_empty() {
            m.push(ChatMessage::new("system", parts.system));
        }
        match self.layout {
            DemoLayout::Inline => {
                m.push(ChatMessage::new(
                    "user",
                    format!("{}{}", self.block(parts.demos), parts.query),
                ));
            }
            DemoLayout::Turns => {
                // Each demonstration's turn carries the instruction as the query does, so the
                // turns show the answer format the problem asks for.
                let instruction = parts.instruction.trim();
                for d in parts.demos {
                    let user = if instruction.is_empty() {
                        d.problem.clone()
                    } else {
                        format!("{} {instruction}", d.problem)
                    };
                    m.push(ChatMessage::new("user", user));
                    m.push(ChatMessage::new("assistant", d.solution.clone()));
                }
                m.push(ChatMessage::new("user", parts.query));
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo(p: &str, s: &str) -> Demo {
        Demo { id: "d".into(), problem: p.into(), solution: s.into() }
    }

    #[test]
    fn item_fields_are_filled_once_and_never_inside_inserted_text() {
        let f = FewShot { item: "Q: {problem} | A: {solution} {x}\n".into(), ..FewShot::default() };
        let d = demo("say {solution}", "\\boxed{2}");
        assert_eq!(
            f.block(&[&d]),
            "Here are examples of problems with worked solutions:\n\nQ: say {solution} | A: \\boxed{2} {x}\nNow solve the following problem.\n\n"
        );
        assert_eq!(f.block(&[]), "");
    }

    #[test]
    fn an_item_without_its_fields_is_refused() {
        let f = FewShot { item: "Problem: {problem}".into(), ..FewShot::default() };
        assert!(f.validate().unwrap_err().to_string().contains("{solution}"));
        assert!(FewShot::default().validate().is_ok());
    }

    #[test]
    fn turns_put_each_demonstration_in_its_own_pair_of_turns() {
        let f = FewShot { layout: DemoLayout::Turns, ..FewShot::default() };
        let (a, b) = (demo("1+1?", "2"), demo("2+2?", "4"));
        let parts = PromptParts {
            system: "Be brief.",
            problem: "3+3?",
            instruction: "Box it.",
            query: "3+3? Box it.",
            demos: &[&a, &b],
        };
        let m = f.messages(&parts);
        let got: Vec<(&str, &str)> =
            m.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
        assert_eq!(
            got,
            [
                ("system", "Be brief."),
                ("user", "1+1? Box it."),
                ("assistant", "2"),
                ("user", "2+2? Box it."),
                ("assistant", "4"),
                ("user", "3+3? Box it."),
            ]
        );
    }
}
