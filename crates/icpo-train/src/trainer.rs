//! One ICPO training step (ICPO.md §1–5) and the loop around it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use icpo_loss::LossAggMode;
use icpo_policy::{reset_peak_memory, CausalLm, Tokenizer};
use icpo_rollout::{DemoPool, EngineConfig, SamplingParams};
use icpo_verify::Reward;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::TrainConfig;
use crate::data::{Cursor, Problem};
use crate::error::{Result, TrainError};
use crate::groups::Advantages;
use crate::optimizer::Optimizer;
use crate::rundir::RunDir;
use crate::scoring::{Generated, Pass};
use crate::task_reward::TaskReward;
use crate::update::StepBatch;

/// Metrics of one step, namespaced (`actor/pg_loss`, `ief/acceptance_rate`, ...).
pub type Metrics = BTreeMap<String, f64>;

/// A reward on `(answer, response token ids)`.
pub type TokenScore = dyn Fn(&str, &[i64]) -> f64 + Send + Sync;

/// How rollouts are rewarded.
#[non_exhaustive]
pub enum Scorer {
    /// On the decoded response text against the problem's answer (the math verifier).
    Text(Box<dyn Reward>),
    /// On the response token ids against the answer (benchmarks, synthetic tasks).
    Tokens(Box<TokenScore>),
    /// A task reward that sees the whole problem, the prompt, the response and why it ended,
    /// and may fail (see `trainer.reward_errors`).
    Task(Box<dyn TaskReward>),
}

/// The trainer: policy, frozen reference, data, optimiser state and position.
pub struct Trainer {
    /// The config in force.
    pub cfg: TrainConfig,
    pub(crate) policy: CausalLm,
    pub(crate) reference: Option<CausalLm>,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) problems: Vec<Problem>,
    pub(crate) demos: Option<DemoPool>,
    pub(crate) scorer: Scorer,
    /// Ids that end a rollout (the tokenizer's EOS ids unless changed).
    pub eos_token_ids: Vec<i64>,
    pub(crate) optim: Optimizer,
    pub(crate) cursor: Cursor,
    pub(crate) step: u64,
    pub(crate) nonfinite_streak: u32,
    /// Prompts of the last step's IEF rollouts, as fed to the sampler (for inspection).
    pub last_ief_prompts: Vec<Vec<i64>>,
    /// The output directory, claimed (locked) by `fit` or `resume`.
    pub(crate) run_dir: Option<RunDir>,
    /// Whether `resume` restored a checkpoint.
    pub(crate) resumed: bool,
    /// Problems dropped at construction because their prompt is longer than
    /// `data.max_prompt_tokens`.
    pub dropped_overlong: usize,
    /// Demonstrations dropped from the pool at construction (too short, or holding a URL).
    pub demos_dropped: usize,
    /// A custom advantage estimator in place of `algorithm.advantage`.
    pub(crate) advantages: Option<Box<dyn Advantages>>,
    /// Where `fit` sends each step's metrics instead of `metrics.jsonl`.
    pub(crate) sink: Option<Box<dyn crate::fit::MetricsSink>>,
    /// The ranks of a data-parallel run (world size 1 by default).
    pub(crate) group: std::sync::Arc<dyn icpo_dist::ProcessGroup>,
    /// The process group's collective seconds when the step began.
    pub(crate) collective_s_at_start: f64,
    /// A prompt format in place of `data.few_shot`.
    pub(crate) prompt_format: Option<std::sync::Arc<dyn icpo_rollout::PromptFormat>>,
    /// The evaluation `fit` runs every `trainer.eval_every` steps.
    pub(crate) evaluation: Option<crate::driver::PeriodicEval>,
    /// Rows of the training file skipped for want of an answer ([`Trainer::from_config`]).
    pub skipped_without_answer: usize,
}

/// The weight of one micro-batch's aggregated loss in its mini-batch's update, so that the
/// accumulated gradients are the mini-batch's aggregate: its share of the tokens (token-mean)
/// or of the non-empty sequences (sequence means); for `token-mean-per-micro-batch`, the
/// authors' `1 / micro-batches` (verl's gradient accumulation).
pub(crate) fn micro_batch_weight(
    mode: LossAggMode,
    (tokens, seqs): (usize, usize),
    (mb_tokens, mb_seqs): (usize, usize),
    n_micro: usize,
) -> f64 {
    match mode {
        LossAggMode::TokenMean => tokens as f64 / mb_tokens.max(1) as f64,
        LossAggMode::TokenMeanPerMicroBatch => 1.0 / n_micro.max(1) as f64,
        _ => seqs as f64 / mb_seqs.max(1) as f64,
    }
}

/// The problems whose plain prompt from `builder` takes at most `max` tokens, in order.
pub(crate) fn fitting_prompts(
    builder: &icpo_rollout::PromptBuilder<'_>,
    tokenizer: &Tokenizer,
    problems: Vec<Problem>,
    max: usize,
) -> Result<Vec<Problem>> {
    let mut kept = Vec::with_capacity(problems.len());
    for p in problems {
        if tokenizer.encode(&builder.plain_text(&p.problem)?, false)?.len() <= max {
            kept.push(p);
        }
    }
    Ok(kept)
}

pub(crate) fn seed_for(seed: u64, step: u64, what: u64) -> u64 {
    // SplitMix-style mixing: distinct streams per (step, purpose).
    let mut z =
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ what.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Trainer {
    /// A trainer from parts already in memory. `reference` is needed when `loss.kl_coef > 0`;
    /// `demos` when `algorithm.ief`.
    pub fn new(
        cfg: TrainConfig,
        mut policy: CausalLm,
        mut reference: Option<CausalLm>,
        tokenizer: Tokenizer,
        problems: Vec<Problem>,
        mut demos: Option<DemoPool>,
        scorer: Scorer,
    ) -> Result<Self> {
        cfg.validate()?;
        if cfg.loss.kl_coef > 0.0 && reference.is_none() {
            return Err(TrainError::Config {
                key: "loss.kl_coef".into(),
                message: "β > 0 needs a reference policy".into(),
            });
        }
        if cfg.algorithm.ief && demos.as_ref().is_none_or(DemoPool::is_empty) {
            return Err(TrainError::Config {
                key: "data.demo_pool_path".into(),
                message: "IEF needs a demo pool".into(),
            });
        }
        let mut demos_dropped = 0;
        if let Some(pool) = demos.as_mut() {
            demos_dropped =
                pool.retain_clean(cfg.data.demo_min_solution_chars, cfg.data.demo_drop_urls);
        }
        if let Some(pool) = demos.as_ref().filter(|_| cfg.algorithm.ief) {
            if pool.len() < cfg.rollout.demos {
                return Err(TrainError::Config {
                    key: "rollout.demos".into(),
                    message: format!(
                        "{} demonstrations per IEF prompt, but the demo pool ({}) holds only {} ({demos_dropped} dropped by data.demo_min_solution_chars / data.demo_drop_urls)",
                        cfg.rollout.demos,
                        if cfg.data.demo_pool_path.is_empty() {
                            "in memory"
                        } else {
                            cfg.data.demo_pool_path.as_str()
                        },
                        pool.len()
                    ),
                });
            }
        }
        // Over-long prompts are dropped here, once, as verl's `filter_overlong_prompts` does,
        // instead of stopping the run (and every resume) when one is drawn.
        let total = problems.len();
        // (A format set later with `set_prompt_format` filters again.)
        let problems = fitting_prompts(
            &cfg.data.prompt_builder(&tokenizer),
            &tokenizer,
            problems,
            cfg.data.max_prompt_tokens,
        )?;
        let dropped_overlong = total - problems.len();
        if total > 0 && problems.is_empty() {
            return Err(TrainError::Config {
                key: "data.max_prompt_tokens".into(),
                message: format!(
                    "every one of the {total} problems of {} has a longer prompt than {} tokens",
                    cfg.data.train_path, cfg.data.max_prompt_tokens
                ),
            });
        }
        policy.set_gradient_checkpointing(cfg.model.gradient_checkpointing);
        // The reference never trains: no gradient is ever taken or kept for it.
        if let Some(r) = reference.as_mut() {
            r.var_store_mut().freeze();
        }
        // The optimiser's memory is taken now, not in the middle of the first update (sharded
        // state: once the process group is known).
        let optim = Optimizer::new(cfg.optim.zero_stage, &policy.named_weights())?;
        Ok(Trainer {
            cfg,
            policy,
            reference,
            eos_token_ids: tokenizer.eos_token_ids().to_vec(),
            tokenizer,
            problems,
            demos,
            scorer,
            optim,
            cursor: Cursor::start(),
            step: 0,
            nonfinite_streak: 0,
            last_ief_prompts: Vec::new(),
            run_dir: None,
            resumed: false,
            dropped_overlong,
            demos_dropped,
            advantages: None,
            sink: None,
            evaluation: None,
            group: crate::data_parallel::single(),
            collective_s_at_start: 0.0,
            prompt_format: None,
            skipped_without_answer: 0,
        })
    }

    /// Puts a custom advantage estimator in place of `algorithm.advantage` (None: back to it).
    pub fn set_advantages(&mut self, estimator: Option<Box<dyn Advantages>>) {
        self.advantages = estimator;
    }

    /// The policy being trained.
    pub fn policy(&self) -> &CausalLm {
        &self.policy
    }

    /// The frozen reference policy, when the run keeps one (`loss.kl_coef > 0`).
    pub fn reference(&self) -> Option<&CausalLm> {
        self.reference.as_ref()
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub(crate) fn sampling(&self) -> SamplingParams {
        let r = &self.cfg.rollout;
        SamplingParams {
            temperature: r.temperature,
            top_p: r.top_p,
            top_k: r.top_k,
            max_new_tokens: r.max_new_tokens,
            stop_strings: r.stop_strings.clone(),
            ..Default::default()
        }
    }

    /// Runs one training step on the next problems and returns its metrics: [`Trainer::rollout`]
    /// then [`Trainer::update`].
    pub fn train_step(&mut self) -> Result<Metrics> {
        let batch = self.rollout()?;
        self.update(batch)
    }

    /// The first half of a step: draws the next problems, samples the on-policy and IEF
    /// rollouts, scores them, applies ERRS and shaping and computes the group advantages. The
    /// returned batch is public and mutable (inspect or change rewards, advantages or the
    /// trajectories themselves), then goes to [`Trainer::update`]; call it before the next
    /// `rollout` (the step count, and with it every seed, advances there).
    pub fn rollout(&mut self) -> Result<StepBatch> {
        let t_start = Instant::now();
        // `perf/peak_memory_gb` is this step's own peak.
        reset_peak_memory(self.policy.device());
        let cfg = self.cfg.clone();
        let n_off = if cfg.algorithm.ief { cfg.rollout.ief_samples } else { 0 };
        let mut rng = ChaCha8Rng::seed_from_u64(seed_for(cfg.trainer.seed, self.step, 0));

        // Phase 1: the step's problems and prompts.
        let idx = self.cursor.take(
            cfg.trainer.batch_prompts,
            self.problems.len(),
            cfg.trainer.seed,
            cfg.data.shuffle,
        );
        // Every rank draws the whole batch (the same problems and demonstrations, the same
        // random stream after them) and keeps its contiguous shard.
        let (lo, hi) =
            crate::data_parallel::shard(idx.len(), self.group.rank(), self.group.world_size());
        let problems: Vec<Problem> = idx.iter().map(|&i| self.problems[i].clone()).collect();
        let builder = self.prompt_builder();
        let plain: Vec<Vec<i64>> = problems[lo..hi]
            .iter()
            .map(|p| builder.plain(&p.problem))
            .collect::<std::result::Result<_, _>>()?;
        let mut ief_prompts = Vec::new();
        if n_off > 0 {
            let pool = self
                .demos
                .as_ref()
                .ok_or_else(|| TrainError::Aborted("IEF without a demo pool".into()))?;
            for (i, p) in problems.iter().enumerate() {
                let demos = pool.draw(cfg.rollout.demos, &p.problem, &mut rng)?;
                if (lo..hi).contains(&i) {
                    ief_prompts.push(builder.in_context(&p.problem, &demos)?);
                }
            }
        }
        drop(builder);
        self.rollout_on(&problems[lo..hi], &plain, &ief_prompts, rng, t_start, lo)
    }

    /// Runs one training step on pre-tokenized prompts (plain, and in-context when IEF is
    /// on: one per plain prompt), rewarding against `answers`. Benchmarks use it with random
    /// prompt ids. In a data-parallel run every rank passes the whole batch.
    pub fn train_step_on(
        &mut self,
        answers: &[String],
        plain: &[Vec<i64>],
        ief_prompts: &[Vec<i64>],
    ) -> Result<Metrics> {
        let rng = ChaCha8Rng::seed_from_u64(seed_for(self.cfg.trainer.seed, self.step, 0));
        let problems: Vec<Problem> =
            answers.iter().map(|a| Problem { answer: a.clone(), ..Problem::default() }).collect();
        // Data parallel: every rank is given the whole batch and keeps its shard.
        let (lo, hi) =
            crate::data_parallel::shard(plain.len(), self.group.rank(), self.group.world_size());
        let ief = if ief_prompts.is_empty() { ief_prompts } else { &ief_prompts[lo..hi] };
        let batch =
            self.rollout_on(&problems[lo..hi], &plain[lo..hi], ief, rng, Instant::now(), lo)?;
        self.update(batch)
    }

    fn rollout_on(
        &mut self,
        problems: &[Problem],
        plain: &[Vec<i64>],
        ief_prompts: &[Vec<i64>],
        rng: ChaCha8Rng,
        t_start: Instant,
        first: usize,
    ) -> Result<StepBatch> {
        self.collective_s_at_start = self.group.collective_seconds();
        let cfg = self.cfg.clone();
        let (g, n_off) =
            (cfg.rollout.group_size, if cfg.algorithm.ief { cfg.rollout.ief_samples } else { 0 });
        if problems.len() != plain.len() || (n_off > 0 && ief_prompts.len() != plain.len()) {
            return Err(TrainError::Aborted(format!(
                "{} answers, {} plain prompts and {} IEF prompts must match",
                problems.len(),
                plain.len(),
                ief_prompts.len()
            )));
        }
        let mut m = Metrics::new();

        // Phases 2 and 3: on-policy and IEF rollouts (the steered prompts really reach the
        // sampler), scored as they finish.
        let engine = EngineConfig {
            max_tokens_in_flight: cfg.rollout.max_tokens_in_flight,
            streams: cfg.rollout.decode_streams,
        };
        let on_pass = Pass {
            prompts: plain,
            n: g,
            seed: seed_for(cfg.trainer.seed, self.step, 1),
            first_prompt: first,
        };
        let ief_pass = Pass {
            prompts: if n_off > 0 { ief_prompts } else { &[] },
            n: n_off,
            seed: seed_for(cfg.trainer.seed, self.step, 2),
            first_prompt: first,
        };
        let Generated {
            on,
            ief,
            on_scored: on_s,
            ief_scored: ief_s,
            gen_s,
            score_wait_s,
            score_busy_s,
        } = self.generate_and_score(problems, on_pass, ief_pass, &engine)?;
        self.last_ief_prompts = ief_prompts.to_vec();
        // A skipped on-policy rollout takes its group's mean (advantage 0); a skipped IEF one
        // is worth 0, so ERRS does not accept it.
        let on_r = on_s.group_filled(g);
        let ief_r: Vec<f64> = ief_s.rewards.iter().map(|r| r.unwrap_or(0.0)).collect();
        m.insert("reward/errors".into(), (on_s.errors + ief_s.errors) as f64);
        let mut task_metrics = on_s.metrics;
        for (k, (sum, n)) in ief_s.metrics {
            let e = task_metrics.entry(k).or_default();
            e.0 += sum;
            e.1 += n;
        }
        for (k, (sum, n)) in task_metrics {
            m.insert(format!("reward/{k}"), sum / n.max(1) as f64);
        }
        m.insert("timing/scoring_busy_s".into(), score_busy_s);

        // Phase 4: ERRS, shaping with this step's γ(t), group advantages.
        let (trajs, accepted, gamma) = self.form_groups(plain, &on, &ief, &on_r, &ief_r, first)?;

        Ok(StepBatch {
            step: self.step,
            prompts: plain.len(),
            trajectories: trajs,
            on_policy: on.into_iter().zip(on_r).collect(),
            ief: ief.into_iter().zip(ief_r).collect(),
            gamma,
            accepted,
            metrics: m,
            rng,
            generation_s: gen_s,
            scoring_s: score_wait_s,
            started: t_start,
        })
    }

    /// Where outputs go.
    pub fn output_dir(&self) -> PathBuf {
        PathBuf::from(&self.cfg.trainer.output_dir)
    }

    /// The checkpoint directory name of the current step.
    pub fn checkpoint_name(&self) -> String {
        format!("step_{:06}", self.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `token-mean-per-micro-batch` against a transcription of the authors' actor (verl's
    /// `dp_actor`): per micro-batch `loss = agg_loss(token-mean) / gradient_accumulation`,
    /// `gradient_accumulation = mini_batch_size / micro_batch_size`; and `token-mean` against
    /// the mini-batch's exact token mean.
    #[test]
    fn micro_batch_weights_match_the_transcriptions() {
        // A mini-batch of 6 sequences in micro-batches of 2, with per-token losses.
        let seqs: Vec<Vec<f64>> = vec![
            vec![1.0, 2.0, 3.0],
            vec![4.0],
            vec![0.5, 0.5],
            vec![],
            vec![7.0, 1.0, 1.0, 1.0],
            vec![2.0],
        ];
        let (mini, micro) = (6usize, 2usize);
        let micro_batches: Vec<&[Vec<f64>]> = seqs.chunks(micro).collect();
        let token_mean = |mb: &[Vec<f64>]| {
            let n: usize = mb.iter().map(Vec::len).sum();
            mb.iter().flatten().sum::<f64>() / n.max(1) as f64
        };
        let mb_tokens: usize = seqs.iter().map(Vec::len).sum();
        let mb_seqs = seqs.iter().filter(|s| !s.is_empty()).count();
        let weighted = |mode| -> f64 {
            micro_batches
                .iter()
                .map(|mb| {
                    let tokens = mb.iter().map(Vec::len).sum();
                    let nonempty = mb.iter().filter(|s| !s.is_empty()).count();
                    micro_batch_weight(
                        mode,
                        (tokens, nonempty),
                        (mb_tokens, mb_seqs),
                        micro_batches.len(),
                    ) * token_mean(mb)
                })
                .sum()
        };
        let gradient_accumulation = (mini / micro) as f64;
        let authors: f64 =
            micro_batches.iter().map(|mb| token_mean(mb) / gradient_accumulation).sum();
        assert!((weighted(LossAggMode::TokenMeanPerMicroBatch) - authors).abs() < 1e-12);
        let exact = seqs.iter().flatten().sum::<f64>() / mb_tokens as f64;
        assert!((weighted(LossAggMode::TokenMean) - exact).abs() < 1e-12);
        assert!((authors - exact).abs() > 0.1, "the two really differ on unequal lengths");
    }
}
