//! Fixtures shared by the integration tests: the tiny checkpoints of testdata/ and the
//! transformers outputs beside them (made by testdata/make_tiny_models.py).

#![allow(dead_code, clippy::unwrap_used)] // each test file uses a part; tests may unwrap

use std::collections::HashMap;
use std::path::PathBuf;

use icpo_policy::{CausalLm, Entropy, TokenLogprobs};
use tch::{Kind, Tensor};

/// The tiny checkpoints, one per family.
pub const MODELS: [&str; 3] = ["tiny-qwen2", "tiny-qwen3", "tiny-llama"];

/// A tiny checkpoint's directory.
pub fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

/// transformers' reference outputs for a checkpoint.
pub fn golden(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir(name).join("golden.safetensors")).unwrap().into_iter().collect()
}

/// Largest absolute difference of two same-shaped tensors, in f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// [`CausalLm::response_logprobs`] of the golden response batch (`resp_*`), whose log-probs and
/// entropies transformers computed as `resp_logprobs` and `resp_entropy`.
pub fn golden_logprobs(
    model: &CausalLm,
    g: &HashMap<String, Tensor>,
    entropy: Entropy,
) -> TokenLogprobs {
    model
        .response_logprobs(
            &g["resp_prompt_ids"],
            &g["resp_prompt_mask"],
            &g["resp_ids"],
            &g["resp_mask"],
            entropy,
        )
        .unwrap()
}
