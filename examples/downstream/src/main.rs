//! icpo-rs used from another crate: one GRPO step on a checkpoint with a reward written here,
//! printed as JSON with whether libtorch sees a GPU.
//!
//! `cargo run -- ../../testdata/tiny-qwen3`

use anyhow::{Context, Result};
use icpo::policy::{CausalLm, Tokenizer};
use icpo::train::{Problem, RewardInput, Scorer, TrainConfig, Trainer};

fn main() -> Result<()> {
    let model = std::env::args().nth(1).context("usage: icpo-downstream MODEL_DIR")?;
    let out = std::env::temp_dir().join(format!("icpo-downstream-{}", std::process::id()));
    let mut cfg = TrainConfig::grpo();
    cfg.model.path = model.clone();
    cfg.rollout.group_size = 4;
    cfg.rollout.max_new_tokens = 8;
    cfg.trainer.batch_prompts = 2;
    cfg.trainer.output_dir = out.display().to_string();
    cfg.optim.mini_batch_prompts = 2;
    cfg.optim.micro_batch_size = 8;
    cfg.data.max_prompt_tokens = 400;
    let policy = CausalLm::load(&model, cfg.model.load_options()?)?;
    let reference = CausalLm::load(&model, cfg.model.reference_load_options()?)?;
    let tokenizer = Tokenizer::from_dir(&model)?;
    let problems = (0..4)
        .map(|i| Problem {
            id: format!("p{i}"),
            problem: format!("Say the number {i}."),
            answer: i.to_string(),
            fields: serde_json::json!({ "n": i }),
        })
        .collect();
    // A reward of this crate's own: partial credit for mentioning the row's number.
    let reward = |input: &RewardInput<'_>| -> Result<f64, String> {
        let n = input.problem.fields["n"].as_i64().ok_or("row without `n`")?;
        Ok(if input.response.contains(&n.to_string()) { 1.0 } else { 0.1 })
    };
    let mut trainer = Trainer::new(
        cfg,
        policy,
        Some(reference),
        tokenizer,
        problems,
        None,
        Scorer::Task(Box::new(reward)),
    )?;
    let m = trainer.train_step()?;
    let report = serde_json::json!({
        "cuda_available": tch::Cuda::is_available(),
        "step": trainer.step(),
        "actor/pg_loss": m["actor/pg_loss"],
        "reward/mean": m["reward/mean"],
        "response_length/mean": m["response_length/mean"],
    });
    println!("{report}");
    Ok(())
}
