//! Memory of one training pass (forward, loss, backward) of one micro-batch, for the memory
//! issue of icpo-rs (ICPO: *Think Outside the Policy: In-Context Steered Policy Optimization*,
//! arXiv 2510.26519, trains on responses of up to 8,192 tokens with a 151,936-token vocabulary).
//!
//! A random Qwen3-architecture policy is built in-process from the flags; the pass computes the
//! response log-probs (with a differentiable entropy term), a token-mean loss and its backward.
//! `--plain` is the pass without the lean head (autograd keeps every chunk's logits) and without
//! activation checkpointing; `--no-checkpointing` keeps the lean head only. The last
//! line is JSON with `peak_rss_bytes` (the process's high-water mark, /proc/self/status VmHWM)
//! and `seconds`. Run one configuration per process: the high-water mark never goes down.
//!
//! cargo run --release --example memory_bench -- --vocab 151936 --hidden 512 --intermediate 1536 \
//!     --layers 6 --heads 8 --kv-heads 4 --head-dim 64 --prompt-len 256 --response-len 4096 \
//!     --micro-batch 2 --threads 2 [--plain | --no-checkpointing]

#![allow(missing_docs)] // an example, not an API

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use icpo::policy::{set_lean_head, CausalLm, Entropy, LoadOptions, ModelConfig};
use icpo::train::peak_rss_bytes;
use tch::{Kind, Tensor};

#[derive(Parser)]
#[command(about = "Peak memory and time of one training pass of a random policy")]
struct Args {
    #[arg(long, default_value_t = 151_936)]
    vocab: i64,
    #[arg(long, default_value_t = 512)]
    hidden: i64,
    #[arg(long, default_value_t = 1536)]
    intermediate: i64,
    #[arg(long, default_value_t = 6)]
    layers: i64,
    #[arg(long, default_value_t = 8)]
    heads: i64,
    #[arg(long, default_value_t = 4)]
    kv_heads: i64,
    #[arg(long, default_value_t = 64)]
    head_dim: i64,
    #[arg(long, default_value_t = 256)]
    prompt_len: i64,
    #[arg(long, default_value_t = 4096)]
    response_len: i64,
    #[arg(long, default_value_t = 2)]
    micro_batch: i64,
    /// libtorch threads.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// The plain pass: no lean head (every chunk's logits kept for the backward) and no
    /// activation checkpointing (every layer's intermediates kept).
    #[arg(long)]
    plain: bool,
    /// The lean head without activation checkpointing (to see each one's share).
    #[arg(long, conflicts_with = "plain")]
    no_checkpointing: bool,
}

fn main() -> Result<()> {
    let a = Args::parse();
    tch::set_num_threads(a.threads);
    set_lean_head(!a.plain);
    let config = ModelConfig::from_json(
        serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "vocab_size": a.vocab,
            "hidden_size": a.hidden,
            "intermediate_size": a.intermediate,
            "num_hidden_layers": a.layers,
            "num_attention_heads": a.heads,
            "num_key_value_heads": a.kv_heads,
            "head_dim": a.head_dim,
            "max_position_embeddings": a.prompt_len + a.response_len + 16,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1_000_000.0,
            "tie_word_embeddings": true,
            "torch_dtype": "float32"
        }),
        std::path::Path::new("(memory_bench)"),
    )?;
    tch::manual_seed(0);
    let mut model = CausalLm::new(config, LoadOptions::default())?;
    let checkpointing = !a.plain && !a.no_checkpointing;
    model.set_gradient_checkpointing(checkpointing);
    let (b, p, r) = (a.micro_batch, a.prompt_len, a.response_len);
    let opts = (Kind::Int64, tch::Device::Cpu);
    let prompt = Tensor::f_randint(a.vocab, [b, p], opts)?;
    let response = Tensor::f_randint(a.vocab, [b, r], opts)?;
    let (pmask, rmask) = (Tensor::f_ones([b, p], opts)?, Tensor::f_ones([b, r], opts)?);
    let before = peak_rss_bytes().context("no VmHWM in /proc/self/status")?;
    let t = Instant::now();
    let out =
        model.response_logprobs(&prompt, &pmask, &response, &rmask, Entropy::Differentiable)?;
    let entropy = out.entropy.context("entropy")?;
    let loss = out
        .logprobs
        .f_mean(Kind::Float)?
        .f_neg()?
        .f_sub(&entropy.f_mean(Kind::Float)?.f_mul_scalar(0.001)?)?;
    loss.backward();
    let seconds = t.elapsed().as_secs_f64();
    let peak = peak_rss_bytes().context("no VmHWM in /proc/self/status")?;
    println!(
        "{}",
        serde_json::json!({
            "pass": match (a.plain, checkpointing) {
                (true, _) => "plain",
                (false, true) => "lean head + checkpointing",
                (false, false) => "lean head",
            },
            "tokens": b * (p + r),
            "loss": loss.f_double_value(&[])?,
            "peak_rss_bytes": peak,
            "rss_before_pass_bytes": before,
            "seconds": seconds,
        })
    );
    Ok(())
}
