//! Rollout throughput: random prompt ids through the generation engine, new tokens per second.
//!
//! ```sh
//! .venv/bin/python testdata/make_tiny_models.py --bench-model target/bench-qwen3
//! cargo run --release --example rollout_bench -- --model target/bench-qwen3 --prompts 8 --samples 8 \
//!     --prompt-len 24 --new-tokens 64 --temperature 1.0 --ignore-eos --threads 2 --seed 0
//! ```
//! The last line printed is JSON with `tokens_per_s`. `scripts/bench_hf_generate.py` runs the same
//! workload through transformers' `generate` for a side-by-side number (docs/benchmarks.md).

#![allow(missing_docs)] // an example, not an API

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use icpo::policy::Tokenizer;
use icpo::rollout::{generate_with_stats, EngineConfig, EngineStats, Request, SamplingParams};
use rand::SeedableRng;

mod bench;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    workload: bench::Workload,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Generate exactly --new-tokens per sample.
    #[arg(long)]
    ignore_eos: bool,
    /// Timed repetitions (after one warm-up); the best is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Decoding streams (0: the engine's default, one per thread on a CPU).
    #[arg(long, default_value_t = 0)]
    streams: usize,
    /// The engine's bound on rows × (prompt + new tokens) decoded at once.
    #[arg(long, default_value_t = 1 << 18)]
    max_tokens_in_flight: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let w = &args.workload;
    let model = w.load_policy()?;
    let eos = Tokenizer::from_dir(&w.model).map(|t| t.eos_token_ids().to_vec()).unwrap_or_default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(w.seed);
    let prompts = w.random_prompts(model.config().vocab_size, &mut rng);
    let params = SamplingParams {
        temperature: args.temperature,
        max_new_tokens: args.new_tokens,
        stop_on_eos: !args.ignore_eos,
        ..Default::default()
    };
    let request = Request {
        prompts: &prompts,
        n: w.samples,
        params: &params,
        eos_token_ids: &eos,
        seed: w.seed,
    };
    let config =
        EngineConfig { streams: args.streams, max_tokens_in_flight: args.max_tokens_in_flight };
    let mut best = f64::INFINITY;
    let mut tokens = 0usize;
    let mut stats = EngineStats::default();
    for rep in 0..=args.repeats {
        let start = Instant::now();
        let (out, s) = generate_with_stats(&model, &request, None, &config)?;
        let secs = start.elapsed().as_secs_f64();
        tokens = out.iter().map(|r| r.tokens.len()).sum();
        stats = s;
        if rep > 0 {
            best = best.min(secs);
            eprintln!("run {rep}: {tokens} new tokens in {secs:.3} s");
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "rollout", "prompts": w.prompts, "samples": w.samples, "prompt_len": w.prompt_len,
            "new_tokens": args.new_tokens, "threads": w.threads, "compute_dtype": w.compute_dtype,
            "generated_tokens": tokens,
            "seconds": best, "tokens_per_s": tokens as f64 / best,
            "max_tokens_in_flight": args.max_tokens_in_flight, "stop_on_eos": !args.ignore_eos,
            "decode_steps": stats.decode_steps, "slots": stats.slots,
            "slot_utilization": stats.slot_utilization()
        })
    );
    Ok(())
}
