//! The ICPO training loop.
//!
//! This crate will compose the policy, rollouts, verifier and loss kernels into one training
//! step (IEF rollouts, ERRS, annealed reward shaping, mixed-policy GRPO updates), with its TOML
//! config, data loading, checkpoints, metrics and evaluation. Nothing is implemented yet
//! (issue: "The ICPO trainer").
