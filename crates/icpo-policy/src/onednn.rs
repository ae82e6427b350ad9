//! Decoding's projections: a weight laid out once per [`crate::CausalLm::decoding_copy`] for the
//! few-row products of a decode step.
//!
//! On a CPU the layout is oneDNN's pre-packed one (`csrc/onednn.cpp`, the operators Inductor's
//! CPU freezing uses): its JIT kernels run AVX-512 at full width where MKL's sgemm does not, about
//! twice as fast on decode shapes here (docs/benchmarks.md). Elsewhere, and where libtorch lacks
//! oneDNN or the dtype is not supported, the weight is transposed to a contiguous `(in, out)`, so
//! that a product does not repack it on every call. Both compute `x · wᵀ + b` in the weight's
//! dtype; they differ only in the order of float additions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use crate::error::Result;

/// The switch, first read from `ICPO_ONEDNN`.
fn switch() -> &'static AtomicBool {
    static SWITCH: OnceLock<AtomicBool> = OnceLock::new();
    crate::fused::env_switch(&SWITCH, "ICPO_ONEDNN")
}

/// Whether decoding copies made from now on pack their CPU projections with oneDNN: true
/// unless libtorch lacks it (or the `doc-only` feature left the shim out), the environment
/// variable `ICPO_ONEDNN` is `0`, or [`set_onednn_decoding`] turned it off.
pub fn onednn_decoding_enabled() -> bool {
    switch().load(Ordering::Relaxed) && ffi::available()
}

/// Turns oneDNN's packed products for decoding copies made from now on on or off for the whole
/// process (off: MKL products on transposed weights). For comparisons and as an escape hatch.
pub fn set_onednn_decoding(on: bool) {
    switch().store(on, Ordering::Relaxed);
}

/// A weight `(out, in)` laid out for `x · wᵀ + b` in decode steps. A detached copy.
pub(crate) struct Proj {
    w: Tensor,
    /// `w` is oneDNN's packed form of `(out, in)`; otherwise it is `(in, out)`, contiguous.
    onednn: bool,
}

/// The row count oneDNN is told to expect (its layout barely depends on it: measured the same
/// from 1 to 256 rows).
const ROWS_HINT: i64 = 64;

impl Proj {
    /// `w (out, in)` laid out for its device and dtype.
    pub(crate) fn new(w: &Tensor) -> Result<Proj> {
        let w = w.f_detach()?;
        if w.device() == Device::Cpu
            && matches!(w.kind(), Kind::Float | Kind::BFloat16)
            && onednn_decoding_enabled()
        {
            if let Some(p) = Proj::packed(&w)? {
                return Ok(p);
            }
        }
        Proj::plain(&w)
    }

    /// oneDNN's layout, or `None` where this CPU cannot run `w`'s dtype through it (the packing
    /// or a one-row probe product fails).
    fn packed(w: &Tensor) -> Result<Option<Proj>> {
        let Ok(packed) = ffi::pack(w, ROWS_HINT) else {
            return Ok(None);
        };
        let probe = Tensor::f_zeros([1, w.size()[1]], (w.kind(), w.device()))?;
        Ok(ffi::linear(&probe, &packed, None).is_ok().then_some(Proj { w: packed, onednn: true }))
    }

    /// The transposed layout `(in, out)`.
    fn plain(w: &Tensor) -> Result<Proj> {
        Ok(Proj { w: w.f_tr()?.f_contiguous()?, onednn: false })
    }

    /// `x · wᵀ + bias`.
    ///
    /// # Shapes
    /// - `x`: `(…, in)`; `bias`: `(out)`; returns `(…, out)`
    pub(crate) fn apply(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        if self.onednn {
            return ffi::linear(x, &self.w, bias);
        }
        let y = x.f_matmul(&self.w)?;
        Ok(match bias {
            Some(b) => y.f_add(b)?,
            None => y,
        })
    }

    /// A handle on the same layout (nothing copied).
    pub(crate) fn shallow_clone(&self) -> Proj {
        Proj { w: self.w.shallow_clone(), onednn: self.onednn }
    }
}

#[cfg(icpo_fused)]
#[allow(unsafe_code)] // the C interface of csrc/onednn.cpp; every call is checked there
mod ffi {
    use std::ffi::c_char;
    use std::ptr;

    use tch::Tensor;
    use torch_sys::C_tensor;

    use crate::error::Result;
    use crate::fused::ffi::take;

    extern "C" {
        fn icpo_onednn_available() -> bool;
        fn icpo_onednn_pack(w: *const C_tensor, rows: i64, out: *mut *mut C_tensor) -> *mut c_char;
        fn icpo_onednn_linear(
            x: *const C_tensor,
            packed: *const C_tensor,
            bias: *const C_tensor,
            out: *mut *mut C_tensor,
        ) -> *mut c_char;
    }

    pub(super) fn available() -> bool {
        // SAFETY: no arguments; the C side catches every exception.
        unsafe { icpo_onednn_available() }
    }

    pub(super) fn pack(w: &Tensor, rows: i64) -> Result<Tensor> {
        let mut out = ptr::null_mut();
        // SAFETY: `w` is a live tensor; `out` is written only on success.
        let err = unsafe { icpo_onednn_pack(w.as_ptr(), rows, &mut out) };
        take(err, out)
    }

    pub(super) fn linear(x: &Tensor, packed: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let b = bias.map_or(ptr::null(), |b| b.as_ptr());
        let mut out = ptr::null_mut();
        // SAFETY: live tensors (bias may be null); `out` is written only on success.
        let err = unsafe { icpo_onednn_linear(x.as_ptr(), packed.as_ptr(), b, &mut out) };
        take(err, out)
    }
}

/// Without the shim (`doc-only`): never available.
#[cfg(not(icpo_fused))]
mod ffi {
    use tch::Tensor;

    use crate::error::{PolicyError, Result};

    pub(super) fn available() -> bool {
        false
    }

    fn missing() -> PolicyError {
        PolicyError::Torch(tch::TchError::Torch("built without the oneDNN shim".into()))
    }

    pub(super) fn pack(_: &Tensor, _: i64) -> Result<Tensor> {
        Err(missing())
    }

    pub(super) fn linear(_: &Tensor, _: &Tensor, _: Option<&Tensor>) -> Result<Tensor> {
        Err(missing())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x · wᵀ + b` in f64, the reference.
    fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let d = |t: &Tensor| t.to_kind(Kind::Double);
        let y = d(x).matmul(&d(w).tr());
        match b {
            Some(b) => y + d(b),
            None => y,
        }
    }

    fn max_err(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Double) - b).abs().max().double_value(&[])
    }

    #[test]
    fn both_layouts_compute_the_product_of_any_row_count() {
        tch::manual_seed(3);
        let (out, inp) = (96, 80);
        let w = Tensor::randn([out, inp], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([out], (Kind::Float, Device::Cpu));
        let mut layouts = vec![Proj::plain(&w).unwrap()];
        layouts.extend(Proj::packed(&w).unwrap());
        for p in &layouts {
            for shape in [vec![1, inp], vec![7, inp], vec![3, 5, inp], vec![130, inp]] {
                let x = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu));
                for bias in [None, Some(&b)] {
                    let y = p.apply(&x, bias).unwrap();
                    let mut want = shape.clone();
                    *want.last_mut().unwrap() = out;
                    assert_eq!(y.size(), want, "onednn {}", p.onednn);
                    // f32 products of 80 terms of size ~1: rounding is ~1e-5.
                    let e = max_err(&y, &reference(&x, &w, bias));
                    assert!(e < 1e-4, "onednn {} shape {shape:?}: {e}", p.onednn);
                }
            }
        }
    }

    #[test]
    fn a_strided_input_is_read_as_its_values() {
        tch::manual_seed(4);
        let w = Tensor::randn([32, 48], (Kind::Float, Device::Cpu));
        let wide = Tensor::randn([6, 96], (Kind::Float, Device::Cpu));
        let x = wide.narrow(1, 10, 48);
        let p = Proj::new(&w).unwrap();
        assert!(max_err(&p.apply(&x, None).unwrap(), &reference(&x, &w, None)) < 1e-4);
    }

    #[test]
    fn bf16_weights_compute_to_bf16_precision() {
        tch::manual_seed(5);
        let w = Tensor::randn([64, 128], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let x = Tensor::randn([9, 128], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let p = Proj::new(&w).unwrap();
        let y = p.apply(&x, None).unwrap();
        assert_eq!(y.kind(), Kind::BFloat16);
        // Outputs of size ~11 rounded to bf16's 8 bits: within 1/64 relative of the exact one.
        let want = reference(&x, &w, None);
        let rel = (y.to_kind(Kind::Double) - &want).abs().max().double_value(&[])
            / want.abs().max().double_value(&[]);
        assert!(rel < 1.0 / 64.0, "{rel}");
    }

    /// The pinned PyPI libtorch has oneDNN: on x86-64 the fast layout must be the one taken, or
    /// decoding silently loses half its speed.
    #[cfg(all(icpo_fused, target_arch = "x86_64"))]
    #[test]
    fn f32_weights_take_onednn_on_x86_64() {
        let w = Tensor::randn([16, 16], (Kind::Float, Device::Cpu));
        if std::env::var("ICPO_ONEDNN").is_ok_and(|v| v.trim() == "0") {
            return;
        }
        assert!(onednn_decoding_enabled());
        assert!(Proj::new(&w).unwrap().onednn);
    }

    #[test]
    fn a_bad_input_is_an_error_naming_its_dims() {
        let w = Tensor::randn([16, 24], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([2, 23], (Kind::Float, Device::Cpu));
        for p in [Proj::plain(&w).unwrap()].into_iter().chain(Proj::packed(&w).unwrap()) {
            let err = p.apply(&x, None).unwrap_err().to_string();
            assert!(err.contains("23"), "onednn {}: {err}", p.onednn);
        }
    }
}
