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
use icpo::policy::{set_fused_kernels, Entropy};
use rand::SeedableRng;
use tch::{Kind, Tensor};

mod bench;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    workload: bench::Workload,
    #[arg(long, default_value_t = 64)]
    response_len: usize,
    /// Timed passes per setting (after one untimed pass each).
    #[arg(long, default_value_t = 16)]
    repeats: usize,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> Result<()> {
    let a = Args::parse();
    let w = &a.workload;
    let model = w.load_policy()?;
    let vocab = model.config().vocab_size;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(w.seed);
    // A group's rows share their prompt, as in the trainer.
    let prompts = Tensor::from_slice2(&w.random_prompts(vocab, &mut rng))
        .repeat_interleave_self_int(w.samples as i64, 0, None);
    let responses = Tensor::from_slice2(&bench::random_ids(
        w.prompts * w.samples,
        a.response_len,
        vocab,
        &mut rng,
    ));
    let prompt_mask = prompts.ones_like();
    let response_mask = responses.ones_like();
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
            "compute_dtype": w.compute_dtype,
            "rows": w.prompts * w.samples,
            "prompt_len": w.prompt_len,
            "response_len": a.response_len,
            "threads": w.threads,
            "fused_s": seconds[0],
            "composed_s": seconds[1],
            "fused_median_s": on,
            "composed_median_s": off,
            "ratio": on / off,
        })
    );
    Ok(())
}
