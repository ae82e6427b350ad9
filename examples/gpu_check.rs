//! Loads a checkpoint on CUDA in bf16 (and f32) and compares its logits with CPU f32; then runs
//! one training pass (response log-probs with an entropy term, backward) on CUDA in f32 with and
//! without the lean pass (lean head + activation checkpointing), printing the largest gradient
//! difference and each pass's peak CUDA memory (the caching allocator's statistics).
//!
//! The rollout engine generates the same request on CUDA and on the CPU (f32): the samples
//! should be the same, the draws being keyed by seed, sequence and position on any device.
//!
//! Then, at scale, on a random model of Qwen3-1.7B's shape in bf16: decode-step times at 64 and
//! 256 rows after 512-token prompts (the sampler's path: `decoding_copy`, `decode_sampled`, no
//! host read inside the timed steps), with the step's attention through SDPA and through batched
//! products (`set_decode_products`; their first-step logits compared), and the peak CUDA memory of one training pass (lean head,
//! activation checkpointing) over a 512-token prompt and an 8,192-token response.
//!
//! `cargo run --release --example gpu_check -- [MODEL_DIR] [--seq-len N] [--no-scale]`
//! (default model: testdata/tiny-qwen3). Prints one JSON line per measurement. Without a CUDA
//! device it says so and exits 0. `scripts/gpu-check` wraps it and gathers the lines into one
//! report.

#![allow(missing_docs)] // an example, not an API

use anyhow::{Context, Result};
use icpo::policy::{
    peak_memory_bytes, reset_peak_memory, set_decode_products, set_lean_head, CausalLm, DType,
    DeviceOpt, Entropy, LoadOptions,
};
use icpo::rollout::{generate_with_stats, EngineConfig, Request, SamplingParams};
use tch::{Kind, Tensor};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut model_dir = String::from("testdata/tiny-qwen3");
    let mut seq_len = 64i64;
    let mut scale = true;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seq-len" => seq_len = args.next().context("--seq-len needs a value")?.parse()?,
            "--no-scale" => scale = false,
            other => model_dir = other.to_string(),
        }
    }
    if !tch::Cuda::is_available() {
        println!("gpu_check: no CUDA device visible (tch::Cuda::is_available() = false); nothing to compare");
        return Ok(());
    }
    println!("gpu_check: {} CUDA device(s); model {model_dir}", tch::Cuda::device_count());
    // Each section reports its own failure and the next still runs: a GPU machine is lent
    // rarely, and one broken part must not hide the others' numbers.
    let mut failed = Vec::new();
    let mut section = |name: &str, result: Result<()>| {
        if let Err(e) = result {
            println!("{}", serde_json::json!({ "section": name, "error": format!("{e:#}") }));
            failed.push(name.to_string());
        }
    };
    section("logits_parity", logits_parity(&model_dir, seq_len));
    section("lean_pass", lean_pass_on_cuda(&model_dir, seq_len));
    section("engine", engine_on_cuda(&model_dir));
    if scale {
        match scale_model() {
            Ok(mut model) => {
                for rows in [64i64, 256] {
                    section("decode", decode_at_scale(&model, rows));
                }
                section("train_pass", train_pass_at_scale(&mut model));
            }
            Err(e) => section("scale_model", Err(e)),
        }
    }
    anyhow::ensure!(failed.is_empty(), "gpu_check: sections failed: {}", failed.join(", "));
    Ok(())
}

/// Logits of the checkpoint on CUDA (f32 and bf16) against CPU f32.
fn logits_parity(model_dir: &str, seq_len: i64) -> Result<()> {
    let cpu = CausalLm::load(model_dir, LoadOptions::default())?;
    let vocab = cpu.config().vocab_size;
    tch::manual_seed(0);
    let ids = Tensor::randint(vocab, [2, seq_len], (Kind::Int64, tch::Device::Cpu));
    let reference = tch::no_grad(|| cpu.forward(&ids, None))?.to_kind(Kind::Float);
    drop(cpu);
    for dtype in [DType::F32, DType::BF16] {
        let gpu = CausalLm::load(
            model_dir,
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

/// The rollout engine on CUDA against the CPU (f32, same request): its draws are keyed by seed,
/// sequence and position whatever the device, so the samples should be the same, bar a draw
/// that falls within float rounding of a boundary between two tokens.
fn engine_on_cuda(model_dir: &str) -> Result<()> {
    let params = SamplingParams {
        temperature: 1.0,
        max_new_tokens: 48,
        stop_on_eos: false,
        ..Default::default()
    };
    let prompts: Vec<Vec<i64>> =
        (0..6).map(|p| (0..12).map(|t| (p * 31 + t * 7) % 97 + 3).collect()).collect();
    let request = Request {
        prompts: &prompts,
        n: 4,
        params: &params,
        eos_token_ids: &[],
        seed: 11,
        first_prompt: 0,
    };
    let mut runs = Vec::new();
    for device in [DeviceOpt::Cpu, DeviceOpt::Cuda(0)] {
        let model = CausalLm::load(model_dir, LoadOptions { device, ..Default::default() })?;
        let t = std::time::Instant::now();
        let (out, stats) = generate_with_stats(&model, &request, None, &EngineConfig::default())?;
        runs.push((out, stats, t.elapsed().as_secs_f64()));
    }
    let (cpu, gpu) = (&runs[0].0, &runs[1].0);
    let same = cpu.iter().zip(gpu).filter(|(a, b)| a.tokens == b.tokens).count();
    // Log-probs of the sequences sampled alike, position by position.
    let mut worst = 0f64;
    for (a, b) in cpu.iter().zip(gpu).filter(|(a, b)| a.tokens == b.tokens) {
        for (x, y) in a.policy_logprobs.iter().zip(&b.policy_logprobs) {
            worst = worst.max(f64::from((x - y).abs()));
        }
    }
    let share = same as f64 / cpu.len().max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "section": "engine", "sequences": cpu.len(), "identical_on_cuda": same,
            "max_policy_logprob_diff": worst, "cuda_slot_utilization": runs[1].1.slot_utilization(),
            "cpu_s": runs[0].2, "cuda_s": runs[1].2, "ok": share >= 0.95 && worst < 1e-3
        })
    );
    Ok(())
}

/// Qwen3-1.7B's shape (hidden 2,048, 28 layers, 16 heads / 8 KV heads of 128, MLP 6,144,
/// vocab 151,936, tied head), random weights.
fn qwen3_1_7b_shape() -> Result<icpo::policy::ModelConfig> {
    Ok(icpo::policy::ModelConfig::from_json(
        serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
            "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
            "head_dim": 128, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
            "rope_theta": 1_000_000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16"
        }),
        std::path::Path::new("(gpu_check: Qwen3-1.7B shape)"),
    )?)
}

/// The Qwen3-1.7B-shaped random model in bf16 on CUDA (3.4 GB).
fn scale_model() -> Result<CausalLm> {
    let options =
        LoadOptions { device: DeviceOpt::Cuda(0), dtype: DType::BF16, ..Default::default() };
    tch::manual_seed(2);
    Ok(CausalLm::new(qwen3_1_7b_shape()?, options)?)
}

/// Decode-step times at `rows` rows after 512-token prompts, with the step's attention both ways
/// (libtorch's SDPA with a mask and `enable_gqa`, or two batched products): which is faster
/// decides the default (`set_decode_products`); their first-step logits are compared.
fn decode_at_scale(model: &CausalLm, rows: i64) -> Result<()> {
    let device = tch::Device::Cuda(0);
    let vocab = model.config().vocab_size;
    let (prompt_len, steps) = (512i64, 32usize);
    let mut first_step = Vec::new();
    for products in [false, true] {
        set_decode_products(products);
        let attention = if products { "products" } else { "sdpa" };
        let run = || -> Result<Tensor> {
            let decoder = model.decoding_copy()?;
            tch::manual_seed(3);
            let ids = Tensor::randint(vocab, [rows, prompt_len], (Kind::Int64, device));
            let mask = Tensor::ones([rows, prompt_len], (Kind::Int64, device));
            let live = Tensor::ones([rows, 1], (Kind::Int64, device));
            let (mut logits, mut cache) =
                tch::no_grad(|| decoder.prefill(&ids, &mask, prompt_len + steps as i64 + 8))?;
            let mut times = Vec::with_capacity(steps);
            let mut first = None;
            for _ in 0..steps {
                tch::Cuda::synchronize(0);
                let t = std::time::Instant::now();
                let next = logits.argmax(-1, false).unsqueeze(1);
                logits =
                    tch::no_grad(|| decoder.decode_sampled(&next, &live, &mut cache))?.select(1, 0);
                tch::Cuda::synchronize(0);
                times.push(t.elapsed().as_secs_f64() * 1e3);
                first.get_or_insert_with(|| logits.to_kind(Kind::Float));
            }
            // The first steps warm up kernels and the allocator: the median of the rest.
            let mut warm: Vec<f64> = times[4..].to_vec();
            warm.sort_by(f64::total_cmp);
            let median = warm[warm.len() / 2];
            println!(
                "{{\"scale\": \"decode\", \"model\": \"qwen3-1.7b-shape bf16\", \"attention\": \"{attention}\", \"rows\": {rows}, \"prompt_tokens\": {prompt_len}, \"step_ms_median\": {median:.3}, \"step_ms\": {times:?}, \"tokens_per_s\": {:.1}}}",
                rows as f64 / (median / 1e3)
            );
            first.context("no decode step ran")
        };
        let result = run();
        set_decode_products(false);
        first_step.push(result.with_context(|| format!("decode with {attention} attention"))?);
    }
    // Same prompts, same first token: the two attentions' logits differ by bf16 rounding.
    let scale = first_step[0].abs().max().double_value(&[]).max(1e-12);
    let rel = (&first_step[0] - &first_step[1]).abs().max().double_value(&[]) / scale;
    println!(
        "{{\"scale\": \"decode_attention_parity\", \"rows\": {rows}, \"max_relative_logit_diff\": {rel:.3e}, \"ok\": {}}}",
        rel < 3e-2
    );
    Ok(())
}

/// One training pass at the paper's response length (512-token prompt, 8,192-token response)
/// with the lean head and checkpointing: peak allocated memory and time.
fn train_pass_at_scale(model: &mut CausalLm) -> Result<()> {
    let device = tch::Device::Cuda(0);
    let vocab = model.config().vocab_size;
    set_lean_head(true);
    model.set_gradient_checkpointing(true);
    let (p, r) = (512i64, 8192i64);
    let prompt = Tensor::randint(vocab, [1, p], (Kind::Int64, device));
    let response = Tensor::randint(vocab, [1, r], (Kind::Int64, device));
    let ones = |n| Tensor::ones([1, n], (Kind::Int64, device));
    tch::Cuda::synchronize(0);
    reset_peak_memory(device);
    let t = std::time::Instant::now();
    let out =
        model.response_logprobs(&prompt, &ones(p), &response, &ones(r), Entropy::Differentiable)?;
    let entropy = out.entropy.context("entropy")?;
    (out.logprobs.mean(Kind::Float) + entropy.mean(Kind::Float) * 0.01).backward();
    tch::Cuda::synchronize(0);
    let peak = peak_memory_bytes(device).context("no CUDA allocator statistics")?;
    println!(
        "{{\"scale\": \"train_pass\", \"model\": \"qwen3-1.7b-shape bf16\", \"prompt_tokens\": {p}, \"response_tokens\": {r}, \"peak_allocated_gb\": {:.3}, \"seconds\": {:.3}}}",
        peak as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The training pass on CUDA, plain and lean: gradients compared, peak memory of each.
fn lean_pass_on_cuda(model_dir: &str, seq_len: i64) -> Result<()> {
    let device = tch::Device::Cuda(0);
    let mut model = CausalLm::load(
        model_dir,
        LoadOptions { device: DeviceOpt::Cuda(0), ..Default::default() },
    )?;
    let vocab = model.config().vocab_size;
    tch::manual_seed(1);
    let (b, p) = (4, 16);
    let prompt = Tensor::randint(vocab, [b, p], (Kind::Int64, device));
    let response = Tensor::randint(vocab, [b, seq_len], (Kind::Int64, device));
    let ones = |n| Tensor::ones([b, n], (Kind::Int64, device));
    let mut grads = Vec::new();
    for lean in [false, true] {
        set_lean_head(lean);
        model.set_gradient_checkpointing(lean);
        for (_, w) in model.named_weights() {
            let mut g = w.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        tch::Cuda::synchronize(0);
        reset_peak_memory(device);
        let out = model.response_logprobs(
            &prompt,
            &ones(p),
            &response,
            &ones(seq_len),
            Entropy::Differentiable,
        )?;
        let entropy = out.entropy.context("entropy")?;
        let loss = out.logprobs.mean(Kind::Float) + entropy.mean(Kind::Float) * 0.01;
        loss.backward();
        tch::Cuda::synchronize(0);
        let peak = peak_memory_bytes(device).context("no CUDA allocator statistics")?;
        let mut named: Vec<(String, Tensor)> =
            model.named_weights().into_iter().map(|(n, w)| (n, w.grad().copy())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        grads.push(named);
        println!(
            "{{\"device\": \"cuda:0\", \"pass\": \"{}\", \"tokens\": {}, \"peak_allocated_bytes\": {peak}}}",
            if lean { "lean head + checkpointing" } else { "plain" },
            b * (p + seq_len)
        );
    }
    let mut worst = 0f64;
    for ((name, a), (_, b)) in grads[0].iter().zip(&grads[1]) {
        let scale = a.abs().max().double_value(&[]).max(1e-12);
        let rel = (a - b).abs().max().double_value(&[]) / scale;
        if rel > worst {
            worst = rel;
            println!(
                "{{\"largest_relative_grad_diff_so_far\": {rel:.3e}, \"weight\": \"{name}\"}}"
            );
        }
    }
    println!("{{\"lean_vs_plain_max_relative_grad_diff\": {worst:.3e}, \"ok\": {}}}", worst < 1e-4);
    set_lean_head(true);
    Ok(())
}
