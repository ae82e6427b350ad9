//! The engine with a mock policy whose logits are fixed by the last token (greedy always picks
//! `last + 1`): stopping, lengths, batching, seeds, and what reaches the model for IEF prompts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::cell::RefCell;
use std::path::PathBuf;

use icpo_policy::Tokenizer;
use icpo_rollout::{
    generate, generate_with_stats, DecodeModel, Demo, DemoPool, EngineConfig, EngineStats,
    FinishReason, PromptBuilder, Request, Result, SamplingParams,
};
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

const VOCAB: i64 = 384;

#[derive(Default)]
struct Mock {
    prefills: RefCell<Vec<Vec<i64>>>,
    steps: RefCell<usize>,
    /// Hands out forks, so the engine decodes in parallel streams.
    forkable: bool,
}

/// Peaked at `last + 1`, with some mass everywhere so sampling varies.
fn logits_after(last: &[i64]) -> Tensor {
    let rows: Vec<Tensor> = last
        .iter()
        .map(|&t| {
            let l = Tensor::zeros([VOCAB], (Kind::Float, Device::Cpu));
            let _ = l.get((t + 1) % VOCAB).fill_(3.0);
            l
        })
        .collect();
    Tensor::stack(&rows, 0)
}

/// The mock's cache: each row's last token, and the filled columns.
#[derive(Default)]
struct MockCache {
    last: Vec<i64>,
    len: i64,
}

impl DecodeModel for Mock {
    type Cache = MockCache;
    type Fork = Mock;
    fn fork(&self) -> Result<Option<Mock>> {
        Ok(self.forkable.then(|| Mock { forkable: true, ..Default::default() }))
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn prefill(&self, ids: &Tensor, mask: &Tensor, _capacity: i64) -> Result<(Tensor, MockCache)> {
        let ids: Vec<Vec<i64>> = Vec::try_from(ids).unwrap();
        let mask: Vec<Vec<i64>> = Vec::try_from(mask).unwrap();
        for (r, m) in ids.iter().zip(&mask) {
            self.prefills
                .borrow_mut()
                .push(r.iter().zip(m).filter(|(_, &m)| m == 1).map(|(&t, _)| t).collect());
        }
        let last: Vec<i64> = ids.iter().map(|r| *r.last().unwrap()).collect();
        let len = ids.first().map_or(0, |r| r.len() as i64);
        Ok((logits_after(&last), MockCache { last, len }))
    }
    fn step(&self, tokens: &Tensor, live: &Tensor, cache: &mut MockCache) -> Result<Tensor> {
        *self.steps.borrow_mut() += 1;
        let t: Vec<i64> = Vec::try_from(&tokens.squeeze_dim(1)).unwrap();
        let live: Vec<i64> = Vec::try_from(&live.squeeze_dim(1)).unwrap();
        assert_eq!(t.len(), cache.last.len(), "batch compacted in step with the cache");
        for (i, (&tok, &l)) in t.iter().zip(&live).enumerate() {
            if l == 1 {
                cache.last[i] = tok;
            }
        }
        cache.len += 1;
        Ok(logits_after(&cache.last))
    }
    fn select_rows(&self, cache: &mut MockCache, index: &Tensor) -> Result<()> {
        let idx: Vec<i64> = Vec::try_from(index).unwrap();
        cache.last = idx.iter().map(|&i| cache.last[i as usize]).collect();
        Ok(())
    }
    fn admit(
        &self,
        cache: &mut MockCache,
        slots: &Tensor,
        from: &MockCache,
        rows: &Tensor,
    ) -> Result<i64> {
        let (slots, rows): (Vec<i64>, Vec<i64>) =
            (Vec::try_from(slots).unwrap(), Vec::try_from(rows).unwrap());
        for (&s, &r) in slots.iter().zip(&rows) {
            cache.last[s as usize] = from.last[r as usize];
        }
        let grown = (from.len - cache.len).max(0);
        cache.len += grown;
        Ok(grown)
    }
    fn compact(&self, cache: &mut MockCache, keep: i64) -> Result<()> {
        assert!(keep <= cache.len);
        cache.len = keep;
        Ok(())
    }
    fn filled(&self, cache: &MockCache) -> i64 {
        cache.len
    }
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny-qwen3"))
        .unwrap()
}

fn run(
    prompts: &[Vec<i64>],
    n: usize,
    params: &SamplingParams,
    eos: &[i64],
    seed: u64,
    cfg: &EngineConfig,
) -> Vec<icpo_rollout::Rollout> {
    generate(
        &Mock::default(),
        &Request { prompts, n, params, eos_token_ids: eos, seed, first_prompt: 0 },
        None,
        cfg,
    )
    .unwrap()
}

#[test]
fn greedy_is_deterministic_and_respects_max_tokens() {
    let prompts = vec![vec![5, 6, 7], vec![100]];
    let params = SamplingParams::greedy(4);
    let out = run(&prompts, 2, &params, &[], 0, &EngineConfig::default());
    assert_eq!(out.len(), 4);
    for r in &out {
        let start = prompts[r.prompt_index].last().unwrap() + 1;
        assert_eq!(r.tokens, (start..start + 4).collect::<Vec<_>>());
        assert_eq!(r.finish_reason, FinishReason::Length);
    }
    assert_eq!(out, run(&prompts, 2, &params, &[], 99, &EngineConfig::default()));
}

#[test]
fn eos_and_stop_tokens_end_rows_independently() {
    let prompts = vec![vec![5], vec![50]];
    let params = SamplingParams { stop_token_ids: vec![53], ..SamplingParams::greedy(10) };
    let out = run(&prompts, 1, &params, &[8], 0, &EngineConfig::default());
    assert_eq!(out[0].tokens, vec![6, 7, 8]);
    assert_eq!(out[0].finish_reason, FinishReason::Eos);
    assert_eq!(out[1].tokens, vec![51, 52, 53]);
    assert_eq!(out[1].finish_reason, FinishReason::StopToken);
    // With stop_on_eos off only the length ends the first row.
    let params = SamplingParams { stop_on_eos: false, ..SamplingParams::greedy(5) };
    let out = run(&prompts[..1], 1, &params, &[8], 0, &EngineConfig::default());
    assert_eq!(out[0].tokens.len(), 5);
}

#[test]
fn parallel_streams_change_nothing() {
    let prompts: Vec<Vec<i64>> = (0..7).map(|i| vec![10 * i + 1, 10 * i + 2]).collect();
    let params = SamplingParams { temperature: 1.0, max_new_tokens: 6, ..Default::default() };
    let run = |mock: Mock, streams: usize| {
        let request = Request {
            prompts: &prompts,
            n: 3,
            params: &params,
            eos_token_ids: &[9],
            seed: 4,
            first_prompt: 0,
        };
        let cfg = EngineConfig { streams, ..Default::default() };
        let out = generate(&mock, &request, None, &cfg).unwrap();
        (out, mock.prefills.into_inner().len())
    };
    let (one, prefilled) = run(Mock::default(), 1);
    assert_eq!(prefilled, 7, "a single stream prefills every prompt itself");
    for streams in [2, 3, 7, 20] {
        let (many, prefilled) = run(Mock { forkable: true, ..Default::default() }, streams);
        assert_eq!(prefilled, 0, "{streams} streams: the forks decode");
        assert_eq!(many, one, "{streams} streams");
    }
}

#[test]
fn finished_rows_stop_costing_steps() {
    let mock = Mock::default();
    let prompts = vec![vec![5], vec![50]];
    let params = SamplingParams::greedy(10);
    generate(
        &mock,
        &Request {
            prompts: &prompts,
            n: 1,
            params: &params,
            eos_token_ids: &[7],
            seed: 0,
            first_prompt: 0,
        },
        None,
        &EngineConfig::default(),
    )
    .unwrap();
    // Row 0 stops after 2 tokens; row 1 runs 10: 9 decode steps in all, each asserting the
    // cache and the batch agree in size.
    assert_eq!(*mock.steps.borrow(), 9);
}

#[test]
fn stop_strings_use_the_decoded_text() {
    let tok = tokenizer();
    // The mock produces first+1, first+2, ...: stop on the text of its 3rd and 4th tokens.
    let first = tok.encode("abc", false).unwrap()[0];
    let produced: Vec<i64> = (first + 1..first + 6).collect();
    let text = tok.decode(&produced[2..4], false).unwrap();
    let params = SamplingParams { stop_strings: vec![text], ..SamplingParams::greedy(20) };
    let out = generate(
        &Mock::default(),
        &Request {
            prompts: &[vec![first]],
            n: 1,
            params: &params,
            eos_token_ids: &[],
            seed: 0,
            first_prompt: 0,
        },
        Some(&tok),
        &EngineConfig::default(),
    )
    .unwrap();
    assert_eq!(out[0].finish_reason, FinishReason::StopString);
    assert_eq!(out[0].tokens, produced[..4].to_vec());
}

#[test]
fn seeds_reproduce_and_chunking_changes_nothing() {
    let prompts: Vec<Vec<i64>> = (0..5).map(|i| vec![10 * i + 1, 10 * i + 2]).collect();
    let params = SamplingParams { temperature: 1.0, max_new_tokens: 6, ..Default::default() };
    let big = EngineConfig::default();
    let tiny = EngineConfig { max_tokens_in_flight: 1, ..Default::default() };
    let a = run(&prompts, 3, &params, &[], 42, &big);
    assert_eq!(a, run(&prompts, 3, &params, &[], 42, &big));
    assert_eq!(
        a,
        run(&prompts, 3, &params, &[], 42, &tiny),
        "one prompt per chunk gives the same samples"
    );
    assert_ne!(a, run(&prompts, 3, &params, &[], 43, &big));
    // The samples of a group differ (each has its own stream).
    assert!(
        a.iter()
            .filter(|r| r.prompt_index == 0)
            .map(|r| r.tokens.clone())
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1
    );
}

#[test]
fn ief_prompt_tokens_reach_the_model() {
    let tok = tokenizer();
    let pool = DemoPool::new(vec![
        Demo {
            id: "d0".into(),
            problem: "What is 7 times 6?".into(),
            solution: "7 times 6 is \\boxed{42}.".into(),
        },
        Demo { id: "q".into(), problem: "What is 3 + 4?".into(), solution: "7".into() },
    ]);
    let query = "What is 3 + 4?";
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let demos = pool.draw(1, query, &mut rng).unwrap();
    assert_eq!(demos[0].id, "d0", "the query itself is never its own demonstration");
    let builder = PromptBuilder::new(&tok);
    let ief = builder.in_context(query, &demos).unwrap();
    let plain = builder.plain(query).unwrap();
    let mock = Mock::default();
    let params = SamplingParams::greedy(2);
    generate(
        &mock,
        &Request {
            prompts: &[plain.clone(), ief.clone()],
            n: 1,
            params: &params,
            eos_token_ids: &[],
            seed: 0,
            first_prompt: 0,
        },
        None,
        &EngineConfig::default(),
    )
    .unwrap();
    let seen = mock.prefills.borrow();
    assert_eq!(seen[0], plain);
    assert_eq!(seen[1], ief, "the steered prompt, not the plain one, is what the sampler sees");
    let text = tok.decode(&seen[1], false).unwrap();
    assert!(
        text.contains("What is 7 times 6?") && text.contains("7 times 6 is \\boxed{42}."),
        "{text}"
    );
    assert!(
        text.find("7 times 6").unwrap() < text.find(query).unwrap(),
        "demonstration before the query"
    );
    let demo_ids = tok.encode("7 times 6 is \\boxed{42}.", false).unwrap();
    assert!(
        seen[1].windows(demo_ids.len()).any(|w| w == demo_ids.as_slice()),
        "demonstration tokens present"
    );
}

#[test]
fn long_ief_prompts_are_cut_in_the_demonstrations() {
    let tok = tokenizer();
    let long = "step ".repeat(400);
    let demo = Demo {
        id: "d".into(),
        problem: "Long problem start".into(),
        solution: format!("{long} so \\boxed{{1}} end"),
    };
    let mut builder = PromptBuilder::new(&tok);
    builder.max_prompt_tokens = 260;
    let ids = builder.in_context("What is 3 + 4?", &[&demo]).unwrap();
    assert_eq!(ids.len(), 260);
    let text = tok.decode(&ids, false).unwrap();
    assert!(
        text.contains("\n...\n") && text.contains("Long problem start") && text.contains("end"),
        "{text}"
    );
    assert!(
        text.contains("What is 3 + 4?") && text.ends_with("<|im_start|>assistant\n"),
        "query and template intact: {text}"
    );
    builder.max_prompt_tokens = 10;
    assert!(builder.in_context("What is 3 + 4?", &[&demo]).is_err());
}

#[test]
fn demo_pool_reads_math_train_and_names_bad_lines() {
    let pool = DemoPool::from_jsonl(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/train/math_train.jsonl"),
    )
    .unwrap();
    assert_eq!(pool.len(), 7500);
    let dir = std::env::temp_dir().join(format!("icpo-demos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"problem\": \"a\", \"solution\": \"b\"}\n\n{\"problem\": \"c\"}\n")
        .unwrap();
    let e = DemoPool::from_jsonl(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:3") && e.contains("solution"), "{e}");
}

/// The demo pool's hygiene: too-short solutions and URLs dropped (the authors' filters), and
/// the query never drawn as its own demonstration even when its whitespace differs.
#[test]
fn demo_pool_hygiene() {
    use icpo_rollout::{Demo, DemoPool};
    let demo = |id: &str, problem: &str, solution: &str| Demo {
        id: id.into(),
        problem: problem.into(),
        solution: solution.into(),
    };
    let long = "Adding the two numbers gives 4, so the answer is \\boxed{4} indeed.";
    let mut pool = DemoPool::new(vec![
        demo("a", "What is  2+2?\n", long),
        demo("b", "Short one.", "4"),
        demo("c", "With a link.", &format!("{long} See https://example.org/x")),
        demo("d", "Another.", long),
    ]);
    assert_eq!(pool.retain_clean(58, true), 2);
    assert_eq!(pool.len(), 2);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for _ in 0..20 {
        let drawn = pool.draw(1, " What is 2+2?", &mut rng).unwrap();
        assert_eq!(drawn[0].id, "d", "the query itself (whitespace aside) is never drawn");
    }
    assert!(pool.draw(2, "What is 2+2?", &mut rng).is_err());
}

/// The engine's slot accounting against a hand count. Greedy on the mock, prompt `[1, 2]` gives
/// 3, 4, 5 and prompt `[3]` gives 4, 5, with 5 as EOS: 4 slots (2 samples each); 3 decode
/// steps; after the second, prompt `[3]`'s two samples are done and, with nothing pending, the
/// half-idle batch is compacted to 2 rows: 4 + 4 + 2 = 10 slot-steps, 10 tokens generated.
#[test]
fn engine_stats_count_slot_steps() {
    assert_eq!(EngineStats::default().slot_utilization(), 0.0);
    let m = Mock::default();
    let prompts = vec![vec![1i64, 2], vec![3i64]];
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 6,
        stop_on_eos: true,
        ..Default::default()
    };
    let request = Request {
        prompts: &prompts,
        n: 2,
        params: &params,
        eos_token_ids: &[5],
        seed: 3,
        first_prompt: 0,
    };
    let config = EngineConfig { streams: 1, ..Default::default() };
    let (out, stats) = generate_with_stats(&m, &request, None, &config).unwrap();
    let lens: Vec<usize> = out.iter().map(|r| r.tokens.len()).collect();
    assert_eq!(lens, [3, 3, 2, 2]);
    assert_eq!(
        stats,
        EngineStats { batches: 1, decode_steps: 3, slots: 4, slot_steps: 10, generated_tokens: 10 }
    );
    assert!((stats.slot_utilization() - 1.0).abs() < 1e-12);
    // The same samples as `generate`.
    let plain = generate(&m, &request, None, &config).unwrap();
    let tokens =
        |v: &[icpo_rollout::Rollout]| v.iter().map(|r| r.tokens.clone()).collect::<Vec<_>>();
    assert_eq!(tokens(&plain), tokens(&out));
}

#[test]
fn streaming_hands_over_each_rollout_as_it_ends() {
    // Prompt 0 runs to the length cap (10 tokens), prompt 1 meets EOS (8) after 3.
    let prompts = vec![vec![50], vec![5]];
    let params = SamplingParams::greedy(10);
    let request = Request {
        prompts: &prompts,
        n: 2,
        params: &params,
        eos_token_ids: &[8],
        seed: 0,
        first_prompt: 0,
    };
    let seen = std::sync::Mutex::new(Vec::new());
    let record = |r: &icpo_rollout::Rollout| seen.lock().unwrap().push(r.clone());
    let (out, _) = icpo_rollout::generate_streaming(
        &Mock::default(),
        &request,
        None,
        &EngineConfig::default(),
        Some(&record),
    )
    .unwrap();
    let seen = seen.into_inner().unwrap();
    // In the order they ended (the short ones first), each once, equal to what is returned.
    let order: Vec<(usize, usize)> =
        seen.iter().map(|r| (r.prompt_index, r.sample_index)).collect();
    assert_eq!(order, [(1, 0), (1, 1), (0, 0), (0, 1)]);
    assert_eq!(seen[0].tokens, vec![6, 7, 8]);
    let mut sorted = seen.clone();
    sorted.sort_by_key(|r| (r.prompt_index, r.sample_index));
    assert_eq!(sorted, out);
    assert_eq!(out, run(&prompts, 2, &params, &[8], 0, &EngineConfig::default()));
}
