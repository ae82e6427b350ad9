//! The lean head (log-probs and entropy without keeping any chunk's logits for the backward)
//! against the plain autograd pass: every parameter's gradient equal to relative 1e-5 in f32,
//! on the Qwen2, Qwen3 and Llama fixtures, with left-padded prompts, a shared-prompt group, an
//! empty response and a differentiable entropy term; values equal too. One process-wide switch
//! is flipped, so this file holds one test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;
use common::{dir, MODELS};

use icpo_policy::{set_lean_head, CausalLm, Entropy, LoadOptions};
use tch::{Kind, Tensor};

/// Loss and every parameter's gradient (name → grad), with the lean head on or off.
fn pass(model: &CausalLm, lean: bool) -> (f64, Vec<(String, Tensor)>, Tensor) {
    set_lean_head(lean);
    // Rows 0 and 1 share a prompt; row 2 is left padded; row 3 has an empty response.
    let prompts = Tensor::from_slice(&[5i64, 9, 13, 5, 9, 13, 0, 7, 21, 3, 4, 6]).view([4, 3]);
    let pmask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1]).view([4, 3]);
    let resp = Tensor::from_slice(&[3i64, 8, 40, 2, 6, 11, 30, 4, 0, 0, 0, 0]).view([4, 3]);
    let rmask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]).view([4, 3]);
    for (_, w) in model.named_weights() {
        let mut g = w.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let out =
        model.response_logprobs(&prompts, &pmask, &resp, &rmask, Entropy::Differentiable).unwrap();
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
    let mut grads: Vec<(String, Tensor)> =
        model.named_weights().into_iter().map(|(n, w)| (n, w.grad().copy())).collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    let values = Tensor::cat(&[out.logprobs.detach(), entropy.detach()], 1);
    (loss.double_value(&[]), grads, values)
}

#[test]
fn lean_head_gradients_equal_the_plain_pass() {
    for name in MODELS {
        let model = CausalLm::load(dir(name), LoadOptions::default()).unwrap();
        let (loss_plain, plain, v_plain) = pass(&model, false);
        let (loss_lean, lean, v_lean) = pass(&model, true);
        assert!(icpo_policy::lean_head_enabled(), "the lean head is built in this configuration");
        assert!((loss_plain - loss_lean).abs() <= 1e-5 * loss_plain.abs().max(1.0), "{name}");
        let dv = (&v_plain - &v_lean).abs().max().double_value(&[]);
        assert!(dv < 1e-5, "{name}: log-probs/entropy differ by {dv}");
        assert_eq!(plain.len(), lean.len());
        let mut nonzero = 0;
        for ((n, a), (_, b)) in plain.iter().zip(&lean) {
            let scale = a.abs().max().double_value(&[]);
            let d = (a - b).abs().max().double_value(&[]);
            assert!(
                d <= 1e-5 * scale.max(1e-6),
                "{name} {n}: max |Δgrad| {d:e} vs scale {scale:e}"
            );
            nonzero += usize::from(scale > 0.0);
        }
        assert!(nonzero >= plain.len() - 1, "{name}: gradients reach the parameters");
    }
    set_lean_head(true);
}
