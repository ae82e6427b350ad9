//! `grpo_step_bench` under PyTorch's own launcher (`torchrun --no-python`, the `.venv`'s), on the
//! CPU development backend: 1 and 2 ranks train to the same weights (the sum of their squares,
//! relative 1e-6), with the optimiser state replicated or sharded (ZeRO-2), and rank 0 alone
//! prints the report.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // tests may unwrap

use std::path::PathBuf;
use std::process::Command;

fn report(nproc: usize, zero_stage: u8) -> serde_json::Value {
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
        .args(["--zero-stage", &zero_stage.to_string()])
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
    let one = report(1, 0);
    let a = one["weights_sq_norm"].as_f64().unwrap();
    assert!(a > 0.0);
    for zero in [0, 2] {
        let two = report(2, zero);
        assert_eq!((one["world_size"].as_u64(), two["world_size"].as_u64()), (Some(1), Some(2)));
        let b = two["weights_sq_norm"].as_f64().unwrap();
        assert!(((a - b) / a).abs() <= 1e-6, "ZeRO-{zero}: {a} vs {b}");
        // Sharded: rank 0 holds about half of the four f32 values per weight element.
        let bytes = two["optimizer_state_bytes"].as_f64().unwrap();
        let whole = one["optimizer_state_bytes"].as_f64().unwrap();
        if zero == 2 {
            assert!(
                (bytes / whole - 1.0).abs() < 0.01,
                "16 bytes per element over 2 ranks vs m + v: {bytes} vs {whole}"
            );
        }
    }
}
