//! Parity with transformers on tiny random checkpoints (testdata/make_tiny_models.py made them
//! and the reference logits beside them): full forward, left-padded batch, KV-cache decoding,
//! response log-probs, and a save → reload round trip.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::collections::HashMap;
use std::path::PathBuf;

mod common;
use common::{dir, golden, golden_logprobs, max_abs_diff, MODELS};

use icpo_policy::{CausalLm, Entropy, LoadOptions};
use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;

fn load(name: &str) -> CausalLm {
    CausalLm::load(dir(name), LoadOptions::default()).unwrap()
}

#[test]
fn full_forward_matches_transformers() {
    for name in MODELS {
        let g = golden(name);
        let model = load(name);
        let logits = tch::no_grad(|| model.forward(&g["single_ids"].unsqueeze(0), None)).unwrap();
        let d = max_abs_diff(&logits.squeeze_dim(0), &g["single_logits"]);
        assert!(d <= TOL, "{name}: max |Δlogit| = {d:e}");
        // The reference is not trivially small: a wrong model could not pass by accident.
        assert!(g["single_logits"].std(true).double_value(&[]) > 0.1, "{name}");
    }
}

/// Compares logits at the real (unpadded) positions of a left-padded batch.
fn check_valid_positions(name: &str, logits: &Tensor, g: &HashMap<String, Tensor>, what: &str) {
    let mask = &g["batch_mask"];
    let (b, t) = (mask.size()[0], mask.size()[1]);
    for i in 0..b {
        for j in 0..t {
            if mask.int64_value(&[i, j]) == 1 {
                let d = max_abs_diff(&logits.get(i).get(j), &g["batch_logits"].get(i).get(j));
                assert!(d <= TOL, "{name} {what}: row {i} pos {j}: max |Δlogit| = {d:e}");
            }
        }
    }
}

#[test]
fn left_padded_batch_matches_transformers() {
    for name in MODELS {
        let g = golden(name);
        let model = load(name);
        let logits =
            tch::no_grad(|| model.forward(&g["batch_ids"], Some(&g["batch_mask"]))).unwrap();
        check_valid_positions(name, &logits, &g, "padded batch");
        // The padded batch's real positions also equal the unpadded single-row forward.
        let row = g["batch_ids"].get(0).unsqueeze(0);
        let single = tch::no_grad(|| model.forward(&row, None)).unwrap();
        assert!(max_abs_diff(&single.get(0), &logits.get(0)) <= TOL, "{name}");
    }
}

/// Both the model and its decoding copy (packed, fused projections on a CPU).
#[test]
fn kv_cache_decoding_matches_transformers() {
    for name in MODELS {
        let g = golden(name);
        let loaded = load(name);
        let copy = loaded.decoding_copy().unwrap();
        for (what, model) in [("kv-cache decoding", &loaded), ("decoding copy", &copy)] {
            let ids = &g["batch_ids"];
            let mask = &g["batch_mask"];
            let t = ids.size()[1];
            let prefix = 4;
            let mut out = Vec::new();
            tch::no_grad(|| {
                // Small capacity on purpose: the cache must grow during decoding.
                let (last, mut cache) = model
                    .prefill(&ids.narrow(1, 0, prefix), &mask.narrow(1, 0, prefix), 5)
                    .unwrap();
                let full = loaded
                    .forward(&ids.narrow(1, 0, prefix), Some(&mask.narrow(1, 0, prefix)))
                    .unwrap();
                let d = max_abs_diff(&last, &full.select(1, prefix - 1));
                assert!(d <= TOL, "{name} {what}: prefill max |Δlogit| = {d:e}");
                out.push(full);
                for j in prefix..t {
                    let step = model
                        .decode(&ids.narrow(1, j, 1), &mask.narrow(1, j, 1), &mut cache)
                        .unwrap();
                    out.push(step);
                }
                assert_eq!(cache.len(), t);
            });
            let logits = Tensor::cat(&out, 1);
            check_valid_positions(name, &logits, &g, what);
        }
    }
}

#[test]
fn cache_rows_can_be_repeated_and_selected() {
    let name = "tiny-qwen3";
    let g = golden(name);
    let model = load(name);
    let ids = &g["batch_ids"];
    let mask = &g["batch_mask"];
    tch::no_grad(|| {
        let (_, mut cache) = model.prefill(&ids.narrow(1, 0, 6), &mask.narrow(1, 0, 6), 8).unwrap();
        cache.repeat_interleave(2).unwrap();
        // Keep the copies of rows 1 and 0, in that order (rows 2 and 1 of the repeated cache).
        cache.select(&Tensor::from_slice(&[2i64, 1])).unwrap();
        let next = Tensor::stack(&[ids.get(1).narrow(0, 6, 1), ids.get(0).narrow(0, 6, 1)], 0);
        let step = model
            .decode(&next, &Tensor::ones([2, 1], (Kind::Int64, tch::Device::Cpu)), &mut cache)
            .unwrap();
        for (k, row) in [(0, 1), (1, 0)] {
            let d = max_abs_diff(&step.get(k).get(0), &g["batch_logits"].get(row).get(6));
            assert!(d <= TOL, "row {row}: {d:e}");
        }
    });
}

#[test]
fn response_logprobs_match_transformers() {
    for name in MODELS {
        let g = golden(name);
        let model = load(name);
        let out = golden_logprobs(&model, &g, Entropy::Metric);
        let d = max_abs_diff(&out.logprobs, &g["resp_logprobs"]);
        assert!(d <= TOL, "{name}: log-probs max |Δ| = {d:e}");
        let d = max_abs_diff(&out.entropy.unwrap(), &g["resp_entropy"]);
        assert!(d <= TOL, "{name}: entropy max |Δ| = {d:e}");
    }
}

#[test]
fn response_logprobs_are_differentiable() {
    let g = golden("tiny-qwen3");
    let model = load("tiny-qwen3");
    let out = golden_logprobs(&model, &g, Entropy::Skip);
    out.logprobs.sum(Kind::Float).backward();
    let embed = &model.named_weights()["model.embed_tokens.weight"];
    assert!(embed.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

/// Each golden row twice in a row: the repeated prompts take the shared-prompt path (one
/// prompt pass per distinct prompt), whose log-probs must still be transformers' and whose
/// gradient must be twice that of the batch without repeats.
#[test]
fn repeated_prompts_are_computed_once_with_the_same_values_and_gradients() {
    let cpu = (Kind::Int64, tch::Device::Cpu);
    for name in MODELS {
        let g = golden(name);
        let (b, r) = (g["resp_ids"].size()[0], g["resp_ids"].size()[1]);
        // Distinct weights per position, so that every position's gradient counts.
        let w = Tensor::arange(b * r, cpu).remainder(7).to_kind(Kind::Float).view([b, r]) + 1.0;
        let run = |index: &Tensor| -> (Tensor, Vec<(String, Tensor)>) {
            let model = load(name);
            let pick = |t: &Tensor| t.index_select(0, index);
            let out = model
                .response_logprobs(
                    &pick(&g["resp_prompt_ids"]),
                    &pick(&g["resp_prompt_mask"]),
                    &pick(&g["resp_ids"]),
                    &pick(&g["resp_mask"]),
                    Entropy::Skip,
                )
                .unwrap();
            (&out.logprobs * pick(&w)).sum(Kind::Float).backward();
            let mut grads: Vec<(String, Tensor)> =
                model.named_weights().into_iter().map(|(n, t)| (n, t.grad().copy())).collect();
            grads.sort_by(|a, b| a.0.cmp(&b.0));
            (out.logprobs.detach(), grads)
        };
        let twice = Tensor::arange(b, cpu).repeat_interleave_self_int(2, 0, None);
        let (lp, shared) = run(&twice);
        let d = max_abs_diff(&lp, &g["resp_logprobs"].index_select(0, &twice));
        assert!(d <= TOL, "{name}: shared-prompt log-probs max |Δ| = {d:e}");
        let (_, plain) = run(&Tensor::arange(b, cpu));
        assert_eq!(shared.len(), plain.len());
        for ((n, s), (_, p)) in shared.iter().zip(&plain) {
            let scale = p.abs().max().double_value(&[]);
            assert!(scale > 0.0, "{name}: {n} got no gradient");
            let d = max_abs_diff(s, &(p * 2.0)) / scale;
            assert!(d <= 1e-4, "{name}: {n}: relative gradient difference {d:e}");
        }
    }
}

#[test]
fn save_then_reload_gives_the_same_logits() {
    for name in MODELS {
        let g = golden(name);
        let model = load(name);
        let out = tempdir(name);
        model.save_pretrained(&out).unwrap();
        let reloaded = CausalLm::load(&out, LoadOptions::default()).unwrap();
        let logits =
            tch::no_grad(|| reloaded.forward(&g["single_ids"].unsqueeze(0), None)).unwrap();
        assert!(max_abs_diff(&logits.squeeze_dim(0), &g["single_logits"]) <= TOL, "{name}");
        let tied = model.config().tie_word_embeddings;
        let saved: HashMap<String, Tensor> =
            Tensor::read_safetensors(out.join("model.safetensors")).unwrap().into_iter().collect();
        assert_eq!(
            saved.contains_key("lm_head.weight"),
            !tied,
            "{name}: lm_head written iff untied"
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("icpo-policy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn entropy_is_differentiable_only_when_asked() {
    let g = golden("tiny-qwen3");
    let model = load("tiny-qwen3");
    let run = |mode| golden_logprobs(&model, &g, mode).entropy.unwrap();
    let metric = run(Entropy::Metric);
    let diff = run(Entropy::Differentiable);
    assert!(!metric.requires_grad() && diff.requires_grad());
    assert!(
        max_abs_diff(&metric, &g["resp_entropy"]) <= TOL
            && max_abs_diff(&diff, &g["resp_entropy"]) <= TOL
    );
    diff.sum(Kind::Float).backward();
    let embed = &model.named_weights()["model.embed_tokens.weight"];
    assert!(embed.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}
