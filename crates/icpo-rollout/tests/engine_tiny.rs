//! The engine on a tiny real checkpoint: KV-cache generation equals greedy decoding by repeated
//! full forward passes, and the returned log-probs equal a separate forward pass's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use icpo_rollout::{generate, EngineConfig, Request, SamplingParams};
use tch::{Kind, Tensor};

mod common;
use common::tiny_qwen3 as model;

fn prompts() -> Vec<Vec<i64>> {
    vec![vec![3, 17, 5, 99, 200], vec![42], vec![7, 7, 300]]
}

#[test]
fn kv_cache_greedy_equals_repeated_full_forward() {
    let model = model();
    let params = SamplingParams { stop_on_eos: false, ..SamplingParams::greedy(12) };
    let prompts = prompts();
    let out = generate(
        &model,
        &Request {
            prompts: &prompts,
            n: 2,
            params: &params,
            eos_token_ids: &[],
            seed: 0,
            first_prompt: 0,
        },
        None,
        &EngineConfig::default(),
    )
    .unwrap();
    for r in &out {
        // Reference: no cache, the whole sequence each step, argmax of the last position.
        let mut seq = prompts[r.prompt_index].clone();
        for _ in 0..12 {
            let ids = Tensor::from_slice(&seq).unsqueeze(0);
            let logits = tch::no_grad(|| model.forward(&ids, None)).unwrap();
            seq.push(logits.get(0).get(seq.len() as i64 - 1).argmax(-1, false).int64_value(&[]));
        }
        assert_eq!(
            r.tokens,
            seq[prompts[r.prompt_index].len()..].to_vec(),
            "prompt {}",
            r.prompt_index
        );
    }
}

#[test]
fn returned_logprobs_equal_a_separate_forward() {
    let model = model();
    let prompts = prompts();
    for params in [
        SamplingParams { max_new_tokens: 10, stop_on_eos: false, ..Default::default() },
        SamplingParams {
            max_new_tokens: 10,
            temperature: 0.7,
            top_p: 0.9,
            top_k: 50,
            stop_on_eos: false,
            ..Default::default()
        },
    ] {
        let out = generate(
            &model,
            &Request {
                prompts: &prompts,
                n: 3,
                params: &params,
                eos_token_ids: &[],
                seed: 11,
                first_prompt: 0,
            },
            None,
            &EngineConfig::default(),
        )
        .unwrap();
        for r in &out {
            let p = &prompts[r.prompt_index];
            let lp = model
                .response_logprobs(
                    &Tensor::from_slice(p).unsqueeze(0),
                    &Tensor::ones([1, p.len() as i64], (Kind::Int64, tch::Device::Cpu)),
                    &Tensor::from_slice(&r.tokens).unsqueeze(0),
                    &Tensor::ones([1, r.tokens.len() as i64], (Kind::Int64, tch::Device::Cpu)),
                    icpo_policy::Entropy::Skip,
                )
                .unwrap();
            let want: Vec<f32> = Vec::try_from(&lp.logprobs.squeeze_dim(0)).unwrap();
            for (a, b) in r.policy_logprobs.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-4, "policy log-prob {a} vs forward {b}");
            }
            if params.temperature == 1.0 && params.top_p == 1.0 {
                for (a, b) in r.sampling_logprobs.iter().zip(&r.policy_logprobs) {
                    assert!(
                        (a - b).abs() <= 1e-5,
                        "untempered, unfiltered sampling equals the policy"
                    );
                }
            } else {
                assert!(r
                    .sampling_logprobs
                    .iter()
                    .zip(&r.policy_logprobs)
                    .any(|(a, b)| (a - b).abs() > 1e-3));
            }
        }
    }
}

#[test]
fn parallel_streams_give_the_samples_of_one_stream() {
    let model = model();
    let prompts: Vec<Vec<i64>> = (0..5).map(|i| vec![3 + i, 17, 5 * i + 1]).collect();
    let params = SamplingParams { max_new_tokens: 8, stop_on_eos: false, ..Default::default() };
    let run = |streams: usize| {
        generate(
            &model,
            &Request {
                prompts: &prompts,
                n: 2,
                params: &params,
                eos_token_ids: &[],
                seed: 5,
                first_prompt: 0,
            },
            None,
            &EngineConfig { streams, ..Default::default() },
        )
        .unwrap()
    };
    let one = run(1);
    for streams in [2, 3, 8] {
        let many = run(streams);
        assert_eq!(many.len(), one.len());
        for (a, b) in many.iter().zip(&one) {
            assert_eq!((a.prompt_index, a.sample_index), (b.prompt_index, b.sample_index));
            assert_eq!(a.tokens, b.tokens, "{streams} streams");
            for (x, y) in a.policy_logprobs.iter().zip(&b.policy_logprobs) {
                assert!((x - y).abs() <= 1e-5, "{streams} streams: log-prob {x} vs {y}");
            }
        }
    }
}
