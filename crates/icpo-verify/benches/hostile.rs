//! The verifier's time budget on hostile inputs (issue: "every call within ≈ 10 ms whatever the
//! sizes"): each case of `tests/hostile` is verified a few times, directly and inside rayon's
//! 2 MiB worker threads through `MathReward::score_batch`, and the worst time per case is
//! printed; the last line is JSON. Exits non-zero when a case is scored correct or passes the
//! budget. Run: `cargo bench -p icpo-verify --bench hostile [-- --budget-ms 10]`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // a bench binary

#[path = "../tests/hostile/mod.rs"]
mod hostile;

use std::time::Instant;

use icpo_verify::{verify, MathReward, Reward};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let budget_ms: f64 = args
        .iter()
        .position(|a| a == "--budget-ms")
        .and_then(|i| args.get(i + 1))
        .map_or(10.0, |v| v.parse().expect("--budget-ms takes a number"));
    // More repetitions make a profile of one case (`--only NAME --repeat 200`).
    let repeat: usize = args
        .iter()
        .position(|a| a == "--repeat")
        .and_then(|i| args.get(i + 1))
        .map_or(3, |v| v.parse().expect("--repeat takes a count"));
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let reward = MathReward::default();
    // Warm up: the first call compiles the verifier's regexes (once per process).
    verify("1", "\\boxed{1}");
    let mut worst = (String::new(), 0.0f64);
    let mut failures = Vec::new();
    for (name, gold, pred) in hostile::cases(4_000) {
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let mut ms = 0.0f64;
        for _ in 0..repeat {
            let t = Instant::now();
            let correct = verify(&gold, &pred);
            ms = ms.max(t.elapsed().as_secs_f64() * 1e3);
            if correct {
                failures.push(format!("{name}: scored correct"));
            }
        }
        let t = Instant::now();
        let scores = reward.score_batch(&[(gold.as_str(), pred.as_str()); 4]);
        let batch_ms = t.elapsed().as_secs_f64() * 1e3;
        if scores.iter().any(|s| *s != 0.0) {
            failures.push(format!("{name}: score_batch scored it"));
        }
        println!("{name:<32} {ms:>8.3} ms   (score_batch of 4: {batch_ms:.3} ms)");
        if ms > budget_ms {
            failures.push(format!("{name}: {ms:.3} ms > {budget_ms} ms"));
        }
        if ms > worst.1 {
            worst = (name, ms);
        }
    }
    for f in &failures {
        eprintln!("FAIL {f}");
    }
    println!(
        "{{\"cases\": {}, \"worst_case\": {:?}, \"worst_ms\": {:.3}, \"budget_ms\": {budget_ms}, \"failures\": {}}}",
        hostile::cases(1).len(),
        worst.0,
        worst.1,
        failures.len()
    );
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
