//! The training config: one TOML file, every field of ICPO.md §5–6 with the paper's values as
//! defaults, `--set section.key=value` overrides, unknown keys and bad values named.

use std::path::Path;

use icpo_core::{AdvantageEstimator, ErrsConfig, LossConfig, ShapingSchedule};
use icpo_policy::Tokenizer;
use icpo_policy::{DType, DeviceOpt, LoadOptions};
use icpo_rollout::{PromptBuilder, PromptTemplate, DEFAULT_INSTRUCTION};
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};

/// Which policy to train.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Hugging Face checkpoint directory of the initial policy (required).
    pub path: String,
    /// Weight dtype. Default float32 (CPU tests and parity). `bfloat16`, with `compute_dtype`
    /// bfloat16 too, is mixed precision as GPU trainers run it: the forward and decoding use
    /// the bf16 weights directly (no per-forward casts, no decoding copy on a GPU), and the
    /// optimiser keeps f32 master weights, f32 gradient accumulators and f32 moments (an AdamW
    /// step of lr ≈ 1e-6 on weights of ≈ 1e-2 is below bf16's resolution: it accumulates in
    /// the master). `float16` is refused (it would need loss scaling).
    pub dtype: DType,
    /// Dtype of activations and products (rollouts and training). Default float32.
    /// `bfloat16` with f32 weights multiplies by bf16 casts of the weights made at every
    /// forward (the f32 weights are the master); with bf16 weights, by the weights themselves.
    /// On a CPU with AMX bf16 multiplies several times faster than f32.
    pub compute_dtype: DType,
    /// `cpu`, `cuda` or `cuda:N`. Default cpu.
    pub device: String,
    /// Reference policy checkpoint; empty means the initial policy. Default empty.
    pub reference_path: String,
    /// Activation checkpointing per decoder layer in the training pass (Hugging Face's and
    /// verl's `gradient_checkpointing`): only each layer's input is kept for the backward,
    /// which recomputes the layer — activation memory of one layer instead of all of them, for
    /// about a third more compute in the pass. Same gradients. Default false (the tiny CPU
    /// models need no saving); the paper configs turn it on (see docs/guide.md, memory).
    pub gradient_checkpointing: bool,
}

impl ModelSection {
    /// Device and dtypes to load the policy with.
    pub fn load_options(&self) -> Result<LoadOptions> {
        let device: DeviceOpt = self.device.parse().map_err(|e| cfg_err("model.device", e))?;
        Ok(LoadOptions { device, dtype: self.dtype, compute_dtype: Some(self.compute_dtype) })
    }

    /// Device and dtypes to load the reference policy with: its weights held in the compute
    /// dtype (bf16 under mixed precision: half the memory of f32 weights, and the same
    /// products, since an f32 model's forward multiplies by bf16 casts anyway). The trainer
    /// freezes it (no gradients).
    pub fn reference_load_options(&self) -> Result<LoadOptions> {
        let mut opts = self.load_options()?;
        opts.dtype = self.compute_dtype;
        Ok(opts)
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            path: String::new(),
            dtype: DType::F32,
            compute_dtype: DType::F32,
            device: "cpu".into(),
            reference_path: String::new(),
            gradient_checkpointing: false,
        }
    }
}

/// Training problems and demonstrations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// JSONL with `problem` and `answer` per line, or verl-layout `.parquet` (required).
    pub train_path: String,
    /// JSONL demo pool with `problem` and `solution`. Default MATH train in ../shared.
    pub demo_pool_path: String,
    /// Prompt template: `chat` or `raw`. Default chat.
    pub template: PromptTemplate,
    /// Instruction after the problem. Default the spec's.
    pub instruction: String,
    /// Longest prompt in tokens (IEF prompts are cut inside the demonstrations). Default 4096.
    pub max_prompt_tokens: usize,
    /// Shuffle problems every epoch. Default true.
    pub shuffle: bool,
    /// Benchmarks (JSONL `problem`, `answer`) evaluated every `trainer.eval_every` steps.
    /// Default none.
    pub eval_paths: Vec<String>,
    /// Demonstrations whose solution is shorter than this many characters are dropped from
    /// the pool. Default 58, the authors' threshold (the length of their shortest kept form,
    /// "Answer: -27 . Instructions. Exact answer: $4 \sqrt{5}-36$."); 0 keeps all.
    pub demo_min_solution_chars: usize,
    /// Demonstrations whose solution holds a URL (`http:`/`https:`) are dropped, as the
    /// authors do. Default true.
    pub demo_drop_urls: bool,
    /// A system turn before every prompt's user message (chat template). Default none, as the
    /// paper's prompts.
    pub system_prompt: String,
    /// Extra chat-template variables, e.g. `{ enable_thinking = false }` for Qwen3's
    /// non-thinking mode. Default none.
    pub chat_template_args: icpo_policy::TemplateArgs,
    /// How IEF demonstrations are laid out (`[data.few_shot]`: `layout = "inline"` (default,
    /// the paper's) or `"turns"`; inline `header`, `item` with `{problem}` and `{solution}`,
    /// `footer`).
    pub few_shot: icpo_rollout::FewShot,
}

impl DataSection {
    /// The prompt builder these settings describe (template, instruction, prompt budget): the
    /// one the trainer, its over-long filter and periodic evaluation build prompts with.
    pub fn prompt_builder<'a>(&self, tokenizer: &'a Tokenizer) -> PromptBuilder<'a> {
        let mut builder = PromptBuilder::new(tokenizer);
        builder.template = self.template;
        builder.instruction = self.instruction.clone();
        builder.max_prompt_tokens = self.max_prompt_tokens;
        builder.system = self.system_prompt.clone();
        builder.template_args = self.chat_template_args.clone();
        builder.few_shot = self.few_shot.clone();
        builder
    }
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            train_path: String::new(),
            demo_pool_path: "../shared/data/train/math_train.jsonl".into(),
            template: PromptTemplate::Chat,
            instruction: DEFAULT_INSTRUCTION.into(),
            max_prompt_tokens: 4096,
            shuffle: true,
            eval_paths: Vec::new(),
            demo_min_solution_chars: 58,
            demo_drop_urls: true,
            system_prompt: String::new(),
            chat_template_args: icpo_policy::TemplateArgs::new(),
            few_shot: icpo_rollout::FewShot::default(),
        }
    }
}

/// Sampling of the group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSection {
    /// `G`: on-policy samples per problem (the group keeps this size). Default 8.
    pub group_size: usize,
    /// `N_off`: IEF samples per problem. Default 1.
    pub ief_samples: usize,
    /// `k`: demonstrations per IEF prompt. Default 1.
    pub demos: usize,
    /// Sampling temperature. Default 1.0.
    pub temperature: f64,
    /// Nucleus threshold. Default 1.0.
    pub top_p: f64,
    /// Top-k (0: off). Default 0.
    pub top_k: usize,
    /// Longest response. Default 8192.
    pub max_new_tokens: usize,
    /// Bound on tokens decoded at once. Default 262,144.
    pub max_tokens_in_flight: usize,
    /// Parallel decoding streams (`icpo_rollout::EngineConfig::streams`): 0 (default) is one
    /// per libtorch thread on a CPU and one on a GPU.
    pub decode_streams: usize,
    /// Strings that end a training rollout when its decoded text reaches one (kept in the
    /// response, finish reason `stop_string`), besides EOS. Default none.
    pub stop_strings: Vec<String>,
}

impl Default for RolloutSection {
    fn default() -> Self {
        RolloutSection {
            group_size: 8,
            ief_samples: 1,
            demos: 1,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 8192,
            max_tokens_in_flight: 1 << 18,
            decode_streams: 0,
            stop_strings: Vec::new(),
        }
    }
}

/// ICPO's components and the advantage estimator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlgorithmSection {
    /// Implicit Expert Forcing (false: plain GRPO). Default true.
    pub ief: bool,
    /// Expert Region Reject Sampling (`errs.enabled = false`: the −ERRS ablation).
    pub errs: ErrsConfig,
    /// Annealed expert-bonus reward shaping (false: the −RS ablation). Default true.
    pub shaping: bool,
    /// α of the bonus. Default 1.0.
    pub shaping_alpha: f64,
    /// γ(t) schedule: linear, cosine, constant or exponential. Default linear.
    pub shaping_schedule: ShapingSchedule,
    /// τ of the exponential schedule, `γ(t) = exp(−t/τ)`, in steps. Default 12 (the authors'
    /// `decay_by_step` default).
    pub shaping_decay_steps: f64,
    /// Advantage estimator. Default grpo.
    pub advantage: AdvantageEstimator,
    /// ε of the std normalisation. Default 1e-6.
    pub epsilon: f64,
}

impl Default for AlgorithmSection {
    fn default() -> Self {
        AlgorithmSection {
            ief: true,
            errs: ErrsConfig::default(),
            shaping: true,
            shaping_alpha: 1.0,
            shaping_schedule: ShapingSchedule::Linear,
            shaping_decay_steps: icpo_core::DEFAULT_DECAY_STEPS,
            advantage: AdvantageEstimator::Grpo,
            epsilon: 1e-6,
        }
    }
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LrSchedule {
    /// Constant (the paper's).
    #[default]
    Constant,
    /// Cosine decay to 0 at the last step.
    Cosine,
}

/// AdamW and the update schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    /// Peak learning rate. Default 1e-6.
    pub lr: f64,
    /// Adam β1. Default 0.9.
    pub beta1: f64,
    /// Adam β2. Default 0.999.
    pub beta2: f64,
    /// Adam ε. Default 1e-8.
    pub eps: f64,
    /// Decoupled weight decay. Default 0.01.
    pub weight_decay: f64,
    /// Linear warm-up steps. Default 0.
    pub warmup_steps: u64,
    /// Schedule after warm-up. Default constant.
    pub lr_schedule: LrSchedule,
    /// Global gradient-norm clip (0: off). Default 1.0.
    pub grad_clip: f64,
    /// Problems per mini-batch (one optimiser step each). Default 64.
    pub mini_batch_prompts: usize,
    /// Trajectories per forward/backward (gradient accumulation). Default 8.
    pub micro_batch_size: usize,
    /// Passes over the step's data. Default 1.
    pub ppo_epochs: usize,
    /// Optimiser state sharding over data-parallel ranks (ZeRO): 0 every rank holds the whole
    /// AdamW state and gradients are all-reduced; 1 each rank holds the f32 master weights and
    /// moments of its shard only, gradients reduce-scattered once per update; 2 as 1, and
    /// gradients reduce-scattered after every micro-batch, so no whole f32 gradient is held.
    /// The same updates in every case (up to float summation order). Default 0.
    pub zero_stage: u8,
}

impl Default for OptimSection {
    fn default() -> Self {
        OptimSection {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup_steps: 0,
            lr_schedule: LrSchedule::Constant,
            grad_clip: 1.0,
            mini_batch_prompts: 64,
            micro_batch_size: 8,
            ppo_epochs: 1,
            zero_stage: 0,
        }
    }
}

/// Loop, outputs and safety.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerSection {
    /// `T`: training steps. Default 400.
    pub total_steps: u64,
    /// Problems per step. Default 128.
    pub batch_prompts: usize,
    /// Checkpoint every N steps (0: only at the end). Default 50.
    pub save_every: u64,
    /// Evaluate every N steps (0: never). Default 10.
    pub eval_every: u64,
    /// Where metrics and checkpoints go. Default runs/icpo.
    pub output_dir: String,
    /// Seed of every random draw. Default 42.
    pub seed: u64,
    /// Abort after this many non-finite updates in a row. Default 3.
    pub max_nonfinite_in_a_row: u32,
    /// Start afresh in an `output_dir` that already holds a run, deleting its checkpoints and
    /// metrics (without it such a start is refused; `--resume` continues the run instead).
    /// Default false.
    pub overwrite: bool,
    /// What a step does when a task reward fails on a rollout: `fail` (default: stop, naming
    /// the problem) or `skip` (leave the rollout out of the learning signal, counted in
    /// `reward/errors`; see [`crate::RewardErrors`]).
    pub reward_errors: crate::RewardErrors,
    /// Score rollouts on a thread of their own as the engine finishes them, while the rest
    /// decode (the rewards are the same as scoring afterwards). Default true.
    pub async_scoring: bool,
    /// Rollouts per reward call when scoring asynchronously (what `TaskReward::score_batch`
    /// receives at most). Default 64.
    pub scoring_batch: usize,
    /// Data-parallel runs: how long a rank waits for the others at start-up and in each
    /// collective before it stops, naming the rank that did not arrive. Default 300 s.
    pub dist_timeout_s: f64,
}

impl Default for TrainerSection {
    fn default() -> Self {
        TrainerSection {
            total_steps: 400,
            batch_prompts: 128,
            save_every: 50,
            eval_every: 10,
            output_dir: "runs/icpo".into(),
            seed: 42,
            max_nonfinite_in_a_row: 3,
            overwrite: false,
            reward_errors: crate::RewardErrors::Fail,
            async_scoring: true,
            scoring_batch: 64,
            dist_timeout_s: 300.0,
        }
    }
}

/// The whole config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The policy.
    pub model: ModelSection,
    /// Problems and demonstrations.
    pub data: DataSection,
    /// Sampling.
    pub rollout: RolloutSection,
    /// ICPO's components.
    pub algorithm: AlgorithmSection,
    /// The loss (icpo-core's `LossConfig`).
    pub loss: LossConfig,
    /// Optimiser.
    pub optim: OptimSection,
    /// Loop and outputs.
    pub trainer: TrainerSection,
}

fn cfg_err(key: &str, message: impl Into<String>) -> TrainError {
    TrainError::Config { key: key.into(), message: message.into() }
}

/// Every key of `doc` must exist in `defaults` (same nesting): the error names the first that
/// does not, with the valid keys of its section.
/// Tables whose keys are the user's own (passed through, not checked against the defaults).
const FREE_FORM_KEYS: [&str; 1] = ["data.chat_template_args"];

fn check_keys(doc: &toml::Value, defaults: &toml::Value, prefix: &str) -> Result<()> {
    if FREE_FORM_KEYS.contains(&prefix) {
        return Ok(());
    }
    let (Some(d), Some(t)) = (doc.as_table(), defaults.as_table()) else { return Ok(()) };
    for (k, v) in d {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match t.get(k) {
            Some(dv) => check_keys(v, dv, &key)?,
            // Optional fields absent from the defaults' serialisation are not in `t`; none here.
            None => {
                let valid: Vec<&String> = t.keys().collect();
                return Err(cfg_err(&key, format!("unknown key (valid here: {valid:?})")));
            }
        }
    }
    Ok(())
}

/// The default value at dotted `key`, as TOML, for error messages.
fn default_at(defaults: &toml::Value, key: &str) -> String {
    let mut node = Some(defaults);
    for part in key.split('.') {
        node = node.and_then(|n| n.get(part));
    }
    node.map_or_else(|| "unset".to_string(), ToString::to_string)
}

fn set_key(doc: &mut toml::Value, assignment: &str) -> Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| cfg_err(assignment, "an override must look like section.key=value"))?;
    let key = key.trim();
    // A TOML literal when it parses as one (numbers, bools, quoted strings), else a bare string.
    let value = toml::from_str::<toml::Table>(&format!("v = {}", raw.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let mut node = doc;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let table = node.as_table_mut().ok_or_else(|| cfg_err(key, "not a section"))?;
        if i + 1 == parts.len() {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        node =
            table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    Err(cfg_err(key, "empty key"))
}

impl TrainConfig {
    /// Reads a TOML file (or the defaults when `path` is None), applies `overrides`
    /// (`section.key=value`) and validates.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let mut doc = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(io_err(p))?;
                toml::from_str::<toml::Value>(&text).map_err(|e| TrainError::Data {
                    path: p.into(),
                    line: 0,
                    message: format!("malformed TOML: {e}"),
                })?
            }
            None => toml::Value::Table(toml::Table::new()),
        };
        for o in overrides {
            set_key(&mut doc, o)?;
        }
        let defaults = toml::Value::try_from(TrainConfig::default())
            .map_err(|e| cfg_err("(defaults)", e.to_string()))?;
        check_keys(&doc, &defaults, "")?;
        // Through serde_path_to_error so a mistyped value names its key, not only itself.
        let cfg: TrainConfig = serde_path_to_error::deserialize(doc).map_err(|e| {
            let key = e.path().to_string();
            cfg_err(
                &key,
                format!("{} (the default is {})", e.inner().message(), default_at(&defaults, &key)),
            )
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Range checks; the error names the key.
    pub fn validate(&self) -> Result<()> {
        match (self.model.dtype, self.model.compute_dtype) {
            (DType::F16, _) => {
                return Err(cfg_err(
                    "model.dtype",
                    "float16 weights are not supported for training (they need loss scaling); use \"bfloat16\" (f32 master weights in the optimiser) or \"float32\"",
                ))
            }
            (DType::BF16, c) if c != DType::BF16 => {
                return Err(cfg_err(
                    "model.compute_dtype",
                    format!("{} with bfloat16 weights would compute no wider than the weights; set model.compute_dtype = \"bfloat16\"", c.hf_name()),
                ))
            }
            _ => {}
        }
        self.model.load_options()?;
        let positive =
            |key: &str, v: usize| if v == 0 { Err(cfg_err(key, "must be ≥ 1")) } else { Ok(()) };
        positive("rollout.group_size", self.rollout.group_size)?;
        positive("rollout.max_new_tokens", self.rollout.max_new_tokens)?;
        positive("trainer.batch_prompts", self.trainer.batch_prompts)?;
        positive("optim.mini_batch_prompts", self.optim.mini_batch_prompts)?;
        positive("optim.micro_batch_size", self.optim.micro_batch_size)?;
        positive("optim.ppo_epochs", self.optim.ppo_epochs)?;
        if self.optim.zero_stage > 2 {
            return Err(cfg_err(
                "optim.zero_stage",
                format!(
                    "{} is not a stage: 0 (replicated), 1 or 2 (sharded)",
                    self.optim.zero_stage
                ),
            ));
        }
        positive("data.max_prompt_tokens", self.data.max_prompt_tokens)?;
        positive("trainer.scoring_batch", self.trainer.scoring_batch)?;
        if self.trainer.total_steps == 0 {
            return Err(cfg_err("trainer.total_steps", "must be ≥ 1"));
        }
        if self.rollout.group_size < 2 {
            return Err(cfg_err("rollout.group_size", "must be ≥ 2 for group-relative advantages"));
        }
        if self.algorithm.ief && self.rollout.demos == 0 {
            return Err(cfg_err("rollout.demos", "IEF needs at least one demonstration"));
        }
        for (key, v, ok) in [
            ("optim.lr", self.optim.lr, self.optim.lr > 0.0),
            ("optim.beta1", self.optim.beta1, (0.0..1.0).contains(&self.optim.beta1)),
            ("optim.beta2", self.optim.beta2, (0.0..1.0).contains(&self.optim.beta2)),
            ("optim.eps", self.optim.eps, self.optim.eps > 0.0),
            ("optim.weight_decay", self.optim.weight_decay, self.optim.weight_decay >= 0.0),
            ("optim.grad_clip", self.optim.grad_clip, self.optim.grad_clip >= 0.0),
            ("rollout.temperature", self.rollout.temperature, self.rollout.temperature >= 0.0),
            (
                "rollout.top_p",
                self.rollout.top_p,
                self.rollout.top_p > 0.0 && self.rollout.top_p <= 1.0,
            ),
            (
                "algorithm.shaping_alpha",
                self.algorithm.shaping_alpha,
                self.algorithm.shaping_alpha >= 0.0,
            ),
            ("algorithm.epsilon", self.algorithm.epsilon, self.algorithm.epsilon >= 0.0),
            (
                "algorithm.shaping_decay_steps",
                self.algorithm.shaping_decay_steps,
                self.algorithm.shaping_decay_steps > 0.0,
            ),
            ("algorithm.errs.delta", self.algorithm.errs.delta, true),
            (
                "trainer.dist_timeout_s",
                self.trainer.dist_timeout_s,
                self.trainer.dist_timeout_s > 0.0,
            ),
        ] {
            if !(v.is_finite() && ok) {
                return Err(cfg_err(key, format!("{v} is out of range")));
            }
        }
        self.loss.validate().map_err(|e| cfg_err("loss", e.to_string()))?;
        self.data.few_shot.validate().map_err(|e| cfg_err("data.few_shot.item", e.to_string()))?;
        Ok(())
    }

    /// For drivers that load the policy and the problems from the config's files (`icpo_math
    /// --config`): `model.path` and `data.train_path` must be set. A trainer built from a
    /// policy and problems in memory needs neither.
    pub fn require_paths(&self) -> Result<()> {
        if self.model.path.is_empty() {
            return Err(cfg_err("model.path", "required"));
        }
        if self.data.train_path.is_empty() {
            return Err(cfg_err("data.train_path", "required"));
        }
        Ok(())
    }

    /// GRPO's defaults: no IEF rollouts (so neither ERRS nor the expert bonus), everything else
    /// as [`TrainConfig::default`] (group of 8, token-mean loss, k3 KL 0.001, lr 1e-6).
    pub fn grpo() -> Self {
        let mut cfg = TrainConfig::default();
        cfg.algorithm.ief = false;
        cfg.algorithm.shaping = false;
        cfg.rollout.ief_samples = 0;
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<String> {
        vec!["model.path=\"m\"".into(), "data.train_path=\"d.jsonl\"".into()]
    }

    #[test]
    fn defaults_are_the_papers() {
        let c = TrainConfig::load(None, &base()).unwrap();
        assert_eq!(c.optim.lr, 1e-6);
        assert_eq!(c.loss.ief_lambda, 0.1);
        assert_eq!(c.loss.kl_coef, 0.001);
        assert_eq!(c.trainer.total_steps, 400);
        assert_eq!(c.rollout.group_size, 8);
        assert!(c.algorithm.errs.enabled && c.algorithm.errs.delta == 1.0);
    }

    #[test]
    fn overrides_and_errors_name_the_key() {
        let mut o = base();
        o.push("loss.ief_lambda=0.01".into());
        o.push("algorithm.shaping_schedule=cosine".into());
        let c = TrainConfig::load(None, &o).unwrap();
        assert_eq!(c.loss.ief_lambda, 0.01);
        assert_eq!(c.algorithm.shaping_schedule, ShapingSchedule::Cosine);
        let mut bad = base();
        bad.push("rollout.grup_size=4".into());
        let e = TrainConfig::load(None, &bad).unwrap_err().to_string();
        assert!(e.contains("rollout.grup_size") && e.contains("group_size"), "{e}");
        let mut bad = base();
        bad.push("optim.lr=-1".into());
        assert!(TrainConfig::load(None, &bad).unwrap_err().to_string().contains("optim.lr"));
        let mut bad = base();
        bad.push("algorithm.advantage=ppo".into());
        let e = TrainConfig::load(None, &bad).unwrap_err().to_string();
        assert!(e.contains("ppo") && e.contains("grpo"), "{e}");
        // Paths are asked for by the file drivers (`require_paths`), not by `load`.
        let empty = TrainConfig::load(None, &[]).unwrap();
        assert!(empty.require_paths().unwrap_err().to_string().contains("model.path"));
    }
}

#[cfg(test)]
mod paper_configs {
    use super::*;

    /// Every file in configs/ is a valid config whose values are the spec's §6.
    #[test]
    fn shipped_configs_parse_with_the_papers_values() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = TrainConfig::load(Some(&path), &[]).unwrap();
                assert_eq!(
                    (c.optim.lr, c.trainer.total_steps, c.trainer.batch_prompts),
                    (1e-6, 400, 128),
                    "{path:?}"
                );
                assert_eq!(
                    (c.loss.ief_lambda, c.loss.kl_coef, c.rollout.max_new_tokens),
                    (0.1, 0.001, 8192)
                );
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                assert_eq!(c.algorithm.ief, !name.contains("grpo"), "{name}");
                assert_eq!(c.algorithm.shaping, name.contains("-rs"), "{name}");
                assert_eq!(c.optim.mini_batch_prompts, if name.contains("8b") { 32 } else { 64 });
                // The authors' scripts train Qwen/Qwen3-{1.7B,8B}, not the -Base checkpoints.
                assert!(
                    c.model.path.ends_with(if name.contains("8b") {
                        "Qwen3-8B"
                    } else {
                        "Qwen3-1.7B"
                    }),
                    "{name}: {}",
                    c.model.path
                );
                // Mixed precision as GPU trainers run it: bf16 weights and products (f32
                // master weights in the optimiser).
                assert_eq!((c.model.dtype, c.model.compute_dtype), (DType::BF16, DType::BF16));
                n += 1;
            }
        }
        assert_eq!(n, 6);
    }

    /// The GRPO preset and the in-memory case: no paths needed to validate, required (by
    /// name) only by file-driven drivers.
    #[test]
    fn grpo_preset_and_paths_for_file_drivers() {
        let g = TrainConfig::grpo();
        assert!(!g.algorithm.ief && !g.algorithm.shaping && g.rollout.ief_samples == 0);
        assert_eq!(g.rollout.group_size, TrainConfig::default().rollout.group_size);
        g.validate().unwrap();
        let e = g.require_paths().unwrap_err().to_string();
        assert!(e.contains("model.path"), "{e}");
        let mut named = TrainConfig::grpo();
        named.model.path = "m".into();
        let e = named.require_paths().unwrap_err().to_string();
        assert!(e.contains("data.train_path"), "{e}");
        named.data.train_path = "t.jsonl".into();
        named.require_paths().unwrap();
        // Loading without paths is fine now; the config file drivers ask for them.
        TrainConfig::load(None, &[]).unwrap();
    }

    #[test]
    fn narrow_weights_and_bad_devices_are_refused_by_name() {
        let path = ["model.path=\"m\"".to_string(), "data.train_path=\"t.jsonl\"".to_string()];
        let with = |extra: &str| {
            let mut o = path.to_vec();
            o.push(extra.to_string());
            TrainConfig::load(None, &o).map(|_| ()).unwrap_err().to_string()
        };
        let e = with("model.dtype=\"float16\"");
        assert!(e.contains("model.dtype") && e.contains("loss scaling"), "{e}");
        // bf16 weights need bf16 products.
        let e = with("model.dtype=\"bfloat16\"");
        assert!(e.contains("model.compute_dtype") && e.contains("float32"), "{e}");
        let e = with("model.device=\"tpu\"");
        assert!(e.contains("model.device"), "{e}");
        let ok = TrainConfig::load(
            None,
            &[path[0].clone(), path[1].clone(), "model.compute_dtype=\"bfloat16\"".into()],
        )
        .unwrap();
        let opts = ok.model.load_options().unwrap();
        assert_eq!((opts.dtype, opts.compute_dtype), (DType::F32, Some(DType::BF16)));
        // The reference is held in the compute dtype.
        let opts = ok.model.reference_load_options().unwrap();
        assert_eq!((opts.dtype, opts.compute_dtype), (DType::BF16, Some(DType::BF16)));
    }
}
