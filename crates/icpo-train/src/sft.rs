//! Supervised steps (teacher-forced cross-entropy on responses), for warm starts.

use std::collections::BTreeMap;

use icpo_policy::CausalLm;
use tch::{Kind, Tensor};

use crate::batch::{pad, Trajectory};
use crate::config::OptimSection;
use crate::error::{Result, TrainError};
use crate::optim::AdamW;

/// One AdamW step on the mean negative log-likelihood of `responses` after `prompts` (token
/// mean over the batch). Returns the loss before the update.
pub fn supervised_step(
    policy: &CausalLm,
    optim: &mut AdamW,
    cfg: &OptimSection,
    lr: f64,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
) -> Result<f64> {
    if prompts.len() != responses.len() || prompts.is_empty() {
        return Err(TrainError::Aborted(format!(
            "{} prompts for {} responses",
            prompts.len(),
            responses.len()
        )));
    }
    let trajs: Vec<Trajectory> = prompts
        .iter()
        .zip(responses)
        .map(|(p, r)| Trajectory {
            group: 0,
            prompt: p.clone(),
            response: r.clone(),
            is_ief: false,
            reward: 0.0,
            shaped_reward: 0.0,
            advantage: 0.0,
            old_logp: vec![0.0; r.len()],
            ref_logp: vec![0.0; r.len()],
        })
        .collect();
    let refs: Vec<&Trajectory> = trajs.iter().collect();
    let b = pad(&refs, policy.device())?;
    let lp = b.logprobs(policy, icpo_policy::Entropy::Skip)?;
    let n = b.response_mask.f_sum(Kind::Float)?.f_clamp_min(1.0)?;
    let loss = lp.logprobs.f_neg()?.f_sum(Kind::Float)?.f_div(&n)?;
    let value = loss.f_double_value(&[])?;
    if !value.is_finite() {
        return Err(TrainError::Aborted("non-finite supervised loss".into()));
    }
    loss.backward();
    let params: BTreeMap<String, Tensor> = policy.named_weights().into_iter().collect();
    let norm = optim.grad_norm(&params)?;
    optim.step(&params, cfg, lr, norm)?;
    Ok(value)
}
