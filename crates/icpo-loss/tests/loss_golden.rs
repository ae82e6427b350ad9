//! icpo-loss and icpo-core against golden values from an independent PyTorch transcription of
//! ICPO.md §4–5 (tests/golden/make_golden.py, which wrote the files beside it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::collections::HashMap;
use std::path::PathBuf;

use icpo_core::{
    group_advantages, AdvantageEstimator, KlEstimator, LossAggMode, LossConfig, LossInput,
    PolicyLoss,
};
use icpo_loss::{policy_loss, LossInputs};
use tch::{Kind, Tensor};

fn golden() -> (HashMap<String, Tensor>, Vec<serde_json::Value>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let t = Tensor::read_safetensors(dir.join("golden.safetensors")).unwrap().into_iter().collect();
    let c =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden_configs.json")).unwrap())
            .unwrap();
    (t, c)
}

fn config(c: &serde_json::Value) -> LossConfig {
    LossConfig {
        policy_loss: if c["dual"].as_bool().unwrap() {
            PolicyLoss::Vanilla
        } else {
            PolicyLoss::Clip
        },
        clip_ratio_low: c["eps_low"].as_f64().unwrap(),
        clip_ratio_high: c["eps_high"].as_f64().unwrap(),
        clip_ratio_c: c["c"].as_f64().unwrap(),
        ief_lambda: c["lam"].as_f64().unwrap(),
        kl_estimator: c["kl"].as_str().unwrap().parse::<KlEstimator>().unwrap(),
        kl_coef: c["beta"].as_f64().unwrap(),
        entropy_coef: 0.0,
        loss_agg_mode: c["mode"].as_str().unwrap().parse::<LossAggMode>().unwrap(),
        // The goldens divide seq-mean-token-sum-norm's sums by the batch's width; set per case.
        norm_length: 0,
        ief_reshape: true,
    }
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    Vec::<Vec<f64>>::try_from(t).unwrap()
}

fn rel_close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn loss_and_gradient_match_the_pytorch_transcription() {
    let (g, configs) = golden();
    assert_eq!(configs.len(), 6);
    for (k, c) in configs.iter().enumerate() {
        let get = |n: &str| g[&format!("c{k}_{n}")].shallow_clone();
        // The transcription divides Dr.GRPO's sums by its batch width T: the same constant here.
        let cfg = LossConfig { norm_length: get("mask").size()[1] as usize, ..config(c) };
        let want_loss = get("loss").double_value(&[0]);
        let want_grad = get("grad");

        // Tensor kernel (f64), gradient by autograd.
        let logp = get("logp").set_requires_grad(true);
        let (old, refp, adv, mask, ief) =
            (get("old_logp"), get("ref_logp"), get("advantages"), get("mask"), get("is_ief"));
        let inputs = LossInputs {
            logp: &logp,
            old_logp: &old,
            ref_logp: Some(&refp),
            entropy: None,
            advantages: &adv,
            response_mask: &mask,
            is_ief: &ief,
        };
        let out = policy_loss(&inputs, &cfg).unwrap();
        let got = out.loss.double_value(&[]);
        assert!(
            rel_close(got, want_loss, 1e-10),
            "case {k}: icpo-loss {got} vs golden {want_loss}"
        );
        out.loss.backward();
        let d = (logp.grad() - &want_grad).abs().max().double_value(&[]);
        assert!(d < 1e-10, "case {k}: icpo-loss grad max |Δ| {d:e}");

        // Reference on slices, analytic gradient.
        let mask_rows: Vec<Vec<bool>> =
            rows(&mask).iter().map(|r| r.iter().map(|&m| m > 0.0).collect()).collect();
        let ief_rows: Vec<bool> =
            Vec::<f64>::try_from(&ief).unwrap().iter().map(|&x| x > 0.0).collect();
        let (lp, op, rp) = (rows(&get("logp")), rows(&old), rows(&refp));
        let advs = Vec::<f64>::try_from(&adv).unwrap();
        let input = LossInput {
            logp: &lp,
            old_logp: &op,
            ref_logp: Some(&rp),
            entropy: None,
            advantages: &advs,
            mask: &mask_rows,
            is_ief: &ief_rows,
        };
        let core = icpo_core::policy_loss(&input, &cfg).unwrap();
        assert!(
            rel_close(core.loss, want_loss, 1e-10),
            "case {k}: icpo-core {} vs golden {want_loss}",
            core.loss
        );
        let wg = rows(&want_grad);
        for (i, row) in core.grad_logp.iter().enumerate() {
            for (t, v) in row.iter().enumerate() {
                assert!(
                    (v - wg[i][t]).abs() < 1e-10,
                    "case {k} [{i}][{t}]: core grad {v} vs {}",
                    wg[i][t]
                );
            }
        }
    }
}

#[test]
fn grpo_advantages_match_the_pytorch_transcription() {
    let (g, configs) = golden();
    for k in 0..configs.len() {
        let rewards = Vec::<f64>::try_from(&g[&format!("c{k}_rewards")]).unwrap();
        let groups: Vec<usize> = Vec::<f64>::try_from(&g[&format!("c{k}_groups")])
            .unwrap()
            .iter()
            .map(|&x| x as usize)
            .collect();
        let want =
            Vec::<f64>::try_from(&g[&format!("c{k}_advantages")].to_kind(Kind::Double)).unwrap();
        let got = group_advantages(&rewards, &groups, AdvantageEstimator::Grpo, 1e-6).unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "case {k}: {got:?} vs {want:?}");
        }
    }
}
