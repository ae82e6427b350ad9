//! Rotary position embeddings, computed as transformers computes them (in f32).

use tch::{Device, Kind, Tensor};

use crate::config::{ModelConfig, RopeScaling};
use crate::error::Result;
use crate::fused;

/// Inverse frequencies `(head_dim / 2,)` in f32, after the config's scaling.
pub(crate) fn inv_freq(config: &ModelConfig, device: Device) -> Result<Tensor> {
    let dim = config.head_dim;
    let exponents = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, device))?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(dim as f64)?;
    let base = Tensor::f_full([dim / 2], config.rope_theta, (Kind::Float, device))?;
    let inv = base.f_pow(&exponents)?.f_reciprocal()?;
    match &config.rope_scaling {
        RopeScaling::Default => Ok(inv),
        RopeScaling::Linear { factor } => Ok(inv.f_div_scalar(*factor)?),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            // Long wavelengths are divided by `factor`, short ones kept, the band between blended.
            let old = *original_max_position_embeddings;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            let wavelen = inv.f_reciprocal()?.f_mul_scalar(2.0 * std::f64::consts::PI)?;
            let is_low = wavelen.f_gt(low_wavelen)?;
            let scaled = inv.f_where_self(&is_low.f_logical_not()?, &inv.f_div_scalar(*factor)?)?;
            let smooth = wavelen
                .f_reciprocal()?
                .f_mul_scalar(old)?
                .f_sub_scalar(*low_freq_factor)?
                .f_div_scalar(high_freq_factor - low_freq_factor)?;
            let one_minus = smooth.f_neg()?.f_add_scalar(1.0)?;
            let smoothed =
                one_minus.f_mul(&scaled)?.f_div_scalar(*factor)?.f_add(&smooth.f_mul(&scaled)?)?;
            let is_medium = wavelen
                .f_lt(high_wavelen)?
                .f_logical_not()?
                .f_logical_and(&is_low.f_logical_not()?)?;
            Ok(smoothed.f_where_self(&is_medium, &scaled)?)
        }
    }
}

/// `cos` and `sin` of shape `(batch, seq, head_dim)` for integer `positions (batch, seq)`,
/// computed in f32 and kept in the dtype `fused::rope` takes for `kind` activations.
pub(crate) fn cos_sin(
    inv_freq: &Tensor,
    positions: &Tensor,
    kind: Kind,
) -> Result<(Tensor, Tensor)> {
    let freqs =
        positions.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?.f_mul(&inv_freq.f_view([1, 1, -1])?)?;
    let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
    fused::rope_tables(emb.f_cos()?, emb.f_sin()?, kind)
}
