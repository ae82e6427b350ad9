//! Reference implementations of the GRPO family and ICPO on plain slices (no libtorch).
//!
//! Each function transcribes a formula of the project's specification (`ICPO.md`) as plainly as
//! possible, loops included: group advantages (GRPO, Dr.GRPO, RLOO, REINFORCE++), the
//! reward-shaping schedules γ(t), Expert Region Reject Sampling and the per-token mixed-policy
//! loss with its analytic gradient. `icpo-loss` runs the same maths on batched tensors and is
//! tested against this crate; the trainer uses the advantage, schedule and ERRS code directly.

mod advantage;
mod error;
mod errs;
mod loss;
mod schedule;

pub use advantage::{group_advantages, AdvantageEstimator, DEFAULT_EPSILON};
pub use error::{CoreError, Result};
pub use errs::{errs_select, group_rewards, ErrsConfig, ErrsOutcome, Origin};
pub use loss::{
    agg_weights, aggregate, ief_token, kl_token, policy_loss, ppo_token, KlEstimator, LossAggMode,
    LossConfig, LossInput, LossOutput, PolicyLoss, KL_CLAMP, LOG_RATIO_CLAMP,
};
pub use schedule::{shaped_reward, ShapingSchedule, DEFAULT_DECAY_STEPS};
