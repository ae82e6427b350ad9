//! Aggregation of per-token values over a padded batch (ICPO.md §5, `loss_agg_mode`).

use icpo_core::LossAggMode;
use tch::{Kind, Tensor};

use crate::error::Result;

/// Mean of `values` where `mask` is 1; 0 when the mask is empty.
///
/// # Shapes
/// - `values`, `mask`: `(batch, response_len)`, `mask` of the values' float kind
pub fn masked_mean(values: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let n = mask.f_sum(mask.kind())?.f_clamp_min(1.0)?;
    Ok(values.f_mul(mask)?.f_sum(values.kind())?.f_div(&n)?)
}

/// Reduces per-token `values` to a scalar by `mode`; sequences with no tokens count in no mean.
/// `norm_length` is the constant of `seq-mean-token-sum-norm` (unused by the other modes).
///
/// # Shapes
/// - `values`, `mask`: `(batch, response_len)`, `mask` of the values' float kind
pub fn aggregate(
    values: &Tensor,
    mask: &Tensor,
    mode: LossAggMode,
    norm_length: usize,
) -> Result<Tensor> {
    let kind = values.kind();
    match mode {
        LossAggMode::TokenMean | LossAggMode::TokenMeanPerMicroBatch => masked_mean(values, mask),
        LossAggMode::SeqMeanTokenMean | LossAggMode::SeqMeanTokenSumNorm => {
            let sums = values.f_mul(mask)?.f_sum_dim_intlist(1, false, kind)?;
            let lens = mask.f_sum_dim_intlist(1, false, kind)?;
            let per_seq = match mode {
                LossAggMode::SeqMeanTokenMean => sums.f_div(&lens.f_clamp_min(1.0)?)?,
                _ => sums.f_div_scalar(norm_length.max(1) as f64)?,
            };
            let nonempty = lens.f_gt(0.0)?.f_to_kind(kind)?;
            masked_mean(&per_seq, &nonempty)
        }
    }
}

/// `aggregate` for any mode with a `Kind::Double` result, for metrics.
pub(crate) fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.f_to_kind(Kind::Double)?.f_double_value(&[])?)
}
