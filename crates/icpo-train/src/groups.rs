//! Phase 4 of a training step: each prompt's group formed from its rollouts — ERRS's
//! acceptance of IEF rollouts, expert-bonus shaping with this step's γ(t) — and the group
//! advantages (built-in estimators or the user's [`crate::Advantages`]).

use icpo_core::{errs_select, group_advantages, group_rewards, Origin};
use icpo_rollout::Rollout;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A custom advantage estimator (verl's registry of estimators, as a trait): the advantage of
/// each trajectory of a step from the shaped rewards and group ids of all of them (after ERRS,
/// grouped by prompt). [`crate::Trainer::set_advantages`] puts one in place of `algorithm.advantage`.
pub trait Advantages: Send + Sync {
    /// One finite advantage per reward.
    fn advantages(
        &self,
        rewards: &[f64],
        groups: &[usize],
    ) -> std::result::Result<Vec<f64>, String>;
}

impl<F> Advantages for F
where
    F: Fn(&[f64], &[usize]) -> std::result::Result<Vec<f64>, String> + Send + Sync,
{
    fn advantages(
        &self,
        rewards: &[f64],
        groups: &[usize],
    ) -> std::result::Result<Vec<f64>, String> {
        self(rewards, groups)
    }
}

use crate::batch::Trajectory;
use crate::error::{Result, TrainError};
use crate::trainer::{seed_for, Trainer};

impl Trainer {
    /// The step's trajectories from the rollouts of prompts `plain` (this rank's, the first
    /// being global prompt `first`): `on` and `on_r` hold `group_size` on-policy rollouts and
    /// rewards per prompt, `ief` and `ief_r` the IEF ones. Returns the trajectories with
    /// shaped rewards and advantages, the IEF rollouts ERRS accepted, and γ(t).
    pub(crate) fn form_groups(
        &self,
        plain: &[Vec<i64>],
        on: &[Rollout],
        ief: &[Rollout],
        on_r: &[f64],
        ief_r: &[f64],
        first: usize,
    ) -> Result<(Vec<Trajectory>, usize, f64)> {
        let g = self.cfg.rollout.group_size;
        let n_off = if self.cfg.algorithm.ief { self.cfg.rollout.ief_samples } else { 0 };
        let gamma = self.cfg.algorithm.shaping_schedule.gamma_with(
            self.step,
            self.cfg.trainer.total_steps,
            self.cfg.algorithm.shaping_decay_steps,
        )?;
        let mut trajs: Vec<Trajectory> = Vec::new();
        let mut accepted = 0usize;
        for (p, prompt) in plain.iter().enumerate() {
            let on_p: Vec<f64> = on_r[p * g..(p + 1) * g].to_vec();
            let ief_p: Vec<f64> = ief_r[p * n_off..(p + 1) * n_off].to_vec();
            // ERRS draws from the group's own stream, keyed by its global index.
            let mut group_rng =
                ChaCha8Rng::seed_from_u64(seed_for(self.cfg.trainer.seed, self.step, 3));
            group_rng.set_stream((first + p) as u64);
            let outcome = errs_select(&on_p, &ief_p, &self.cfg.algorithm.errs, &mut group_rng)?;
            accepted += outcome.accepted.len();
            let shaped = group_rewards(
                &outcome,
                &on_p,
                &ief_p,
                self.cfg.algorithm.shaping,
                self.cfg.algorithm.shaping_alpha,
                gamma,
            )?;
            for (member, s) in outcome.members.iter().zip(shaped) {
                let (r, is_ief, reward) = match *member {
                    Origin::OnPolicy(i) => (&on[p * g + i], false, on_p[i]),
                    Origin::Ief(j) => (&ief[p * n_off + j], true, ief_p[j]),
                };
                trajs.push(Trajectory {
                    group: first + p,
                    prompt: prompt.clone(),
                    response: r.tokens.clone(),
                    is_ief,
                    reward,
                    shaped_reward: s,
                    advantage: 0.0,
                    old_logp: vec![0.0; r.tokens.len()],
                    ref_logp: vec![0.0; r.tokens.len()],
                });
            }
        }
        let shaped: Vec<f64> = trajs.iter().map(|t| t.shaped_reward).collect();
        let groups: Vec<usize> = trajs.iter().map(|t| t.group).collect();
        let adv = match &self.advantages {
            None => group_advantages(
                &shaped,
                &groups,
                self.cfg.algorithm.advantage,
                self.cfg.algorithm.epsilon,
            )?,
            Some(custom) => {
                let adv = custom
                    .advantages(&shaped, &groups)
                    .map_err(|e| TrainError::Aborted(format!("the advantage estimator: {e}")))?;
                if adv.len() != shaped.len() || adv.iter().any(|a| !a.is_finite()) {
                    return Err(TrainError::Aborted(format!(
                        "the advantage estimator returned {} values ({} finite) for {} trajectories",
                        adv.len(),
                        adv.iter().filter(|a| a.is_finite()).count(),
                        shaped.len()
                    )));
                }
                adv
            }
        };
        for (t, a) in trajs.iter_mut().zip(adv) {
            t.advantage = a;
        }

        Ok((trajs, accepted, gamma))
    }
}
