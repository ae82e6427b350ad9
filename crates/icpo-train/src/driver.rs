//! The config-driven run in the library: [`Trainer::from_config`] loads everything a
//! [`TrainConfig`] names (policy, reference, tokenizer, problems, demo pool, benchmarks), and
//! [`PeriodicEval`] evaluates inside [`Trainer::fit`] every `trainer.eval_every` steps, its
//! accuracies recorded with the step's metrics (`eval/<benchmark>/accuracy`). `icpo train` and
//! the `icpo_math` example are thin wrappers around these. The run's prompt builder (the
//! config's format, or one set with [`Trainer::set_prompt_format`]) lives here too, as both
//! training and evaluation take their prompts from it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use icpo_policy::{CausalLm, Tokenizer};
use icpo_rollout::DemoPool;
use icpo_verify::{MathReward, Reward};

use crate::config::TrainConfig;
use crate::data::{load_problems, Problem};
use crate::error::{Result, TrainError};
use crate::eval::{evaluate, write_responses, EvalConfig};
use crate::trainer::{Metrics, Scorer, Trainer};

/// Evaluation on held-out benchmarks every `every` steps of [`Trainer::fit`] (and after its
/// last step), with the trainer's own prompt format: each benchmark's accuracy goes into that
/// step's metrics as `eval/<name>/accuracy`, and every graded response to
/// `<output_dir>/eval/step_NNNNNN/<name>.jsonl` for auditing.
pub struct PeriodicEval {
    sets: Vec<(String, Vec<Problem>)>,
    every: u64,
    /// Sampling of the evaluation. [`PeriodicEval::from_config`] takes the ICPO.md §7
    /// protocol's temperature 0.6 and top-p 0.95, and the training rollouts' length.
    pub config: EvalConfig,
    reward: Box<dyn Reward>,
}

impl std::fmt::Debug for PeriodicEval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.sets.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("PeriodicEval").field("sets", &names).field("every", &self.every).finish()
    }
}

/// A benchmark's name in metric keys: its file name without the extension.
fn benchmark_name(path: &str) -> String {
    Path::new(path).file_stem().map_or_else(|| path.to_string(), |s| s.to_string_lossy().into())
}

impl PeriodicEval {
    /// Benchmarks `(name, problems)` graded by `reward` every `every` steps (`every > 0`).
    pub fn new(
        sets: Vec<(String, Vec<Problem>)>,
        every: u64,
        config: EvalConfig,
        reward: Box<dyn Reward>,
    ) -> Result<Self> {
        if every == 0 {
            return Err(TrainError::Config {
                key: "trainer.eval_every".into(),
                message: "periodic evaluation needs a period of at least 1 step".into(),
            });
        }
        for (i, (name, _)) in sets.iter().enumerate() {
            if sets[..i].iter().any(|(n, _)| n == name) {
                return Err(TrainError::Config {
                    key: "data.eval_paths".into(),
                    message: format!(
                        "two benchmarks are named `{name}`: their metrics would collide"
                    ),
                });
            }
        }
        Ok(PeriodicEval { sets, every, config, reward })
    }

    /// The evaluation a config asks for: the benchmarks of `data.eval_paths` (read now, so a
    /// missing or malformed file fails before training starts) every `trainer.eval_every`
    /// steps, graded by the math verifier, avg@1 with the protocol's sampling and
    /// `rollout.max_new_tokens` new tokens, seeded by `trainer.seed` (the same draws at every
    /// evaluation, so steps compare). None when either is empty or zero.
    pub fn from_config(cfg: &TrainConfig) -> Result<Option<Self>> {
        if cfg.trainer.eval_every == 0 || cfg.data.eval_paths.is_empty() {
            return Ok(None);
        }
        let mut sets = Vec::with_capacity(cfg.data.eval_paths.len());
        for path in &cfg.data.eval_paths {
            let (problems, _) = load_problems(path)?;
            if problems.is_empty() {
                return Err(TrainError::Data {
                    path: path.into(),
                    line: 0,
                    message: "data.eval_paths: the benchmark holds no problem with an answer"
                        .into(),
                });
            }
            sets.push((benchmark_name(path), problems));
        }
        let mut config = EvalConfig { seed: cfg.trainer.seed, ..EvalConfig::default() };
        config.sampling.max_new_tokens = cfg.rollout.max_new_tokens;
        config.sampling.stop_strings = cfg.rollout.stop_strings.clone();
        config.engine.max_tokens_in_flight = cfg.rollout.max_tokens_in_flight;
        config.engine.streams = cfg.rollout.decode_streams;
        Self::new(sets, cfg.trainer.eval_every, config, Box::new(MathReward::default())).map(Some)
    }

    /// Whether step `step` of a run of `total` steps is evaluated: every `every` steps and
    /// the last.
    pub fn due(&self, step: u64, total: u64) -> bool {
        step > 0 && (step.is_multiple_of(self.every) || step == total)
    }

    /// The benchmarks' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.sets.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Evaluates the trainer's policy now: `eval/<name>/accuracy` per benchmark and
    /// `eval/time_s`; responses written under `out/eval/step_NNNNNN/` when `out` is given.
    pub fn run(&self, trainer: &Trainer, out: Option<&Path>) -> Result<Metrics> {
        let t0 = Instant::now();
        let builder = trainer.prompt_builder();
        let mut metrics = Metrics::new();
        let dir: Option<PathBuf> =
            out.map(|o| o.join("eval").join(format!("step_{:06}", trainer.step())));
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).map_err(crate::error::io_err(d))?;
        }
        // Data parallel: each rank grades its share of every benchmark (the samples it would
        // draw in the whole one), and the verdicts are gathered.
        let g = trainer.process_group();
        for (name, problems) in &self.sets {
            let (lo, hi) =
                crate::data_parallel::shard_uneven(problems.len(), g.rank(), g.world_size());
            let cfg = EvalConfig { first_prompt: lo, ..self.config.clone() };
            let mut r = evaluate(
                &trainer.policy,
                &trainer.tokenizer,
                &builder,
                &problems[lo..hi],
                self.reward.as_ref(),
                &trainer.eos_token_ids,
                &cfg,
            )?;
            if g.world_size() > 1 {
                let mine = serde_json::to_vec(&r.responses)
                    .map_err(|e| TrainError::Aborted(e.to_string()))?;
                let mut all = Vec::new();
                for part in g.all_gather_bytes("evaluation verdicts", &mine)? {
                    let graded: Vec<crate::eval::Graded> = serde_json::from_slice(&part)
                        .map_err(|e| TrainError::Aborted(e.to_string()))?;
                    all.extend(graded);
                }
                r.accuracy = if all.is_empty() {
                    0.0
                } else {
                    all.iter().map(|x| x.reward).sum::<f64>() / all.len() as f64
                };
                r.problems = problems.len();
                r.responses = all;
            }
            metrics.insert(format!("eval/{name}/accuracy"), r.accuracy);
            if let Some(d) = &dir {
                write_responses(&d.join(format!("{name}.jsonl")), name, &r)?;
            }
        }
        metrics.insert("eval/time_s".into(), t0.elapsed().as_secs_f64());
        Ok(metrics)
    }
}

impl Trainer {
    /// A trainer for everything `cfg` names, scored by the math verifier: see
    /// [`Trainer::from_config_with`].
    pub fn from_config(cfg: TrainConfig) -> Result<Self> {
        Self::from_config_with(cfg, Scorer::Text(Box::new(MathReward::default())))
    }

    /// A trainer for everything `cfg` names, rewarded by `scorer`: the policy from
    /// `model.path` (in `model.dtype` on `model.device`), the frozen reference when
    /// `loss.kl_coef > 0` (`model.reference_path`, else the policy's checkpoint, in the
    /// compute dtype), the tokenizer of `model.path`, the problems of `data.train_path`, the
    /// demo pool of `data.demo_pool_path` when `algorithm.ief`, and the periodic evaluation on
    /// `data.eval_paths` ([`PeriodicEval::from_config`]). Every path is checked before anything
    /// is loaded, so a typo fails at once, naming its key. Under torchrun (`WORLD_SIZE` > 1)
    /// it joins the job and trains data-parallel ([`Trainer::set_process_group`]).
    pub fn from_config_with(cfg: TrainConfig, scorer: Scorer) -> Result<Self> {
        cfg.validate()?;
        cfg.require_paths()?;
        for (key, path) in
            [("model.path", &cfg.model.path), ("data.train_path", &cfg.data.train_path)]
                .into_iter()
                .chain(
                    cfg.algorithm.ief.then_some(("data.demo_pool_path", &cfg.data.demo_pool_path)),
                )
                .chain(
                    (cfg.loss.kl_coef > 0.0 && !cfg.model.reference_path.is_empty())
                        .then_some(("model.reference_path", &cfg.model.reference_path)),
                )
                .chain(cfg.data.eval_paths.iter().map(|p| ("data.eval_paths", p)))
        {
            if !Path::new(path).exists() {
                return Err(TrainError::Config {
                    key: key.into(),
                    message: format!("`{path}` does not exist"),
                });
            }
        }
        // Launched by torchrun: join the job first, so a missing rank fails before any loading.
        // On GPUs NCCL carries the gradients, and each rank takes the GPU of its local rank.
        let gpu = cfg.model.device.starts_with("cuda");
        let group = icpo_dist::init_from_env(
            std::time::Duration::from_secs_f64(cfg.trainer.dist_timeout_s),
            gpu,
        )?;
        let mut cfg = cfg;
        if group.world_size() > 1 && cfg.model.device == "cuda" {
            cfg.model.device = format!("cuda:{}", group.local_rank());
        }
        let evaluation = PeriodicEval::from_config(&cfg)?;
        let policy = CausalLm::load(&cfg.model.path, cfg.model.load_options()?)?;
        let reference = if cfg.loss.kl_coef > 0.0 {
            let path = if cfg.model.reference_path.is_empty() {
                &cfg.model.path
            } else {
                &cfg.model.reference_path
            };
            Some(CausalLm::load(path, cfg.model.reference_load_options()?)?)
        } else {
            None
        };
        let tokenizer = Tokenizer::from_dir(&cfg.model.path)?;
        let (problems, skipped) = load_problems(&cfg.data.train_path)?;
        let demos = if cfg.algorithm.ief {
            Some(DemoPool::from_jsonl(&cfg.data.demo_pool_path)?)
        } else {
            None
        };
        let mut trainer = Trainer::new(cfg, policy, reference, tokenizer, problems, demos, scorer)?;
        trainer.skipped_without_answer = skipped;
        trainer.evaluation = evaluation;
        if group.world_size() > 1 {
            trainer.set_process_group(group)?;
        }
        Ok(trainer)
    }

    /// Replaces the evaluation `fit` runs (None: no evaluation).
    pub fn set_evaluation(&mut self, evaluation: Option<PeriodicEval>) {
        self.evaluation = evaluation;
    }

    /// The evaluation `fit` runs, if any.
    pub fn evaluation(&self) -> Option<&PeriodicEval> {
        self.evaluation.as_ref()
    }

    /// The prompt builder of this run: the config's template, instruction, system turn,
    /// chat-template arguments and few-shot layout, or the format set with
    /// [`Trainer::set_prompt_format`]. Training and evaluation prompts both come from it.
    pub fn prompt_builder(&self) -> icpo_rollout::PromptBuilder<'_> {
        let mut b = self.cfg.data.prompt_builder(&self.tokenizer);
        b.format = self.prompt_format.clone();
        b
    }

    /// Lays prompts out with `format` instead of `data.few_shot` (None: back to it); the
    /// problems are filtered again for prompts over `data.max_prompt_tokens` in the new format
    /// (counted in `dropped_overlong`), so a longer format cannot stop a step later. Call it
    /// before the first step (the data cursor indexes the problems). On error nothing changes.
    pub fn set_prompt_format(
        &mut self,
        format: Option<std::sync::Arc<dyn icpo_rollout::PromptFormat>>,
    ) -> Result<()> {
        let old = std::mem::replace(&mut self.prompt_format, format);
        let max = self.cfg.data.max_prompt_tokens;
        let total = self.problems.len();
        let kept = crate::trainer::fitting_prompts(
            &self.prompt_builder(),
            &self.tokenizer,
            self.problems.clone(),
            max,
        )
        .and_then(|kept| {
            if kept.is_empty() && total > 0 {
                return Err(TrainError::Config {
                    key: "data.max_prompt_tokens".into(),
                    message: format!(
                        "in the new prompt format every one of the {total} problems is longer than {max} tokens"
                    ),
                });
            }
            Ok(kept)
        });
        match kept {
            Ok(kept) => {
                self.dropped_overlong += total - kept.len();
                self.problems = kept;
                Ok(())
            }
            Err(e) => {
                self.prompt_format = old;
                Err(e)
            }
        }
    }

    /// Training problems held (after the over-long filter).
    pub fn num_problems(&self) -> usize {
        self.problems.len()
    }
}
