//! Sampling frequencies against the filters' definitions (chi-square, fixed seeds), computed
//! here independently in f64.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use icpo_rollout::{sample, SamplingParams};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

const LOGITS: [f64; 8] = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0];

fn normalise(p: &mut [f64]) {
    let s: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= s);
}

/// The distribution the definitions give: temperature, then top-k, top-p, min-p.
fn expected(params: &SamplingParams) -> Vec<f64> {
    let mut p: Vec<f64> = LOGITS.iter().map(|l| (l / params.temperature).exp()).collect();
    normalise(&mut p);
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    if params.top_k > 0 {
        for &i in &order[params.top_k..] {
            p[i] = 0.0;
        }
        normalise(&mut p);
    }
    if params.top_p < 1.0 {
        let mut before = 0.0;
        for &i in &order {
            let pi = p[i];
            if before >= params.top_p {
                p[i] = 0.0;
            }
            before += pi;
        }
        normalise(&mut p);
    }
    if params.min_p > 0.0 {
        let max = p.iter().cloned().fold(0.0, f64::max);
        p.iter_mut().for_each(|x| {
            if *x < params.min_p * max {
                *x = 0.0
            }
        });
        normalise(&mut p);
    }
    p
}

/// 99.99% quantiles of chi-square with 1..=7 degrees of freedom.
const CHI2_9999: [f64; 8] = [0.0, 15.14, 18.42, 21.11, 23.51, 25.74, 27.86, 29.88];

fn check(params: SamplingParams, seed: u64) {
    let n = 20_000usize;
    let logits =
        Tensor::from_slice(&LOGITS).to_kind(Kind::Float).unsqueeze(0).repeat([n as i64, 1]);
    let mut rngs: Vec<ChaCha8Rng> = (0..n)
        .map(|i| {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            r.set_stream(i as u64);
            r
        })
        .collect();
    check_draws(&params, &sample(&logits, &params, &mut rngs).unwrap());
    // The engine's path: counter-based draws made on the device (stream i, position i mod 7).
    let mut keys = Vec::with_capacity(2 * n);
    for i in 0..n {
        let k = icpo_rollout::stream_key(seed, i as u64);
        keys.extend([i64::from(k[0]), i64::from(k[1])]);
    }
    let keys = Tensor::from_slice(&keys).view([n as i64, 2]);
    let positions = Tensor::from_slice(&(0..n as i64).map(|i| i % 7).collect::<Vec<_>>());
    let u = icpo_rollout::counter_uniforms(&keys, &positions).unwrap();
    check_draws(&params, &icpo_rollout::sample_with(&logits, &params, Some(&u)).unwrap());
}

/// The draws follow the filtered distribution (chi-square), with exact log-probs.
fn check_draws(params: &SamplingParams, draws: &[icpo_rollout::Draw]) {
    let n = draws.len();
    let want = expected(params);
    let mut counts = [0usize; 8];
    for d in draws {
        counts[d.token as usize] += 1;
        let p = want[d.token as usize];
        assert!(p > 0.0, "{params:?}: drew filtered token {}", d.token);
        assert!(
            (f64::from(d.sampling_logprob) - p.ln()).abs() < 1e-5,
            "{params:?}: sampling log-prob"
        );
        let z: f64 = LOGITS.iter().map(|l| l.exp()).sum();
        let policy = LOGITS[d.token as usize] - z.ln();
        assert!(
            (f64::from(d.policy_logprob) - policy).abs() < 1e-5,
            "policy log-prob is untempered, unfiltered"
        );
    }
    let kept: Vec<usize> = (0..8).filter(|&i| want[i] > 0.0).collect();
    let chi2: f64 = kept
        .iter()
        .map(|&i| (counts[i] as f64 - n as f64 * want[i]).powi(2) / (n as f64 * want[i]))
        .sum();
    let df = kept.len() - 1;
    assert!(df >= 1, "{params:?}: test needs at least two kept tokens");
    assert!(
        chi2 < CHI2_9999[df],
        "{params:?}: chi2 = {chi2:.2} with {df} dof; counts {counts:?}, expected {want:?}"
    );
}

#[test]
fn temperature() {
    check(SamplingParams { temperature: 0.7, ..Default::default() }, 1);
    check(SamplingParams { temperature: 1.0, ..Default::default() }, 2);
}

#[test]
fn top_k() {
    check(SamplingParams { top_k: 3, ..Default::default() }, 3);
}

#[test]
fn top_p() {
    check(SamplingParams { top_p: 0.8, ..Default::default() }, 4);
    check(SamplingParams { top_p: 0.5, temperature: 0.9, ..Default::default() }, 5);
}

#[test]
fn min_p() {
    check(SamplingParams { min_p: 0.2, ..Default::default() }, 6);
}

#[test]
fn combined_filters() {
    check(
        SamplingParams {
            temperature: 1.3,
            top_k: 5,
            top_p: 0.9,
            min_p: 0.05,
            ..Default::default()
        },
        7,
    );
}

#[test]
fn greedy_is_argmax_and_seed_free() {
    let logits = Tensor::from_slice(&LOGITS).to_kind(Kind::Float).unsqueeze(0).repeat([3, 1]);
    let mut rngs: Vec<ChaCha8Rng> = (0..3).map(ChaCha8Rng::seed_from_u64).collect();
    let d = sample(&logits, &SamplingParams::greedy(4), &mut rngs).unwrap();
    assert!(d.iter().all(|d| d.token == 0 && d.sampling_logprob == 0.0));
}

#[test]
fn bad_settings_are_named() {
    for (p, field) in [
        (SamplingParams { temperature: -1.0, ..Default::default() }, "temperature"),
        (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p"),
        (SamplingParams { min_p: 1.5, ..Default::default() }, "min_p"),
        (SamplingParams { max_new_tokens: 0, ..Default::default() }, "max_new_tokens"),
    ] {
        assert!(p.validate().unwrap_err().to_string().contains(field));
    }
}
