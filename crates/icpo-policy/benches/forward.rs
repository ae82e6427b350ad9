//! Forward pass and response log-prob op of a small random Qwen3 policy on the CPU.
//!
//! The model is the one the rollout and trainer benchmarks use (vocab 512, hidden 256, 4 layers,
//! 4 heads / 2 KV heads, head_dim 64), built in memory with a fixed seed.
//! Run: `cargo bench -p icpo-policy --bench forward`.

#![allow(clippy::unwrap_used, missing_docs)] // benches unwrap; criterion generates undocumented fns

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use icpo_policy::{CausalLm, LoadOptions, ModelConfig};
use tch::{Device, Kind, Tensor};

fn model() -> CausalLm {
    let config = serde_json::json!({
        "model_type": "qwen3", "vocab_size": 512, "hidden_size": 256, "intermediate_size": 768,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true
    });
    tch::manual_seed(0);
    let config = ModelConfig::from_json(config, Path::new("bench-config")).unwrap();
    CausalLm::new(config, LoadOptions::default()).unwrap()
}

fn bench(c: &mut Criterion) {
    tch::set_num_threads(2);
    let model = model();
    let (b, p, r) = (8i64, 24i64, 64i64);
    let ids = Tensor::randint(512, [b, p + r], (Kind::Int64, Device::Cpu));
    let mask = Tensor::ones([b, p + r], (Kind::Int64, Device::Cpu));
    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements((b * (p + r)) as u64));
    g.bench_function("forward_b8_t88_no_grad", |bench| {
        bench.iter(|| tch::no_grad(|| model.forward(&ids, Some(&mask)).unwrap()))
    });
    let prompt = ids.narrow(1, 0, p);
    let resp = ids.narrow(1, p, r);
    g.bench_function("response_logprobs_b8_p24_r64_no_grad", |bench| {
        bench.iter(|| {
            tch::no_grad(|| {
                model
                    .response_logprobs(
                        &prompt,
                        &mask.narrow(1, 0, p),
                        &resp,
                        &mask.narrow(1, p, r),
                        icpo_policy::Entropy::Skip,
                    )
                    .unwrap()
            })
        })
    });
    g.bench_function("response_logprobs_b8_p24_r64_backward", |bench| {
        bench.iter(|| {
            let out = model
                .response_logprobs(
                    &prompt,
                    &mask.narrow(1, 0, p),
                    &resp,
                    &mask.narrow(1, p, r),
                    icpo_policy::Entropy::Skip,
                )
                .unwrap();
            out.logprobs.sum(Kind::Float).backward();
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
