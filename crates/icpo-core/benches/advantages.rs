//! Group advantages for 1,024 groups × 8 samples. Run: `cargo bench -p icpo-core`.

#![allow(clippy::unwrap_used, missing_docs)] // benches unwrap; criterion generates undocumented fns

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use icpo_core::{group_advantages, AdvantageEstimator};
use rand::{Rng, SeedableRng};

fn bench(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (groups, size) = (1024usize, 8usize);
    let rewards: Vec<f64> =
        (0..groups * size).map(|_| f64::from(u8::from(rng.gen_bool(0.4)))).collect();
    let ids: Vec<usize> = (0..groups * size).map(|i| i / size).collect();
    let mut g = c.benchmark_group("advantages");
    g.throughput(Throughput::Elements((groups * size) as u64));
    for est in
        [AdvantageEstimator::Grpo, AdvantageEstimator::Rloo, AdvantageEstimator::ReinforcePlusPlus]
    {
        g.bench_function(format!("{}_1024x8", est.name()), |b| {
            b.iter(|| group_advantages(&rewards, &ids, est, 1e-6).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
