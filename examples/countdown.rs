//! A task reward written in Rust, with metadata from the dataset, trained with GRPO on the tiny
//! policy: a countdown-style game ("make TARGET from these numbers"). icpo-rs implements ICPO
//! (*Think Outside the Policy: In-Context Steered Policy Optimization*, arXiv 2510.26519) and the
//! GRPO family; this example shows the extension points a task of one's own needs.
//!
//! ```sh
//! cargo run --release --example countdown -- [--steps 40] [--seed 7]
//! ```
//!
//! Phases: (1) the problems, each row carrying `numbers` and `target` fields beside its text;
//! (2) the reward, which reads those fields — a weighted mix of "uses the given numbers" and
//! "states the target", each logged as `reward/<name>`, failing loudly on a malformed row;
//! (3) GRPO steps (`TrainConfig::grpo()`), the reward's parts printed per step. The tiny random
//! policy cannot play countdown; what it learns is the partial credit (seed 7: `uses_numbers`
//! from 0.00 at step 0 to ≈ 0.2 by step 40, in a few seconds), which is the point of a shaped task
//! reward on a model this small.

#![allow(missing_docs)] // an example, not an API

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use icpo::policy::{CausalLm, LoadOptions, Tokenizer};
use icpo::train::{Problem, RewardInput, Scorer, TrainConfig, Trainer, WeightedRewards};
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "GRPO with a countdown-style task reward on the tiny policy")]
struct Args {
    #[arg(long, default_value_t = 40)]
    steps: u64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// `numbers` of a problem's row, as the dataset stores them.
fn numbers(input: &RewardInput<'_>) -> Result<Vec<i64>, String> {
    input.problem.fields["numbers"]
        .as_array()
        .ok_or_else(|| format!("problem `{}` has no `numbers` list", input.problem.id))?
        .iter()
        .map(|n| n.as_i64().ok_or_else(|| format!("`numbers` holds {n}, not an integer")))
        .collect()
}

/// The share of the given numbers the response writes out.
fn uses_numbers(input: &RewardInput<'_>) -> Result<f64, String> {
    let ns = numbers(input)?;
    let used = ns.iter().filter(|n| input.response.contains(&n.to_string())).count();
    Ok(used as f64 / ns.len().max(1) as f64)
}

/// 1 when the response states the target.
fn states_target(input: &RewardInput<'_>) -> Result<f64, String> {
    let target = input.problem.fields["target"]
        .as_i64()
        .ok_or_else(|| format!("problem `{}` has no integer `target`", input.problem.id))?;
    Ok(f64::from(u8::from(input.response.contains(&target.to_string()))))
}

fn main() -> Result<()> {
    let a = Args::parse();
    tch::manual_seed(a.seed as i64);
    let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/tiny-qwen3");

    // Phase 1: problems whose rows carry the game's data.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let problems: Vec<Problem> = (0..32)
        .map(|i| {
            let ns: Vec<i64> = (0..3).map(|_| rng.gen_range(1..10)).collect();
            let target = ns[0] * ns[1] + ns[2];
            Problem {
                id: format!("countdown-{i}"),
                problem: format!("Using {}, {} and {}, make {target}.", ns[0], ns[1], ns[2]),
                answer: target.to_string(),
                fields: serde_json::json!({ "numbers": ns, "target": target }),
            }
        })
        .collect();

    // Phase 2: the reward, a weighted mix logged part by part.
    let reward = WeightedRewards::new().with("uses_numbers", 0.5, uses_numbers).with(
        "states_target",
        1.0,
        states_target,
    );

    // Phase 3: GRPO on the tiny policy.
    let mut cfg = TrainConfig::grpo();
    cfg.model.path = tiny.display().to_string();
    cfg.rollout.group_size = 4;
    cfg.rollout.max_new_tokens = 12;
    cfg.trainer.batch_prompts = 8;
    cfg.trainer.total_steps = a.steps;
    cfg.trainer.seed = a.seed;
    cfg.optim.lr = 3e-3;
    cfg.optim.mini_batch_prompts = 8;
    cfg.loss.kl_coef = 0.0;
    let policy = CausalLm::load(&tiny, LoadOptions::default())?;
    let tokenizer = Tokenizer::from_dir(&tiny)?;
    let mut trainer =
        Trainer::new(cfg, policy, None, tokenizer, problems, None, Scorer::Task(Box::new(reward)))?;
    println!("| step | reward | uses_numbers | states_target | errors |\n|---|---|---|---|---|");
    for _ in 0..a.steps {
        let m = trainer.train_step()?;
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {} |",
            m["step"],
            m["reward/on_policy_mean"],
            m["reward/uses_numbers"],
            m["reward/states_target"],
            m["reward/errors"]
        );
    }
    Ok(())
}
