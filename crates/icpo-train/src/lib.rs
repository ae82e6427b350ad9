//! The ICPO training loop (ICPO.md end to end).
//!
//! A [`Trainer`] step draws problems ([`Cursor`], seeded and resumable), builds plain and
//! in-context prompts, generates the on-policy group and the IEF rollouts (the demonstrations
//! really reach the sampler), scores them with a [`icpo_verify::Reward`], applies Expert Region
//! Reject Sampling and the annealed expert bonus γ(t), computes group advantages, scores IEF
//! tokens after the plain prompt, and updates the policy with the mixed-policy loss in
//! mini-batches with micro-batch accumulation ([`AdamW`], gradient clipping, PPO epochs).
//! A step is two public halves, [`Trainer::rollout`] (returning a mutable [`StepBatch`]) and
//! [`Trainer::update`]. GRPO is the same loop with `algorithm.ief = false`. [`TrainConfig`] is one TOML file with
//! the paper's values as defaults; checkpoints are atomic and resumable bit for bit.

mod batch;
mod checkpoint;
mod config;
mod config_load;
mod data;
mod data_parallel;
mod driver;
mod error;
mod eval;
mod fit;
mod groups;
mod optim;
mod optim_ckpt;
mod optimizer;
mod resume_check;
mod rundir;
mod scoring;
mod sft;
mod shard_ckpt;
mod task_reward;
mod trainer;
mod update;
mod zero;

pub use batch::Trajectory;
pub use checkpoint::{append_jsonl, resolve_latest, TrainerState};
pub use config::{
    AlgorithmSection, DataSection, LrSchedule, ModelSection, OptimSection, RolloutSection,
    TrainConfig, TrainerSection,
};
pub use data::{load_problems, load_verl_parquet, Cursor, Problem};
pub use driver::PeriodicEval;
pub use error::{Result, TrainError};
pub use eval::{evaluate, protocol_samples, write_responses, EvalConfig, EvalResult, Graded};
pub use fit::{Control, JsonlSink, MetricsSink};
pub use groups::Advantages;
pub use icpo_policy::peak_rss_bytes;
pub use optim::AdamW;
pub use resume_check::{check_config, ConfigChange, OPERATIONAL_KEYS};
pub use rundir::{run_outputs, RunDir, StartMode, LOCK_FILE};
pub use sft::supervised_step;
pub use shard_ckpt::{ShardIndex, WeightEntry, SHARDED_FORMAT};
pub use task_reward::{RewardErrors, RewardInput, RewardOutput, TaskReward, WeightedRewards};
pub use trainer::{Metrics, Scorer, Trainer};
pub use update::StepBatch;
pub use zero::ZeroAdamW;
