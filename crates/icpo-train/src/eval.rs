//! Evaluation (ICPO.md §7): sample answers to a benchmark's problems and grade them.

use icpo_policy::{CausalLm, Tokenizer};
use icpo_rollout::{generate, EngineConfig, PromptBuilder, Request, SamplingParams};
use icpo_verify::Reward;
use serde::Serialize;

use crate::data::Problem;
use crate::error::Result;

/// Evaluation settings: LUFFY's protocol by default.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// Sampling (default temperature 0.6, top-p 0.95, 8,192 new tokens).
    pub sampling: SamplingParams,
    /// Samples per problem: accuracy is their mean (avg@k; 1 is pass@1).
    pub samples: usize,
    /// Seed of the sampling streams.
    pub seed: u64,
    /// Engine bound on tokens in flight.
    pub engine: EngineConfig,
    /// Global index of `problems[0]` when they are one rank's shard of a benchmark, so each
    /// sample draws what it would in the whole benchmark (0 otherwise).
    pub first_prompt: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            sampling: SamplingParams {
                temperature: 0.6,
                top_p: 0.95,
                max_new_tokens: 8192,
                ..Default::default()
            },
            samples: 1,
            seed: 0,
            engine: EngineConfig::default(),
            first_prompt: 0,
        }
    }
}

/// One graded response (written to the responses JSONL so the grading can be audited).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Graded {
    /// Problem id.
    pub id: String,
    /// Sample index.
    pub sample: usize,
    /// Reference answer.
    pub answer: String,
    /// The response text.
    pub response: String,
    /// The reward (1 correct, 0 not).
    pub reward: f64,
}

/// Accuracy over a benchmark and every graded response.
#[derive(Debug, Clone, Serialize)]
pub struct EvalResult {
    /// Mean reward over problems and samples.
    pub accuracy: f64,
    /// Problems evaluated.
    pub problems: usize,
    /// Samples per problem.
    pub samples: usize,
    /// Every response with its verdict.
    pub responses: Vec<Graded>,
}

/// Generates `cfg.samples` answers per problem with plain prompts and grades them.
pub fn evaluate(
    policy: &CausalLm,
    tokenizer: &Tokenizer,
    builder: &PromptBuilder<'_>,
    problems: &[Problem],
    reward: &dyn Reward,
    eos_token_ids: &[i64],
    cfg: &EvalConfig,
) -> Result<EvalResult> {
    // NaN or ∞ weights give meaningless samples that would score as 0% without complaint.
    policy.check_finite()?;
    let prompts: Vec<Vec<i64>> = problems
        .iter()
        .map(|p| builder.plain(&p.problem))
        .collect::<std::result::Result<_, _>>()?;
    let req = Request {
        prompts: &prompts,
        n: cfg.samples,
        params: &cfg.sampling,
        eos_token_ids,
        seed: cfg.seed,
        first_prompt: cfg.first_prompt,
    };
    let out = generate(policy, &req, None, &cfg.engine)?;
    let texts: Vec<String> = out
        .iter()
        .map(|r| tokenizer.decode(&r.tokens, true))
        .collect::<std::result::Result<_, _>>()?;
    let pairs: Vec<(&str, &str)> = out
        .iter()
        .zip(&texts)
        .map(|(r, t)| (problems[r.prompt_index].answer.as_str(), t.as_str()))
        .collect();
    let rewards = reward.score_batch(&pairs);
    let responses: Vec<Graded> = out
        .iter()
        .zip(texts)
        .zip(&rewards)
        .map(|((r, text), &reward)| Graded {
            id: problems[r.prompt_index].id.clone(),
            sample: r.sample_index,
            answer: problems[r.prompt_index].answer.clone(),
            response: text,
            reward,
        })
        .collect();
    let accuracy =
        if rewards.is_empty() { 0.0 } else { rewards.iter().sum::<f64>() / rewards.len() as f64 };
    Ok(EvalResult { accuracy, problems: problems.len(), samples: cfg.samples, responses })
}

/// Samples per problem of ICPO.md §7 for a benchmark file name: avg@32 for AIME and AMC,
/// pass@1 otherwise.
pub fn protocol_samples(benchmark: &str) -> usize {
    let name = benchmark.to_lowercase();
    if name.contains("aime") || name.contains("amc") {
        32
    } else {
        1
    }
}

/// Writes every graded response as one JSON line (so a user can audit the grader).
pub fn write_responses(path: &std::path::Path, benchmark: &str, result: &EvalResult) -> Result<()> {
    let mut text = String::new();
    for g in &result.responses {
        let mut v = serde_json::to_value(g)
            .map_err(|e| crate::error::TrainError::Aborted(e.to_string()))?;
        v["benchmark"] = serde_json::Value::String(benchmark.to_string());
        text.push_str(&v.to_string());
        text.push('\n');
    }
    crate::error::write_atomic(path, text.as_bytes())
}
