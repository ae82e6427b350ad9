//! The mixed-policy loss of ICPO.md §5 on `(batch, response_len)` tensors.

use std::collections::BTreeMap;

use icpo_core::{KlEstimator, LossConfig, PolicyLoss, KL_CLAMP, LOG_RATIO_CLAMP};
use tch::Tensor;

use crate::agg::{aggregate, masked_mean, scalar};
use crate::error::{LossError, Result};

/// Inputs of [`policy_loss`].
///
/// # Shapes
/// - `logp`, `old_logp`, `ref_logp`, `entropy`, `response_mask`: `(batch, response_len)`
/// - `advantages`, `is_ief`: `(batch,)`
///
/// Log-probs of IEF rows are taken after the plain prompt (§1). Values at padding positions are
/// ignored (they may be anything, even non-finite); at response tokens they must be finite.
#[derive(Debug, Clone, Copy)]
pub struct LossInputs<'a> {
    /// Current policy's per-token log-probs; the loss is differentiable w.r.t. it.
    pub logp: &'a Tensor,
    /// Log-probs of the policy that sampled the rollouts (unused on IEF rows).
    pub old_logp: &'a Tensor,
    /// Reference policy's log-probs; required when `kl_coef > 0`.
    pub ref_logp: Option<&'a Tensor>,
    /// Per-token entropy; required when `entropy_coef > 0`, reported when given.
    pub entropy: Option<&'a Tensor>,
    /// Per-sequence advantages.
    pub advantages: &'a Tensor,
    /// 1 (or true) at response tokens, 0 at padding.
    pub response_mask: &'a Tensor,
    /// True for accepted IEF trajectories.
    pub is_ief: &'a Tensor,
}

/// Result of [`policy_loss`].
#[derive(Debug)]
pub struct LossOutput {
    /// Scalar `pg_loss + β·kl − entropy_coef·entropy`, differentiable.
    pub loss: Tensor,
    /// `actor/pg_loss`, `actor/pg_clipfrac`, `actor/ppo_kl`, `actor/ief_prob_mean`, and
    /// `actor/kl`, `actor/entropy` when computed.
    pub metrics: BTreeMap<String, f64>,
}

/// Per-token KL estimate of §5, clamped to ±10; for k3, `x = log π_ref − log π_θ` is clamped
/// to ±20 before `exp` (as verl), so extreme log-probs never give ∞ and a NaN gradient.
///
/// # Shapes
/// - `logp`, `ref_logp`: `(batch, response_len)`; result likewise
pub fn kl_penalty(logp: &Tensor, ref_logp: &Tensor, estimator: KlEstimator) -> Result<Tensor> {
    let x = ref_logp.f_sub(logp)?;
    let kl = match estimator {
        KlEstimator::K1 => x.f_neg()?,
        KlEstimator::K2 => x.f_square()?.f_mul_scalar(0.5)?,
        KlEstimator::K3 => {
            let x = x.f_clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)?;
            x.f_exp()?.f_sub(&x)?.f_sub_scalar(1.0)?
        }
    };
    Ok(kl.f_clamp(-KL_CLAMP, KL_CLAMP)?)
}

fn check_2d(name: &str, t: &Tensor, want: &[i64]) -> Result<()> {
    if t.size() != want {
        return Err(LossError::Shape(format!(
            "`{name}` has shape {:?}, expected (batch, response_len) = {want:?}",
            t.size()
        )));
    }
    Ok(())
}

/// Replaces padding positions by 0 after checking the response tokens are finite.
fn clean(name: &'static str, t: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let finite = t.f_isfinite()?;
    let ok = finite.f_logical_or(&mask.f_logical_not()?)?.f_all()?.f_int64_value(&[])?;
    if ok == 0 {
        return Err(LossError::NonFinite(name));
    }
    Ok(t.f_where_self(&finite, &t.f_zeros_like()?)?)
}

/// The mixed-policy loss: PPO clip (with dual clip) on on-policy tokens, `−A·p/(p+λ)` on IEF
/// tokens, plus the KL and entropy terms, aggregated by `cfg.loss_agg_mode`.
pub fn policy_loss(inputs: &LossInputs<'_>, cfg: &LossConfig) -> Result<LossOutput> {
    cfg.validate_for_loss()?;
    let shape = inputs.logp.size();
    if shape.len() != 2 {
        return Err(LossError::Shape(format!(
            "`logp` must be (batch, response_len), got {shape:?}"
        )));
    }
    let b = shape[0];
    check_2d("old_logp", inputs.old_logp, &shape)?;
    check_2d("response_mask", inputs.response_mask, &shape)?;
    for (name, t) in [("advantages", inputs.advantages), ("is_ief", inputs.is_ief)] {
        if t.size() != [b] {
            return Err(LossError::Shape(format!(
                "`{name}` has shape {:?}, expected (batch,) = [{b}]",
                t.size()
            )));
        }
    }
    let kind = inputs.logp.kind();
    let bool_mask = inputs.response_mask.f_ne(0)?;
    let mask = bool_mask.f_to_kind(kind)?;
    let logp = clean("logp", inputs.logp, &bool_mask)?;
    let ief = inputs.is_ief.f_ne(0)?.f_unsqueeze(1)?;
    // Old log-probs matter on on-policy tokens only.
    let on_bool = bool_mask.f_logical_and(&ief.f_logical_not()?)?;
    let old = clean("old_logp", inputs.old_logp, &on_bool)?;
    let adv_finite = inputs.advantages.f_isfinite()?.f_all()?.f_int64_value(&[])?;
    if adv_finite == 0 {
        return Err(LossError::NonFinite("advantages"));
    }
    let adv = inputs.advantages.f_to_kind(kind)?.f_unsqueeze(1)?;
    let on_mask = on_bool.f_to_kind(kind)?;
    let ief_mask = mask.f_sub(&on_mask)?;

    // On-policy tokens: clipped surrogate.
    let log_ratio = logp.f_sub(&old)?.f_clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)?;
    let ratio = log_ratio.f_exp()?;
    let neg_adv = adv.f_neg()?;
    let pg1 = neg_adv.f_mul(&ratio)?;
    let pg2 =
        neg_adv.f_mul(&ratio.f_clamp(1.0 - cfg.clip_ratio_low, 1.0 + cfg.clip_ratio_high)?)?;
    let clip1 = pg1.f_maximum(&pg2)?;
    let on_loss = match cfg.policy_loss {
        PolicyLoss::Clip => clip1,
        PolicyLoss::Vanilla => {
            let pg3 = neg_adv.f_mul_scalar(cfg.clip_ratio_c)?.f_expand_as(&clip1)?;
            let clip2 = clip1.f_minimum(&pg3)?;
            clip2.f_where_self(&adv.f_lt(0.0)?, &clip1)?
        }
    };
    // IEF tokens: LUFFY's policy shaping, no ratio (or its `no_reshape` ablation, −A·log π).
    let p = logp.f_clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)?.f_exp()?;
    let ief_loss = if cfg.ief_reshape {
        neg_adv.f_mul(&p.f_div(&p.f_add_scalar(cfg.ief_lambda)?)?)?
    } else {
        neg_adv.f_mul(&logp)?
    };
    let token_loss = ief_loss.f_where_self(&ief, &on_loss)?;
    let pg_loss = aggregate(&token_loss, &mask, cfg.loss_agg_mode, cfg.norm_length)?;

    let mut metrics = BTreeMap::new();
    let mut loss = pg_loss.shallow_clone();
    tch::no_grad(|| -> Result<()> {
        metrics.insert("actor/pg_loss".into(), scalar(&pg_loss)?);
        let clipped = pg2.f_gt_tensor(&pg1)?.f_to_kind(kind)?;
        metrics.insert("actor/pg_clipfrac".into(), scalar(&masked_mean(&clipped, &on_mask)?)?);
        metrics
            .insert("actor/ppo_kl".into(), scalar(&masked_mean(&log_ratio.f_neg()?, &on_mask)?)?);
        metrics.insert("actor/ief_prob_mean".into(), scalar(&masked_mean(&p, &ief_mask)?)?);
        Ok(())
    })?;
    if cfg.kl_coef > 0.0 {
        let ref_logp = inputs
            .ref_logp
            .ok_or_else(|| LossError::Shape("kl_coef > 0 needs `ref_logp`".into()))?;
        check_2d("ref_logp", ref_logp, &shape)?;
        let ref_logp = clean("ref_logp", ref_logp, &bool_mask)?;
        let kl = aggregate(
            &kl_penalty(&logp, &ref_logp, cfg.kl_estimator)?,
            &mask,
            cfg.loss_agg_mode,
            cfg.norm_length,
        )?;
        metrics.insert("actor/kl".into(), tch::no_grad(|| scalar(&kl))?);
        loss = loss.f_add(&kl.f_mul_scalar(cfg.kl_coef)?)?;
    }
    match inputs.entropy {
        Some(entropy) => {
            check_2d("entropy", entropy, &shape)?;
            let entropy = clean("entropy", entropy, &bool_mask)?;
            let e = aggregate(&entropy, &mask, cfg.loss_agg_mode, cfg.norm_length)?;
            metrics.insert("actor/entropy".into(), tch::no_grad(|| scalar(&e))?);
            if cfg.entropy_coef > 0.0 {
                loss = loss.f_sub(&e.f_mul_scalar(cfg.entropy_coef)?)?;
            }
        }
        None if cfg.entropy_coef > 0.0 => {
            return Err(LossError::Shape("entropy_coef > 0 needs `entropy`".into()));
        }
        None => {}
    }
    Ok(LossOutput { loss: loss.f_to_kind(kind)?, metrics })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn shape_errors_name_the_dims() {
        let z = Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu));
        let a = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu));
        let inputs = LossInputs {
            logp: &z,
            old_logp: &z,
            ref_logp: None,
            entropy: None,
            advantages: &a,
            response_mask: &z,
            is_ief: &a,
        };
        let e = policy_loss(&inputs, &LossConfig { kl_coef: 0.0, ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(e.contains("advantages") && e.contains("[3]") && e.contains("[2]"), "{e}");
    }
}
