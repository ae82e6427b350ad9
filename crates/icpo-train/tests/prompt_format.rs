//! The trainer's prompts follow `[data.few_shot]` and a format set with
//! `Trainer::set_prompt_format`: both the plain and the IEF prompts, as the rewards see them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;

use std::sync::{Arc, Mutex};

use common::{config, trainer, trainer_with};
use icpo_policy::ChatMessage;
use icpo_rollout::{PromptFormat, PromptParts};
use icpo_train::{RewardInput, Scorer, TrainConfig};

#[test]
fn turns_layout_reaches_the_ief_prompts() {
    let cfg = config("icpo-fmt-turns", &["data.few_shot.layout=\"turns\""]);
    let mut t = trainer(cfg, "e");
    let batch = t.rollout().unwrap();
    assert!(!batch.ief.is_empty());
    let tok = common::tokenizer();
    let solutions = ["The letter is e, so \\boxed{e}.", "A vowel: e."];
    for ids in &t.last_ief_prompts {
        let text = tok.decode(ids, false).unwrap();
        // The demonstration is an assistant turn of its own, before the problem's user turn.
        let turn = solutions
            .iter()
            .find_map(|s| {
                text.find(&format!("<|im_start|>assistant\n{s}<|im_end|>\n<|im_start|>user\n"))
            })
            .unwrap_or_else(|| panic!("no demonstration turn in {text:?}"));
        assert!(text[turn..].contains("Write the letter number"), "{text:?}");
        assert!(
            text.starts_with("<|im_start|>user\n") && !text.contains("Here are examples"),
            "{text:?}"
        );
    }
}

#[test]
fn few_shot_settings_are_checked_by_key() {
    let e =
        TrainConfig::load(None, &["data.few_shot.layot=\"turns\"".into()]).unwrap_err().to_string();
    assert!(e.contains("data.few_shot.layot") && e.contains("layout"), "{e}");
    let e = TrainConfig::load(None, &["data.few_shot.item=\"{problem} only\"".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.few_shot.item") && e.contains("{solution}"), "{e}");
    let e = TrainConfig::load(None, &["data.few_shot.layout=\"sideways\"".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("sideways") && e.contains("turns"), "{e}");
}

/// The demonstrations in the system turn, and the bare problem as the user turn.
#[derive(Debug)]
struct InSystem;

impl PromptFormat for InSystem {
    fn messages(&self, parts: &PromptParts<'_>) -> Vec<ChatMessage> {
        let mut sys = String::from("Solve.");
        for d in parts.demos {
            sys.push_str(&format!(" [{}]", d.solution));
        }
        vec![ChatMessage::new("system", sys), ChatMessage::new("user", parts.problem)]
    }
}

#[test]
fn a_format_of_ones_own_makes_every_training_prompt() {
    let prompts: &'static Mutex<Vec<(bool, String)>> = Box::leak(Box::default());
    let reward = move |i: &RewardInput<'_>| -> Result<f64, String> {
        prompts.lock().unwrap().push((i.is_ief, i.prompt.to_string()));
        Ok(0.0)
    };
    let mut t = trainer_with(config("icpo-fmt-own", &[]), "e", Scorer::Task(Box::new(reward)));
    t.set_prompt_format(Some(Arc::new(InSystem))).unwrap();
    t.rollout().unwrap();
    let seen = prompts.lock().unwrap();
    assert!(seen.iter().any(|(ief, _)| *ief) && seen.iter().any(|(ief, _)| !*ief));
    for (ief, p) in seen.iter() {
        if *ief {
            assert!(p.starts_with("<|im_start|>system\nSolve. ["), "{p:?}");
        } else {
            assert!(p.starts_with("<|im_start|>system\nSolve.<|im_end|>\n<|im_start|>user\nWrite the letter number "), "{p:?}");
            assert!(!p.contains("step by step"), "the format leaves the instruction out: {p:?}");
        }
    }
}
