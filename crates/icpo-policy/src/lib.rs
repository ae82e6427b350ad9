//! Policy models for RL on language models, on libtorch through `tch`.
//!
//! Qwen2, Qwen3 and Llama checkpoints are loaded from Hugging Face directories (`config.json`,
//! `model.safetensors` or a sharded index, `tokenizer.json`) and saved back in the same layout.
//! A [`CausalLm`] gives logits for left-padded batches, incremental decoding with a [`KvCache`]
//! for the rollout engine, and [`CausalLm::response_logprobs`], the per-token log-probabilities
//! the trainer differentiates. [`Tokenizer`] wraps `tokenizers` and renders chat templates.
//!
//! ```no_run
//! use icpo_policy::{CausalLm, LoadOptions, Tokenizer, ChatMessage};
//! # fn main() -> icpo_policy::Result<()> {
//! let model = CausalLm::load("Qwen3-1.7B", LoadOptions::default())?;
//! let tok = Tokenizer::from_dir("Qwen3-1.7B")?;
//! let prompt = tok.apply_chat_template(&[ChatMessage::new("user", "1+1?")], true)?;
//! let ids = tok.encode(&prompt, false)?;
//! let logits = model.forward(&tch::Tensor::from_slice(&ids).unsqueeze(0), None)?;
//! # Ok(()) }
//! ```

mod atomic;
mod attention;
mod cache;
mod config;
mod error;
mod fused;
mod jsonl;
mod layer;
mod logprobs;
mod memory;
mod model;
mod onednn;
mod options;
mod recompute;
mod rope;
mod shapes;
mod tokenizer;
mod weights;

pub use atomic::{sync_dir, write_atomic};
pub use attention::{decode_products_enabled, set_decode_products};
pub use cache::KvCache;
pub use config::{Architecture, DType, ModelConfig, RopeScaling};
pub use error::{PolicyError, Result};
pub use fused::{fused_kernels_enabled, lean_head_enabled, set_fused_kernels, set_lean_head};
pub use jsonl::{parse_jsonl, read_jsonl, JsonlLine};
pub use logprobs::{Entropy, TokenLogprobs};
pub use memory::{peak_memory_bytes, peak_rss_bytes, reset_peak_memory};
pub use model::CausalLm;
pub use onednn::{onednn_decoding_enabled, set_onednn_decoding};
pub use options::{DeviceOpt, LoadOptions};
pub use tokenizer::{
    render_chat_template, render_chat_template_with, ChatMessage, TemplateArgs, Tokenizer,
};
pub use weights::{load_safetensors, save_safetensors, DEFAULT_MAX_SHARD_BYTES};
