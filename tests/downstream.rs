//! A crate outside the workspace (`examples/downstream/`), set up only as the README's "Using
//! icpo-rs in your crate" says, builds, links libtorch_cuda for real, runs a GRPO step with a
//! reward of its own, and reports CUDA truthfully.
//!
//! It builds in its own target folder (`target/downstream`): its `LIBTORCH` is spelled through
//! its own `.cargo/config.toml`, and sharing the workspace's folder would make torch-sys rebuild
//! back and forth between the two spellings. The first build takes a few minutes.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // tests may unwrap

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn downstream_crate_builds_links_cuda_and_trains_a_step() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let crate_dir = root.join("examples/downstream");
    let target = root.join("target/downstream");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Only what the README's section sets may reach the build: not this workspace's
    // LIBTORCH (cargo passes its `[env]` to tests) nor anything else of the outer build.
    let mut build = Command::new(&cargo);
    build.current_dir(&crate_dir).args(["build", "--locked", "--quiet"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("LIBTORCH")
            || k.starts_with("CARGO_")
            || k.starts_with("DEP_")
            || k == "RUSTFLAGS"
        {
            build.env_remove(&k);
        }
    }
    build.env("CARGO_TARGET_DIR", &target);
    let o = build.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !stderr.contains("cannot update the lock file"),
        "examples/downstream/Cargo.lock is stale (a dependency of icpo changed): run `cargo update --workspace` in examples/downstream and commit it\n{stderr}"
    );
    assert!(o.status.success(), "the downstream crate does not build:\n{stderr}");
    let bin = target.join("debug/icpo-downstream");

    // torch_cuda is linked (tch references no CUDA symbol: without icpo-build it is dropped).
    let ldd = Command::new("ldd").arg(&bin).output().unwrap();
    let libs = String::from_utf8_lossy(&ldd.stdout);
    assert!(libs.contains("libtorch_cuda.so"), "libtorch_cuda not linked:\n{libs}");
    assert!(!libs.contains("not found"), "a library is not found at run time:\n{libs}");

    // Runs with nothing in the environment pointing at libtorch: the rpath finds it.
    let run = Command::new(&bin)
        .arg(root.join("testdata/tiny-qwen3"))
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("LIBTORCH")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&run.stdout).trim()).unwrap();
    assert_eq!(report["step"], 1, "{report}");
    assert!(report["actor/pg_loss"].as_f64().unwrap().is_finite(), "{report}");
    // Its reward: 1 or 0.1 per response, so the mean lies in [0.1, 1].
    let r = report["reward/mean"].as_f64().unwrap();
    assert!((0.1 - 1e-9..=1.0).contains(&r), "{report}");
    // CUDA is usable exactly when an NVIDIA driver is loaded on this machine.
    let driver = Path::new("/proc/driver/nvidia/version").exists();
    assert_eq!(report["cuda_available"], driver, "{report}");
}
