//! Per-token policy losses of ICPO.md §5, written for clarity: the reference `icpo-loss` is
//! checked against, value and gradient.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{check_finite, check_finite_2d, named_enum, CoreError, Result};

/// Bound of the log-ratio (and log-prob) clamp before exponentiation.
pub const LOG_RATIO_CLAMP: f64 = 20.0;
/// Bound of the per-token KL clamp.
pub const KL_CLAMP: f64 = 10.0;

/// The on-policy surrogate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PolicyLoss {
    /// PPO clip with separate low/high bounds and, for `A < 0`, dual clip at `−c·A` (verl's
    /// "vanilla"; the spec's default).
    #[default]
    #[serde(rename = "vanilla")]
    Vanilla,
    /// PPO clip without the dual clip.
    #[serde(rename = "clip")]
    Clip,
}

named_enum!(PolicyLoss, "policy loss", ["vanilla" => PolicyLoss::Vanilla, "clip" => PolicyLoss::Clip]);

/// Estimator of the per-token KL to the reference policy, with `x = log π_ref − log π_θ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum KlEstimator {
    /// `k1 = −x = log π_θ − log π_ref`.
    #[serde(rename = "k1")]
    K1,
    /// `k2 = x² / 2`.
    #[serde(rename = "k2")]
    K2,
    /// `k3 = eˣ − x − 1` (the spec's default; verl's `low_var_kl`).
    #[default]
    #[serde(rename = "k3", alias = "low_var_kl")]
    K3,
}

named_enum!(KlEstimator, "KL estimator", ["k1" => KlEstimator::K1, "k2" => KlEstimator::K2, "k3" => KlEstimator::K3]);

/// How per-token values are reduced to one number over a mini-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LossAggMode {
    /// Sum over all response tokens divided by their count (the spec's default).
    #[default]
    #[serde(rename = "token-mean")]
    TokenMean,
    /// Mean over sequences of each sequence's token mean.
    #[serde(rename = "seq-mean-token-mean")]
    SeqMeanTokenMean,
    /// Mean over sequences of each sequence's token sum divided by a constant, the longest
    /// response allowed ([`LossConfig::norm_length`]), as Dr.GRPO and verl: a per-batch width
    /// would bring the length bias back.
    #[serde(rename = "seq-mean-token-sum-norm")]
    SeqMeanTokenSumNorm,
    /// The authors' actor, for exact reproduction: each micro-batch's token mean divided by the
    /// number of micro-batches of its mini-batch (verl's gradient accumulation), not the
    /// mini-batch's exact token mean. Within one micro-batch it is `token-mean`; the trainer
    /// applies the `1 / micro-batches` weight.
    #[serde(rename = "token-mean-per-micro-batch")]
    TokenMeanPerMicroBatch,
}

named_enum!(LossAggMode, "loss aggregation mode", [
    "token-mean" => LossAggMode::TokenMean,
    "seq-mean-token-mean" => LossAggMode::SeqMeanTokenMean,
    "seq-mean-token-sum-norm" => LossAggMode::SeqMeanTokenSumNorm,
    "token-mean-per-micro-batch" => LossAggMode::TokenMeanPerMicroBatch,
]);

/// Loss settings, with the spec's defaults (§5–6).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// On-policy surrogate. Default `vanilla`.
    pub policy_loss: PolicyLoss,
    /// ε_low: the ratio is clipped below at `1 − ε_low`. Default 0.2.
    pub clip_ratio_low: f64,
    /// ε_high: clipped above at `1 + ε_high` (clip-higher when > ε_low). Default 0.2.
    pub clip_ratio_high: f64,
    /// Dual-clip constant `c` (> 1). Default 3.
    pub clip_ratio_c: f64,
    /// λ of the IEF shaping term `p / (p + λ)`. Default 0.1 (the paper's text says 0.01).
    pub ief_lambda: f64,
    /// KL estimator. Default k3.
    pub kl_estimator: KlEstimator,
    /// β, the KL coefficient; 0 disables the KL term. Default 0.001.
    pub kl_coef: f64,
    /// Entropy bonus coefficient. Default 0.
    pub entropy_coef: f64,
    /// Aggregation of per-token values. Default token-mean.
    pub loss_agg_mode: LossAggMode,
    /// The constant of `seq-mean-token-sum-norm` (token sums are divided by it). 0, the default,
    /// stands for `rollout.max_new_tokens`, which the trainer fills in; the loss functions
    /// themselves need it set when that mode is used.
    pub norm_length: usize,
    /// LUFFY's policy shaping on IEF tokens, `−A · p/(p + λ)`. False is LUFFY's `no_reshape`
    /// ablation: the plain `−A · log π_θ`. Default true.
    pub ief_reshape: bool,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            policy_loss: PolicyLoss::Vanilla,
            clip_ratio_low: 0.2,
            clip_ratio_high: 0.2,
            clip_ratio_c: 3.0,
            ief_lambda: 0.1,
            kl_estimator: KlEstimator::K3,
            kl_coef: 0.001,
            entropy_coef: 0.0,
            loss_agg_mode: LossAggMode::TokenMean,
            norm_length: 0,
            ief_reshape: true,
        }
    }
}

impl LossConfig {
    /// Checks every field's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let range = |field: &'static str, v: f64, ok: bool, message: &'static str| {
            if ok && v.is_finite() {
                Ok(())
            } else {
                Err(CoreError::OutOfRange { field, value: v.to_string(), message })
            }
        };
        range(
            "clip_ratio_low",
            self.clip_ratio_low,
            (0.0..1.0).contains(&self.clip_ratio_low),
            "must be in [0, 1)",
        )?;
        range("clip_ratio_high", self.clip_ratio_high, self.clip_ratio_high >= 0.0, "must be ≥ 0")?;
        range("clip_ratio_c", self.clip_ratio_c, self.clip_ratio_c > 1.0, "must be > 1")?;
        range("ief_lambda", self.ief_lambda, self.ief_lambda > 0.0, "must be > 0")?;
        range("kl_coef", self.kl_coef, self.kl_coef >= 0.0, "must be ≥ 0")?;
        range("entropy_coef", self.entropy_coef, self.entropy_coef >= 0.0, "must be ≥ 0")
    }

    /// [`LossConfig::validate`], and the constant `seq-mean-token-sum-norm` needs: what the
    /// loss functions check before computing.
    pub fn validate_for_loss(&self) -> Result<()> {
        self.validate()?;
        if self.loss_agg_mode == LossAggMode::SeqMeanTokenSumNorm && self.norm_length == 0 {
            return Err(CoreError::OutOfRange {
                field: "norm_length",
                value: "0".into(),
                message: "seq-mean-token-sum-norm divides by a constant: set it (the trainer uses rollout.max_new_tokens)",
            });
        }
        Ok(())
    }
}

/// A mini-batch of per-token values: `B` rows of `T` tokens.
///
/// # Shapes
/// - `logp`, `old_logp`, `ref_logp`, `entropy`, `mask`: `B` rows of `T`
/// - `advantages`, `is_ief`: `B`
#[derive(Debug, Clone, Copy)]
pub struct LossInput<'a> {
    /// `log π_θ(o_t)` of the current policy (for IEF rows: after the plain prompt).
    pub logp: &'a [Vec<f64>],
    /// `log π_old(o_t)`; unused on IEF rows.
    pub old_logp: &'a [Vec<f64>],
    /// `log π_ref(o_t)`; needed when `kl_coef > 0`.
    pub ref_logp: Option<&'a [Vec<f64>]>,
    /// Per-token entropy of the current policy; needed when `entropy_coef > 0`.
    pub entropy: Option<&'a [Vec<f64>]>,
    /// Per-sequence advantage.
    pub advantages: &'a [f64],
    /// True for response tokens, false for padding.
    pub mask: &'a [Vec<bool>],
    /// True for accepted IEF trajectories (trained with the shaping term, no ratio).
    pub is_ief: &'a [bool],
}

/// Result of [`policy_loss`].
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// `pg_loss + β · kl_loss − entropy_coef · entropy`.
    pub loss: f64,
    /// `d loss / d logp` for every token (0 on padding): the analytic gradient.
    pub grad_logp: Vec<Vec<f64>>,
    /// `actor/pg_loss`, `actor/pg_clipfrac`, `actor/ppo_kl`, `actor/ief_prob_mean`, `actor/kl`,
    /// `actor/entropy` (the last two only when computed).
    pub metrics: BTreeMap<String, f64>,
}

/// Weight of each token in an aggregated value, so that `agg = Σ w·v` (and `d agg / d v = w`);
/// `norm_length` is the constant of `seq-mean-token-sum-norm` (unused by the other modes).
pub fn agg_weights(mask: &[Vec<bool>], mode: LossAggMode, norm_length: usize) -> Vec<Vec<f64>> {
    let norm = norm_length as f64;
    let lens: Vec<usize> = mask.iter().map(|r| r.iter().filter(|&&m| m).count()).collect();
    let total: usize = lens.iter().sum();
    let nonempty = lens.iter().filter(|&&n| n > 0).count() as f64;
    mask.iter()
        .zip(&lens)
        .map(|(row, &n)| {
            row.iter()
                .map(|&m| {
                    if !m {
                        return 0.0;
                    }
                    match mode {
                        LossAggMode::TokenMean | LossAggMode::TokenMeanPerMicroBatch => {
                            1.0 / total as f64
                        }
                        LossAggMode::SeqMeanTokenMean => 1.0 / (n as f64 * nonempty),
                        LossAggMode::SeqMeanTokenSumNorm => 1.0 / (norm * nonempty),
                    }
                })
                .collect()
        })
        .collect()
}

/// Aggregates per-token `values` over `mask` by `mode`; 0 when there are no tokens.
pub fn aggregate(
    values: &[Vec<f64>],
    mask: &[Vec<bool>],
    mode: LossAggMode,
    norm_length: usize,
) -> f64 {
    let w = agg_weights(mask, mode, norm_length);
    values.iter().zip(&w).map(|(v, w)| v.iter().zip(w).map(|(a, b)| a * b).sum::<f64>()).sum()
}

/// Per-token KL estimate and its derivative w.r.t. `logp` (0 where a clamp is active). For k3,
/// `x = log π_ref − log π_θ` is clamped to ±20 before `exp` (as verl), so extreme log-probs
/// give a finite value and gradient instead of ∞ and NaN.
pub fn kl_token(logp: f64, ref_logp: f64, estimator: KlEstimator) -> (f64, f64) {
    let x = ref_logp - logp;
    let (v, d) = match estimator {
        KlEstimator::K1 => (-x, 1.0),
        KlEstimator::K2 => (0.5 * x * x, -x),
        KlEstimator::K3 => {
            let xc = x.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP);
            let d = if x.abs() <= LOG_RATIO_CLAMP { 1.0 - xc.exp() } else { 0.0 };
            (xc.exp() - xc - 1.0, d)
        }
    };
    if v > KL_CLAMP {
        (KL_CLAMP, 0.0)
    } else if v < -KL_CLAMP {
        (-KL_CLAMP, 0.0)
    } else {
        (v, d)
    }
}

/// On-policy token: `(loss, d loss / d logp, clipped)` of the clipped surrogate.
pub fn ppo_token(logp: f64, old_logp: f64, adv: f64, cfg: &LossConfig) -> (f64, f64, bool) {
    let lr = logp - old_logp;
    let (lr_c, dlr) = if lr > LOG_RATIO_CLAMP {
        (LOG_RATIO_CLAMP, 0.0)
    } else if lr < -LOG_RATIO_CLAMP {
        (-LOG_RATIO_CLAMP, 0.0)
    } else {
        (lr, 1.0)
    };
    let r = lr_c.exp();
    let (lo, hi) = (1.0 - cfg.clip_ratio_low, 1.0 + cfg.clip_ratio_high);
    let rc = r.clamp(lo, hi);
    let in_range = r > lo && r < hi;
    let l1 = -adv * r;
    let l2 = -adv * rc;
    // max(l1, l2): the unclipped branch carries the gradient unless the clipped one is larger.
    let (mut loss, mut grad) = if l1 >= l2 {
        (l1, -adv * r * dlr)
    } else {
        (l2, if in_range { -adv * r * dlr } else { 0.0 })
    };
    let clipped = l2 > l1;
    if cfg.policy_loss == PolicyLoss::Vanilla && adv < 0.0 {
        let l3 = -cfg.clip_ratio_c * adv;
        if l3 < loss {
            loss = l3;
            grad = 0.0;
        }
    }
    (loss, grad, clipped)
}

/// IEF token: `(loss, d loss / d logp, p)` of `−A · p / (p + λ)` with `p = exp(clamp(logp))`,
/// or of the plain `−A · log π_θ` when `reshape` is false (LUFFY's `no_reshape`).
pub fn ief_token(logp: f64, adv: f64, lambda: f64, reshape: bool) -> (f64, f64, f64) {
    let inside = logp.abs() <= LOG_RATIO_CLAMP;
    let p = logp.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp();
    if !reshape {
        return (-adv * logp, -adv, p);
    }
    let loss = -adv * p / (p + lambda);
    // d/dlogp [p/(p+λ)] = λ p / (p+λ)².
    let grad = if inside { -adv * lambda * p / ((p + lambda) * (p + lambda)) } else { 0.0 };
    (loss, grad, p)
}

fn check_shape(name: &str, rows: &[Vec<f64>], mask: &[Vec<bool>]) -> Result<()> {
    if rows.len() != mask.len() || rows.iter().zip(mask).any(|(r, m)| r.len() != m.len()) {
        return Err(CoreError::Shape(format!(
            "`{name}` has a different (B, T) from `mask` (B = {})",
            mask.len()
        )));
    }
    Ok(())
}

/// The mixed-policy loss of §5 with its metrics and its analytic gradient w.r.t. `logp`.
pub fn policy_loss(input: &LossInput<'_>, cfg: &LossConfig) -> Result<LossOutput> {
    cfg.validate_for_loss()?;
    let mask = input.mask;
    let b = mask.len();
    check_shape("logp", input.logp, mask)?;
    check_shape("old_logp", input.old_logp, mask)?;
    if input.advantages.len() != b || input.is_ief.len() != b {
        return Err(CoreError::Shape(format!(
            "advantages ({}) and is_ief ({}) need one entry per row (B = {b})",
            input.advantages.len(),
            input.is_ief.len()
        )));
    }
    check_finite_2d("logp", input.logp)?;
    check_finite_2d("old_logp", input.old_logp)?;
    check_finite("advantages", input.advantages)?;
    let weights = agg_weights(mask, cfg.loss_agg_mode, cfg.norm_length);
    let mut grad = vec![Vec::new(); b];
    let mut pg_loss = 0.0;
    let (mut clipped, mut on_tokens, mut ppo_kl) = (0.0, 0.0, 0.0);
    let (mut ief_p, mut ief_tokens) = (0.0, 0.0);
    for i in 0..b {
        grad[i] = vec![0.0; mask[i].len()];
        for t in 0..mask[i].len() {
            if !mask[i][t] {
                continue;
            }
            let w = weights[i][t];
            let (l, d) = if input.is_ief[i] {
                let (l, d, p) = ief_token(
                    input.logp[i][t],
                    input.advantages[i],
                    cfg.ief_lambda,
                    cfg.ief_reshape,
                );
                ief_p += p;
                ief_tokens += 1.0;
                (l, d)
            } else {
                let (l, d, c) =
                    ppo_token(input.logp[i][t], input.old_logp[i][t], input.advantages[i], cfg);
                clipped += f64::from(u8::from(c));
                on_tokens += 1.0;
                // As verl: from the clamped log-ratio.
                ppo_kl -= (input.logp[i][t] - input.old_logp[i][t])
                    .clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP);
                (l, d)
            };
            pg_loss += w * l;
            grad[i][t] += w * d;
        }
    }
    let mean = |s: f64, n: f64| if n > 0.0 { s / n } else { 0.0 };
    let mut metrics = BTreeMap::from([
        ("actor/pg_loss".to_string(), pg_loss),
        ("actor/pg_clipfrac".to_string(), mean(clipped, on_tokens)),
        ("actor/ppo_kl".to_string(), mean(ppo_kl, on_tokens)),
        ("actor/ief_prob_mean".to_string(), mean(ief_p, ief_tokens)),
    ]);
    let mut loss = pg_loss;
    if cfg.kl_coef > 0.0 {
        let ref_logp = input
            .ref_logp
            .ok_or_else(|| CoreError::Shape("kl_coef > 0 needs `ref_logp`".into()))?;
        check_shape("ref_logp", ref_logp, mask)?;
        check_finite_2d("ref_logp", ref_logp)?;
        let mut kl = 0.0;
        for i in 0..b {
            for t in 0..mask[i].len() {
                if mask[i][t] {
                    let (v, d) = kl_token(input.logp[i][t], ref_logp[i][t], cfg.kl_estimator);
                    kl += weights[i][t] * v;
                    grad[i][t] += cfg.kl_coef * weights[i][t] * d;
                }
            }
        }
        metrics.insert("actor/kl".into(), kl);
        loss += cfg.kl_coef * kl;
    }
    if let Some(entropy) = input.entropy {
        check_shape("entropy", entropy, mask)?;
        check_finite_2d("entropy", entropy)?;
        let e = aggregate(entropy, mask, cfg.loss_agg_mode, cfg.norm_length);
        metrics.insert("actor/entropy".into(), e);
        loss -= cfg.entropy_coef * e;
    } else if cfg.entropy_coef > 0.0 {
        return Err(CoreError::Shape("entropy_coef > 0 needs `entropy`".into()));
    }
    Ok(LossOutput { loss, grad_logp: grad, metrics })
}
