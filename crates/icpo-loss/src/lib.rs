//! GRPO-family and ICPO loss kernels on batched `(batch, response_len)` libtorch tensors.
//!
//! [`policy_loss`] computes ICPO's mixed-policy loss (ICPO.md §5): PPO clip with clip-higher
//! bounds and dual clip on on-policy tokens, LUFFY's `−A·p/(p+λ)` on IEF tokens, the KL penalty
//! to the reference policy and the entropy term, aggregated by `loss_agg_mode`, with metrics
//! under `actor/`. It is differentiable w.r.t. the current log-probs and is tested, value and
//! gradient, against the plain reference in `icpo-core`, whose config and variant enums it uses.

mod agg;
mod error;
mod policy;

pub use agg::{aggregate, masked_mean};
pub use error::{LossError, Result};
pub use icpo_core::{KlEstimator, LossAggMode, LossConfig, PolicyLoss};
pub use policy::{kl_penalty, policy_loss, LossInputs, LossOutput};
