//! RMSNorm, SwiGLU and rotary embeddings: fused CPU kernels with their own backward
//! (`csrc/fused.cpp`), and the same maths composed from libtorch ops for other devices and for
//! builds without the kernels (the `doc-only` feature).
//!
//! On a CPU the composed forms cost one pass over a `(batch, seq, width)` tensor per op, forward
//! and backward: for a small model's training step about as much time as its matrix products.
//! The kernels make each one pass, compute in f32 and round once to the input dtype; the composed
//! forms round after every op in bf16/f16, so the two agree to the dtype's precision (f32: float
//! rounding). Both are differentiable in the inputs and the norm weight (not in `cos`/`sin`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use crate::error::Result;

/// RMSNorm over the last dimension as transformers computes it: `x · rsqrt(mean(x²) + ε)` in
/// f32, cast back to `x`'s dtype, then scaled by `weight` (when given, of size `x`'s last
/// dimension, cast to `x`'s dtype).
pub(crate) fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let weight = match weight {
        Some(w) if w.kind() != x.kind() => Some(w.f_to_kind(x.kind())?),
        Some(w) => Some(w.shallow_clone()),
        None => None,
    };
    #[cfg(icpo_fused)]
    if fused(x) {
        return ffi::rms_norm(x, weight.as_ref(), eps);
    }
    composed::rms_norm(x, weight.as_ref(), eps)
}

/// A process-wide switch in `cell`, on unless the environment variable `var` is `0`.
pub(crate) fn env_switch(cell: &'static OnceLock<AtomicBool>, var: &str) -> &'static AtomicBool {
    cell.get_or_init(|| AtomicBool::new(std::env::var(var).map_or(true, |v| v.trim() != "0")))
}

/// The kernels' switch, first read from `ICPO_FUSED_KERNELS`.
fn switch() -> &'static AtomicBool {
    static SWITCH: OnceLock<AtomicBool> = OnceLock::new();
    env_switch(&SWITCH, "ICPO_FUSED_KERNELS")
}

/// Whether CPU tensors in f32 or bf16 take the fused kernels: true unless they were not built
/// (the `doc-only` feature), the environment variable `ICPO_FUSED_KERNELS` is `0`, or
/// [`set_fused_kernels`] turned them off.
pub fn fused_kernels_enabled() -> bool {
    cfg!(icpo_fused) && switch().load(Ordering::Relaxed)
}

/// Turns the fused CPU kernels for RMSNorm, SwiGLU and RoPE on or off for the whole process
/// (off: libtorch's composed ops, as on a GPU). For comparisons and as an escape hatch; both
/// compute the same maths, the kernels rounding once instead of after every op.
pub fn set_fused_kernels(on: bool) {
    switch().store(on, Ordering::Relaxed);
}

/// The lean head's switch, first read from `ICPO_LEAN_HEAD`.
fn lean_switch() -> &'static AtomicBool {
    static SWITCH: OnceLock<AtomicBool> = OnceLock::new();
    env_switch(&SWITCH, "ICPO_LEAN_HEAD")
}

/// Whether [`crate::CausalLm::response_logprobs`] takes the lean head (a C++ autograd Function
/// that keeps no `(tokens, vocab)` block for the backward and recomputes each chunk's logits
/// there): true unless it was not built (`doc-only`), `ICPO_LEAN_HEAD` is `0`, or
/// [`set_lean_head`] turned it off.
pub fn lean_head_enabled() -> bool {
    cfg!(icpo_fused) && lean_switch().load(Ordering::Relaxed)
}

/// Turns the lean head on or off for the whole process (off: the chunks' logits are kept by
/// autograd for the backward, as a plain pass does). For comparisons and memory A/B.
pub fn set_lean_head(on: bool) {
    lean_switch().store(on, Ordering::Relaxed);
}

/// Log-probs of `targets` and the entropy under `hidden · weightᵀ`, chunk rows at a time, by
/// the lean head; `None` when it is off (the caller composes the maths itself).
///
/// # Shapes
/// - `hidden`: `(batch, len, hidden)`, `weight`: `(vocab, hidden)` in `hidden`'s dtype
/// - `targets`: `(batch, len)` int64; returns two `(batch, len)` f32 tensors (entropy zeros when
///   not asked for)
pub(crate) fn chunked_head(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    entropy: bool,
    chunk: i64,
) -> Result<Option<(Tensor, Tensor)>> {
    #[cfg(icpo_fused)]
    if lean_head_enabled() {
        return ffi::chunked_head(hidden, weight, targets, entropy, chunk).map(Some);
    }
    let _ = (hidden, weight, targets, entropy, chunk);
    Ok(None)
}

/// Whether tensors of `kind` on `device` take the fused kernels: enabled, on the CPU, f32 or
/// bf16.
fn fused_for(device: Device, kind: Kind) -> bool {
    device == Device::Cpu && matches!(kind, Kind::Float | Kind::BFloat16) && fused_kernels_enabled()
}

/// [`fused_for`] `t`'s device and dtype.
#[cfg(icpo_fused)]
fn fused(t: &Tensor) -> bool {
    fused_for(t.device(), t.kind())
}

/// `silu(gate) · up` of a fused projection `gate_up (…, 2i)`, gate first; `(…, i)`.
pub(crate) fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    #[cfg(icpo_fused)]
    if fused(gate_up) {
        return ffi::swiglu(gate_up);
    }
    composed::swiglu(gate_up)
}

/// Rotary embedding as transformers' `rotate_half` applies it: `x·cos + cat(−x₂, x₁)·sin`.
///
/// # Shapes
/// - `x`: `(batch, seq, heads, head_dim)`
/// - `cos`, `sin`: `(batch, seq, head_dim)`, f32 or `x`'s dtype (see [`rope_tables`])
/// - returns `x`'s shape and dtype
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    #[cfg(icpo_fused)]
    if fused(x) && cos.kind() == Kind::Float && sin.kind() == Kind::Float {
        return ffi::rope(x, cos, sin);
    }
    composed::rope(x, cos, sin)
}

/// The f32 `cos`/`sin` tables in the dtype [`rope`] takes for `kind` tensors on their device:
/// f32 for the kernels, `kind` for the composed form, so that a forward casts them once rather
/// than at every layer.
pub(crate) fn rope_tables(cos: Tensor, sin: Tensor, kind: Kind) -> Result<(Tensor, Tensor)> {
    if fused_for(cos.device(), kind) {
        return Ok((cos, sin));
    }
    Ok((cos.f_to_kind(kind)?, sin.f_to_kind(kind)?))
}

/// The composed forms: the reference the kernels are tested against, and the path off the CPU.
pub(crate) mod composed {
    use super::*;

    /// See [`super::rms_norm`]; `weight` already in `x`'s dtype.
    pub(crate) fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        let kind = x.kind();
        if kind == Kind::Float {
            // Same maths in one call.
            let dim = *x.size().last().unwrap_or(&1);
            return Ok(x.f_rms_norm(&[dim][..], weight, eps)?);
        }
        let xf = x.f_to_kind(Kind::Float)?;
        let var = xf.f_square()?.f_mean_dim(-1, true, Kind::Float)?;
        let normed = xf.f_mul(&var.f_add_scalar(eps)?.f_rsqrt()?)?.f_to_kind(kind)?;
        Ok(match weight {
            Some(w) => normed.f_mul(w)?,
            None => normed,
        })
    }

    /// See [`super::swiglu`].
    pub(crate) fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
        let i = gate_up.size().last().copied().unwrap_or(0) / 2;
        let gate = gate_up.f_narrow(-1, 0, i)?;
        Ok(gate.f_silu()?.f_mul(&gate_up.f_narrow(-1, i, i)?)?)
    }

    /// See [`super::rope`].
    pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let kind = x.kind();
        let (cos, sin) =
            (cos.f_to_kind(kind)?.f_unsqueeze(2)?, sin.f_to_kind(kind)?.f_unsqueeze(2)?);
        let half = x.size().last().copied().unwrap_or(0) / 2;
        let x1 = x.f_narrow(-1, 0, half)?;
        let x2 = x.f_narrow(-1, half, half)?;
        let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?;
        Ok(x.f_mul(&cos)?.f_add(&rotated.f_mul(&sin)?)?)
    }
}

#[cfg(icpo_fused)]
#[allow(unsafe_code)] // the C interface of csrc/fused.cpp; every call is checked there
pub(crate) mod ffi {
    use std::ffi::{c_char, CStr};
    use std::ptr;

    use tch::Tensor;
    use torch_sys::C_tensor;

    use crate::error::{PolicyError, Result};

    extern "C" {
        fn icpo_fused_rms_norm(
            x: *const C_tensor,
            weight: *const C_tensor,
            eps: f64,
            out: *mut *mut C_tensor,
        ) -> *mut c_char;
        fn icpo_fused_swiglu(gate_up: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
        fn icpo_fused_rope(
            x: *const C_tensor,
            cos: *const C_tensor,
            sin: *const C_tensor,
            out: *mut *mut C_tensor,
        ) -> *mut c_char;
        fn icpo_chunked_head(
            hidden: *const C_tensor,
            weight: *const C_tensor,
            targets: *const C_tensor,
            entropy: bool,
            chunk: i64,
            logprobs: *mut *mut C_tensor,
            ent: *mut *mut C_tensor,
        ) -> *mut c_char;
        fn icpo_fused_free_error(err: *mut c_char);
    }

    /// `Ok` for a null error, else the C side's message (freed here).
    pub(crate) fn check(err: *mut c_char) -> Result<()> {
        if err.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null return is a NUL-terminated message from malloc, freed once here.
        let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
        unsafe { icpo_fused_free_error(err) };
        Err(PolicyError::Torch(tch::TchError::Torch(msg)))
    }

    /// The tensor a call made, or its error message (for every C interface of the crate).
    pub(crate) fn take(err: *mut c_char, out: *mut C_tensor) -> Result<Tensor> {
        check(err)?;
        if out.is_null() {
            return Err(PolicyError::Torch(tch::TchError::Torch(
                "a C++ kernel returned no tensor".into(),
            )));
        }
        // SAFETY: on success the C side set `out` to a new heap `at::Tensor` that we now own.
        Ok(unsafe { Tensor::from_ptr(out) })
    }

    pub(super) fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        let w = weight.map_or(ptr::null(), |w| w.as_ptr());
        let mut out = ptr::null_mut();
        // SAFETY: the pointers are live tensors borrowed for the call; the C side copies handles.
        let err = unsafe { icpo_fused_rms_norm(x.as_ptr(), w, eps, &mut out) };
        take(err, out)
    }

    pub(super) fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
        let mut out = ptr::null_mut();
        // SAFETY: as in `rms_norm`.
        let err = unsafe { icpo_fused_swiglu(gate_up.as_ptr(), &mut out) };
        take(err, out)
    }

    pub(super) fn chunked_head(
        hidden: &Tensor,
        weight: &Tensor,
        targets: &Tensor,
        entropy: bool,
        chunk: i64,
    ) -> Result<(Tensor, Tensor)> {
        let (mut lp, mut ent) = (ptr::null_mut(), ptr::null_mut());
        // SAFETY: as in `rms_norm`; on success both outputs are new tensors we own.
        let err = unsafe {
            icpo_chunked_head(
                hidden.as_ptr(),
                weight.as_ptr(),
                targets.as_ptr(),
                entropy,
                chunk,
                &mut lp,
                &mut ent,
            )
        };
        check(err)?;
        Ok((take(ptr::null_mut(), lp)?, take(ptr::null_mut(), ent)?))
    }

    pub(super) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let mut out = ptr::null_mut();
        // SAFETY: as in `rms_norm`.
        let err = unsafe { icpo_fused_rope(x.as_ptr(), cos.as_ptr(), sin.as_ptr(), &mut out) };
        take(err, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded normal values of `shape` in `kind`.
    fn randn(shape: &[i64], kind: Kind, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)).to_kind(kind)
    }

    fn leaf(t: &Tensor) -> Tensor {
        t.detach().set_requires_grad(true)
    }

    /// Max |a − b| over max |b| (both to f64).
    fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
        let scale = b.abs().max().double_value(&[]).max(1e-12);
        (a - &b).abs().max().double_value(&[]) / scale
    }

    /// The three ops in plain f64 formulas (the spec the kernels implement), from f64 inputs.
    mod reference {
        use tch::{Kind, Tensor};

        pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
            let r = (x.square().mean_dim(-1, true, Kind::Double) + eps).rsqrt();
            x * r * w
        }

        pub fn swiglu(gu: &Tensor) -> Tensor {
            let i = gu.size()[gu.dim() - 1] / 2;
            let (g, u) = (gu.narrow(-1, 0, i), gu.narrow(-1, i, i));
            &g * g.sigmoid() * u
        }

        pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
            let half = x.size()[3] / 2;
            let (x1, x2) = (x.narrow(-1, 0, half), x.narrow(-1, half, half));
            let rotated = Tensor::cat(&[-x2, x1], -1);
            x * cos.unsqueeze(2) + rotated * sin.unsqueeze(2)
        }
    }

    /// Value and input gradients of `op` on `inputs` (cast to `kind`) under the upstream
    /// gradient `dy`, as f64.
    fn run(
        op: &dyn Fn(&[Tensor]) -> Tensor,
        inputs: &[Tensor],
        kind: Kind,
        dy: &Tensor,
    ) -> (Tensor, Vec<Tensor>) {
        let leaves: Vec<Tensor> = inputs.iter().map(|t| leaf(&t.to_kind(kind))).collect();
        let y = op(&leaves);
        (&y * dy.to_kind(y.kind())).sum(y.kind()).backward();
        let grads = leaves.iter().map(|l| l.grad().to_kind(Kind::Double)).collect();
        (y.to_kind(Kind::Double), grads)
    }

    /// `fast` (the dispatching op) against the f64 reference, in f32 and bf16, value and
    /// gradients; bf16 within a few of its 8-bit-mantissa roundings.
    fn check(
        fast: &dyn Fn(&[Tensor]) -> Tensor,
        reference: &dyn Fn(&[Tensor]) -> Tensor,
        inputs: &[Tensor],
        out_shape: &[i64],
    ) {
        let dy = randn(out_shape, Kind::Float, 99);
        for (kind, tol) in [(Kind::Float, 2e-5), (Kind::BFloat16, 3e-2)] {
            // The reference sees the same (rounded) inputs, in f64.
            let rounded: Vec<Tensor> = inputs.iter().map(|t| t.to_kind(kind)).collect();
            let (want, want_grads) = run(reference, &rounded, Kind::Double, &dy);
            let (got, got_grads) = run(fast, &rounded, kind, &dy);
            assert_eq!(got.size(), out_shape);
            let e = rel_err(&got, &want);
            assert!(e < tol, "{kind:?}: value error {e}");
            for (k, (g, w)) in got_grads.iter().zip(&want_grads).enumerate() {
                let e = rel_err(g, w);
                assert!(e < tol, "{kind:?}: gradient of input {k}: error {e}");
            }
        }
    }

    #[test]
    fn rms_norm_matches_the_formula() {
        let x = randn(&[3, 5, 64], Kind::Float, 1) * 3.0;
        let w = randn(&[64], Kind::Float, 2);
        check(
            &|t| rms_norm(&t[0], Some(&t[1]), 1e-6).unwrap(),
            &|t| reference::rms_norm(&t[0], &t[1], 1e-6),
            &[x.shallow_clone(), w],
            &[3, 5, 64],
        );
        // Without a weight.
        let ones = Tensor::ones([64], (Kind::Double, tch::Device::Cpu));
        check(
            &|t| rms_norm(&t[0], None, 1e-5).unwrap(),
            &|t| reference::rms_norm(&t[0], &ones, 1e-5),
            &[x],
            &[3, 5, 64],
        );
    }

    #[test]
    fn swiglu_matches_the_formula() {
        // Gates far into both tails too (the kernel's exp is clamped there).
        let gu = randn(&[4, 7, 2 * 48], Kind::Float, 3) * 4.0;
        gu.narrow(-1, 0, 2).copy_(&Tensor::from_slice(&[-100.0f32, 100.0]));
        check(&|t| swiglu(&t[0]).unwrap(), &|t| reference::swiglu(&t[0]), &[gu], &[4, 7, 48]);
    }

    #[test]
    fn rope_matches_the_formula() {
        let x = randn(&[2, 6, 3, 16], Kind::Float, 4);
        let pos = Tensor::arange(6, (Kind::Int64, tch::Device::Cpu)).view([1, 6]).repeat([2, 1]);
        let inv = Tensor::from_slice(&[1.0f32, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003]);
        let (cos, sin) = crate::rope::cos_sin(&inv, &(pos + 5), Kind::Float).unwrap();
        let (c64, s64) = (cos.to_kind(Kind::Double), sin.to_kind(Kind::Double));
        check(
            &|t| rope(&t[0], &cos, &sin).unwrap(),
            &|t| reference::rope(&t[0], &c64, &s64),
            &[x],
            &[2, 6, 3, 16],
        );
    }

    /// The composed forms (used off the CPU) against the same formulas.
    #[test]
    fn composed_forms_match_the_formulas() {
        let x = randn(&[3, 4, 32], Kind::Float, 5);
        let w = randn(&[32], Kind::Float, 6);
        check(
            &|t| composed::rms_norm(&t[0], Some(&t[1]), 1e-6).unwrap(),
            &|t| reference::rms_norm(&t[0], &t[1], 1e-6),
            &[x, w],
            &[3, 4, 32],
        );
        let gu = randn(&[3, 4, 32], Kind::Float, 7);
        check(
            &|t| composed::swiglu(&t[0]).unwrap(),
            &|t| reference::swiglu(&t[0]),
            &[gu],
            &[3, 4, 16],
        );
        let x = randn(&[2, 3, 2, 8], Kind::Float, 8);
        let (cos, sin) = (randn(&[2, 3, 8], Kind::Float, 9), randn(&[2, 3, 8], Kind::Float, 10));
        let (c64, s64) = (cos.to_kind(Kind::Double), sin.to_kind(Kind::Double));
        check(
            &|t| composed::rope(&t[0], &cos, &sin).unwrap(),
            &|t| reference::rope(&t[0], &c64, &s64),
            &[x],
            &[2, 3, 2, 8],
        );
    }

    #[test]
    fn non_finite_inputs_stay_non_finite() {
        let x = randn(&[2, 8], Kind::Float, 11);
        let _ = x.get(0).get(3).fill_(f64::NAN);
        let y = rms_norm(&x, None, 1e-6).unwrap();
        assert!(y.get(0).isnan().all().int64_value(&[]) == 1, "the NaN row is NaN");
        assert!(y.get(1).isfinite().all().int64_value(&[]) == 1, "the other row is untouched");
        let gu = randn(&[1, 4], Kind::Float, 12);
        let _ = gu.get(0).get(0).fill_(f64::NAN);
        let _ = gu.get(0).get(1).fill_(f64::INFINITY);
        let y = swiglu(&gu).unwrap();
        assert_eq!(y.isfinite().sum(Kind::Int64).int64_value(&[]), 0);
    }

    /// The kernels are built wherever libtorch is, so wherever tests run: without them the
    /// checks above would reach only the composed forms.
    #[cfg(not(icpo_fused))]
    #[test]
    fn fused_kernels_are_built() {
        panic!("csrc/fused.cpp was not compiled: see build.rs's warning");
    }

    #[cfg(icpo_fused)]
    #[test]
    fn bad_inputs_are_errors_naming_the_dims() {
        let x = randn(&[2, 3, 4, 8], Kind::Float, 13);
        let cos = randn(&[2, 5, 8], Kind::Float, 14);
        let e = ffi::rope(&x, &cos, &cos).unwrap_err().to_string();
        assert!(e.contains("(2, 5, 8)") && e.contains("(2, 3, 4, 8)"), "{e}");
        let e = ffi::swiglu(&randn(&[2, 5], Kind::Float, 15)).unwrap_err().to_string();
        assert!(e.contains("(2, 5)") && e.contains("even"), "{e}");
        let w = randn(&[7], Kind::Float, 16);
        let e = ffi::rms_norm(&x, Some(&w), 1e-6).unwrap_err().to_string();
        assert!(e.contains("(7)") && e.contains("(2, 3, 4, 8)"), "{e}");
        let e = ffi::swiglu(&randn(&[2, 4], Kind::Half, 17)).unwrap_err().to_string();
        assert!(e.contains("float32 or bfloat16"), "{e}");
        // Half precision goes to the composed forms instead.
        assert!(swiglu(&randn(&[2, 4], Kind::Half, 17)).is_ok());
    }
}
