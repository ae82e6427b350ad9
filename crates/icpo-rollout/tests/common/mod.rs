//! The tiny checkpoint the engine tests decode with (made by testdata/make_tiny_models.py).

#![allow(dead_code, clippy::unwrap_used)] // each test file uses a part; tests may unwrap

use std::path::PathBuf;

use icpo_policy::{CausalLm, LoadOptions};

/// testdata/tiny-qwen3 in f32 on the CPU.
pub fn tiny_qwen3() -> CausalLm {
    CausalLm::load(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny-qwen3"),
        LoadOptions::default(),
    )
    .unwrap()
}
