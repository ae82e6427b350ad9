//! Property tests: the tensor kernel equals the icpo-core reference, in value (1e-5 relative)
//! and in gradient (autograd vs the reference's analytic gradient), on random problems with
//! empty rows, all-equal groups, extreme log-ratios and λ near 0.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use icpo_core::{KlEstimator, LossAggMode, LossConfig, LossInput, PolicyLoss};
use icpo_loss::{policy_loss, LossInputs};
use proptest::prelude::*;
use tch::{Kind, Tensor};

#[derive(Debug, Clone)]
struct LossProblem {
    logp: Vec<Vec<f64>>,
    old_logp: Vec<Vec<f64>>,
    ref_logp: Vec<Vec<f64>>,
    entropy: Vec<Vec<f64>>,
    advantages: Vec<f64>,
    mask: Vec<Vec<bool>>,
    is_ief: Vec<bool>,
    cfg: LossConfig,
}

impl LossProblem {
    fn check(&self) -> Result<(), TestCaseError> {
        let input = LossInput {
            logp: &self.logp,
            old_logp: &self.old_logp,
            ref_logp: Some(&self.ref_logp),
            entropy: Some(&self.entropy),
            advantages: &self.advantages,
            mask: &self.mask,
            is_ief: &self.is_ief,
        };
        let reference = icpo_core::policy_loss(&input, &self.cfg)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;

        let t2 = |rows: &Vec<Vec<f64>>| Tensor::from_slice2(rows).to_kind(Kind::Double);
        let logp = t2(&self.logp).set_requires_grad(true);
        let (old, refp, ent) = (t2(&self.old_logp), t2(&self.ref_logp), t2(&self.entropy));
        let mask_f: Vec<Vec<f64>> =
            self.mask.iter().map(|r| r.iter().map(|&m| f64::from(u8::from(m))).collect()).collect();
        let mask = t2(&mask_f);
        let adv = Tensor::from_slice(&self.advantages);
        let ief =
            Tensor::from_slice(&self.is_ief.iter().map(|&b| i64::from(b)).collect::<Vec<_>>());
        let inputs = LossInputs {
            logp: &logp,
            old_logp: &old,
            ref_logp: Some(&refp),
            entropy: Some(&ent),
            advantages: &adv,
            response_mask: &mask,
            is_ief: &ief,
        };
        let out =
            policy_loss(&inputs, &self.cfg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let got = out.loss.double_value(&[]);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + 1e-12;
        prop_assert!(
            close(got, reference.loss),
            "loss: tensor {} vs reference {}",
            got,
            reference.loss
        );
        for (k, v) in &reference.metrics {
            prop_assert!(
                close(out.metrics[k], *v),
                "{}: tensor {} vs reference {}",
                k,
                out.metrics[k],
                v
            );
        }
        out.loss.backward();
        let grad = Vec::<Vec<f64>>::try_from(&logp.grad())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let scale = reference.grad_logp.iter().flatten().fold(0.0f64, |m, g| m.max(g.abs()));
        for (i, row) in reference.grad_logp.iter().enumerate() {
            for (t, g) in row.iter().enumerate() {
                prop_assert!(
                    (grad[i][t] - g).abs() <= 1e-5 * scale + 1e-12,
                    "grad [{}][{}]: autograd {} vs analytic {}",
                    i,
                    t,
                    grad[i][t],
                    g
                );
            }
        }
        Ok(())
    }
}

fn config() -> impl Strategy<Value = LossConfig> {
    (
        prop_oneof![Just(PolicyLoss::Vanilla), Just(PolicyLoss::Clip)],
        0.0f64..0.5,
        0.0f64..0.8,
        1.01f64..5.0,
        prop_oneof![Just(1e-6), Just(1e-3), 0.001f64..1.0],
        prop_oneof![Just(KlEstimator::K1), Just(KlEstimator::K2), Just(KlEstimator::K3)],
        prop_oneof![Just(0.0), 0.0f64..1.0],
        prop_oneof![Just(0.0), 0.0f64..0.1],
        prop_oneof![
            Just(LossAggMode::TokenMean),
            Just(LossAggMode::SeqMeanTokenMean),
            Just(LossAggMode::SeqMeanTokenSumNorm),
            Just(LossAggMode::TokenMeanPerMicroBatch)
        ],
        (1usize..20, any::<bool>()),
    )
        .prop_map(
            |(policy_loss, lo, hi, c, lam, kl, beta, ent, mode, (norm_length, ief_reshape))| {
                LossConfig {
                    policy_loss,
                    clip_ratio_low: lo,
                    clip_ratio_high: hi,
                    clip_ratio_c: c,
                    ief_lambda: lam,
                    kl_estimator: kl,
                    kl_coef: beta,
                    entropy_coef: ent,
                    loss_agg_mode: mode,
                    norm_length,
                    ief_reshape,
                }
            },
        )
}

fn problem() -> impl Strategy<Value = LossProblem> {
    (1usize..6, 1usize..9).prop_flat_map(|(b, t)| {
        let row =
            move |s: BoxedStrategy<f64>| prop::collection::vec(prop::collection::vec(s, t), b);
        let logp = prop_oneof![-8.0f64..0.0, -40.0f64..-20.5, Just(0.0)].boxed();
        let delta = prop_oneof![-0.5f64..0.5, -30.0f64..30.0, Just(0.0)].boxed();
        (
            row(logp),
            row(delta.clone()),
            row(delta),
            row((0.0f64..3.0).boxed()),
            prop::collection::vec(prop_oneof![Just(0.0), -3.0f64..3.0], b),
            prop::collection::vec(prop::collection::vec(any::<bool>(), t), b),
            prop::collection::vec(any::<bool>(), b),
            config(),
        )
            .prop_map(|(logp, d_old, d_ref, entropy, advantages, mask, is_ief, cfg)| {
                let shift = |d: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
                    logp.iter()
                        .zip(d)
                        .map(|(l, d)| l.iter().zip(d).map(|(a, b)| a + b).collect())
                        .collect()
                };
                LossProblem {
                    old_logp: shift(&d_old),
                    ref_logp: shift(&d_ref),
                    logp,
                    entropy,
                    advantages,
                    mask,
                    is_ief,
                    cfg,
                }
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn tensor_kernel_equals_reference(p in problem()) {
        p.check()?;
    }
}

/// Every row empty: all aggregates are 0, the loss is 0 and finite.
#[test]
fn all_rows_empty() {
    let p = LossProblem {
        logp: vec![vec![-1.0; 3]; 2],
        old_logp: vec![vec![-1.0; 3]; 2],
        ref_logp: vec![vec![-1.0; 3]; 2],
        entropy: vec![vec![1.0; 3]; 2],
        advantages: vec![1.0, -1.0],
        mask: vec![vec![false; 3]; 2],
        is_ief: vec![false, true],
        cfg: LossConfig::default(),
    };
    p.check().unwrap();
}

#[test]
fn non_finite_inputs_are_errors_and_padding_is_ignored() {
    let logp = Tensor::from_slice2(&[[-1.0f64, -2.0], [-0.5, f64::NEG_INFINITY]]);
    let mask = Tensor::from_slice2(&[[1i64, 1], [1, 0]]);
    let adv = Tensor::from_slice(&[1.0f64, -1.0]);
    let ief = Tensor::from_slice(&[0i64, 0]);
    let cfg = LossConfig { kl_coef: 0.0, ..Default::default() };
    let ok = LossInputs {
        logp: &logp,
        old_logp: &logp,
        ref_logp: None,
        entropy: None,
        advantages: &adv,
        response_mask: &mask,
        is_ief: &ief,
    };
    let out = policy_loss(&ok, &cfg).unwrap();
    assert!(out.loss.double_value(&[]).is_finite());
    let nan_logp = Tensor::from_slice2(&[[-1.0f64, f64::NAN], [-0.5, -1.0]]);
    let bad = LossInputs { logp: &nan_logp, ..ok };
    let e = policy_loss(&bad, &cfg).unwrap_err().to_string();
    assert!(e.contains("`logp`"), "{e}");
    let nan_adv = Tensor::from_slice(&[f64::NAN, 0.0]);
    let e = policy_loss(&LossInputs { advantages: &nan_adv, ..ok }, &cfg).unwrap_err().to_string();
    assert!(e.contains("advantages"), "{e}");
}

/// k3 KL with log-probs far apart (x = log π_ref − log π_θ ≈ 100, past exp's f32 range): the
/// loss and its gradient stay finite, as verl's ±20 clamp of x before `exp` makes them.
#[test]
fn k3_kl_stays_finite_on_extreme_logprobs() {
    for kind in [Kind::Float, Kind::Double] {
        let logp = Tensor::from_slice2(&[[-100.0f64, -0.1], [-0.2, -95.0]])
            .to_kind(kind)
            .set_requires_grad(true);
        let refp = Tensor::from_slice2(&[[-0.01f64, -0.1], [-120.0, -0.5]]).to_kind(kind);
        let mask = Tensor::from_slice2(&[[1i64, 1], [1, 1]]);
        let adv = Tensor::from_slice(&[1.0f64, -1.0]).to_kind(kind);
        let ief = Tensor::from_slice(&[0i64, 1]);
        let cfg = LossConfig { kl_coef: 0.5, ..Default::default() };
        let inputs = LossInputs {
            logp: &logp,
            old_logp: &logp.detach(),
            ref_logp: Some(&refp),
            entropy: None,
            advantages: &adv,
            response_mask: &mask,
            is_ief: &ief,
        };
        let out = policy_loss(&inputs, &cfg).unwrap();
        assert!(out.loss.double_value(&[]).is_finite() && out.metrics["actor/kl"].is_finite());
        out.loss.backward();
        let finite = logp.grad().isfinite().all().int64_value(&[]);
        assert_eq!(finite, 1, "{kind:?}: gradient {:?}", logp.grad());
    }
}
