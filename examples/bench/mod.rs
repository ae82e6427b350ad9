//! What the benchmark examples (`rollout_bench`, `grpo_step_bench`, `train_pass_bench`) share:
//! the workload's flags, loading the policy, and random prompt ids.

use anyhow::Result;
use icpo::policy::{CausalLm, DType, LoadOptions};
use rand::Rng;

// The workload: random prompts of a random policy, and the machine settings. (A plain comment:
// clap would show a doc comment as the `about` of every example that flattens this.)
#[derive(clap::Args)]
pub struct Workload {
    /// Checkpoint directory.
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value_t = 8)]
    pub prompts: usize,
    /// Samples per prompt (the group size).
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    #[arg(long, default_value_t = 24)]
    pub prompt_len: usize,
    /// libtorch threads.
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Dtype of products: float32 (default, as the side-by-side runs) or bfloat16 (mixed
    /// precision: f32 weights, bf16 products).
    #[arg(long, default_value = "float32")]
    pub compute_dtype: String,
}

impl Workload {
    /// Sets libtorch's thread count and loads the policy with `--compute-dtype`.
    pub fn load_policy(&self) -> Result<CausalLm> {
        tch::set_num_threads(self.threads);
        let compute = DType::from_hf_name(&self.compute_dtype)
            .map_err(|e| anyhow::anyhow!("--compute-dtype: {e}"))?;
        let options = LoadOptions { compute_dtype: Some(compute), ..Default::default() };
        Ok(CausalLm::load(&self.model, options)?)
    }

    /// `--prompts` prompts of `--prompt-len` ids below `vocab`, drawn from `rng`.
    pub fn random_prompts(&self, vocab: i64, rng: &mut impl Rng) -> Vec<Vec<i64>> {
        random_ids(self.prompts, self.prompt_len, vocab, rng)
    }
}

/// `rows` sequences of `len` ids below `vocab`, drawn from `rng`.
pub fn random_ids(rows: usize, len: usize, vocab: i64, rng: &mut impl Rng) -> Vec<Vec<i64>> {
    (0..rows).map(|_| (0..len).map(|_| rng.gen_range(0..vocab)).collect()).collect()
}
