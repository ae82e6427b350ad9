//! Reward-shaping schedules γ(t) of ICPO.md §3.

use serde::{Deserialize, Serialize};

use crate::error::{named_enum, CoreError, Result};

/// How the expert bonus decays over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ShapingSchedule {
    /// `γ(t) = max(0, 1 − t/T)` (the spec's default).
    #[default]
    Linear,
    /// `γ(t) = (1 + cos(π · min(t, T)/T)) / 2`: 1 at the start, 0 at `T`, flat at both ends.
    Cosine,
    /// `γ(t) = 1` (the authors' released code in effect, where `t` never advanced).
    Constant,
    /// `γ(t) = exp(−t / τ)`, τ = `algorithm.shaping_decay_steps` (the `exp` method of the
    /// authors' `decay_by_step`, whose default τ is 12 steps).
    Exponential,
}

/// The authors' default time constant τ of the exponential schedule, in steps.
pub const DEFAULT_DECAY_STEPS: f64 = 12.0;

named_enum!(ShapingSchedule, "shaping schedule", [
    "linear" => ShapingSchedule::Linear,
    "cosine" => ShapingSchedule::Cosine,
    "constant" => ShapingSchedule::Constant,
    "exponential" => ShapingSchedule::Exponential,
]);

impl ShapingSchedule {
    /// γ at step `t` (0-based) of `total` training steps; `total` must be positive. The
    /// exponential schedule uses [`DEFAULT_DECAY_STEPS`]; see [`ShapingSchedule::gamma_with`].
    pub fn gamma(self, t: u64, total: u64) -> Result<f64> {
        self.gamma_with(t, total, DEFAULT_DECAY_STEPS)
    }

    /// [`ShapingSchedule::gamma`] with the exponential schedule's time constant `decay_steps`
    /// (τ > 0, in steps).
    pub fn gamma_with(self, t: u64, total: u64, decay_steps: f64) -> Result<f64> {
        if !(decay_steps > 0.0 && decay_steps.is_finite()) {
            return Err(CoreError::OutOfRange {
                field: "shaping_decay_steps",
                value: decay_steps.to_string(),
                message: "must be > 0",
            });
        }
        if total == 0 {
            return Err(CoreError::OutOfRange {
                field: "total_steps",
                value: "0".into(),
                message: "must be ≥ 1",
            });
        }
        let frac = t as f64 / total as f64;
        Ok(match self {
            ShapingSchedule::Linear => (1.0 - frac).max(0.0),
            ShapingSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * frac.min(1.0)).cos()),
            ShapingSchedule::Constant => 1.0,
            ShapingSchedule::Exponential => (-(t as f64) / decay_steps).exp(),
        })
    }
}

/// The reward of a trajectory after shaping (§3): accepted IEF trajectories whose verifier reward
/// is 1 (correct) get `α · γ(t)` added when shaping is on; every other trajectory keeps its
/// reward. With ERRS off a wrong IEF answer is accepted too, but gets no bonus (the authors'
/// reward gives it only to correct answers).
pub fn shaped_reward(
    reward: f64,
    accepted_ief: bool,
    shaping: bool,
    alpha: f64,
    gamma: f64,
) -> f64 {
    if accepted_ief && shaping && reward >= 1.0 {
        reward + alpha * gamma
    } else {
        reward
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_the_spec() {
        let s = ShapingSchedule::Linear;
        assert_eq!(s.gamma(0, 400).unwrap(), 1.0);
        assert_eq!(s.gamma(100, 400).unwrap(), 0.75);
        assert_eq!(s.gamma(400, 400).unwrap(), 0.0);
        assert_eq!(s.gamma(500, 400).unwrap(), 0.0);
        // Strictly decreasing step by step until T.
        let g: Vec<f64> = (0..=10).map(|t| s.gamma(t, 10).unwrap()).collect();
        assert!(g.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn cosine_and_constant() {
        let s = ShapingSchedule::Cosine;
        assert!((s.gamma(0, 10).unwrap() - 1.0).abs() < 1e-15);
        assert!((s.gamma(5, 10).unwrap() - 0.5).abs() < 1e-15);
        assert!(s.gamma(10, 10).unwrap().abs() < 1e-15);
        assert_eq!(s.gamma(20, 10).unwrap(), s.gamma(10, 10).unwrap());
        assert_eq!(ShapingSchedule::Constant.gamma(399, 400).unwrap(), 1.0);
        assert!(s.gamma(1, 0).is_err());
        // The authors' `decay_by_step(t, "exp", alpha = τ)`: exp(−t/τ).
        let e = ShapingSchedule::Exponential;
        assert_eq!(e.gamma(0, 400).unwrap(), 1.0);
        assert!((e.gamma(12, 400).unwrap() - (-1.0f64).exp()).abs() < 1e-15);
        assert!((e.gamma_with(30, 400, 60.0).unwrap() - (-0.5f64).exp()).abs() < 1e-15);
        assert!(e.gamma_with(1, 400, 0.0).is_err());
    }

    #[test]
    fn names_round_trip_and_unknown_lists_valid() {
        for s in [ShapingSchedule::Linear, ShapingSchedule::Cosine, ShapingSchedule::Constant] {
            assert_eq!(s.name().parse::<ShapingSchedule>().unwrap(), s);
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
        }
        let e = "exp".parse::<ShapingSchedule>().unwrap_err().to_string();
        assert!(e.contains("`exp`") && e.contains("linear, cosine, constant"), "{e}");
    }

    #[test]
    fn bonus_only_for_accepted_ief_with_shaping_on() {
        assert_eq!(shaped_reward(1.0, true, true, 1.0, 0.25), 1.25);
        assert_eq!(shaped_reward(1.0, false, true, 1.0, 0.25), 1.0);
        assert_eq!(shaped_reward(1.0, true, false, 1.0, 0.25), 1.0);
        // A wrong IEF answer (accepted with ERRS off) gets no bonus.
        assert_eq!(shaped_reward(0.0, true, true, 1.0, 0.25), 0.0);
        assert_eq!(shaped_reward(0.5, true, true, 1.0, 0.25), 0.5);
    }
}
