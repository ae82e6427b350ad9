//! Autograd through the model (fused q/k/v and gate/up products on a CPU, shared prompts)
//! against central finite differences of the log-probs, an independent reference.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;
use common::dir;

use icpo_policy::{CausalLm, Entropy, LoadOptions};
use tch::{Kind, Tensor};

#[test]
fn logprob_gradients_match_finite_differences() {
    // Qwen2 has q/k/v biases; two rows share a prompt (the shared-prompt path).
    let model = CausalLm::load(dir("tiny-qwen2"), LoadOptions::default()).unwrap();
    let prompts = Tensor::from_slice(&[5i64, 9, 13, 5, 9, 13, 0, 7, 21]).view([3, 3]);
    let pmask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 1, 1]).view([3, 3]);
    let resp = Tensor::from_slice(&[3i64, 8, 40, 2, 6, 11, 30, 4, 0]).view([3, 3]);
    let rmask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 0]).view([3, 3]);
    let objective = |m: &CausalLm| -> Tensor {
        let lp = m.response_logprobs(&prompts, &pmask, &resp, &rmask, Entropy::Skip).unwrap();
        lp.logprobs.sum(Kind::Float)
    };
    objective(&model).backward();
    let weights = model.named_weights();
    let names = [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.bias",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.embed_tokens.weight",
    ];
    for name in names {
        let w = &weights[name];
        let grad = w.grad().flatten(0, -1);
        // The entry with the largest gradient: a clear signal for the difference quotient.
        let idx = grad.abs().argmax(0, false).int64_value(&[]);
        let analytic = grad.double_value(&[idx]);
        let h = 1e-2;
        let at = |delta: f64| -> f64 {
            tch::no_grad(|| {
                let flat = w.flatten(0, -1);
                let _ = flat.get(idx).f_add_scalar_(delta).unwrap();
                let v = objective(&model).double_value(&[]);
                let _ = flat.get(idx).f_add_scalar_(-delta).unwrap();
                v
            })
        };
        let numeric = (at(h) - at(-h)) / (2.0 * h);
        let rel = (analytic - numeric).abs() / analytic.abs().max(1e-3);
        assert!(rel < 2e-2, "{name}[{idx}]: autograd {analytic} vs finite difference {numeric}");
    }
}
