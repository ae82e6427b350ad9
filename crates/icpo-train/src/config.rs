//! The training config: one TOML file, every field of ICPO.md §5–6 with the paper's values as
//! defaults, `--set section.key=value` overrides, unknown keys and bad values named.

use icpo_core::{AdvantageEstimator, ErrsConfig, LossConfig, ShapingSchedule};
use icpo_policy::Tokenizer;
use icpo_policy::{DType, DeviceOpt, LoadOptions};
use icpo_rollout::{PromptBuilder, PromptTemplate, DEFAULT_INSTRUCTION};
use serde::{Deserialize, Serialize};

use crate::config_load::cfg_err;
use crate::error::Result;

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
