//! The process-wide switch of the fused CPU kernels: with them on and off, the policy's
//! log-probs and their gradients match transformers' (its own process: the switch is global).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;
use common::{dir, golden, golden_logprobs, max_abs_diff, MODELS};

use icpo_policy::{fused_kernels_enabled, set_fused_kernels, CausalLm, Entropy, LoadOptions};
use tch::Kind;

#[test]
fn kernels_on_and_off_both_match_transformers() {
    assert!(fused_kernels_enabled(), "on by default (ICPO_FUSED_KERNELS unset in tests)");
    for name in MODELS {
        let g = golden(name);
        let model = CausalLm::load(dir(name), LoadOptions::default()).unwrap();
        let mut runs = Vec::new();
        for on in [true, false] {
            set_fused_kernels(on);
            assert_eq!(fused_kernels_enabled(), on);
            let lp = golden_logprobs(&model, &g, Entropy::Skip).logprobs;
            let d = max_abs_diff(&lp, &g["resp_logprobs"]);
            assert!(d <= 1e-4, "{name}, kernels {on}: max |Δ log-prob| = {d:e}");
            // The gradient of the summed log-probs, flattened in name order.
            let mut named: Vec<_> = model.named_weights().into_iter().collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            for (_, w) in named.iter_mut() {
                w.zero_grad();
            }
            golden_logprobs(&model, &g, Entropy::Skip).logprobs.sum(Kind::Float).backward();
            let grad = tch::Tensor::cat(
                &named.iter().map(|(_, w)| w.grad().flatten(0, -1)).collect::<Vec<_>>(),
                0,
            );
            runs.push((lp.detach(), grad));
        }
        set_fused_kernels(true);
        // Same maths both ways: f32 rounding apart.
        let (a, b) = (&runs[0], &runs[1]);
        let d = max_abs_diff(&a.0, &b.0);
        assert!(d <= 1e-5, "{name}: log-probs differ on/off by {d:e}");
        // ...but not bitwise: the switch really changed the path (the kernels sum in another
        // order). Deterministic, so this either always holds or never.
        assert!(d > 0.0, "{name}: identical on and off; is the switch ignored?");
        let scale = b.1.abs().max().double_value(&[]);
        let d = max_abs_diff(&a.1, &b.1) / scale;
        assert!(d <= 1e-4, "{name}: gradients differ on/off by {d:e} of their scale");
    }
}
