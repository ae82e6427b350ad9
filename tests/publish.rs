//! Every crate of the workspace packages for crates.io in dependency order (`cargo publish
//! --workspace --dry-run --no-verify`: manifests, metadata, include lists, dependencies
//! resolved against the packages before it). The verified dry run, which also builds each
//! package from its packaged sources, takes about 12 minutes on 2 cores:
//! `cargo publish --workspace --exclude icpo-verify-py --dry-run` (docs/architecture.md).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // tests may unwrap

use std::path::PathBuf;
use std::process::Command;

#[test]
fn every_crate_packages_for_crates_io_in_order() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .current_dir(&root)
        .args(["publish", "--workspace", "--exclude", "icpo-verify-py", "--dry-run", "--no-verify"])
        .args(["--allow-dirty", "--target-dir", "target/publish-check"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    // Each crate after the crates it depends on.
    let at = |name: &str| {
        log.find(&format!("Uploading {name} v"))
            .unwrap_or_else(|| panic!("{name} not uploaded in the dry run:\n{log}"))
    };
    let deps: [(&str, &[&str]); 7] = [
        ("icpo-dist", &["icpo-build"]),
        ("icpo-loss", &["icpo-core", "icpo-build"]),
        ("icpo-policy", &["icpo-build"]),
        ("icpo-rollout", &["icpo-policy"]),
        (
            "icpo-train",
            &["icpo-policy", "icpo-rollout", "icpo-loss", "icpo-core", "icpo-verify", "icpo-dist"],
        ),
        ("icpo", &["icpo-train", "icpo-verify"]),
        ("icpo-cli", &["icpo-train", "icpo-rollout", "icpo-verify"]),
    ];
    for (krate, before) in deps {
        for dep in before {
            assert!(at(dep) < at(krate), "{dep} before {krate}:\n{log}");
        }
    }
    // Nothing a published crate needs is left out of its package, and no test data goes in.
    for line in log.lines().filter(|l| l.contains("warning:")) {
        let harmless = line.contains("aborting upload")
            || (line.contains("ignoring")
                && line.contains("is not included in the published package"));
        assert!(harmless, "unexpected packaging warning: {line}");
    }
    let list = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["package", "--list", "--allow-dirty", "-p", "icpo-policy"])
        .output()
        .unwrap();
    let files = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    assert!(files.contains("csrc/fused.cpp") && files.contains("build.rs"), "{files}");
    assert!(!files.contains("testdata") && !files.contains("tests/"), "{files}");
}
