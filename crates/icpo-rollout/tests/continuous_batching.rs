//! Continuous batching on a tiny real checkpoint: a sequence's samples and log-probs do not
//! depend on how many decode slots there are (1, 7 or one per sequence), and a sequence
//! admitted into a freed slot — after left-padded prompts of other lengths, and after the cache's
//! columns were moved to the front — has exactly the log-probs of a separate forward pass of its
//! own prompt and tokens (it attends to nothing of its predecessors).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use icpo_policy::{CausalLm, Entropy};
use icpo_rollout::{
    generate_with_stats, EngineConfig, EngineStats, Request, Rollout, SamplingParams,
};
use tch::{Device, Kind, Tensor};

mod common;
use common::tiny_qwen3 as model;

/// Nine prompts of 1 to 9 tokens.
fn prompts() -> Vec<Vec<i64>> {
    (0..9i64).map(|i| (0..=i).map(|j| (7 * i + 13 * j + 3) % 384).collect()).collect()
}

const MAX_NEW: usize = 16;

/// Sampling at temperature 1 where 48 of the 384 ids end a sequence: lengths from 1 to 16.
fn params() -> SamplingParams {
    SamplingParams {
        max_new_tokens: MAX_NEW,
        stop_on_eos: false,
        stop_token_ids: (100..148).collect(),
        ..Default::default()
    }
}

/// The request decoded through `slots` slots (one stream).
fn run(model: &CausalLm, slots: usize) -> (Vec<Rollout>, EngineStats) {
    let prompts = prompts();
    let longest = prompts.iter().map(Vec::len).max().unwrap();
    let window = longest + MAX_NEW;
    let columns = window + window / 2;
    let params = params();
    let request = Request {
        prompts: &prompts,
        n: 3,
        params: &params,
        eos_token_ids: &[],
        seed: 21,
        first_prompt: 0,
    };
    let config = EngineConfig { max_tokens_in_flight: slots * columns, streams: 1 };
    generate_with_stats(model, &request, None, &config).unwrap()
}

/// Each rollout's policy log-probs against `response_logprobs` of its own prompt and tokens.
fn assert_matches_forward(model: &CausalLm, out: &[Rollout], what: &str) {
    let prompts = prompts();
    let ones = |n: usize| Tensor::ones([1, n as i64], (Kind::Int64, Device::Cpu));
    for r in out {
        let p = &prompts[r.prompt_index];
        let lp = model
            .response_logprobs(
                &Tensor::from_slice(p).unsqueeze(0),
                &ones(p.len()),
                &Tensor::from_slice(&r.tokens).unsqueeze(0),
                &ones(r.tokens.len()),
                Entropy::Skip,
            )
            .unwrap();
        let want: Vec<f32> = Vec::try_from(&lp.logprobs.squeeze_dim(0)).unwrap();
        for (t, (a, b)) in r.policy_logprobs.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4,
                "{what}: prompt {} sample {} token {t}: engine {a} vs forward {b}",
                r.prompt_index,
                r.sample_index
            );
        }
    }
}

#[test]
fn samples_do_not_depend_on_the_slots_and_reused_slots_see_only_their_sequence() {
    let model = model();
    let (all, all_stats) = run(&model, 27);
    let lens: Vec<usize> = all.iter().map(|r| r.tokens.len()).collect();
    assert!(
        lens.iter().any(|&l| l < MAX_NEW / 2) && lens.contains(&MAX_NEW),
        "the workload needs short and capped sequences: {lens:?}"
    );
    assert_eq!(all_stats.slots, 27);
    assert_matches_forward(&model, &all, "27 slots");
    for slots in [1, 7] {
        let (out, stats) = run(&model, slots);
        assert_eq!(stats.slots, slots, "{slots} slots");
        assert_eq!(stats.generated_tokens, lens.iter().sum::<usize>());
        assert_eq!(out.len(), all.len());
        for (a, b) in out.iter().zip(&all) {
            assert_eq!((a.prompt_index, a.sample_index), (b.prompt_index, b.sample_index));
            assert_eq!(
                a.tokens, b.tokens,
                "{slots} slots: prompt {} sample {}",
                a.prompt_index, a.sample_index
            );
            assert_eq!(a.finish_reason, b.finish_reason);
            for (x, y) in a.policy_logprobs.iter().zip(&b.policy_logprobs) {
                assert!((x - y).abs() <= 1e-5, "{slots} slots: log-prob {x} vs {y}");
            }
        }
        assert_matches_forward(&model, &out, &format!("{slots} slots"));
    }
    // One slot decodes the 27 sequences one after another: Σ lengths steps, far more than the
    // cache's 1.5 × (9 + 16) columns, so the live window was moved to the front many times.
    let (_, one) = run(&model, 1);
    assert_eq!(one.decode_steps, lens.iter().sum::<usize>());
    assert!(one.decode_steps > 3 * 37, "{} steps", one.decode_steps);
    assert!((one.slot_utilization() - 1.0).abs() < 1e-12, "one slot is never idle");
}
