//! Expert Region Reject Sampling (ICPO.md §2) and the assembly of a mixed group.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{check_finite, CoreError, Result};
use crate::schedule::shaped_reward;

/// ERRS settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrsConfig {
    /// Filter IEF trajectories by reward (false: the `−ERRS` ablation, every IEF trajectory
    /// replaces an on-policy one). Default true.
    pub enabled: bool,
    /// Acceptance threshold δ: accepted when `R ≥ δ`. Default 1.0 (only verified-correct ones).
    pub delta: f64,
}

impl Default for ErrsConfig {
    fn default() -> Self {
        ErrsConfig { enabled: true, delta: 1.0 }
    }
}

/// Where a member of the final group came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// An on-policy sample, by index among the group's on-policy samples.
    OnPolicy(usize),
    /// An accepted IEF sample, by index among the group's IEF samples.
    Ief(usize),
}

/// Outcome of ERRS for one group.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrsOutcome {
    /// Indices of the accepted IEF samples, ascending.
    pub accepted: Vec<usize>,
    /// `replaced[k]`: the on-policy sample that `accepted[k]` replaces (distinct).
    pub replaced: Vec<usize>,
    /// The group after replacement, `G` members in on-policy order, each with its origin.
    pub members: Vec<Origin>,
}

/// Applies ERRS to one group of `G = on_policy_rewards.len()` on-policy samples and
/// `ief_rewards.len()` IEF samples. Each accepted IEF sample replaces one on-policy sample, chosen
/// uniformly at random without replacement by `rng` (the step's seeded generator), so the group
/// keeps `G` members; when more IEF samples are accepted than there are on-policy ones, the first
/// `G` (in index order) are kept. Rejected IEF samples are dropped.
pub fn errs_select<R: Rng + ?Sized>(
    on_policy_rewards: &[f64],
    ief_rewards: &[f64],
    config: &ErrsConfig,
    rng: &mut R,
) -> Result<ErrsOutcome> {
    check_finite("on_policy_rewards", on_policy_rewards)?;
    check_finite("ief_rewards", ief_rewards)?;
    if !config.delta.is_finite() {
        return Err(CoreError::OutOfRange {
            field: "errs.delta",
            value: config.delta.to_string(),
            message: "must be finite",
        });
    }
    let g = on_policy_rewards.len();
    let mut accepted: Vec<usize> = (0..ief_rewards.len())
        .filter(|&j| !config.enabled || ief_rewards[j] >= config.delta)
        .collect();
    accepted.truncate(g);
    let replaced = rand::seq::index::sample(rng, g, accepted.len()).into_vec();
    let mut members: Vec<Origin> = (0..g).map(Origin::OnPolicy).collect();
    for (&j, &i) in accepted.iter().zip(&replaced) {
        members[i] = Origin::Ief(j);
    }
    Ok(ErrsOutcome { accepted, replaced, members })
}

/// The group's rewards after ERRS and shaping (§2–3), member by member: accepted IEF samples get
/// `R + α·γ` when shaping is on, on-policy samples keep `R`.
pub fn group_rewards(
    outcome: &ErrsOutcome,
    on_policy_rewards: &[f64],
    ief_rewards: &[f64],
    shaping: bool,
    alpha: f64,
    gamma: f64,
) -> Result<Vec<f64>> {
    outcome
        .members
        .iter()
        .map(|m| match *m {
            Origin::OnPolicy(i) => on_policy_rewards
                .get(i)
                .copied()
                .map(|r| shaped_reward(r, false, shaping, alpha, gamma)),
            Origin::Ief(j) => {
                ief_rewards.get(j).copied().map(|r| shaped_reward(r, true, shaping, alpha, gamma))
            }
        })
        .map(|r| {
            r.ok_or_else(|| {
                CoreError::Shape("ERRS outcome refers to a sample outside the rewards given".into())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn wrong_ief_samples_are_dropped_and_group_size_kept() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let on = [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let out = errs_select(&on, &[0.0], &ErrsConfig::default(), &mut rng).unwrap();
        assert!(out.accepted.is_empty() && out.replaced.is_empty());
        assert_eq!(out.members, (0..7).map(Origin::OnPolicy).collect::<Vec<_>>());

        let out = errs_select(&on, &[1.0, 0.0, 1.0], &ErrsConfig::default(), &mut rng).unwrap();
        assert_eq!(out.accepted, vec![0, 2]);
        assert_eq!(out.members.len(), 7);
        assert_ne!(out.replaced[0], out.replaced[1]);
        assert_eq!(out.members.iter().filter(|m| matches!(m, Origin::Ief(_))).count(), 2);
        assert_eq!(out.members[out.replaced[1]], Origin::Ief(2));
    }

    #[test]
    fn disabled_errs_keeps_every_ief_sample() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let cfg = ErrsConfig { enabled: false, ..Default::default() };
        let out = errs_select(&[1.0, 1.0, 0.0], &[0.0], &cfg, &mut rng).unwrap();
        assert_eq!(out.accepted, vec![0]);
    }

    #[test]
    fn replacement_is_uniform_and_seeded() {
        let on = [0.0; 4];
        let mut counts = [0usize; 4];
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..4000 {
            counts[errs_select(&on, &[1.0], &ErrsConfig::default(), &mut rng).unwrap().replaced
                [0]] += 1;
        }
        // Each slot ~1000 draws; 5 standard deviations is about ±137.
        assert!(counts.iter().all(|&c| (860..1140).contains(&c)), "{counts:?}");
        let a = errs_select(&on, &[1.0], &ErrsConfig::default(), &mut ChaCha8Rng::seed_from_u64(3))
            .unwrap();
        let b = errs_select(&on, &[1.0], &ErrsConfig::default(), &mut ChaCha8Rng::seed_from_u64(3))
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn more_accepted_than_group_truncates() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let out =
            errs_select(&[0.0, 0.0], &[1.0, 1.0, 1.0], &ErrsConfig::default(), &mut rng).unwrap();
        assert_eq!(out.accepted, vec![0, 1]);
        assert!(out.members.iter().all(|m| matches!(m, Origin::Ief(_))));
    }

    #[test]
    fn shaped_group_rewards() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let on = [0.0, 1.0, 0.0];
        let ief = [1.0];
        let out = errs_select(&on, &ief, &ErrsConfig::default(), &mut rng).unwrap();
        let r = group_rewards(&out, &on, &ief, true, 1.0, 0.5).unwrap();
        let i = out.replaced[0];
        assert_eq!(r[i], 1.5);
        let expect_rest: f64 = on.iter().enumerate().filter(|(k, _)| *k != i).map(|(_, v)| v).sum();
        assert_eq!(r.iter().sum::<f64>() - 1.5, expect_rest);
    }
}
