//! Padded tensors for a set of trajectories: plain prompts left-padded, responses right-padded.

use tch::{Device, Kind, Tensor};

use crate::error::Result;

/// One trajectory as the trainer sees it.
#[derive(Debug, Clone)]
pub struct Trajectory {
    /// Index of its problem in the step's batch (its group).
    pub group: usize,
    /// Plain-prompt ids: IEF trajectories are scored after the plain prompt too (ICPO.md §1).
    pub prompt: Vec<i64>,
    /// Response ids.
    pub response: Vec<i64>,
    /// Sampled with demonstrations in context (and accepted by ERRS).
    pub is_ief: bool,
    /// Verifier reward.
    pub reward: f64,
    /// Reward after shaping.
    pub shaped_reward: f64,
    /// Advantage.
    pub advantage: f64,
    /// `log π_old` per response token.
    pub old_logp: Vec<f32>,
    /// `log π_ref` per response token (empty when β = 0).
    pub ref_logp: Vec<f32>,
}

/// Tensors of a micro-batch.
///
/// # Shapes
/// - `prompt_ids`, `prompt_mask`: `(batch, prompt_len)`
/// - `response_ids`, `response_mask`, `old_logp`, `ref_logp`: `(batch, response_len)`
/// - `advantages`, `is_ief`: `(batch,)`
pub(crate) struct Padded {
    pub(crate) prompt_ids: Tensor,
    pub(crate) prompt_mask: Tensor,
    pub(crate) response_ids: Tensor,
    pub(crate) response_mask: Tensor,
    pub(crate) old_logp: Tensor,
    pub(crate) ref_logp: Tensor,
    pub(crate) advantages: Tensor,
    pub(crate) is_ief: Tensor,
    /// Response tokens in the micro-batch.
    pub(crate) tokens: usize,
    /// Trajectories with at least one response token.
    pub(crate) nonempty: usize,
}

fn rows_f32(rows: &[&[f32]], width: usize, device: Device) -> Result<Tensor> {
    let mut flat = vec![0f32; rows.len() * width];
    for (i, r) in rows.iter().enumerate() {
        flat[i * width..i * width + r.len()].copy_from_slice(r);
    }
    Ok(Tensor::f_from_slice(&flat)?
        .f_view([rows.len() as i64, width as i64])?
        .f_to_device(device)?)
}

impl Padded {
    /// The policy's per-token log-probs of these responses after these prompts.
    pub(crate) fn logprobs(
        &self,
        model: &icpo_policy::CausalLm,
        entropy: icpo_policy::Entropy,
    ) -> Result<icpo_policy::TokenLogprobs> {
        Ok(model.response_logprobs(
            &self.prompt_ids,
            &self.prompt_mask,
            &self.response_ids,
            &self.response_mask,
            entropy,
        )?)
    }
}

/// Pads trajectories into tensors on `device`.
pub(crate) fn pad(trajs: &[&Trajectory], device: Device) -> Result<Padded> {
    let b = trajs.len();
    let plen = trajs.iter().map(|t| t.prompt.len()).max().unwrap_or(1).max(1);
    let rlen = trajs.iter().map(|t| t.response.len()).max().unwrap_or(1).max(1);
    let mut p_ids = vec![0i64; b * plen];
    let mut p_mask = vec![0i64; b * plen];
    let mut r_ids = vec![0i64; b * rlen];
    let mut r_mask = vec![0f32; b * rlen];
    for (i, t) in trajs.iter().enumerate() {
        let off = i * plen + plen - t.prompt.len();
        p_ids[off..off + t.prompt.len()].copy_from_slice(&t.prompt);
        p_mask[off..off + t.prompt.len()].iter_mut().for_each(|m| *m = 1);
        r_ids[i * rlen..i * rlen + t.response.len()].copy_from_slice(&t.response);
        r_mask[i * rlen..i * rlen + t.response.len()].iter_mut().for_each(|m| *m = 1.0);
    }
    let shape_p = [b as i64, plen as i64];
    let shape_r = [b as i64, rlen as i64];
    let old: Vec<&[f32]> = trajs.iter().map(|t| t.old_logp.as_slice()).collect();
    let refs: Vec<&[f32]> = trajs.iter().map(|t| t.ref_logp.as_slice()).collect();
    let adv: Vec<f32> = trajs.iter().map(|t| t.advantage as f32).collect();
    let ief: Vec<i64> = trajs.iter().map(|t| i64::from(t.is_ief)).collect();
    Ok(Padded {
        prompt_ids: Tensor::f_from_slice(&p_ids)?.f_view(shape_p)?.f_to_device(device)?,
        prompt_mask: Tensor::f_from_slice(&p_mask)?.f_view(shape_p)?.f_to_device(device)?,
        response_ids: Tensor::f_from_slice(&r_ids)?.f_view(shape_r)?.f_to_device(device)?,
        response_mask: Tensor::f_from_slice(&r_mask)?.f_view(shape_r)?.f_to_device(device)?,
        old_logp: rows_f32(&old, rlen, device)?,
        ref_logp: rows_f32(&refs, rlen, device)?,
        advantages: Tensor::f_from_slice(&adv)?.f_to_device(device)?,
        is_ief: Tensor::f_from_slice(&ief)?.f_to_device(device)?,
        tokens: trajs.iter().map(|t| t.response.len()).sum(),
        nonempty: trajs.iter().filter(|t| !t.response.is_empty()).count(),
    })
}

/// Per-token log-probs of each row as vectors (response length each).
pub(crate) fn unpad(t: &Tensor, trajs: &[&Trajectory]) -> Result<Vec<Vec<f32>>> {
    let rows: Vec<Vec<f32>> = Vec::try_from(&t.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?)?;
    Ok(rows.into_iter().zip(trajs).map(|(r, t)| r[..t.response.len()].to_vec()).collect())
}
