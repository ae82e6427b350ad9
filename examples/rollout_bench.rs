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
    /// The engine's bound on the KV cache's token slots (see `EngineConfig`).
    #[arg(long, default_value_t = 1 << 18)]
    max_tokens_in_flight: usize,
    /// Decode slots: sets --max-tokens-in-flight to exactly this many rows (and sizes the
    /// chunked schedule reported beside it).
    #[arg(long)]
    slots: Option<usize>,
}

/// EOS ids of `generation_config.json` (or `config.json`) when the checkpoint has no tokenizer.
fn eos_from_configs(dir: &std::path::Path) -> Vec<i64> {
    for file in ["generation_config.json", "config.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(file)) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        match &v["eos_token_id"] {
            serde_json::Value::Number(n) => return n.as_i64().into_iter().collect(),
            serde_json::Value::Array(a) => return a.iter().filter_map(|x| x.as_i64()).collect(),
            _ => {}
        }
    }
    Vec::new()
}

/// Slot utilization of the engine before continuous batching on the same samples: prompts in
/// chunks of `rows / n` groups, each chunk decoding until its longest member ends (finished rows
/// dropped, none admitted in their place): Σ lengths ÷ Σ over chunks of rows × longest.
fn chunked_utilization(lens: &[usize], n: usize, rows: usize) -> f64 {
    let per_chunk = (rows / n).max(1) * n;
    let reserved: usize =
        lens.chunks(per_chunk).map(|c| c.len() * c.iter().max().unwrap_or(&0)).sum();
    lens.iter().sum::<usize>() as f64 / reserved.max(1) as f64
}

fn main() -> Result<()> {
    let args = Args::parse();
    let w = &args.workload;
    let model = w.load_policy()?;
    let eos = Tokenizer::from_dir(&w.model)
        .map(|t| t.eos_token_ids().to_vec())
        .unwrap_or_else(|_| eos_from_configs(std::path::Path::new(&w.model)));
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
        first_prompt: 0,
    };
    let window = w.prompt_len + args.new_tokens;
    let max_tokens_in_flight = match args.slots {
        Some(rows) => rows * (window + window / 2),
        None => args.max_tokens_in_flight,
    };
    let config = EngineConfig { streams: args.streams, max_tokens_in_flight };
    let mut best = f64::INFINITY;
    let mut tokens = 0usize;
    let mut stats = EngineStats::default();
    let mut lens = Vec::new();
    for rep in 0..=args.repeats {
        let start = Instant::now();
        let (out, s) = generate_with_stats(&model, &request, None, &config)?;
        let secs = start.elapsed().as_secs_f64();
        tokens = out.iter().map(|r| r.tokens.len()).sum();
        lens = out.iter().map(|r| r.tokens.len()).collect::<Vec<_>>();
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
            "max_tokens_in_flight": max_tokens_in_flight, "stop_on_eos": !args.ignore_eos,
            "decode_steps": stats.decode_steps, "slots": stats.slots,
            "slot_utilization": stats.slot_utilization(),
            "mean_length": tokens as f64 / lens.len().max(1) as f64,
            "max_length": lens.iter().max().copied().unwrap_or(0),
            "chunked_slot_utilization": chunked_utilization(&lens, w.samples, stats.slots.max(1))
        })
    );
    Ok(())
}
