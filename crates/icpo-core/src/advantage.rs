//! Group advantages of the GRPO family (ICPO.md §4), one value per trajectory.

use serde::{Deserialize, Serialize};

use crate::error::{check_finite, named_enum, CoreError, Result};

/// How a trajectory's advantage is derived from the rewards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AdvantageEstimator {
    /// `(R − mean_group) / (std_group + ε)`, std unbiased (verl's GRPO; the spec's default).
    #[default]
    #[serde(rename = "grpo")]
    Grpo,
    /// `R − mean_group` (Dr.GRPO; the spec's `norm_by_std = false`).
    #[serde(rename = "dr_grpo")]
    DrGrpo,
    /// `R − mean of the other members of the group` (leave-one-out baseline).
    #[serde(rename = "rloo")]
    Rloo,
    /// `(R − mean_batch) / (std_batch + ε)`: REINFORCE++ with outcome rewards, normalised over the
    /// whole batch rather than per group (std unbiased).
    #[serde(rename = "reinforce_plus_plus")]
    ReinforcePlusPlus,
}

named_enum!(AdvantageEstimator, "advantage estimator", [
    "grpo" => AdvantageEstimator::Grpo,
    "dr_grpo" => AdvantageEstimator::DrGrpo,
    "rloo" => AdvantageEstimator::Rloo,
    "reinforce_plus_plus" => AdvantageEstimator::ReinforcePlusPlus,
]);

/// The spec's ε in the std normalisation.
pub const DEFAULT_EPSILON: f64 = 1e-6;

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Unbiased sample standard deviation (0 for fewer than two values).
fn std_unbiased(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// Advantages for `rewards`, where `group_ids[i]` names the group (the prompt) of trajectory `i`.
/// Groups need not be contiguous.
///
/// A group whose rewards are all equal, including a group of one, gets 0 everywhere (verl gives a
/// lone sample its raw reward; the spec's group-relative definition gives it no signal).
pub fn group_advantages(
    rewards: &[f64],
    group_ids: &[usize],
    estimator: AdvantageEstimator,
    epsilon: f64,
) -> Result<Vec<f64>> {
    if rewards.len() != group_ids.len() {
        return Err(CoreError::Shape(format!(
            "rewards has {} entries, group_ids {}",
            rewards.len(),
            group_ids.len()
        )));
    }
    if !(epsilon.is_finite() && epsilon >= 0.0) {
        return Err(CoreError::OutOfRange {
            field: "epsilon",
            value: epsilon.to_string(),
            message: "must be finite and ≥ 0",
        });
    }
    check_finite("rewards", rewards)?;
    if estimator == AdvantageEstimator::ReinforcePlusPlus {
        if rewards.is_empty() {
            return Ok(Vec::new());
        }
        let (m, s) = (mean(rewards), std_unbiased(rewards));
        let all_equal = rewards.iter().all(|&r| r == rewards[0]);
        return Ok(rewards
            .iter()
            .map(|&r| if all_equal { 0.0 } else { (r - m) / (s + epsilon) })
            .collect());
    }
    // Members of each group, in order of first appearance.
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> =
        std::collections::BTreeMap::new();
    for (i, &g) in group_ids.iter().enumerate() {
        groups.entry(g).or_default().push(i);
    }
    let mut adv = vec![0.0; rewards.len()];
    for members in groups.values() {
        let r: Vec<f64> = members.iter().map(|&i| rewards[i]).collect();
        if r.iter().all(|&x| x == r[0]) {
            continue; // all equal: zero advantage
        }
        let n = r.len() as f64;
        let m = mean(&r);
        let s = std_unbiased(&r);
        for (k, &i) in members.iter().enumerate() {
            adv[i] = match estimator {
                AdvantageEstimator::Grpo => (r[k] - m) / (s + epsilon),
                AdvantageEstimator::Rloo => r[k] - (m * n - r[k]) / (n - 1.0),
                // REINFORCE++ returned above, before grouping.
                AdvantageEstimator::DrGrpo | AdvantageEstimator::ReinforcePlusPlus => r[k] - m,
            };
        }
    }
    Ok(adv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpo_by_hand() {
        // Group 0: rewards 1, 0, 0, 1 → mean 0.5, unbiased std sqrt(1/3).
        let a =
            group_advantages(&[1.0, 0.0, 0.0, 1.0], &[0, 0, 0, 0], AdvantageEstimator::Grpo, 1e-6)
                .unwrap();
        let s = (1.0f64 / 3.0).sqrt();
        for (x, want) in
            a.iter().zip([0.5 / (s + 1e-6), -0.5 / (s + 1e-6), -0.5 / (s + 1e-6), 0.5 / (s + 1e-6)])
        {
            assert!((x - want).abs() < 1e-12);
        }
    }

    #[test]
    fn equal_rewards_and_singletons_give_zero() {
        for est in [AdvantageEstimator::Grpo, AdvantageEstimator::DrGrpo, AdvantageEstimator::Rloo]
        {
            let a = group_advantages(&[1.0, 1.0, 0.3, 7.0], &[0, 0, 1, 2], est, 1e-6).unwrap();
            assert_eq!(a, vec![0.0; 4], "{est:?}");
        }
    }

    #[test]
    fn rloo_and_dr_grpo_by_hand() {
        let r = [1.0, 0.0, 2.0, 5.0, 5.0];
        let g = [7, 7, 7, 3, 3];
        let a = group_advantages(&r, &g, AdvantageEstimator::Rloo, 0.0).unwrap();
        assert_eq!(a, vec![1.0 - 1.0, 0.0 - 1.5, 2.0 - 0.5, 0.0, 0.0]);
        let a = group_advantages(&r, &g, AdvantageEstimator::DrGrpo, 0.0).unwrap();
        assert_eq!(a, vec![0.0, -1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn interleaved_groups() {
        let a =
            group_advantages(&[1.0, 5.0, 0.0, 5.0], &[0, 1, 0, 1], AdvantageEstimator::DrGrpo, 0.0)
                .unwrap();
        assert_eq!(a, vec![0.5, 0.0, -0.5, 0.0]);
    }

    #[test]
    fn reinforce_pp_normalises_over_the_batch() {
        let a = group_advantages(
            &[1.0, 0.0, 0.0, 0.0],
            &[0, 0, 1, 1],
            AdvantageEstimator::ReinforcePlusPlus,
            0.0,
        )
        .unwrap();
        let s = (0.75f64 / 3.0).sqrt();
        assert!((a[0] - 0.75 / s).abs() < 1e-12 && (a[2] + 0.25 / s).abs() < 1e-12);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(group_advantages(&[1.0], &[0, 1], AdvantageEstimator::Grpo, 1e-6).is_err());
        let e = group_advantages(&[1.0, f64::NAN], &[0, 0], AdvantageEstimator::Grpo, 1e-6)
            .unwrap_err();
        assert!(e.to_string().contains("rewards") && e.to_string().contains("[1]"));
        assert!(group_advantages(&[1.0], &[0], AdvantageEstimator::Grpo, -1.0).is_err());
        let e = "ppo".parse::<AdvantageEstimator>().unwrap_err().to_string();
        assert!(e.contains("grpo, dr_grpo, rloo, reinforce_plus_plus"), "{e}");
    }
}
