//! `grpo_step_bench` under PyTorch's own launcher (`torchrun --no-python`, the `.venv`'s), on the
//! CPU development backend: 1 and 2 ranks train to the same weights (the sum of their squares,
//! relative 1e-6), and rank 0 alone prints the report.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // tests may unwrap

use std::path::PathBuf;
use std::process::Command;

fn report(nproc: usize) -> serde_json::Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // cargo test builds the examples beside the test binaries: target/<profile>/examples/.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("examples/grpo_step_bench");
    assert!(bin.exists(), "{} not built", bin.display());
    let o = Command::new(root.join(".venv/bin/torchrun"))
        .args(["--standalone", "--nproc-per-node", &nproc.to_string(), "--no-python"])
        .arg(&bin)
        .args(["--model"])
        .arg(root.join("testdata/tiny-qwen3"))
        .args(["--prompts", "4", "--samples", "4", "--prompt-len", "8", "--new-tokens", "12"])
        .args(["--steps", "2", "--threads", "1", "--seed", "3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    let reports: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(reports.len(), 1, "rank 0 alone reports: {stdout}");
    serde_json::from_str(reports[0]).unwrap()
}

#[test]
fn grpo_step_bench_trains_alike_on_one_and_two_ranks() {
    let (one, two) = (report(1), report(2));
    assert_eq!((one["world_size"].as_u64(), two["world_size"].as_u64()), (Some(1), Some(2)));
    let (a, b) =
        (one["weights_sq_norm"].as_f64().unwrap(), two["weights_sq_norm"].as_f64().unwrap());
    assert!(a > 0.0 && ((a - b) / a).abs() <= 1e-6, "{a} vs {b}");
}
