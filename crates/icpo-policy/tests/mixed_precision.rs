//! Mixed precision: f32 weights, bf16 products. Log-probs stay near transformers' f32 values,
//! gradients reach the f32 weights and point where the f32 gradients point, and the decoding
//! copy (bf16 weights cast once) decodes the same logits as the model.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::collections::HashMap;

mod common;
use common::{dir, golden, golden_logprobs, max_abs_diff, MODELS};

use icpo_policy::{CausalLm, DType, Entropy, LoadOptions};
use tch::{Kind, Tensor};

fn load(name: &str, compute: Option<DType>) -> CausalLm {
    let options = LoadOptions { compute_dtype: compute, ..Default::default() };
    CausalLm::load(dir(name), options).unwrap()
}

/// Weighted log-prob sum's gradient, flattened over all weights in name order.
fn logprob_gradient(model: &CausalLm, g: &HashMap<String, Tensor>) -> (Tensor, Tensor) {
    let out = golden_logprobs(model, g, Entropy::Skip);
    out.logprobs.sum(Kind::Float).backward();
    let mut named: Vec<(String, Tensor)> = model.named_weights().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    for (n, w) in &named {
        assert_eq!(w.kind(), Kind::Float, "{n}: the weights stay f32");
        assert_eq!(w.grad().kind(), Kind::Float, "{n}: f32 gradient");
    }
    let flat =
        Tensor::cat(&named.iter().map(|(_, w)| w.grad().flatten(0, -1)).collect::<Vec<_>>(), 0);
    (out.logprobs.detach(), flat)
}

#[test]
fn bf16_products_keep_logprobs_and_gradients_close_to_f32() {
    for name in MODELS {
        let g = golden(name);
        let mixed = load(name, Some(DType::BF16));
        assert_eq!(mixed.compute_dtype(), DType::BF16);
        let (lp, grad) = logprob_gradient(&mixed, &g);
        // bf16 keeps 8 bits of mantissa: log-probs move by a few hundredths, no more.
        let d = max_abs_diff(&lp, &g["resp_logprobs"]);
        assert!(d <= 0.1, "{name}: bf16 log-probs max |Δ| = {d:e} from transformers' f32");
        let (_, reference) = logprob_gradient(&load(name, None), &g);
        let cos = (&grad * &reference).sum(Kind::Double).double_value(&[])
            / (grad.norm().double_value(&[]) * reference.norm().double_value(&[]));
        assert!(cos > 0.99, "{name}: cosine(bf16 gradient, f32 gradient) = {cos}");
    }
}

#[test]
fn bf16_decoding_copy_decodes_like_the_mixed_model() {
    for name in MODELS {
        let g = golden(name);
        let mixed = load(name, Some(DType::BF16));
        let copy = mixed.decoding_copy().unwrap();
        let (ids, mask) = (&g["batch_ids"], &g["batch_mask"]);
        let t = ids.size()[1];
        tch::no_grad(|| {
            let (mut last, mut cache) =
                copy.prefill(&ids.narrow(1, 0, 1), &mask.narrow(1, 0, 1), t).unwrap();
            let full = mixed.forward(ids, Some(mask)).unwrap();
            for j in 1..t {
                // At real tokens; logits have std ≈ 1.2, so a wrong layer is far off, while
                // bf16 rounding (2⁻⁸ relative) moves them by a few hundredths.
                for i in 0..ids.size()[0] {
                    if mask.int64_value(&[i, j - 1]) == 1 {
                        let d = max_abs_diff(&last.get(i), &full.get(i).get(j - 1));
                        assert!(d <= 0.15, "{name} row {i} pos {}: max |Δlogit| = {d:e}", j - 1);
                        let d = max_abs_diff(&last.get(i), &g["batch_logits"].get(i).get(j - 1));
                        assert!(d <= 0.15, "{name} row {i} pos {}: vs transformers {d:e}", j - 1);
                    }
                }
                last = copy
                    .decode(&ids.narrow(1, j, 1), &mask.narrow(1, j, 1), &mut cache)
                    .unwrap()
                    .select(1, 0);
            }
        });
    }
}
