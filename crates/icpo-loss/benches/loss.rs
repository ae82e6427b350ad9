//! Loss forward + backward at B = 64, T = 2,048 (f32, CPU, 2 threads).
//! Run: `cargo bench -p icpo-loss`.

#![allow(clippy::unwrap_used, missing_docs)] // benches unwrap; criterion generates undocumented fns

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use icpo_loss::{policy_loss, LossConfig, LossInputs};
use tch::{Device, Kind, Tensor};

fn bench(c: &mut Criterion) {
    tch::set_num_threads(2);
    tch::manual_seed(0);
    let (b, t) = (64i64, 2048i64);
    let opts = (Kind::Float, Device::Cpu);
    let base = Tensor::rand([b, t], opts).f_mul_scalar(-3.0).unwrap();
    let old = &base + Tensor::randn([b, t], opts) * 0.1;
    let refp = &base + Tensor::randn([b, t], opts) * 0.1;
    let adv = Tensor::randn([b], opts);
    let lens = Tensor::randint_low(1, t + 1, [b, 1], (Kind::Int64, Device::Cpu));
    let mask = Tensor::arange(t, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .lt_tensor(&lens)
        .to_kind(Kind::Float);
    let ief = Tensor::arange(b, (Kind::Int64, Device::Cpu)).remainder(8).eq(7);
    let cfg = LossConfig::default();
    let mut g = c.benchmark_group("loss");
    g.throughput(Throughput::Elements((b * t) as u64));
    g.bench_function("policy_loss_fwd_bwd_b64_t2048", |bench| {
        bench.iter(|| {
            let logp = base.detach().set_requires_grad(true);
            let inputs = LossInputs {
                logp: &logp,
                old_logp: &old,
                ref_logp: Some(&refp),
                entropy: None,
                advantages: &adv,
                response_mask: &mask,
                is_ief: &ief,
            };
            let out = policy_loss(&inputs, &cfg).unwrap();
            out.loss.backward();
            logp.grad()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
