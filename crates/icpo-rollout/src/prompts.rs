//! Prompts: plain (chat template + problem + instruction) and in-context for Implicit Expert
//! Forcing (ICPO.md §1: `k` demonstrations before the problem).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use icpo_policy::{ChatMessage, TemplateArgs, Tokenizer};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RolloutError};
use crate::few_shot::{DemoLayout, FewShot, PromptFormat, PromptParts};

/// The spec's instruction appended to every problem.
pub const DEFAULT_INSTRUCTION: &str =
    "Let's think step by step and output the final answer within \\boxed{}.";

/// How a problem becomes prompt text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PromptTemplate {
    /// The checkpoint's chat template, one user message, generation prompt added (default).
    #[default]
    Chat,
    /// `Question:\n{content}\n\nAnswer:\n`, for base models without a chat template.
    Raw,
}

/// A worked example for in-context prompts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demo {
    /// Identifier (the JSONL `id`, else `line N`).
    pub id: String,
    /// The problem.
    pub problem: String,
    /// Its worked solution.
    pub solution: String,
}

/// The demonstration pool IEF draws from (default: MATH train).
#[derive(Debug, Clone, Default)]
pub struct DemoPool {
    demos: Vec<Demo>,
}

impl DemoPool {
    /// A pool from demos in memory.
    pub fn new(demos: Vec<Demo>) -> Self {
        DemoPool { demos }
    }

    /// Reads JSONL lines with string fields `problem` and `solution` (`id` optional); a line
    /// without them, or not JSON, is an error naming the file and line. Blank lines are skipped.
    pub fn from_jsonl(path: impl AsRef<Path>) -> Result<Self> {
        let path: PathBuf = path.as_ref().into();
        let mut demos = Vec::new();
        for icpo_policy::JsonlLine { line, value } in icpo_policy::read_jsonl(&path)? {
            let err = |message: String| RolloutError::Data { path: path.clone(), line, message };
            let v = value.map_err(err)?;
            let field = |name: &str| -> Result<String> {
                v.get(name)
                    .and_then(|x| x.as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| err(format!("missing string field `{name}`")))
            };
            let id = v
                .get("id")
                .and_then(|x| x.as_str())
                .map_or_else(|| format!("line {line}"), str::to_owned);
            demos.push(Demo { id, problem: field("problem")?, solution: field("solution")? });
        }
        if demos.is_empty() {
            return Err(RolloutError::Data { path, line: 0, message: "no demonstrations".into() });
        }
        Ok(DemoPool { demos })
    }

    /// Drops demonstrations whose solution is shorter than `min_solution_chars` characters or,
    /// with `drop_urls`, holds a URL (`http:` / `https:`), as the authors clean their pool;
    /// returns how many were dropped.
    pub fn retain_clean(&mut self, min_solution_chars: usize, drop_urls: bool) -> usize {
        let before = self.demos.len();
        self.demos.retain(|d| {
            d.solution.chars().count() >= min_solution_chars
                && !(drop_urls && (d.solution.contains("https:") || d.solution.contains("http:")))
        });
        before - self.demos.len()
    }

    /// Number of demonstrations.
    pub fn len(&self) -> usize {
        self.demos.len()
    }

    /// True when the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.demos.is_empty()
    }

    /// Draws `k` distinct demonstrations uniformly, never one whose problem is `query` itself.
    pub fn draw<R: Rng + ?Sized>(&self, k: usize, query: &str, rng: &mut R) -> Result<Vec<&Demo>> {
        // The query itself is never its own demonstration, however its whitespace differs.
        let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let query = norm(query);
        let eligible: Vec<&Demo> =
            self.demos.iter().filter(|d| norm(&d.problem) != query).collect();
        if eligible.len() < k {
            return Err(RolloutError::Input(format!(
                "demo pool has {} eligible demonstrations, {k} requested",
                eligible.len()
            )));
        }
        Ok(eligible.choose_multiple(rng, k).copied().collect())
    }
}

/// Builds prompt token ids for a tokenizer.
#[derive(Debug)]
pub struct PromptBuilder<'a> {
    tokenizer: &'a Tokenizer,
    /// Template kind.
    pub template: PromptTemplate,
    /// Instruction appended to the problem.
    pub instruction: String,
    /// Longest prompt in tokens; in-context prompts beyond it are cut in the middle of the
    /// demonstrations, plain prompts beyond it are an error.
    pub max_prompt_tokens: usize,
    /// A system turn before the user message (chat template only; empty: none, the paper's).
    pub system: String,
    /// Extra chat-template variables (Qwen3's `enable_thinking = false`, ...); none by default.
    pub template_args: TemplateArgs,
    /// How demonstrations are laid out (inline, the paper's, by default).
    pub few_shot: FewShot,
    /// A format of one's own in place of `few_shot` (None: the built-in).
    pub format: Option<Arc<dyn PromptFormat>>,
}

const CUT_MARKER: &str = "\n...\n";

impl<'a> PromptBuilder<'a> {
    /// A builder with the default instruction, the chat template and a 4,096-token budget.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        PromptBuilder {
            tokenizer,
            template: PromptTemplate::Chat,
            instruction: DEFAULT_INSTRUCTION.into(),
            max_prompt_tokens: 4096,
            system: String::new(),
            template_args: TemplateArgs::new(),
            few_shot: FewShot::default(),
            format: None,
        }
    }

    /// Prompt text of `messages`: the chat template with the generation prompt, or for the raw
    /// template each user turn as `Question:\n…\n\nAnswer:\n` and each assistant turn
    /// followed by a blank line (system turns are chat-only).
    pub fn render_messages(&self, messages: &[ChatMessage]) -> Result<String> {
        match self.template {
            PromptTemplate::Chat => {
                Ok(self.tokenizer.apply_chat_template_with(messages, true, &self.template_args)?)
            }
            PromptTemplate::Raw => {
                let mut s = String::new();
                for m in messages {
                    match m.role.as_str() {
                        "user" => s.push_str(&format!("Question:\n{}\n\nAnswer:\n", m.content)),
                        "assistant" => s.push_str(&format!("{}\n\n", m.content)),
                        _ => {}
                    }
                }
                Ok(s)
            }
        }
    }

    /// One user message (after the system turn, if any) holding `content`.
    fn render(&self, content: &str) -> Result<String> {
        let mut messages = Vec::with_capacity(2);
        if !self.system.is_empty() {
            messages.push(ChatMessage::new("system", &self.system));
        }
        messages.push(ChatMessage::new("user", content));
        self.render_messages(&messages)
    }

    /// The messages of the prompt of `problem` with `demos` (none: the plain prompt), from the
    /// format in force.
    pub fn messages(&self, problem: &str, demos: &[&Demo]) -> Vec<ChatMessage> {
        let query = self.user_message(problem);
        let parts = PromptParts {
            system: &self.system,
            problem,
            instruction: &self.instruction,
            query: &query,
            demos,
        };
        match &self.format {
            Some(f) => f.messages(&parts),
            None => self.few_shot.messages(&parts),
        }
    }

    /// The plain prompt's text: `x(q)`.
    pub fn plain_text(&self, problem: &str) -> Result<String> {
        self.render_messages(&self.messages(problem, &[]))
    }

    /// The user message of the plain prompt: the problem, a space and the instruction, as the
    /// authors' data script builds it (`content + " " + instruction`). A problem that already
    /// ends with the instruction (a data set prepared by that script) does not get it twice.
    pub fn user_message(&self, problem: &str) -> String {
        let instruction = self.instruction.trim();
        if !instruction.is_empty() && problem.trim_end().ends_with(instruction) {
            problem.to_string()
        } else {
            format!("{problem} {}", self.instruction)
        }
    }

    /// The plain prompt's token ids.
    pub fn plain(&self, problem: &str) -> Result<Vec<i64>> {
        let ids = self.tokenizer.encode(&self.plain_text(problem)?, false)?;
        if ids.len() > self.max_prompt_tokens {
            return Err(RolloutError::Input(format!(
                "prompt of {} tokens exceeds max_prompt_tokens = {}",
                ids.len(),
                self.max_prompt_tokens
            )));
        }
        Ok(ids)
    }

    /// The demonstrations as text, as they appear in an inline prompt.
    pub fn demo_block(&self, demos: &[&Demo]) -> String {
        self.few_shot.block(demos)
    }

    /// The in-context prompt's token ids: `x([D; q])`, demonstrations laid out by the format in
    /// force (by default inline: before the problem in the same user message). When longer
    /// than `max_prompt_tokens`: inline, tokens are removed from the middle of the
    /// demonstrations (a `...` line marks the cut), keeping their start and end; in turns or a
    /// format of one's own, trailing demonstrations are dropped until it fits (an error when
    /// not even one does).
    pub fn in_context(&self, problem: &str, demos: &[&Demo]) -> Result<Vec<i64>> {
        const SENTINEL: &str = "\u{1}ICPO_DEMOS\u{1}";
        let ids =
            self.tokenizer.encode(&self.render_messages(&self.messages(problem, demos))?, false)?;
        if ids.len() <= self.max_prompt_tokens {
            return Ok(ids);
        }
        if self.format.is_some() || self.few_shot.layout != DemoLayout::Inline {
            for k in (1..demos.len()).rev() {
                let text = self.render_messages(&self.messages(problem, &demos[..k]))?;
                let ids = self.tokenizer.encode(&text, false)?;
                if ids.len() <= self.max_prompt_tokens {
                    return Ok(ids);
                }
            }
            return Err(RolloutError::Input(format!(
                "max_prompt_tokens = {} leaves no room for one demonstration in this layout (with one the prompt takes more)",
                self.max_prompt_tokens
            )));
        }
        let query = self.user_message(problem);
        // Tokenize around the demonstrations and cut inside them.
        let shell = self.render(&format!("{SENTINEL}{query}"))?;
        let (before, after) = shell.split_once(SENTINEL).ok_or_else(|| {
            RolloutError::Input("the chat template dropped the message content".into())
        })?;
        let before = self.tokenizer.encode(before, false)?;
        let after = self.tokenizer.encode(after, false)?;
        let demo = self.tokenizer.encode(&self.demo_block(demos), false)?;
        let marker = self.tokenizer.encode(CUT_MARKER, false)?;
        let fixed = before.len() + after.len() + marker.len();
        if fixed + 2 > self.max_prompt_tokens {
            return Err(RolloutError::Input(format!(
                "max_prompt_tokens = {} leaves no room for demonstrations (the prompt without them takes {fixed})",
                self.max_prompt_tokens
            )));
        }
        let keep = self.max_prompt_tokens - fixed;
        let head = keep.div_ceil(2);
        let tail = keep - head;
        let mut out = before;
        out.extend_from_slice(&demo[..head]);
        out.extend_from_slice(&marker);
        out.extend_from_slice(&demo[demo.len() - tail..]);
        out.extend_from_slice(&after);
        Ok(out)
    }
}
