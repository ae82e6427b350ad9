//! icpo-rs: In-Context Steered Policy Optimization and the GRPO family for language models.
//!
//! This facade re-exports the workspace's crates under one name:
//! [`verify`] (answer checking), [`core`] (reference math), [`loss`] (tensor loss kernels),
//! [`policy`] (models and tokenizers), [`rollout`] (generation), [`train`] (the training loop),
//! [`dist`] (process groups for data-parallel training).

pub use icpo_core as core;
pub use icpo_dist as dist;
pub use icpo_loss as loss;
pub use icpo_policy as policy;
pub use icpo_rollout as rollout;
pub use icpo_train as train;
pub use icpo_verify as verify;
