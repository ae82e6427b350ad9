//! The reference loss against values worked out by hand from ICPO.md §5, and its analytic
//! gradient against central finite differences.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use icpo_core::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn ppo_token_cases_by_hand() {
    let cfg = LossConfig { clip_ratio_low: 0.2, clip_ratio_high: 0.28, ..Default::default() };
    // Inside the clip range: L = −A·r, gradient −A·r.
    let r: f64 = 1.1;
    let (l, d, c) = ppo_token(r.ln(), 0.0, 2.0, &cfg);
    assert!(close(l, -2.2) && close(d, -2.2) && !c);
    // A > 0, r above 1+ε_high: clipped at 1.28, no gradient.
    let (l, d, c) = ppo_token(1.5f64.ln(), 0.0, 1.0, &cfg);
    assert!(close(l, -1.28) && d == 0.0 && c);
    // A < 0, r below 1−ε_low: max(−A·r, −A·0.8) = 0.8·|A|, clipped.
    let (l, d, c) = ppo_token(0.5f64.ln(), 0.0, -1.0, &cfg);
    assert!(close(l, 0.8) && d == 0.0 && c);
    // A < 0, r = 5: −A·r = 5 > c·|A| = 3 → dual clip gives 3, no gradient.
    let (l, d, _) = ppo_token(5f64.ln(), 0.0, -1.0, &cfg);
    assert!(close(l, 3.0) && d == 0.0);
    // Without dual clip the same token costs 5 and has gradient −A·r = 5.
    let clip_only = LossConfig { policy_loss: PolicyLoss::Clip, ..cfg };
    let (l, d, _) = ppo_token(5f64.ln(), 0.0, -1.0, &clip_only);
    assert!(close(l, 5.0) && close(d, 5.0));
    // Log-ratio clamp at ±20.
    let (l, d, _) = ppo_token(100.0, 0.0, -1e-12, &clip_only);
    assert!(close(l, 1e-12 * 20f64.exp()) && d == 0.0);
}

#[test]
fn ief_token_by_hand() {
    // p = 0.5, λ = 0.1: L = −A·0.5/0.6, dL/dlogp = −A·λp/(p+λ)² = −A·0.05/0.36.
    let (l, d, p) = ief_token(0.5f64.ln(), 2.0, 0.1, true);
    assert!(close(p, 0.5) && close(l, -2.0 * 0.5 / 0.6) && close(d, -2.0 * 0.05 / 0.36));
    // Low-probability tokens get a larger push per unit of log-prob than p itself would give.
    let (_, d_low, _) = ief_token(0.01f64.ln(), 1.0, 0.1, true);
    assert!(-d_low > 0.01);
    // LUFFY's no_reshape: the plain −A·log π_θ, gradient −A.
    let (l, d, _) = ief_token(0.5f64.ln(), 2.0, 0.1, false);
    assert!(close(l, -2.0 * 0.5f64.ln()) && close(d, -2.0));
}

#[test]
fn kl_estimators_by_hand() {
    let (lp, rp) = (-1.0, -1.5); // x = rp − lp = −0.5
    assert!(close(kl_token(lp, rp, KlEstimator::K1).0, 0.5));
    assert!(close(kl_token(lp, rp, KlEstimator::K2).0, 0.125));
    assert!(close(kl_token(lp, rp, KlEstimator::K3).0, (-0.5f64).exp() + 0.5 - 1.0));
    assert_eq!(kl_token(-30.0, 0.0, KlEstimator::K3), (KL_CLAMP, 0.0));
    // x far past exp's range: clamped to ±20 first (as verl), so value and gradient are finite.
    for (lp, rp) in [(-1000.0, 0.0), (0.0, -1000.0), (-1e300, -1.0), (-90.0, -0.1)] {
        let (v, d) = kl_token(lp, rp, KlEstimator::K3);
        assert!(v.is_finite() && d.is_finite(), "{lp} {rp}: {v} {d}");
    }
    // Below the clamp: (e^-20 + 20 − 1) — finite, and clamped to the ±10 KL bound.
    assert_eq!(kl_token(0.0, -1000.0, KlEstimator::K3), (KL_CLAMP, 0.0));
}

#[test]
fn aggregation_modes_by_hand() {
    let v = vec![vec![1.0, 2.0, 3.0], vec![4.0, 0.0, 0.0], vec![9.0, 9.0, 9.0]];
    let m = vec![vec![true, true, true], vec![true, false, false], vec![false, false, false]];
    assert!(close(aggregate(&v, &m, LossAggMode::TokenMean, 0), 10.0 / 4.0));
    assert!(close(aggregate(&v, &m, LossAggMode::TokenMeanPerMicroBatch, 0), 10.0 / 4.0));
    assert!(close(aggregate(&v, &m, LossAggMode::SeqMeanTokenMean, 0), (2.0 + 4.0) / 2.0));
    // Dr.GRPO: token sums over a constant (the longest response allowed, here 8), not the
    // batch's padded width (3): padding the batch wider changes nothing.
    let sum_norm = (6.0 / 8.0 + 4.0 / 8.0) / 2.0;
    assert!(close(aggregate(&v, &m, LossAggMode::SeqMeanTokenSumNorm, 8), sum_norm));
    let wide_v: Vec<Vec<f64>> = v.iter().map(|r| [r.clone(), vec![0.0; 4]].concat()).collect();
    let wide_m: Vec<Vec<bool>> = m.iter().map(|r| [r.clone(), vec![false; 4]].concat()).collect();
    assert!(close(aggregate(&wide_v, &wide_m, LossAggMode::SeqMeanTokenSumNorm, 8), sum_norm));
    let empty = vec![vec![false; 3]];
    assert_eq!(aggregate(&v[..1], &empty, LossAggMode::TokenMean, 0), 0.0);
}

type Rows = Vec<Vec<f64>>;
/// (logp, old_logp, ref_logp, advantages, mask, is_ief)
type Example = (Rows, Rows, Rows, Vec<f64>, Vec<Vec<bool>>, Vec<bool>);

fn example() -> Example {
    let logp = vec![
        vec![-0.3, -1.2, -2.0, -0.1],
        vec![-0.7, -0.05, -3.0, -1.0],
        vec![-2.5, -0.4, -0.9, -1.1],
    ];
    let old = vec![
        vec![-0.35, -1.0, -2.4, -0.1],
        vec![-0.7, -0.1, -2.9, -1.0],
        vec![-2.0, -0.4, -0.2, -1.0],
    ];
    let refp = vec![
        vec![-0.2, -1.5, -2.2, -0.3],
        vec![-0.9, -0.2, -2.5, -1.4],
        vec![-2.2, -0.6, -1.0, -1.3],
    ];
    let adv = vec![0.8, -1.3, 1.1];
    let mask = vec![
        vec![true, true, true, false],
        vec![true, true, true, true],
        vec![true, true, false, false],
    ];
    (logp, old, refp, adv, mask, vec![false, false, true])
}

#[test]
fn analytic_gradient_matches_finite_differences() {
    let (logp, old, refp, adv, mask, ief) = example();
    for mode in
        [LossAggMode::TokenMean, LossAggMode::SeqMeanTokenMean, LossAggMode::SeqMeanTokenSumNorm]
    {
        for est in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
            let cfg = LossConfig {
                loss_agg_mode: mode,
                kl_estimator: est,
                kl_coef: 0.3,
                norm_length: 6,
                ..Default::default()
            };
            let loss_at = |lp: &Vec<Vec<f64>>| {
                let input = LossInput {
                    logp: lp,
                    old_logp: &old,
                    ref_logp: Some(&refp),
                    entropy: None,
                    advantages: &adv,
                    mask: &mask,
                    is_ief: &ief,
                };
                policy_loss(&input, &cfg).unwrap()
            };
            let out = loss_at(&logp);
            let h = 1e-6;
            for i in 0..logp.len() {
                for t in 0..logp[i].len() {
                    let mut up = logp.clone();
                    up[i][t] += h;
                    let mut down = logp.clone();
                    down[i][t] -= h;
                    let fd = (loss_at(&up).loss - loss_at(&down).loss) / (2.0 * h);
                    let g = out.grad_logp[i][t];
                    assert!(
                        (fd - g).abs() < 1e-6,
                        "{mode:?} {est:?} [{i}][{t}]: fd {fd} vs analytic {g}"
                    );
                }
            }
        }
    }
}

#[test]
fn total_loss_composes_the_terms() {
    let (logp, old, refp, adv, mask, ief) = example();
    let entropy = vec![vec![1.0; 4]; 3];
    let cfg = LossConfig { kl_coef: 0.5, entropy_coef: 0.01, ..Default::default() };
    let input = LossInput {
        logp: &logp,
        old_logp: &old,
        ref_logp: Some(&refp),
        entropy: Some(&entropy),
        advantages: &adv,
        mask: &mask,
        is_ief: &ief,
    };
    let out = policy_loss(&input, &cfg).unwrap();
    let m = &out.metrics;
    assert!(close(out.loss, m["actor/pg_loss"] + 0.5 * m["actor/kl"] - 0.01 * m["actor/entropy"]));
    assert!(close(m["actor/entropy"], 1.0));
    // Metrics by hand: IEF p mean over row 2's two tokens; ppo_kl over rows 0–1's seven tokens.
    assert!(close(m["actor/ief_prob_mean"], ((-2.5f64).exp() + (-0.4f64).exp()) / 2.0));
    // ppo_kl = mean(log π_old − log π_θ).
    let ppo_kl = (-0.05 + 0.2 - 0.4 + 0.0 - 0.05 + 0.1 + 0.0) / 7.0;
    assert!((m["actor/ppo_kl"] - ppo_kl).abs() < 1e-12, "{}", m["actor/ppo_kl"]);
}

#[test]
fn bad_inputs_are_errors_naming_the_input() {
    let (mut logp, old, refp, adv, mask, ief) = example();
    logp[1][2] = f64::NAN;
    let input = LossInput {
        logp: &logp,
        old_logp: &old,
        ref_logp: Some(&refp),
        entropy: None,
        advantages: &adv,
        mask: &mask,
        is_ief: &ief,
    };
    let e = policy_loss(&input, &LossConfig::default()).unwrap_err().to_string();
    assert!(e.contains("logp") && e.contains("[1][2]"), "{e}");
    let cfg = LossConfig { ief_lambda: 0.0, ..Default::default() };
    let (logp, ..) = example();
    let input = LossInput { logp: &logp, ..input };
    assert!(policy_loss(&input, &cfg).unwrap_err().to_string().contains("ief_lambda"));
    let input = LossInput { ref_logp: None, ..input };
    assert!(policy_loss(&input, &LossConfig::default())
        .unwrap_err()
        .to_string()
        .contains("ref_logp"));
}
