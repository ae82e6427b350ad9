//! Activation checkpointing: run a closure (one decoder layer) keeping none of its intermediate
//! activations for the backward, which runs it again (`csrc/recompute.cpp`).
//!
//! A training pass otherwise keeps every layer's activations until its backward: for Qwen3-1.7B
//! about 12 GB per 1k tokens. Under checkpointing only each layer's inputs stay (the hidden
//! state, and a shared prompt's keys and values), and one layer's activations at a time are
//! rebuilt in the backward, at the cost of a second forward of each layer. The backward is
//! PyTorch's reentrant checkpoint, so `loss.backward()` stays the one entry point: the weights'
//! gradients accumulate during the recomputation's own backward.

use tch::Tensor;

use crate::error::Result;

/// Runs `body` on `inputs`: with gradients enabled, through an autograd node that keeps only
/// `inputs` and recomputes `body` in the backward (so `body` must compute the same values every
/// time: no random draws); without, as a plain call. Without the C++ shim (`doc-only`) it is
/// always a plain call.
///
/// `body` must own what it captures (it lives as long as the graph) and may run on the autograd
/// engine's threads (a GPU's backward).
pub(crate) fn recompute<F>(inputs: &[Tensor], body: F) -> Result<Vec<Tensor>>
where
    F: FnMut(&[Tensor]) -> Result<Vec<Tensor>> + Send + 'static,
{
    #[cfg(icpo_fused)]
    return ffi::recompute(inputs, Box::new(body));
    #[cfg(not(icpo_fused))]
    {
        let mut body = body;
        body(inputs)
    }
}

#[cfg(icpo_fused)]
#[allow(unsafe_code)] // the C interface of csrc/recompute.cpp
mod ffi {
    use std::ffi::{c_char, c_void};
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::ptr;
    use std::sync::Mutex;

    use tch::Tensor;
    use torch_sys::C_tensor;

    use crate::error::{PolicyError, Result};
    use crate::fused::ffi::check;

    /// A layer closure, boxed.
    pub(super) type BoxedBody = Box<dyn FnMut(&[Tensor]) -> Result<Vec<Tensor>> + Send>;
    /// What `ctx` points at: called by reference from the autograd engine's threads, hence
    /// the mutex (a `Tensor` is `Send`, not `Sync`).
    type Body = Mutex<BoxedBody>;

    /// Most tensors a body may return (a layer returns its output, and its keys and values).
    const MAX_OUTPUTS: usize = 8;

    type Call = unsafe extern "C" fn(
        *mut c_void,
        *mut *mut C_tensor,
        usize,
        *mut c_void,
        *mut c_void,
    ) -> bool;
    type Drop = unsafe extern "C" fn(*mut c_void);

    extern "C" {
        fn icpo_recompute(
            ctx: *mut c_void,
            call: Call,
            drop: Drop,
            inputs: *const *const C_tensor,
            n: usize,
            outputs: *mut *mut C_tensor,
            cap: usize,
            n_out: *mut usize,
        ) -> *mut c_char;
        fn icpo_recompute_push(out_sink: *mut c_void, t: *const C_tensor);
        fn icpo_recompute_error(err_sink: *mut c_void, msg: *const c_char, len: usize);
    }

    /// Runs the body behind `ctx` on `n` input handles it takes ownership of.
    unsafe extern "C" fn call(
        ctx: *mut c_void,
        inputs: *mut *mut C_tensor,
        n: usize,
        out_sink: *mut c_void,
        err_sink: *mut c_void,
    ) -> bool {
        // SAFETY: the C side passes `n` new heap tensors, each ours from here on.
        let tensors: Vec<Tensor> =
            (0..n).map(|i| unsafe { Tensor::from_ptr(*inputs.add(i)) }).collect();
        // SAFETY: `ctx` is the `Body` leaked in `recompute`, alive until `drop_body`.
        let body = unsafe { &*(ctx as *const Body) };
        let result = catch_unwind(AssertUnwindSafe(|| match body.lock() {
            Ok(mut f) => f(&tensors),
            Err(_) => Err(PolicyError::Shape("recompute: the layer panicked earlier".into())),
        }));
        let message = match result {
            Ok(Ok(outputs)) => {
                for t in &outputs {
                    // SAFETY: the C side copies the handle before `outputs` drops it.
                    unsafe { icpo_recompute_push(out_sink, t.as_ptr()) };
                }
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "recompute: the layer panicked".to_string(),
        };
        // SAFETY: the C side copies `len` bytes.
        unsafe { icpo_recompute_error(err_sink, message.as_ptr().cast(), message.len()) };
        false
    }

    /// Frees the body behind `ctx`.
    unsafe extern "C" fn drop_body(ctx: *mut c_void) {
        // SAFETY: `ctx` came from `Box::into_raw` in `recompute` and is dropped once.
        drop(unsafe { Box::from_raw(ctx as *mut Body) });
    }

    pub(super) fn recompute(inputs: &[Tensor], body: BoxedBody) -> Result<Vec<Tensor>> {
        let ctx = Box::into_raw(Box::new(Mutex::new(body))) as *mut c_void;
        let handles: Vec<*const C_tensor> = inputs.iter().map(Tensor::as_ptr).collect();
        let mut outputs = [ptr::null_mut(); MAX_OUTPUTS];
        let mut n_out = 0usize;
        // SAFETY: the C side takes ownership of `ctx` (freeing it through `drop_body`), borrows
        // the input handles for the call, and on success sets `n_out` new handles we own.
        let err = unsafe {
            icpo_recompute(
                ctx,
                call,
                drop_body,
                handles.as_ptr(),
                handles.len(),
                outputs.as_mut_ptr(),
                MAX_OUTPUTS,
                &mut n_out,
            )
        };
        check(err)?;
        // SAFETY: as above.
        Ok(outputs[..n_out].iter().map(|&p| unsafe { Tensor::from_ptr(p) }).collect())
    }
}
