//! Attention masks and kernels: libtorch's fused attention, and for the single query of a
//! decoding step on a CPU a fused kernel (`csrc/kernels.cpp`) or, without it, batched products.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use crate::error::{PolicyError, Result};

/// Boolean attention mask `(batch, 1, new, offset + new)`: a query sees real keys at or before
/// its own slot, and always itself (so padding rows never softmax over nothing).
pub(crate) fn attention_mask_4d(key_mask: &Tensor, new: i64, offset: i64) -> Result<Tensor> {
    let device = key_mask.device();
    let total = key_mask.size()[1];
    let kpos = Tensor::f_arange(total, (Kind::Int64, device))?.f_view([1, total])?;
    let qpos =
        Tensor::f_arange(new, (Kind::Int64, device))?.f_add_scalar(offset)?.f_view([new, 1])?;
    let causal = kpos.f_le_tensor(&qpos)?;
    let diag = kpos.f_eq_tensor(&qpos)?;
    let keys = key_mask.f_view([-1, 1, 1, total])?;
    Ok(keys.f_logical_and(&causal)?.f_logical_or(&diag)?)
}

/// The additive f32 form of a decoding step's `mask (batch, 1, 1, len)` when the step takes
/// [`single_query_attention`] (f32 on a CPU, and bf16 with the fused kernels; any dtype on other
/// devices when [`decode_products_enabled`]), made once for all layers; `None` otherwise.
pub(crate) fn single_query_mask(mask: &Tensor, kind: Kind) -> Result<Option<Tensor>> {
    let taken = match mask.device() {
        // f32 always (the kernel, or the batched products without it); bf16 through the kernel.
        Device::Cpu => {
            kind == Kind::Float || (kind == Kind::BFloat16 && crate::fused::fused_kernels_enabled())
        }
        _ => decode_products_enabled(),
    };
    if !taken || mask.size().get(2) != Some(&1) {
        return Ok(None);
    }
    let zero = Tensor::f_zeros([], (Kind::Float, mask.device()))?;
    Ok(Some(zero.f_where_scalarother(mask, f64::NEG_INFINITY)?))
}

/// The switch of [`set_decode_products`], first read from `ICPO_DECODE_PRODUCTS` (on iff `1`).
fn products_switch() -> &'static AtomicBool {
    static SWITCH: OnceLock<AtomicBool> = OnceLock::new();
    SWITCH.get_or_init(|| {
        AtomicBool::new(std::env::var("ICPO_DECODE_PRODUCTS").is_ok_and(|v| v.trim() == "1"))
    })
}

/// Whether decode steps on a GPU attend through two batched products (scores in f32 from
/// cuBLAS, softmax in f32, probabilities in the compute dtype times the values) instead of
/// libtorch's SDPA with a boolean mask and `enable_gqa`. Off by default; for the first GPU
/// machine to decide: `scripts/gpu-check` times both and names the kernel SDPA picks (if it is
/// the math kernel, which repeats every key and value head per step, the products win).
pub fn decode_products_enabled() -> bool {
    products_switch().load(Ordering::Relaxed)
}

/// Turns [`decode_products_enabled`] on or off for the whole process.
pub fn set_decode_products(on: bool) {
    products_switch().store(on, Ordering::Relaxed);
}

/// Whether a pass of `kind` activations on `device` attends in f32 ([`attend`]'s `upcast`): on
/// a CPU in bf16/f16 when gradients are on, since libtorch's CPU flash backward in bf16/f16
/// takes 2-3x its f32 time (measured on the training pass's shapes) and the f32 round trip
/// costs less and keeps f32 accuracy. Decided once per pass, so that a checkpointed layer's
/// recomputation takes the same path as its forward.
pub(crate) fn upcast_attention(device: Device, kind: Kind) -> Result<bool> {
    if device != Device::Cpu || kind == Kind::Float {
        return Ok(false);
    }
    // Grad mode, probed: whether an op on a leaf that requires grad records history.
    let probe = Tensor::f_zeros([1], (Kind::Float, device))?.set_requires_grad(true);
    Ok(probe.f_mul_scalar(1.0)?.requires_grad())
}

/// Grouped-query attention of `q (batch, heads, t, head_dim)` over `k`, `v (batch, kv_heads,
/// len, head_dim)` under the bool `mask (batch, 1, t, len)`, without materialising repeated
/// keys and values; through [`single_query_attention`] when `single_query` (its additive mask)
/// is given; in f32 when `upcast` (see [`upcast_attention`]).
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    single_query: Option<&Tensor>,
    upcast: bool,
) -> Result<Tensor> {
    if let Some(additive) = single_query {
        return single_query_attention(q, k, v, additive);
    }
    let grouped = q.size().get(1) != k.size().get(1);
    let kind = q.kind();
    if upcast && kind != Kind::Float {
        let f = |t: &Tensor| t.f_to_kind(Kind::Float);
        let out = Tensor::f_scaled_dot_product_attention(
            &f(q)?,
            &f(k)?,
            &f(v)?,
            Some(mask),
            0.0,
            false,
            None,
            grouped,
        )?;
        return Ok(out.f_to_kind(kind)?);
    }
    Ok(Tensor::f_scaled_dot_product_attention(q, k, v, Some(mask), 0.0, false, None, grouped)?)
}

/// Attention of one new query per row over its cached keys. In f32 or bf16 (computing in f32,
/// rounding the output once) on a CPU with the fused kernels, one pass per (row, key head) that
/// reads each cached key and value once for the query heads sharing them: libtorch's flash
/// kernel issues a matrix-vector product per row and head for a single query, and MKL's batched
/// products ([`composed_single_query_attention`], the path without the kernels) spend most of
/// their time in per-matrix overhead at these sizes.
/// Inputs that require gradients take the composed path (the kernel has no backward). Same
/// result up to float rounding. On other devices (see [`decode_products_enabled`]) the batched
/// products, in any dtype.
///
/// # Shapes
/// - `q`: `(batch, heads, 1, head_dim)`; `k`, `v`: `(batch, kv_heads, len, head_dim)`
/// - `additive_mask`: `(batch, 1, 1, len)`, 0 where a key is seen, −∞ where not
/// - returns `(batch, heads, 1, head_dim)`
pub(crate) fn single_query_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    additive_mask: &Tensor,
) -> Result<Tensor> {
    #[cfg(icpo_fused)]
    if crate::fused::fused_kernels_enabled()
        && [q, k, v].iter().all(|t| {
            t.device() == Device::Cpu
                && matches!(t.kind(), Kind::Float | Kind::BFloat16)
                && !t.requires_grad()
        })
    {
        return ffi::single_query_attention(q, k, v, additive_mask);
    }
    composed_single_query_attention(q, k, v, additive_mask)
}

/// [`single_query_attention`] as two batched products (the query heads sharing a key head
/// stacked as rows). In bf16/f16 the scores are computed in f32 (cuBLAS's mixed product on a GPU,
/// an upcast elsewhere) and the softmax in f32; the probabilities are rounded to the compute
/// dtype for the product with the values, as flash kernels do.
fn composed_single_query_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    additive_mask: &Tensor,
) -> Result<Tensor> {
    let (qs, ks) = (q.size(), k.size());
    if qs.len() != 4 || ks.len() != 4 || qs[2] != 1 || ks[1] == 0 || qs[1] % ks[1] != 0 {
        return Err(PolicyError::Shape(format!(
            "single_query_attention: q {qs:?} must be (batch, heads, 1, head_dim) with heads a multiple of k {ks:?}'s kv_heads"
        )));
    }
    let (b, nh, hd, nkv, len) = (qs[0], qs[1], qs[3], ks[1], ks[2]);
    let g = nh / nkv;
    let kind = q.kind();
    let bias = additive_mask
        .f_to_kind(Kind::Float)?
        .f_expand([b, nkv, g, len], false)?
        .f_reshape([b * nkv, g, len])?;
    let q3 = q.f_reshape([b * nkv, g, hd])?;
    let k3t = k.f_reshape([b * nkv, len, hd])?.f_transpose(1, 2)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let scores = if kind == Kind::Float {
        Tensor::f_baddbmm(&bias, &q3, &k3t, 1.0, scale)?
    } else {
        let s = if q.device().is_cuda() {
            q3.f_bmm_dtype(&k3t, Kind::Float)?
        } else {
            q3.f_to_kind(Kind::Float)?.f_bmm(&k3t.f_to_kind(Kind::Float)?)?
        };
        s.f_mul_scalar(scale)?.f_add(&bias)?
    };
    let probs = scores.f_softmax(-1, Kind::Float)?.f_to_kind(kind)?;
    Ok(probs.f_bmm(&v.f_reshape([b * nkv, len, hd])?)?.f_view([b, nh, 1, hd])?)
}

#[cfg(icpo_fused)]
#[allow(unsafe_code)] // the C interface of csrc/fused.cpp; every call is checked there
mod ffi {
    use std::ptr;

    use tch::Tensor;
    use torch_sys::C_tensor;

    use crate::error::Result;
    use crate::fused::ffi::take;

    extern "C" {
        fn icpo_fused_single_query_attention(
            q: *const C_tensor,
            k: *const C_tensor,
            v: *const C_tensor,
            mask: *const C_tensor,
            out: *mut *mut C_tensor,
        ) -> *mut std::ffi::c_char;
    }

    pub(super) fn single_query_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let mut out = ptr::null_mut();
        // SAFETY: live tensors; `out` is written only on success.
        let err = unsafe {
            icpo_fused_single_query_attention(
                q.as_ptr(),
                k.as_ptr(),
                v.as_ptr(),
                mask.as_ptr(),
                &mut out,
            )
        };
        take(err, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against libtorch's fused attention, with grouped heads and some keys masked out.
    #[test]
    fn single_query_attention_matches_sdpa() {
        tch::manual_seed(0);
        let opts = (Kind::Float, Device::Cpu);
        let (b, nh, nkv, hd, len) = (3, 6, 2, 8, 5);
        let q = Tensor::randn([b, nh, 1, hd], opts);
        let k = Tensor::randn([b, nkv, len, hd], opts);
        let v = Tensor::randn([b, nkv, len, hd], opts);
        // Row 0 sees everything, row 1 not its first two keys, row 2 only its last key.
        let seen = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1])
            .view([b, 1, 1, len])
            .ne(0);
        let additive = Tensor::zeros([], opts).where_scalarother(&seen, f64::NEG_INFINITY);
        let ours = single_query_attention(&q, &k, &v, &additive).unwrap();
        let reference =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&seen), 0.0, false, None, true);
        let d = (ours - reference).abs().max().double_value(&[]);
        assert!(d < 1e-6, "max |Δ| = {d:e}");
    }

    /// The kernel and the batched products against libtorch's fused attention, on a cache whose
    /// keys and values are views into a larger capacity (as decoding's are), grouped heads,
    /// unseen keys of varying number and a row that sees a single key.
    #[test]
    fn both_single_query_paths_match_sdpa_on_strided_caches() {
        tch::manual_seed(1);
        let opts = (Kind::Float, Device::Cpu);
        for (b, nh, nkv, hd, len) in [(4, 8, 2, 64, 37), (2, 3, 3, 16, 1), (5, 4, 1, 24, 130)] {
            let cap = len + 9;
            let kc = Tensor::randn([b, nkv, cap, hd], opts);
            let vc = Tensor::randn([b, nkv, cap, hd], opts);
            let (k, v) = (kc.narrow(2, 0, len), vc.narrow(2, 0, len));
            // q as a decode step makes it: a transposed view.
            let q = Tensor::randn([b, 1, nh, hd], opts).transpose(1, 2);
            // Row r does not see its first r keys (the last key is always seen).
            let pos = Tensor::arange(len, (Kind::Int64, Device::Cpu)).view([1, 1, 1, len]);
            let first =
                Tensor::arange(b, (Kind::Int64, Device::Cpu)).clamp_max(len - 1).view([b, 1, 1, 1]);
            let seen = pos.ge_tensor(&first);
            let additive = single_query_mask(&seen, Kind::Float).unwrap().unwrap();
            let reference = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&seen),
                0.0,
                false,
                None,
                true,
            );
            let fast = single_query_attention(&q, &k, &v, &additive).unwrap();
            let composed = composed_single_query_attention(&q, &k, &v, &additive).unwrap();
            for (name, got) in [("kernel", fast), ("composed", composed)] {
                assert_eq!(got.size(), [b, nh, 1, hd]);
                let d = (got - &reference).abs().max().double_value(&[]);
                assert!(d < 2e-6, "{name} {b}x{nh}/{nkv}x{hd} over {len}: max |Δ| = {d:e}");
            }
        }
    }

    /// The products in bf16 (as a GPU decode step takes them) against f32 attention of the same
    /// bf16 values: scores and softmax in f32, so the error is the probabilities' and the
    /// output's bf16 rounding (2⁻⁸ relative each).
    #[test]
    fn bf16_products_and_kernel_match_f32_attention_to_bf16_rounding() {
        tch::manual_seed(2);
        let opts = (Kind::Float, Device::Cpu);
        let (b, nh, nkv, hd, len) = (3, 8, 2, 64, 50);
        let bf = |t: Tensor| t.to_kind(Kind::BFloat16);
        let kc = bf(Tensor::randn([b, nkv, len + 6, hd], opts));
        let vc = bf(Tensor::randn([b, nkv, len + 6, hd], opts));
        let (k, v) = (kc.narrow(2, 0, len), vc.narrow(2, 0, len));
        let q = bf(Tensor::randn([b, 1, nh, hd], opts)).transpose(1, 2);
        let pos = Tensor::arange(len, (Kind::Int64, Device::Cpu)).view([1, 1, 1, len]);
        let first = Tensor::from_slice(&[0i64, 7, 49]).view([b, 1, 1, 1]);
        let seen = pos.ge_tensor(&first);
        let additive = single_query_mask(&seen, Kind::Float).unwrap().unwrap();
        let f = |t: &Tensor| t.to_kind(Kind::Float);
        let reference = Tensor::scaled_dot_product_attention(
            &f(&q),
            &f(&k),
            &f(&v),
            Some(&seen),
            0.0,
            false,
            None,
            true,
        );
        let got = composed_single_query_attention(&q, &k, &v, &additive).unwrap();
        assert_eq!(got.kind(), Kind::BFloat16);
        // Outputs are averages of unit normals: |x| ≲ 1 with weights summing to 1, so the
        // probabilities' rounding moves them by ≲ 2⁻⁸ and the output's own rounding as much.
        let d = (f(&got) - &reference).abs().max().double_value(&[]);
        assert!(d < 2.0 * 2f64.powi(-8), "max |Δ| = {d:e}");
        // The CPU kernel in bf16 computes in f32 and rounds only its output: each element within
        // one bf16 rounding of the f32 attention (half an ulp: 2⁻⁹ of its binade, ≤ 2⁻⁸ of it).
        let kernel = single_query_attention(&q, &k, &v, &additive).unwrap();
        assert_eq!(kernel.kind(), Kind::BFloat16);
        let excess = (f(&kernel) - &reference).abs() - reference.abs() * 2f64.powi(-8) - 1e-6;
        let worst = excess.max().double_value(&[]);
        assert!(worst <= 0.0, "kernel: an element beyond one bf16 rounding by {worst:e}");
    }

    #[test]
    fn single_query_attention_names_bad_shapes() {
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::zeros([1, 3, 1, 4], opts);
        let k = Tensor::zeros([1, 2, 5, 4], opts);
        let mask = Tensor::zeros([1, 1, 1, 5], opts);
        for e in [
            single_query_attention(&q, &k, &k, &mask).unwrap_err().to_string(),
            composed_single_query_attention(&q, &k, &k, &mask).unwrap_err().to_string(),
        ] {
            assert!(e.contains("1, 3, 1, 4") && e.contains("1, 2, 5, 4"), "{e}");
        }
    }
}
