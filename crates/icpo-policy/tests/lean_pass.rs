//! The lean training pass (the lean head, which keeps no chunk's logits for the backward, and
//! activation checkpointing per layer, which keeps no layer's intermediates) against the plain
//! autograd pass: every parameter's gradient equal to relative 1e-5 in f32, on the Qwen2, Qwen3
//! and Llama fixtures, with left-padded prompts, a shared-prompt group (as GRPO groups and IEF
//! rollouts are scored), distinct prompts, an empty response and a differentiable entropy term;
//! values equal too. Each piece is also checked alone, and checkpointing under mixed precision
//! and with a frozen embedding. One process-wide switch (the lean head) is flipped, so this
//! file holds one test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;
use common::{dir, MODELS};

use icpo_policy::{set_lean_head, CausalLm, DType, Entropy, LoadOptions};
use tch::{Kind, Tensor};

/// A batch: (prompt ids, prompt mask, response ids, response mask), each `(4, 3)`.
type Batch = [Tensor; 4];

/// Rows 0 and 1 share a prompt; row 2 is left padded; row 3 has an empty response.
fn shared_batch() -> Batch {
    [
        Tensor::from_slice(&[5i64, 9, 13, 5, 9, 13, 0, 7, 21, 3, 4, 6]).view([4, 3]),
        Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1]).view([4, 3]),
        Tensor::from_slice(&[3i64, 8, 40, 2, 6, 11, 30, 4, 0, 0, 0, 0]).view([4, 3]),
        Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]).view([4, 3]),
    ]
}

/// Every prompt distinct (the pass without a shared prompt), two left padded.
fn distinct_batch() -> Batch {
    [
        Tensor::from_slice(&[0i64, 0, 13, 5, 9, 14, 0, 7, 21, 3, 4, 6]).view([4, 3]),
        Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1]).view([4, 3]),
        Tensor::from_slice(&[3i64, 8, 40, 2, 6, 11, 30, 4, 0, 9, 9, 0]).view([4, 3]),
        Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0]).view([4, 3]),
    ]
}

/// Loss, every parameter's gradient (sorted by name) and the log-probs and entropies, with the
/// lean head and checkpointing on or off.
fn pass(
    model: &mut CausalLm,
    batch: &Batch,
    lean: bool,
    checkpointing: bool,
) -> (f64, Vec<(String, Tensor)>, Tensor) {
    set_lean_head(lean);
    model.set_gradient_checkpointing(checkpointing);
    for (_, w) in model.named_weights() {
        let mut g = w.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let [prompts, pmask, resp, rmask] = batch;
    let out =
        model.response_logprobs(prompts, pmask, resp, rmask, Entropy::Differentiable).unwrap();
    // An objective weighting every token differently, with an entropy bonus.
    let wl =
        Tensor::from_slice(&[0.3f32, -1.2, 0.7, 2.0, 0.1, -0.4, 1.5, -0.9, 0.6, 1.0, 1.0, 1.0])
            .view([4, 3]);
    let we =
        Tensor::from_slice(&[0.05f32, 0.2, -0.1, 0.3, 0.0, 0.1, -0.2, 0.4, 0.2, 1.0, 1.0, 1.0])
            .view([4, 3]);
    let entropy = out.entropy.unwrap();
    let loss = (&out.logprobs * &wl).sum(Kind::Float) + (&entropy * &we).sum(Kind::Float);
    loss.backward();
    let mut grads: Vec<(String, Tensor)> = model
        .named_weights()
        .into_iter()
        .map(|(n, w)| {
            let g = w.grad();
            (n, if g.defined() { g.copy() } else { w.zeros_like() })
        })
        .collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    let values = Tensor::cat(&[out.logprobs.detach(), entropy.detach()], 1);
    (loss.double_value(&[]), grads, values)
}

type Outcome = (f64, Vec<(String, Tensor)>, Tensor);

/// `got` equals `want`: loss, values and every gradient to `tol` relative to each tensor's
/// largest gradient; `min_nonzero` gradients are not all zero.
fn assert_same(what: &str, want: &Outcome, got: &Outcome, tol: f64, min_nonzero: usize) {
    let ((loss_a, grads_a, v_a), (loss_b, grads_b, v_b)) = (want, got);
    assert!((loss_a - loss_b).abs() <= tol * loss_a.abs().max(1.0), "{what}: loss");
    let dv = (v_a - v_b).abs().max().double_value(&[]);
    assert!(dv < tol.max(1e-5), "{what}: log-probs/entropy differ by {dv}");
    assert_eq!(grads_a.len(), grads_b.len());
    let mut nonzero = 0;
    for ((n, a), (_, b)) in grads_a.iter().zip(grads_b) {
        let scale = a.abs().max().double_value(&[]);
        let d = (a - b).abs().max().double_value(&[]);
        assert!(d <= tol * scale.max(1e-6), "{what} {n}: max |Δgrad| {d:e} vs scale {scale:e}");
        nonzero += usize::from(scale > 0.0);
    }
    assert!(nonzero >= min_nonzero, "{what}: gradients reach {nonzero} parameters");
}

#[test]
fn lean_pass_gradients_equal_the_plain_pass() {
    assert!(icpo_policy::lean_head_enabled(), "the lean head is built in this configuration");
    for name in MODELS {
        let mut model = CausalLm::load(dir(name), LoadOptions::default()).unwrap();
        let all = model.named_weights().len();
        for (label, batch) in [("shared", shared_batch()), ("distinct", distinct_batch())] {
            let plain = pass(&mut model, &batch, false, false);
            for (lean, ckpt) in [(true, false), (false, true), (true, true)] {
                let got = pass(&mut model, &batch, lean, ckpt);
                let what = format!("{name} {label} lean head {lean} checkpointing {ckpt}");
                assert_same(&what, &plain, &got, 1e-5, all - 1);
            }
        }
        // Mixed precision (bf16 products of f32 weights): the recomputation is the same bf16
        // arithmetic, so checkpointing changes nothing beyond reduction order.
        let options = LoadOptions { compute_dtype: Some(DType::BF16), ..LoadOptions::default() };
        let mut mixed = CausalLm::load(dir(name), options).unwrap();
        let batch = shared_batch();
        let plain = pass(&mut mixed, &batch, true, false);
        let got = pass(&mut mixed, &batch, true, true);
        assert_same(&format!("{name} bf16 checkpointing"), &plain, &got, 2e-2, all - 1);
        // A frozen embedding: no layer input needs a gradient, yet the layers get theirs.
        let embed = "model.embed_tokens.weight";
        let freeze = |m: &mut CausalLm, on: bool| {
            let w = m.named_weights().remove(embed).unwrap();
            let _ = w.set_requires_grad(on);
        };
        if !model.config().tie_word_embeddings {
            freeze(&mut model, false);
            let plain = pass(&mut model, &batch, false, false);
            let got = pass(&mut model, &batch, true, true);
            assert_same(&format!("{name} frozen embedding"), &plain, &got, 1e-5, all - 1);
            freeze(&mut model, true);
        }
    }
    set_lean_head(true);
}
