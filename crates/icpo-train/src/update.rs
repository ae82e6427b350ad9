//! The second half of a training step: what [`Trainer::rollout`] sampled and scored
//! ([`StepBatch`], public and mutable) goes through π_old/reference log-probs and the
//! mini-batch updates, and the step's metrics are made.

use std::collections::BTreeMap;
use std::time::Instant;

use icpo_loss::{policy_loss, LossInputs};
use icpo_policy::{peak_memory_bytes, CausalLm};
use icpo_rollout::{FinishReason, Rollout};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::batch::{pad, unpad, Trajectory};
use crate::data_parallel::sum_maps;
use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use crate::trainer::{micro_batch_weight, Metrics, Trainer};

/// Per-token log-probs of each trajectory of a micro-batch, when computed.
type RowLogprobs = Option<Vec<Vec<f32>>>;

/// One step's samples before its update, from [`Trainer::rollout`]. Everything public may be
/// inspected or changed before [`Trainer::update`]: the update trains on `trajectories` as they
/// are then (their advantages, rewards, tokens); `on_policy` and `ief` feed the step's metrics.
#[derive(Debug)]
pub struct StepBatch {
    /// The step these samples belong to.
    pub step: u64,
    /// Problems (prompt groups) in the step.
    pub prompts: usize,
    /// What the update trains on: every group's members after ERRS, with verifier reward,
    /// shaped reward and advantage; π_old/reference log-probs are filled by the update.
    pub trajectories: Vec<Trajectory>,
    /// Every on-policy rollout (prompt-major) with its verifier reward.
    pub on_policy: Vec<(Rollout, f64)>,
    /// Every IEF rollout (prompt-major) with its verifier reward, accepted or not.
    pub ief: Vec<(Rollout, f64)>,
    /// γ(t) of the expert-bonus shaping at this step.
    pub gamma: f64,
    /// IEF rollouts ERRS accepted.
    pub accepted: usize,
    /// Metrics the rollout half recorded (namespaced keys); the update adds its own.
    pub metrics: Metrics,
    /// The step's random stream, continued by the update's shuffles.
    pub(crate) rng: ChaCha8Rng,
    pub(crate) generation_s: f64,
    pub(crate) scoring_s: f64,
    pub(crate) started: Instant,
}

impl Trainer {
    /// The second half of a step (see [`Trainer::rollout`]): π_old and reference log-probs
    /// where needed, the mini-batch updates with micro-batch accumulation over
    /// `batch.trajectories`, and the step's metrics; the step count advances. Its phases are
    /// the crate's functions `global_view` (where this rank's trajectories sit in the whole
    /// step), `logprob_passes`, `optimise` and `step_metrics`.
    pub fn update(&mut self, batch: StepBatch) -> Result<Metrics> {
        if batch.step != self.step {
            return Err(TrainError::Aborted(format!(
                "a batch of step {} given to update at step {}: each rollout goes to update once, in order",
                batch.step, self.step
            )));
        }
        if self.cfg.optim.zero_stage != self.optim.stage() {
            // The state's layout is fixed when the trainer is built (`Trainer.cfg` is public).
            return Err(TrainError::Config {
                key: "optim.zero_stage".into(),
                message: format!(
                    "changed from {} to {} after the trainer was built; the optimiser state is laid out then: build a new trainer (a checkpoint resumes under either stage)",
                    self.optim.stage(),
                    self.cfg.optim.zero_stage
                ),
            });
        }
        let t_train = Instant::now();
        let mut batch = batch;
        let mut trajs = std::mem::take(&mut batch.trajectories);
        let view = self.global_view(&trajs)?;
        // With one update per step, π_old is the current policy at that update: its log-probs
        // are the detached ones of the update's own forward pass (as verl and TRL do), so the
        // separate pass is skipped. The reference pass is still needed when β > 0.
        let mini = self.cfg.optim.mini_batch_prompts * self.cfg.rollout.group_size;
        let single_update = self.cfg.optim.ppo_epochs == 1 && view.lens.len() <= mini;
        // Phase 5: old and reference log-probs, IEF tokens after the plain prompt.
        self.logprob_passes(&mut trajs, !single_update)?;
        // Phase 6: mini-batch updates with micro-batch accumulation, PPO epochs.
        let optimised = self.optimise(&trajs, &view, single_update, &mut batch.rng)?;
        let train_s = t_train.elapsed().as_secs_f64();
        // Phase 7: metrics.
        let m = self.step_metrics(batch, &trajs, optimised, view.lens.len(), train_s)?;
        self.step += 1;
        Ok(m)
    }

    /// Where this rank's trajectories sit in the whole step's: every rank's response lengths in
    /// global order, trajectory counts and micro-batch sizes (collectives when data parallel).
    fn global_view(&self, trajs: &[Trajectory]) -> Result<GlobalView> {
        let group = self.group.as_ref();
        let micro = self.cfg.optim.micro_batch_size;
        let local_lens: Vec<f64> = trajs.iter().map(|t| t.response.len() as f64).collect();
        // Each rank's [trajectory count, micro-batch size] (the latter may differ per rank).
        let (lens, ranks) = if group.world_size() == 1 {
            (local_lens, vec![[trajs.len(), micro]])
        } else {
            let counts =
                group.all_gather_f64("trajectory counts", &[trajs.len() as f64, micro as f64])?;
            let ranks: Vec<[usize; 2]> =
                counts.iter().map(|c| [c[0] as usize, c[1] as usize]).collect();
            (group.all_gather_f64("trajectory lengths", &local_lens)?.concat(), ranks)
        };
        let offset: usize = ranks[..group.rank()].iter().map(|r| r[0]).sum();
        Ok(GlobalView { lens, ranks, offset })
    }

    /// Fills π_old (when `need_old`) and reference (when β > 0) log-probs of `trajs`, a
    /// micro-batch at a time, groups side by side.
    fn logprob_passes(&self, trajs: &mut [Trajectory], need_old_pass: bool) -> Result<()> {
        let micro = self.cfg.optim.micro_batch_size;
        let need_ref_pass = self.reference.is_some() && self.cfg.loss.kl_coef > 0.0;
        // Trajectories start with zero old/reference log-probs: only the passes needed run.
        let passes = if need_old_pass || need_ref_pass { trajs.len() } else { 0 };
        let mut by_group: Vec<usize> = (0..passes).collect();
        by_group.sort_by_key(|&i| (trajs[i].group, i));
        for chunk in by_group.chunks(micro) {
            let refs: Vec<&Trajectory> = chunk.iter().map(|&i| &trajs[i]).collect();
            let b = pad(&refs, self.policy.device())?;
            let (old, reflp) = tch::no_grad(|| -> Result<(RowLogprobs, RowLogprobs)> {
                let pass = |model: &CausalLm| -> Result<Vec<Vec<f32>>> {
                    let lp = b.logprobs(model, icpo_policy::Entropy::Skip)?;
                    unpad(&lp.logprobs, &refs)
                };
                let o = if need_old_pass { Some(pass(&self.policy)?) } else { None };
                let r = match &self.reference {
                    Some(reference) if need_ref_pass => Some(pass(reference)?),
                    _ => None,
                };
                Ok((o, r))
            })?;
            for (k, &i) in chunk.iter().enumerate() {
                if let Some(o) = &old {
                    trajs[i].old_logp = o[k].clone();
                }
                if let Some(r) = &reflp {
                    trajs[i].ref_logp = r[k].clone();
                }
            }
        }

        Ok(())
    }

    /// The mini-batch updates of one step: the same global mini-batches as one process would
    /// form (from `view`), this rank's members in micro-batches weighted by global token
    /// counts, gradients reduced across ranks, one optimiser step each (skipped when
    /// non-finite, aborting after `trainer.max_nonfinite_in_a_row`).
    fn optimise(
        &mut self,
        trajs: &[Trajectory],
        view: &GlobalView,
        single_update: bool,
        rng: &mut ChaCha8Rng,
    ) -> Result<Optimised> {
        let cfg = self.cfg.clone();
        let micro = cfg.optim.micro_batch_size;
        let mini = cfg.optim.mini_batch_prompts * cfg.rollout.group_size;
        let group = self.group.clone();
        let world = group.world_size();
        let (all_lens, ranks, offset) = (&view.lens, &view.ranks, view.offset);
        let n_global = all_lens.len();
        // The entropy bonus needs its gradient; otherwise entropy is only a metric.
        let entropy_mode = if cfg.loss.entropy_coef > 0.0 {
            icpo_policy::Entropy::Differentiable
        } else {
            icpo_policy::Entropy::Metric
        };
        // Dr.GRPO's constant defaults to the longest response allowed.
        let mut loss_cfg = cfg.loss;
        if loss_cfg.norm_length == 0 {
            loss_cfg.norm_length = cfg.rollout.max_new_tokens;
        }
        let params = self.policy.named_weights().into_iter().collect::<BTreeMap<_, _>>();
        let updates_per_step = (cfg.optim.ppo_epochs * n_global.div_ceil(mini)) as u64;
        let per_micro_batch = self.optim.reduces_per_micro_batch();
        let total_updates = updates_per_step * cfg.trainer.total_steps;
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut n_updates = 0.0;
        let mut skipped = 0.0;
        for _ in 0..cfg.optim.ppo_epochs {
            let mut order: Vec<usize> = (0..n_global).collect();
            order.shuffle(rng);
            for global_mb in order.chunks(mini) {
                let n_micro = global_mb.len().div_ceil(micro);
                let mb_tokens: usize = global_mb.iter().map(|&i| all_lens[i] as usize).sum();
                let mb_seqs = global_mb.iter().filter(|&&i| all_lens[i] > 0.0).count();
                let mb: Vec<usize> = global_mb
                    .iter()
                    .filter(|&&i| (offset..offset + trajs.len()).contains(&i))
                    .map(|&i| i - offset)
                    .collect();
                let mut mb_metrics: BTreeMap<String, f64> = BTreeMap::new();
                let mut finite = true;
                let local: Vec<&[usize]> = mb.chunks(micro).collect();
                // ZeRO-2 reduces after every micro-batch: every rank runs as many rounds as the
                // rank with the most micro-batches in this mini-batch (empty ones add nothing).
                let rounds = if per_micro_batch {
                    let mut starts = 0;
                    ranks
                        .iter()
                        .map(|&[n, rank_micro]| {
                            let (lo, hi) = (starts, starts + n);
                            starts = hi;
                            global_mb
                                .iter()
                                .filter(|&&i| (lo..hi).contains(&i))
                                .count()
                                .div_ceil(rank_micro.max(1))
                        })
                        .max()
                        .unwrap_or(0)
                } else {
                    local.len()
                };
                for round in 0..rounds {
                    let Some(mc) = local.get(round).filter(|_| finite) else {
                        self.optim.accumulate(&params, group.as_ref())?;
                        continue;
                    };
                    // A group's rows side by side: their shared prompt is computed once.
                    let mut mc = mc.to_vec();
                    mc.sort_by_key(|&i| (trajs[i].group, i));
                    let refs: Vec<&Trajectory> = mc.iter().map(|&i| &trajs[i]).collect();
                    let b = pad(&refs, self.policy.device())?;
                    let out = b.logprobs(&self.policy, entropy_mode)?;
                    let entropy = out.entropy.as_ref();
                    let detached = out.logprobs.f_detach()?;
                    let inputs = LossInputs {
                        logp: &out.logprobs,
                        old_logp: if single_update { &detached } else { &b.old_logp },
                        ref_logp: Some(&b.ref_logp),
                        entropy,
                        advantages: &b.advantages,
                        response_mask: &b.response_mask,
                        is_ief: &b.is_ief,
                    };
                    let loss = match policy_loss(&inputs, &loss_cfg) {
                        Ok(l) => l,
                        // NaN/∞ log-probs from the policy: a non-finite update, not a crash.
                        Err(icpo_loss::LossError::NonFinite(_)) => {
                            finite = false;
                            self.optim.accumulate(&params, group.as_ref())?;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let w = micro_batch_weight(
                        loss_cfg.loss_agg_mode,
                        (b.tokens, b.nonempty),
                        (mb_tokens, mb_seqs),
                        n_micro,
                    );
                    let value = loss.loss.f_double_value(&[])?;
                    if !value.is_finite() {
                        finite = false;
                        self.optim.accumulate(&params, group.as_ref())?;
                        continue;
                    }
                    loss.loss.f_mul_scalar(w)?.backward();
                    // This micro-batch's gradient joins the f32 accumulator (or, ZeRO-2, the
                    // shards).
                    self.optim.accumulate(&params, group.as_ref())?;
                    for (k, v) in loss.metrics {
                        *mb_metrics.entry(k).or_default() += w * v;
                    }
                }
                if world > 1 {
                    // Every rank agrees on the update being finite.
                    let mut bad = [f64::from(u8::from(!finite))];
                    group.all_reduce_f64("non-finite updates", &mut bad)?;
                    finite = bad[0] == 0.0;
                    mb_metrics = sum_maps(group.as_ref(), "loss metrics", &mb_metrics)?;
                }
                // The whole batch's gradient: all-reduced, or reduce-scattered into the shards.
                let mut norm = f64::NAN;
                if finite {
                    self.optim.finish_gradients(&params, group.as_ref())?;
                    norm = self.optim.grad_norm(&params, group.as_ref())?;
                }
                let lr = AdamW::lr_at(&cfg.optim, self.optim.updates(), total_updates);
                if finite && norm.is_finite() {
                    self.optim.step(&params, &cfg.optim, lr, norm, group.as_ref())?;
                    self.nonfinite_streak = 0;
                    n_updates += 1.0;
                    for (k, v) in mb_metrics {
                        *sums.entry(k).or_default() += v;
                    }
                    *sums.entry("actor/grad_norm".into()).or_default() += norm;
                    *sums.entry("actor/lr".into()).or_default() += lr;
                } else {
                    skipped += 1.0;
                    self.nonfinite_streak += 1;
                    if self.nonfinite_streak >= cfg.trainer.max_nonfinite_in_a_row {
                        self.optim.zero_grad(&params)?;
                        return Err(TrainError::Aborted(format!(
                            "{} non-finite updates in a row at step {} (loss or gradient NaN/∞); lower optim.lr or check the data",
                            self.nonfinite_streak, self.step
                        )));
                    }
                }
                self.optim.zero_grad(&params)?;
            }
        }
        Ok(Optimised { sums, n_updates, skipped })
    }

    /// The step's metrics: the rollout half's (means over ranks), the updates' means, and the
    /// whole batch's rewards, lengths, IEF and timing figures gathered from every rank.
    fn step_metrics(
        &self,
        batch: StepBatch,
        trajs: &[Trajectory],
        optimised: Optimised,
        n_global: usize,
        train_s: f64,
    ) -> Result<Metrics> {
        let cfg = &self.cfg;
        let group = self.group.clone();
        let world = group.world_size();
        let mut m = batch.metrics;
        let on_r: Vec<f64> = batch.on_policy.iter().map(|(_, r)| *r).collect();
        let ief_r: Vec<f64> = batch.ief.iter().map(|(_, r)| *r).collect();
        let Optimised { sums, n_updates, skipped } = optimised;
        // Phase 7: metrics.
        if world > 1 {
            // The rollout half's metrics (the update's are global already): error counts add
            // up, the rest are means over ranks.
            let summed = sum_maps(group.as_ref(), "rollout metrics", &m)?;
            for (k, v) in summed {
                let v = if k == "reward/errors" { v } else { v / world as f64 };
                m.insert(k, v);
            }
        }
        for (k, v) in sums {
            m.insert(k, if n_updates > 0.0 { v / n_updates } else { f64::NAN });
        }
        let mean =
            |xs: &[f64]| if xs.is_empty() { 0.0 } else { xs.iter().sum::<f64>() / xs.len() as f64 };
        // The whole batch's values, gathered from every rank.
        let rollouts = || batch.on_policy.iter().chain(&batch.ief).map(|(r, _)| r);
        let local_new_tokens: f64 = rollouts().map(|r| r.tokens.len() as f64).sum();
        let lens = group
            .all_gather_f64(
                "response lengths",
                &rollouts().map(|r| r.tokens.len() as f64).collect::<Vec<_>>(),
            )?
            .concat();
        let clipped = group
            .all_gather_f64(
                "clipped responses",
                &[rollouts().filter(|r| r.finish_reason == FinishReason::Length).count() as f64],
            )?
            .concat()
            .iter()
            .sum::<f64>();
        let ief_accepted_rewards = group
            .all_gather_f64(
                "accepted IEF rewards",
                &trajs.iter().filter(|t| t.is_ief).map(|t| t.reward).collect::<Vec<_>>(),
            )?
            .concat();
        let shaped = group
            .all_gather_f64(
                "shaped rewards",
                &trajs.iter().map(|t| t.shaped_reward).collect::<Vec<_>>(),
            )?
            .concat();
        let on_r = group.all_gather_f64("on-policy rewards", &on_r)?.concat();
        let ief_r = group.all_gather_f64("IEF rewards", &ief_r)?.concat();
        let accepted = group
            .all_gather_f64("accepted IEF rollouts", &[batch.accepted as f64])?
            .concat()
            .iter()
            .sum::<f64>();
        let prompts = batch.prompts * world;
        m.insert("step".into(), self.step as f64);
        m.insert("epoch".into(), self.cursor.epoch as f64);
        m.insert("reward/mean".into(), mean(&shaped));
        m.insert("reward/on_policy_mean".into(), mean(&on_r));
        // IEF's metrics only where IEF runs (GRPO has none to report).
        if cfg.algorithm.ief {
            m.insert("reward/ief_mean".into(), mean(&ief_r));
            m.insert("reward/ief_accepted_mean".into(), mean(&ief_accepted_rewards));
            m.insert("ief/success_rate".into(), mean(&ief_r));
            m.insert("ief/on_policy_success_rate".into(), mean(&on_r));
            m.insert(
                "ief/acceptance_rate".into(),
                if ief_r.is_empty() { 0.0 } else { accepted / ief_r.len() as f64 },
            );
            m.insert("shaping/gamma".into(), batch.gamma);
        }
        m.insert("response_length/mean".into(), mean(&lens));
        m.insert("response_length/max".into(), lens.iter().cloned().fold(0.0, f64::max));
        m.insert(
            "response_length/clip_ratio".into(),
            if lens.is_empty() { 0.0 } else { clipped / lens.len() as f64 },
        );
        m.insert("train/skipped_updates".into(), skipped);
        m.insert("data/overlong_dropped".into(), self.dropped_overlong as f64);
        m.insert("train/group_size".into(), n_global as f64 / prompts.max(1) as f64);
        let step_s = batch.started.elapsed().as_secs_f64();
        m.insert("timing/generation_s".into(), batch.generation_s);
        m.insert("timing/scoring_s".into(), batch.scoring_s);
        m.insert("timing/training_s".into(), train_s);
        m.insert("timing/step_s".into(), step_s);
        // This rank's optimiser state (its shard's with optim.zero_stage ≥ 1).
        m.insert("perf/optimizer_state_gb".into(), self.optim.state_bytes() as f64 / 1e9);
        if world > 1 {
            // This rank's time in collectives during the step (waiting for the others included).
            m.insert(
                "perf/collective_s".into(),
                group.collective_seconds() - self.collective_s_at_start,
            );
            m.insert("perf/world_size".into(), world as f64);
        }
        // This rank's throughput.
        m.insert("perf/tokens_per_s".into(), local_new_tokens / step_s.max(1e-9));
        if let Some(bytes) = peak_memory_bytes(self.policy.device()) {
            // This step's peak: CUDA's allocator on a GPU, the process's RSS on a CPU.
            m.insert("perf/peak_memory_gb".into(), bytes as f64 / 1e9);
        }
        Ok(m)
    }
}

/// Where a rank's trajectories sit in the step's whole batch.
struct GlobalView {
    /// Every trajectory's response length, rank by rank (global order).
    lens: Vec<f64>,
    /// Each rank's [trajectory count, micro-batch size].
    ranks: Vec<[usize; 2]>,
    /// This rank's first trajectory in global order.
    offset: usize,
}

/// What the optimisation phase reports to the metrics.
struct Optimised {
    /// Sums over the updates taken of their loss metrics, gradient norm and lr.
    sums: BTreeMap<String, f64>,
    /// Updates taken.
    n_updates: f64,
    /// Updates skipped (non-finite).
    skipped: f64,
}
