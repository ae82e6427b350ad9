//! Rollout sampling for RL on language models.
//!
//! This crate will hold the batched generation engine on `icpo-policy` (KV cache shared across a
//! prompt's group, stop handling, greedy / temperature / top-k / top-p / min-p sampling, per-token
//! log-probs under the sampling and the unmodified policy) and prompt building, plain and
//! in-context (Implicit Expert Forcing). Nothing is implemented yet (issue: "Rollout sampling").
