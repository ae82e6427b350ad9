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
use icpo::policy::{CausalLm, DType, LoadOptions, Tokenizer};
use icpo::rollout::{generate, EngineConfig, Request, SamplingParams};
use rand::{Rng, SeedableRng};

#[derive(Parser)]
struct Args {
    /// Checkpoint directory.
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    #[arg(long, default_value_t = 8)]
    samples: usize,
    #[arg(long, default_value_t = 24)]
    prompt_len: usize,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Generate exactly --new-tokens per sample.
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, default_value_t = 2)]
    threads: i32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Dtype of products: float32 (default, as the side-by-side runs) or bfloat16 (mixed
    /// precision: f32 weights, bf16 products).
    #[arg(long, default_value = "float32")]
    compute_dtype: String,
    /// Timed repetitions (after one warm-up); the best is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Decoding streams (0: the engine's default, one per thread on a CPU).
    #[arg(long, default_value_t = 0)]
    streams: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    let compute = DType::from_hf_name(&args.compute_dtype)
        .map_err(|e| anyhow::anyhow!("--compute-dtype: {e}"))?;
    let options = LoadOptions { compute_dtype: Some(compute), ..Default::default() };
    let model = CausalLm::load(&args.model, options)?;
    let eos =
        Tokenizer::from_dir(&args.model).map(|t| t.eos_token_ids().to_vec()).unwrap_or_default();
    let vocab = model.config().vocab_size;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let prompts: Vec<Vec<i64>> = (0..args.prompts)
        .map(|_| (0..args.prompt_len).map(|_| rng.gen_range(0..vocab)).collect())
        .collect();
    let params = SamplingParams {
        temperature: args.temperature,
        max_new_tokens: args.new_tokens,
        stop_on_eos: !args.ignore_eos,
        ..Default::default()
    };
    let request = Request {
        prompts: &prompts,
        n: args.samples,
        params: &params,
        eos_token_ids: &eos,
        seed: args.seed,
    };
    let config = EngineConfig { streams: args.streams, ..Default::default() };
    let mut best = f64::INFINITY;
    let mut tokens = 0usize;
    for rep in 0..=args.repeats {
        let start = Instant::now();
        let out = generate(&model, &request, None, &config)?;
        let secs = start.elapsed().as_secs_f64();
        tokens = out.iter().map(|r| r.tokens.len()).sum();
        if rep > 0 {
            best = best.min(secs);
            eprintln!("run {rep}: {tokens} new tokens in {secs:.3} s");
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "rollout", "prompts": args.prompts, "samples": args.samples, "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens, "threads": args.threads, "compute_dtype": args.compute_dtype,
            "generated_tokens": tokens,
            "seconds": best, "tokens_per_s": tokens as f64 / best
        })
    );
    Ok(())
}
