//! Training-pass time with the fused CPU kernels on and off, alternating in one process (this
//! machine's speed drifts too much between processes to compare two runs).
//!
//! The pass is the GRPO step's: `response_logprobs` of 8 prompts × 8 samples (one prompt pass
//! per group), prompt 24 and response 64 tokens, then backward of the summed log-probs.
//!
//! ```sh
//! .venv/bin/python testdata/make_tiny_models.py --bench-model target/bench-qwen3
//! cargo run --release --example train_pass_bench -- --model target/bench-qwen3 --threads 2 \
//!     --repeats 16 [--compute-dtype bfloat16]
//! ```
//! The last line printed is JSON with the median seconds of each setting and their ratio.

#![allow(missing_docs)] // an example, not an API

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use icpo::policy::{set_fused_kernels, CausalLm, DType, Entropy, LoadOptions};
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 8)]
    prompts: i64,
    #[arg(long, default_value_t = 8)]
    samples: i64,
    #[arg(long, default_value_t = 24)]
    prompt_len: i64,
    #[arg(long, default_value_t = 64)]
    response_len: i64,
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Timed passes per setting (after one untimed pass each).
    #[arg(long, default_value_t = 16)]
    repeats: usize,
    #[arg(long, default_value = "float32")]
    compute_dtype: String,
    #[arg(long, default_value_t = 0)]
    seed: i64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> Result<()> {
    let a = Args::parse();
    tch::set_num_threads(a.threads);
    let compute = DType::from_hf_name(&a.compute_dtype)
        .map_err(|e| anyhow::anyhow!("--compute-dtype: {e}"))?;
    let opts = LoadOptions { compute_dtype: Some(compute), ..LoadOptions::default() };
    let model = CausalLm::load(&a.model, opts)?;
    let vocab = model.config().vocab_size;
    let rows = a.prompts * a.samples;
    tch::manual_seed(a.seed);
    let cpu = (Kind::Int64, Device::Cpu);
    // A group's rows share their prompt, as in the trainer.
    let prompts = Tensor::randint(vocab, [a.prompts, a.prompt_len], cpu)
        .repeat_interleave_self_int(a.samples, 0, None);
    let prompt_mask = Tensor::ones([rows, a.prompt_len], cpu);
    let responses = Tensor::randint(vocab, [rows, a.response_len], cpu);
    let response_mask = Tensor::ones([rows, a.response_len], cpu);
    let mut seconds = [Vec::new(), Vec::new()];
    // Setting 0: kernels on; 1: off. Alternating, one untimed pass of each first.
    for i in 0..2 * (a.repeats + 1) {
        let off = i % 2;
        set_fused_kernels(off == 0);
        let start = Instant::now();
        let out = model.response_logprobs(
            &prompts,
            &prompt_mask,
            &responses,
            &response_mask,
            Entropy::Skip,
        )?;
        out.logprobs.sum(Kind::Float).backward();
        if i >= 2 {
            seconds[off].push(start.elapsed().as_secs_f64());
        }
    }
    set_fused_kernels(true);
    let (on, off) = (median(seconds[0].clone()), median(seconds[1].clone()));
    println!("kernels on: median {on:.3} s   off: median {off:.3} s   on/off {:.2}", on / off);
    println!(
        "{}",
        serde_json::json!({
            "bench": "train_pass",
            "compute_dtype": a.compute_dtype,
            "rows": rows,
            "prompt_len": a.prompt_len,
            "response_len": a.response_len,
            "threads": a.threads,
            "fused_s": seconds[0],
            "composed_s": seconds[1],
            "fused_median_s": on,
            "composed_median_s": off,
            "ratio": on / off,
        })
    );
    Ok(())
}
