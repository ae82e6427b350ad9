//! Fixtures shared by the trainer's integration tests: the tiny Qwen3 checkpoint, a config
//! for it, and a trainer on a toy task.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // not every test uses every fixture

use std::path::PathBuf;

use icpo_policy::{CausalLm, Tokenizer};
use icpo_rollout::{Demo, DemoPool};
use icpo_train::{Problem, Scorer, TrainConfig, Trainer};
use icpo_verify::Reward;

pub fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny-qwen3")
}

/// 1 when the response contains the gold text: learnable by a tiny random model.
pub struct Contains;
impl Reward for Contains {
    fn score(&self, gold: &str, response: &str) -> f64 {
        f64::from(u8::from(response.contains(gold)))
    }
}

pub fn config(out: &str, overrides: &[&str]) -> TrainConfig {
    let mut o: Vec<String> = vec![
        format!("model.path=\"{}\"", tiny().display()),
        "data.train_path=\"(in memory)\"".into(),
        "rollout.group_size=4".into(),
        "rollout.max_new_tokens=6".into(),
        "trainer.batch_prompts=4".into(),
        "trainer.total_steps=6".into(),
        "trainer.save_every=0".into(),
        format!("trainer.output_dir=\"{}\"", std::env::temp_dir().join(out).display()),
        "optim.lr=0.003".into(),
        "optim.mini_batch_prompts=2".into(),
        "optim.micro_batch_size=6".into(),
        "optim.weight_decay=0.0".into(),
        "loss.kl_coef=0.0".into(),
        "data.max_prompt_tokens=400".into(),
        // The toy demonstrations are shorter than the authors' pool filter keeps.
        "data.demo_min_solution_chars=0".into(),
    ];
    o.extend(overrides.iter().map(|s| s.to_string()));
    TrainConfig::load(None, &o).unwrap()
}

pub fn trainer(cfg: TrainConfig, answer: &str) -> Trainer {
    trainer_with(cfg, answer, Scorer::Text(Box::new(Contains)))
}

/// [`trainer`] with another scorer.
pub fn trainer_with(cfg: TrainConfig, answer: &str, scorer: Scorer) -> Trainer {
    let opts = cfg.model.load_options().unwrap();
    let policy = CausalLm::load(tiny(), opts).unwrap();
    let reference = (cfg.loss.kl_coef > 0.0)
        .then(|| CausalLm::load(tiny(), cfg.model.reference_load_options().unwrap()).unwrap());
    let tok = Tokenizer::from_dir(tiny()).unwrap();
    let problems = (0..8)
        .map(|i| Problem {
            id: format!("p{i}"),
            problem: format!("Write the letter number {i}."),
            answer: answer.into(),
            fields: serde_json::json!({"index": i, "target": answer}),
        })
        .collect();
    let demos = DemoPool::new(vec![
        Demo {
            id: "d0".into(),
            problem: "Write a letter.".into(),
            solution: "The letter is e, so \\boxed{e}.".into(),
        },
        Demo { id: "d1".into(), problem: "Name a vowel.".into(), solution: "A vowel: e.".into() },
    ]);
    Trainer::new(cfg, policy, reference, tok, problems, Some(demos), scorer).unwrap()
}

/// The tiny tokenizer's text of `tokens` (special tokens skipped), as the trainer decodes.
pub fn decode(tokens: &[i64]) -> String {
    Tokenizer::from_dir(tiny()).unwrap().decode(tokens, true).unwrap()
}

/// The tiny checkpoint's tokenizer.
pub fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(tiny()).unwrap()
}
