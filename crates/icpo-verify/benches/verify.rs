//! Single-threaded verification throughput over realistic responses: MATH train worked
//! solutions (each ends in `\boxed{}`) checked against their own answers and, for the negative
//! half, against the next problem's answer. `scripts/bench_math_verify.py` times Math-Verify on
//! the same pairs (docs/benchmarks.md). Run: `cargo bench -p icpo-verify`.

#![allow(clippy::unwrap_used, missing_docs)] // benches unwrap; criterion generates undocumented fns

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use icpo_verify::verify;

pub fn pairs(n: usize) -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/train/math_train.jsonl");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["answer"].is_string())
        .take(n + 1)
        .collect();
    (0..n)
        .map(|i| {
            let gold_row = if i % 2 == 0 { i } else { i + 1 };
            (
                rows[gold_row]["answer"].as_str().unwrap().to_string(),
                rows[i]["solution"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let pairs = pairs(1000);
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(pairs.len() as u64));
    g.bench_function("math_train_1000_pairs_single_thread", |b| {
        b.iter(|| pairs.iter().filter(|(gold, pred)| verify(gold, pred)).count())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
