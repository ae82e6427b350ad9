//! Python bindings of `icpo-verify`: the `icpo_verify._icpo_verify` extension module that the
//! `icpo_verify` package wraps (`python/icpo_verify`). Every call is bounded in time by the
//! verifier's own budgets — no signals, no global state — so it is safe from any Python thread
//! and in forked workers; batches run on scoped threads with the GIL released.

// pyo3's macros expand to the FFI glue, which is unsafe code; this crate writes none itself.
#![allow(unsafe_code)]
// pyo3 0.22's `#[pyfunction]` expansion converts `PyErr` into itself, which clippy flags.
#![allow(clippy::useless_conversion)]

use std::sync::atomic::{AtomicUsize, Ordering};

use icpo_verify::{verify_detailed, Verdict, VerifyConfig};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The verifier's settings from Python's keyword arguments (Math-Verify's names).
fn config(strict: bool, float_rounding: u32, max_steps: u32) -> PyResult<VerifyConfig> {
    if float_rounding > 15 {
        return Err(PyValueError::new_err(format!(
            "float_rounding = {float_rounding}: use 0 to 15 decimal digits"
        )));
    }
    if max_steps == 0 {
        return Err(PyValueError::new_err("max_steps must be at least 1"));
    }
    Ok(VerifyConfig { precision: float_rounding, strict, max_steps })
}

/// Whether `prediction` (a full response) states the same answer as `gold` (a bare answer or a
/// full solution).
#[pyfunction]
#[pyo3(signature = (gold, prediction, *, strict = true, float_rounding = 6, max_steps = 20_000))]
fn verify(
    py: Python<'_>,
    gold: &str,
    prediction: &str,
    strict: bool,
    float_rounding: u32,
    max_steps: u32,
) -> PyResult<bool> {
    let cfg = config(strict, float_rounding, max_steps)?;
    Ok(py.allow_threads(|| verify_detailed(gold, prediction, &cfg).correct))
}

/// Verdicts of many pairs, in order, on `threads` scoped threads (default: one per core) with
/// the GIL released.
#[pyfunction]
#[pyo3(signature = (golds, predictions, *, threads = None, strict = true, float_rounding = 6, max_steps = 20_000))]
fn verify_batch(
    py: Python<'_>,
    golds: Vec<String>,
    predictions: Vec<String>,
    threads: Option<usize>,
    strict: bool,
    float_rounding: u32,
    max_steps: u32,
) -> PyResult<Vec<bool>> {
    if golds.len() != predictions.len() {
        return Err(PyValueError::new_err(format!(
            "{} golds but {} predictions: they pair up one to one",
            golds.len(),
            predictions.len()
        )));
    }
    let cfg = config(strict, float_rounding, max_steps)?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = match threads {
        None => cores,
        Some(n) if (1..=1024).contains(&n) => n,
        Some(n) => {
            return Err(PyValueError::new_err(format!("threads = {n}: use 1 to 1024, or None")))
        }
    };
    Ok(py.allow_threads(|| {
        let n = golds.len();
        let next = AtomicUsize::new(0);
        // Scoped threads rather than a global pool: nothing survives the call, so forked
        // workers inherit no thread pool. Pairs are handed out one at a time from a shared
        // counter, so one slow pair does not leave the other threads idle.
        let parts: Vec<Vec<(usize, bool)>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads.min(n))
                .map(|_| {
                    s.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                break done;
                            }
                            done.push((
                                i,
                                verify_detailed(&golds[i], &predictions[i], &cfg).correct,
                            ));
                        }
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or_default()).collect()
        });
        let mut out = vec![false; n];
        for (i, ok) in parts.into_iter().flatten() {
            out[i] = ok;
        }
        out
    }))
}

fn verdict_dict<'py>(py: Python<'py>, v: &Verdict) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new_bound(py);
    d.set_item("correct", v.correct)?;
    d.set_item("gold_answer", v.gold_answer.clone())?;
    d.set_item("pred_answer", v.pred_answer.clone())?;
    d.set_item("family", v.family)?;
    d.set_item("rule", v.rule)?;
    d.set_item("reason", v.reason)?;
    Ok(d)
}

/// The verdict with its reasons: `correct`, the extracted `gold_answer` and `pred_answer`
/// (None when nothing parsed), the gold's `family`, the `rule` that decided and the `reason`.
#[pyfunction]
#[pyo3(signature = (gold, prediction, *, strict = true, float_rounding = 6, max_steps = 20_000))]
fn explain<'py>(
    py: Python<'py>,
    gold: &str,
    prediction: &str,
    strict: bool,
    float_rounding: u32,
    max_steps: u32,
) -> PyResult<Bound<'py, PyDict>> {
    let cfg = config(strict, float_rounding, max_steps)?;
    let v = py.allow_threads(|| verify_detailed(gold, prediction, &cfg));
    verdict_dict(py, &v)
}

/// The extension module.
#[pymodule]
fn _icpo_verify(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(verify_batch, m)?)?;
    m.add_function(wrap_pyfunction!(explain, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
