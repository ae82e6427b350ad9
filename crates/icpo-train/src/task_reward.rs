//! Rewards for real tasks: they see the whole problem (every dataset field), the prompt, the
//! response text and tokens and why it ended; they may fail, and may report metrics of their
//! own. The math verifier ([`crate::Scorer::Text`]) is one reward; a countdown game, unit tests
//! run in a sandbox, or a weighted mix of several are others.

use std::collections::BTreeMap;

use icpo_rollout::FinishReason;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Problem;

/// What a reward sees of one rollout.
#[derive(Debug, Clone, Copy)]
pub struct RewardInput<'a> {
    /// The problem, with every field of its dataset row in `problem.fields`.
    pub problem: &'a Problem,
    /// The prompt the rollout was sampled from, as text (for IEF rollouts, the prompt with the
    /// demonstrations in context).
    pub prompt: &'a str,
    /// The response as text (special tokens skipped).
    pub response: &'a str,
    /// The response's token ids.
    pub tokens: &'a [i64],
    /// Why the response ended.
    pub finish_reason: &'a FinishReason,
    /// Sampled with demonstrations in context.
    pub is_ief: bool,
}

/// A reward's verdict on one rollout.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RewardOutput {
    /// The reward.
    pub score: f64,
    /// Named diagnostics, averaged over the step's rollouts into `reward/<name>` metrics.
    pub metrics: BTreeMap<String, f64>,
}

impl From<f64> for RewardOutput {
    fn from(score: f64) -> Self {
        RewardOutput { score, metrics: BTreeMap::new() }
    }
}

/// A reward function for a task. Implemented for closures
/// `Fn(&RewardInput) -> Result<f64, String>`; an error (a sandbox outage, a malformed
/// dataset row) is handled by `trainer.reward_errors`, never turned into a silent 0.
pub trait TaskReward: Send + Sync {
    /// The reward of one rollout, or why there is none.
    fn score(&self, input: &RewardInput<'_>) -> Result<RewardOutput, String>;

    /// Rewards of many rollouts, in order (in parallel by default; override to batch calls to
    /// a service).
    fn score_batch(&self, inputs: &[RewardInput<'_>]) -> Vec<Result<RewardOutput, String>> {
        inputs.par_iter().map(|i| self.score(i)).collect()
    }
}

/// The math verifier as a task reward: the response against the problem's `answer` (1 or 0),
/// so it mixes with rewards of one's own in [`WeightedRewards`].
impl TaskReward for icpo_verify::MathReward {
    fn score(&self, input: &RewardInput<'_>) -> Result<RewardOutput, String> {
        Ok(icpo_verify::Reward::score(self, &input.problem.answer, input.response).into())
    }
}

impl<F> TaskReward for F
where
    F: Fn(&RewardInput<'_>) -> Result<f64, String> + Send + Sync,
{
    fn score(&self, input: &RewardInput<'_>) -> Result<RewardOutput, String> {
        self(input).map(RewardOutput::from)
    }
}

/// Several rewards summed with weights; each part's score is logged as `reward/<name>` (and
/// its own metrics as `reward/<name>/<metric>`). An error in any part is the mix's error.
#[derive(Default)]
pub struct WeightedRewards {
    parts: Vec<(String, f64, Box<dyn TaskReward>)>,
}

impl WeightedRewards {
    /// An empty mix.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `reward` with `weight`, logged under `name`.
    pub fn with(mut self, name: &str, weight: f64, reward: impl TaskReward + 'static) -> Self {
        self.parts.push((name.to_string(), weight, Box::new(reward)));
        self
    }
}

impl TaskReward for WeightedRewards {
    fn score(&self, input: &RewardInput<'_>) -> Result<RewardOutput, String> {
        let mut out = RewardOutput::default();
        for (name, weight, reward) in &self.parts {
            let part = reward.score(input).map_err(|e| format!("{name}: {e}"))?;
            out.score += weight * part.score;
            out.metrics.insert(name.clone(), part.score);
            for (k, v) in part.metrics {
                out.metrics.insert(format!("{name}/{k}"), v);
            }
        }
        Ok(out)
    }
}

/// What a step does with a rollout whose reward failed (`trainer.reward_errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RewardErrors {
    /// Stop the step with an error naming the problem and the reward's message (default).
    #[default]
    Fail,
    /// Leave the rollout out of the learning signal: an on-policy rollout takes its group's
    /// mean reward (so its advantage is exactly 0), an IEF rollout is not accepted by ERRS
    /// (reward 0); counted in `reward/errors`.
    Skip,
}

/// A batch of rollouts scored: each reward (`None` where the reward failed and the policy is
/// to skip), and the sums and counts of the rewards' own metrics.
pub(crate) struct Scored {
    pub(crate) rewards: Vec<Option<f64>>,
    pub(crate) errors: usize,
    pub(crate) metrics: BTreeMap<String, (f64, usize)>,
}

impl Scored {
    /// The rewards of on-policy groups of `g`, a skipped one taking its group's mean (so its
    /// advantage is 0; 0 when the whole group failed).
    pub(crate) fn group_filled(&self, g: usize) -> Vec<f64> {
        self.rewards
            .chunks(g.max(1))
            .flat_map(|group| {
                let ok: Vec<f64> = group.iter().flatten().copied().collect();
                let mean =
                    if ok.is_empty() { 0.0 } else { ok.iter().sum::<f64>() / ok.len() as f64 };
                group.iter().map(move |r| r.unwrap_or(mean))
            })
            .collect()
    }
}

/// The task reward's outputs for `rollouts`, in order: `problems[r.prompt_index]` and
/// `prompt_texts[r.prompt_index]` go with each.
pub(crate) fn task_outputs(
    reward: &dyn TaskReward,
    tokenizer: &icpo_policy::Tokenizer,
    problems: &[Problem],
    prompt_texts: &[String],
    rollouts: &[icpo_rollout::Rollout],
    is_ief: bool,
) -> crate::error::Result<Vec<Result<RewardOutput, String>>> {
    let texts: Vec<String> =
        rollouts.iter().map(|r| tokenizer.decode(&r.tokens, true)).collect::<Result<_, _>>()?;
    let inputs: Vec<RewardInput<'_>> = rollouts
        .iter()
        .zip(&texts)
        .map(|(r, text)| RewardInput {
            problem: &problems[r.prompt_index],
            prompt: &prompt_texts[r.prompt_index],
            response: text,
            tokens: &r.tokens,
            finish_reason: &r.finish_reason,
            is_ief,
        })
        .collect();
    Ok(reward.score_batch(&inputs))
}

/// Folds the outputs of `rollouts`' rewards (in their order) into a [`Scored`]: an error
/// stops here under [`RewardErrors::Fail`] (naming the problem), and is left as `None` under
/// [`RewardErrors::Skip`].
pub(crate) fn fold_outputs(
    outputs: Vec<Result<RewardOutput, String>>,
    policy: RewardErrors,
    problems: &[Problem],
    rollouts: &[icpo_rollout::Rollout],
    is_ief: bool,
) -> crate::error::Result<Scored> {
    let mut out =
        Scored { rewards: Vec::with_capacity(outputs.len()), errors: 0, metrics: BTreeMap::new() };
    for (r, result) in rollouts.iter().zip(outputs) {
        match result {
            Ok(o) => {
                out.rewards.push(Some(o.score));
                for (k, v) in o.metrics {
                    let e = out.metrics.entry(k).or_default();
                    e.0 += v;
                    e.1 += 1;
                }
            }
            Err(message) if policy == RewardErrors::Fail => {
                return Err(crate::error::TrainError::Aborted(format!(
                    "the reward failed on problem `{}` ({} rollout): {message} (trainer.reward_errors = \"skip\" leaves such rollouts out instead)",
                    problems[r.prompt_index].id,
                    if is_ief { "an IEF" } else { "an on-policy" }
                )));
            }
            Err(_) => {
                out.rewards.push(None);
                out.errors += 1;
            }
        }
    }
    Ok(out)
}
