//! Loads a checkpoint on CUDA in bf16 (and f32) and compares its logits with CPU f32.
//!
//! `cargo run --release --example gpu_check -- [MODEL_DIR] [--seq-len N]` (default model:
//! testdata/tiny-qwen3). Prints one JSON line per comparison. Without a CUDA device it says so
//! and exits 0. `scripts/gpu-check` wraps it.

#![allow(missing_docs)] // an example, not an API

use anyhow::{Context, Result};
use icpo::policy::{CausalLm, DType, DeviceOpt, LoadOptions};
use tch::{Kind, Tensor};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut model_dir = String::from("testdata/tiny-qwen3");
    let mut seq_len = 64i64;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seq-len" => seq_len = args.next().context("--seq-len needs a value")?.parse()?,
            other => model_dir = other.to_string(),
        }
    }
    if !tch::Cuda::is_available() {
        println!("gpu_check: no CUDA device visible (tch::Cuda::is_available() = false); nothing to compare");
        return Ok(());
    }
    println!("gpu_check: {} CUDA device(s); model {model_dir}", tch::Cuda::device_count());
    let cpu = CausalLm::load(&model_dir, LoadOptions::default())?;
    let vocab = cpu.config().vocab_size;
    tch::manual_seed(0);
    let ids = Tensor::randint(vocab, [2, seq_len], (Kind::Int64, tch::Device::Cpu));
    let reference = tch::no_grad(|| cpu.forward(&ids, None))?.to_kind(Kind::Float);
    drop(cpu);
    for dtype in [DType::F32, DType::BF16] {
        let gpu = CausalLm::load(
            &model_dir,
            LoadOptions { device: DeviceOpt::Cuda(0), dtype, ..Default::default() },
        )?;
        let logits = tch::no_grad(|| gpu.forward(&ids, None))?
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu);
        let diff = (&logits - &reference).abs();
        let agree = logits
            .argmax(-1, false)
            .eq_tensor(&reference.argmax(-1, false))
            .to_kind(Kind::Float)
            .mean(Kind::Float);
        println!(
            "{{\"device\": \"cuda:0\", \"dtype\": \"{}\", \"max_abs_diff\": {:.6e}, \"mean_abs_diff\": {:.6e}, \"logit_scale\": {:.4}, \"argmax_agreement\": {:.4}}}",
            dtype.hf_name(),
            diff.max().double_value(&[]),
            diff.mean(Kind::Float).double_value(&[]),
            reference.abs().max().double_value(&[]),
            agree.double_value(&[])
        );
    }
    Ok(())
}
