//! Rollout sampling for RL on language models.
//!
//! [`generate`] runs a batch of prompts through a policy with a KV cache and continuous
//! batching: a pool of decode slots bounded by the tokens in flight, each slot refilled with the
//! next pending sequence as soon as its own ends; one prefill per distinct prompt admitted at
//! once, shared by its samples; per-sequence stopping (EOS ids, stop ids, stop strings,
//! `max_new_tokens`).
//! Sampling ([`SamplingParams`]: greedy, temperature, top-k, top-p, min-p) draws each sequence's
//! random numbers from its own seeded stream, and every token carries two log-probs: under the
//! sampling distribution and under the unmodified policy (what importance ratios need).
//! [`PromptBuilder`] makes plain prompts and the in-context prompts of Implicit Expert Forcing
//! from a [`DemoPool`], laid out by [`FewShot`] (inline or as turns) or a [`PromptFormat`] of
//! one's own.

mod counter;
mod engine;
mod error;
mod few_shot;
mod pool;
mod prompts;
mod sampling;

pub use counter::{counter_uniform, counter_uniforms, stream_key};
pub use engine::{
    generate, generate_streaming, generate_with_stats, DecodeModel, EngineConfig, EngineStats,
    FinishReason, OnFinished, Request, Rollout,
};
pub use error::{Result, RolloutError};
pub use few_shot::{DemoLayout, FewShot, PromptFormat, PromptParts};
pub use prompts::{Demo, DemoPool, PromptBuilder, PromptTemplate, DEFAULT_INSTRUCTION};
pub use sampling::{sample, sample_with, sampling_logprobs, Draw, SamplingParams};
