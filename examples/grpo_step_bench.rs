//! GRPO step time: random prompt ids, a cheap reward (parity of the completion length),
//! generation stopping at the checkpoint's EOS id, full steps (generation, scoring, old
//! log-probs, one AdamW update) with β = 0.
//!
//! ```sh
//! .venv/bin/python testdata/make_tiny_models.py --bench-model target/bench-qwen3
//! cargo run --release --example grpo_step_bench -- --model target/bench-qwen3 --prompts 8 --samples 8 \
//!     --prompt-len 24 --new-tokens 64 --steps 3 --threads 2 --seed 0
//! ```
//! Under torchrun it trains data-parallel (`torchrun --no-python --nproc-per-node 2
//! target/release/examples/grpo_step_bench ...`; the CPU development backend where there is no
//! GPU) and rank 0 prints the JSON, with `world_size` and `weights_sq_norm` (the sum of squares
//! of every policy weight after the last step, in f64: the same at any world size);
//! `--zero-stage 2` shards the optimiser state over the ranks (`optimizer_state_bytes` is rank
//! 0's share).
//! One untimed warm-up step comes first. The last line printed is JSON with `step_seconds`
//! (one entry a timed step). `--compute-dtype bfloat16` runs the products in bf16 (f32 weights),
//! the faster setting on CPUs with AMX. docs/benchmarks.md has the side-by-side measurement
//! with TRL's GRPOTrainer (scripts/bench_trl_grpo.py, scripts/bench_pairs.py).

#![allow(missing_docs)] // an example, not an API

use anyhow::Result;
use clap::Parser;
use icpo::policy::Tokenizer;
use icpo::train::{Scorer, TrainConfig, Trainer};
use rand::SeedableRng;

mod bench;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    workload: bench::Workload,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Decoding streams (0: the engine's default, one per thread on a CPU).
    #[arg(long, default_value_t = 0)]
    streams: usize,
    /// Optimiser state sharding over the ranks (`optim.zero_stage`: 0, 1 or 2).
    #[arg(long, default_value_t = 0)]
    zero_stage: u8,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let w = &a.workload;
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{}/config.json", w.model))?)?;
    let gen: serde_json::Value =
        std::fs::read_to_string(format!("{}/generation_config.json", w.model))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null);
    // EOS: one id or a list (generation_config.json first, then config.json).
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        match v {
            serde_json::Value::Array(a) => a.iter().filter_map(serde_json::Value::as_i64).collect(),
            other => other.as_i64().into_iter().collect(),
        }
    };
    let mut eos = ids(&gen["eos_token_id"]);
    if eos.is_empty() {
        eos = ids(&config["eos_token_id"]);
    }
    anyhow::ensure!(!eos.is_empty(), "the checkpoint names no EOS id");
    let cfg = TrainConfig::load(
        None,
        &[
            format!("model.path=\"{}\"", w.model),
            "data.train_path=\"(random ids)\"".into(),
            "algorithm.ief=false".into(),
            "loss.kl_coef=0.0".into(),
            format!("rollout.group_size={}", w.samples),
            format!("rollout.max_new_tokens={}", a.new_tokens),
            format!("trainer.batch_prompts={}", w.prompts),
            format!("optim.mini_batch_prompts={}", w.prompts),
            format!("optim.micro_batch_size={}", w.prompts * w.samples),
            format!("trainer.seed={}", w.seed),
            format!("model.compute_dtype=\"{}\"", w.compute_dtype),
            format!("rollout.decode_streams={}", a.streams),
            format!("optim.zero_stage={}", a.zero_stage),
        ],
    )?;
    let policy = w.load_policy()?;
    let vocab = policy.config().vocab_size;
    // The trainer keeps a tokenizer for text prompts; this benchmark feeds ids and never decodes.
    let tokenizer =
        Tokenizer::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/tiny-qwen3"))?;
    let parity = Scorer::Tokens(Box::new(|_: &str, tokens: &[i64]| (tokens.len() % 2) as f64));
    let mut trainer = Trainer::new(cfg, policy, None, tokenizer, Vec::new(), None, parity)?;
    trainer.eos_token_ids = eos;
    let group = icpo::dist::init_from_env(std::time::Duration::from_secs(600), false)?;
    let world_size = group.world_size();
    if world_size > 1 {
        trainer.set_process_group(group)?;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(w.seed);
    let mut seconds = Vec::new();
    let mut collective = Vec::new();
    // One untimed warm-up step first, as scripts/bench_trl_grpo.py does for TRL.
    for step in 0..=a.steps {
        let prompts = w.random_prompts(vocab, &mut rng);
        let answers = vec![String::new(); w.prompts];
        let m = trainer.train_step_on(&answers, &prompts, &[])?;
        if !trainer.is_main() {
            continue;
        }
        eprintln!(
            "step {step}: {:.3} s (generation {:.3}, scoring {:.3}, training {:.3}); mean length {:.1}",
            m["timing/step_s"], m["timing/generation_s"], m["timing/scoring_s"], m["timing/training_s"], m["response_length/mean"]
        );
        if step > 0 {
            seconds.push(m["timing/step_s"]);
            collective.push(m.get("perf/collective_s").copied().unwrap_or(0.0));
        }
    }
    if !trainer.is_main() {
        return Ok(());
    }
    let weights_sq_norm: f64 = trainer
        .policy()
        .named_weights()
        .values()
        .map(|t| t.to_kind(tch::Kind::Double).square().sum(tch::Kind::Double).double_value(&[]))
        .sum();
    println!(
        "{}",
        serde_json::json!({"bench": "grpo_step", "prompts": w.prompts, "samples": w.samples, "new_tokens": a.new_tokens, "threads": w.threads, "compute_dtype": w.compute_dtype, "step_seconds": seconds, "world_size": world_size, "zero_stage": a.zero_stage, "optimizer_state_bytes": trainer.optimizer_state_bytes(), "collective_seconds": collective, "weights_sq_norm": weights_sq_norm})
    );
    Ok(())
}
