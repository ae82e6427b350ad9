//! Runs the Python package's pytest suite (tests/test_icpo_verify.py) through
//! `scripts/test-python`, which builds the wheel with maturin and installs it, with maturin and
//! pytest, into the project's `.venv` (from the package registry, on first use). The Rust
//! API's verdicts on Math-Verify's labelled cases are handed over so the suite can check that
//! the Python API gives the same.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::path::PathBuf;
use std::process::Command;

#[test]
fn python_suite_passes() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cases = std::fs::read_to_string(root.join("../shared/conformance/math_verify_cases.jsonl"))
        .expect("../shared/conformance/math_verify_cases.jsonl");
    let verdicts: Vec<bool> = cases
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let c: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut cfg = icpo_verify::VerifyConfig::default();
            if let Some(p) = c["config"]["precision"].as_u64() {
                cfg.precision = p as u32;
            }
            icpo_verify::verify_detailed(
                c["gold"].as_str().unwrap(),
                c["pred"].as_str().unwrap(),
                &cfg,
            )
            .correct
        })
        .collect();
    let out = root.join("target/pywheel");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("rust_verdicts.json");
    std::fs::write(&path, serde_json::to_string(&verdicts).unwrap()).unwrap();
    let status = Command::new("bash")
        .arg(root.join("scripts/test-python"))
        .env("ICPO_RUST_VERDICTS", &path)
        .status()
        .expect("bash scripts/test-python");
    assert!(status.success(), "the Python suite failed (output above)");
}
