//! The reward interface the trainer uses.

use rayon::prelude::*;

use crate::{verify_detailed, VerifyConfig};

/// A verifiable reward: 1.0 for a correct response, 0.0 otherwise (or any score in between).
pub trait Reward: Send + Sync {
    /// The reward of one response to a problem whose reference answer is `gold`.
    fn score(&self, gold: &str, response: &str) -> f64;

    /// Rewards of many `(gold, response)` pairs, in order, computed in parallel.
    fn score_batch(&self, pairs: &[(&str, &str)]) -> Vec<f64> {
        pairs.par_iter().map(|(g, r)| self.score(g, r)).collect()
    }
}

/// The math verifier as a reward.
#[derive(Debug, Clone, Default)]
pub struct MathReward {
    /// Comparison settings.
    pub config: VerifyConfig,
}

impl Reward for MathReward {
    fn score(&self, gold: &str, response: &str) -> f64 {
        if verify_detailed(gold, response, &self.config).correct {
            1.0
        } else {
            0.0
        }
    }
}
