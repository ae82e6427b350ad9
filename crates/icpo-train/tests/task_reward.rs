//! Task rewards: they see every dataset field, the prompt and the response; a failure stops
//! the step naming the problem, or with `trainer.reward_errors = "skip"` leaves the rollout out
//! (advantage exactly 0) and is counted; weighted mixes log each part. And a custom advantage
//! estimator in place of `algorithm.advantage`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;

use std::sync::Mutex;

use common::{config, trainer_with};
use icpo_train::{load_problems, RewardInput, Scorer, WeightedRewards};

/// 1 when the response contains the problem's `target` field (the dataset's, not `answer`).
fn target_reward(input: &RewardInput<'_>) -> Result<f64, String> {
    let target = input.problem.fields["target"].as_str().ok_or("no `target` field")?;
    Ok(f64::from(u8::from(input.response.contains(target))))
}

#[test]
fn rewards_see_dataset_fields_prompt_and_response() {
    // JSONL rows keep every field.
    let path = std::env::temp_dir().join(format!("icpo-task-fields-{}.jsonl", std::process::id()));
    std::fs::write(&path, "{\"problem\": \"Reach 24.\", \"answer\": \"24\", \"numbers\": [3, 8, 1], \"target\": 24}\n").unwrap();
    let (problems, _) = load_problems(&path).unwrap();
    assert_eq!(problems[0].fields["numbers"], serde_json::json!([3, 8, 1]));
    assert_eq!(problems[0].fields["target"], 24);
    std::fs::remove_file(&path).unwrap();

    let seen: &'static Mutex<Vec<(String, String, usize, bool)>> = Box::leak(Box::default());
    let reward = move |input: &RewardInput<'_>| -> Result<f64, String> {
        seen.lock().unwrap().push((
            input.problem.id.clone(),
            input.prompt.to_string(),
            input.tokens.len(),
            input.is_ief,
        ));
        target_reward(input)
    };
    let mut t = trainer_with(config("icpo-task-a", &[]), "e", Scorer::Task(Box::new(reward)));
    let batch = t.rollout().unwrap();
    let seen = seen.lock().unwrap();
    // 4 problems × (4 on-policy + 1 IEF) rollouts, each seen with its problem and prompt.
    assert_eq!(seen.len(), 4 * 5);
    for (id, prompt, _, is_ief) in seen.iter() {
        let i: usize = id.trim_start_matches('p').parse().unwrap();
        assert!(prompt.contains(&format!("Write the letter number {i}.")), "{prompt}");
        assert_eq!(
            is_ief,
            &(prompt.contains("Write a letter.") || prompt.contains("Name a vowel."))
        );
    }
    assert_eq!(seen.iter().filter(|s| s.3).count(), 4);
    // The rewards are the target reward's: 1 exactly where the response holds "e".
    for ((r, score), ..) in batch.on_policy.iter().zip(0..) {
        let text = common::decode(&r.tokens);
        assert_eq!(*score, f64::from(u8::from(text.contains('e'))), "{text:?}");
    }
    assert_eq!(batch.metrics["reward/errors"], 0.0);
}

/// Fails on responses of odd length.
fn flaky(input: &RewardInput<'_>) -> Result<f64, String> {
    if input.tokens.len() % 2 == 1 {
        return Err(format!("sandbox unavailable ({} tokens)", input.tokens.len()));
    }
    target_reward(input)
}

#[test]
fn a_failing_reward_stops_the_step_or_is_skipped_not_zeroed() {
    let mut t = trainer_with(config("icpo-task-b", &[]), "e", Scorer::Task(Box::new(flaky)));
    let e = t.train_step().unwrap_err().to_string();
    assert!(e.contains("sandbox unavailable") && e.contains("problem `p"), "{e}");

    let cfg = config("icpo-task-c", &["trainer.reward_errors=\"skip\""]);
    let mut t = trainer_with(cfg, "e", Scorer::Task(Box::new(flaky)));
    let batch = t.rollout().unwrap();
    let odd = |n: usize| n % 2 == 1;
    let failed =
        batch.on_policy.iter().chain(&batch.ief).filter(|(r, _)| odd(r.tokens.len())).count();
    assert!(failed > 0, "the workload has odd lengths");
    assert_eq!(batch.metrics["reward/errors"], failed as f64);
    for tr in batch.trajectories.iter().filter(|t| !t.is_ief && odd(t.response.len())) {
        assert_eq!(tr.advantage, 0.0, "a skipped rollout gives no learning signal");
    }
    t.update(batch).unwrap();
}

/// The optimiser's layout is chosen when the trainer is built: changing `optim.zero_stage` in
/// the public config afterwards is an error naming the key, not silently ignored.
#[test]
fn changing_the_zero_stage_after_the_trainer_is_built_is_an_error() {
    let mut t =
        trainer_with(config("icpo-task-z", &[]), "e", Scorer::Task(Box::new(target_reward)));
    t.cfg.optim.zero_stage = 2;
    let e = t.train_step().unwrap_err().to_string();
    assert!(e.contains("optim.zero_stage") && e.contains("from 0 to 2"), "{e}");
    t.cfg.optim.zero_stage = 0;
    t.train_step().unwrap();
}

#[test]
fn weighted_rewards_sum_and_log_each_part() {
    let mix = WeightedRewards::new().with("target", 0.5, target_reward).with(
        "short",
        2.0,
        |i: &RewardInput<'_>| Ok(f64::from(u8::from(i.tokens.len() <= 3))),
    );
    let input_score = |tokens: usize, hit: bool| {
        0.5 * f64::from(u8::from(hit)) + 2.0 * f64::from(u8::from(tokens <= 3))
    };
    let mut t = trainer_with(config("icpo-task-d", &[]), "e", Scorer::Task(Box::new(mix)));
    let batch = t.rollout().unwrap();
    for (r, score) in &batch.on_policy {
        let hit = common::decode(&r.tokens).contains('e');
        assert_eq!(*score, input_score(r.tokens.len(), hit));
    }
    let n = (batch.on_policy.len() + batch.ief.len()) as f64;
    let short =
        batch.on_policy.iter().chain(&batch.ief).filter(|(r, _)| r.tokens.len() <= 3).count()
            as f64;
    assert!((batch.metrics["reward/short"] - short / n).abs() < 1e-12);
    assert!(batch.metrics.contains_key("reward/target"));
}

/// A custom advantage estimator replaces `algorithm.advantage`: the step's advantages are its
/// values, and a wrong number of them is an error naming the counts.
#[test]
fn a_custom_advantage_estimator_sets_the_advantages() {
    let sign = |rewards: &[f64], _groups: &[usize]| -> Result<Vec<f64>, String> {
        Ok(rewards.iter().map(|r| if *r > 0.5 { 1.0 } else { -1.0 }).collect())
    };
    let mut t =
        trainer_with(config("icpo-task-e", &[]), "e", Scorer::Task(Box::new(target_reward)));
    t.set_advantages(Some(Box::new(sign)));
    let batch = t.rollout().unwrap();
    for tr in &batch.trajectories {
        assert_eq!(tr.advantage, if tr.shaped_reward > 0.5 { 1.0 } else { -1.0 });
    }
    t.update(batch).unwrap();
    let short = |rewards: &[f64], _: &[usize]| -> Result<Vec<f64>, String> {
        Ok(vec![0.0; rewards.len() - 1])
    };
    t.set_advantages(Some(Box::new(short)));
    let e = t.train_step().unwrap_err().to_string();
    assert!(e.contains("advantage estimator returned 15 values"), "{e}");
}

/// `rollout.stop_strings` reach the training rollouts: a response ends where its text first
/// holds the stop string, and only there.
#[test]
fn stop_strings_end_training_rollouts() {
    let cfg = config("icpo-task-f", &["rollout.stop_strings=[\"e\"]"]);
    let mut t = trainer_with(cfg, "e", Scorer::Task(Box::new(target_reward)));
    let batch = t.rollout().unwrap();
    let mut stopped = 0;
    for (r, _) in batch.on_policy.iter().chain(&batch.ief) {
        let text = common::decode(&r.tokens);
        let before = common::decode(&r.tokens[..r.tokens.len() - 1]);
        assert!(!before.contains('e'), "went on after the stop string: {text:?}");
        if r.finish_reason == icpo_rollout::FinishReason::StopString {
            assert!(text.contains('e'), "{text:?}");
            stopped += 1;
        } else {
            assert!(
                !text.contains('e'),
                "{:?} yet holds the stop string: {text:?}",
                r.finish_reason
            );
        }
    }
    assert!(stopped > 0, "some rollouts reach the stop string");
}

/// A metrics sink receives every step of `fit` (and metrics.jsonl is then not written); a
/// callback stops the run cleanly, the last step checkpointed and resumable.
#[test]
fn metrics_sinks_and_callbacks_that_stop() {
    use std::sync::{Arc, Mutex};
    let out = std::env::temp_dir().join("icpo-task-g");
    let _ = std::fs::remove_dir_all(&out);
    let mut t =
        trainer_with(config("icpo-task-g", &[]), "e", Scorer::Task(Box::new(target_reward)));
    let steps: Arc<Mutex<Vec<f64>>> = Arc::default();
    let seen = Arc::clone(&steps);
    t.set_metrics_sink(Some(Box::new(move |m: &icpo_train::Metrics| {
        seen.lock().unwrap().push(m["step"]);
        Ok(())
    })));
    t.fit_until(|t, _| {
        Ok(if t.step() == 2 { icpo_train::Control::Stop } else { icpo_train::Control::Continue })
    })
    .unwrap();
    assert_eq!(*steps.lock().unwrap(), vec![0.0, 1.0]);
    assert_eq!(t.step(), 2);
    assert!(!out.join("metrics.jsonl").exists(), "the sink replaces metrics.jsonl");
    assert_eq!(std::fs::read_to_string(out.join("latest")).unwrap(), "step_000002");
    drop(t);
    let mut resumed =
        trainer_with(config("icpo-task-g", &[]), "e", Scorer::Task(Box::new(target_reward)));
    resumed.resume(&out).unwrap();
    assert_eq!(resumed.step(), 2);
    std::fs::remove_dir_all(&out).unwrap();
}

/// The prompt format is configurable: a system turn and chat-template arguments (Qwen3's
/// non-thinking mode) reach the plain and the in-context prompts the sampler sees.
#[test]
fn system_turn_and_template_args_reach_the_prompts() {
    let cfg = config(
        "icpo-task-h",
        &[
            "data.system_prompt=\"You are terse.\"",
            "data.chat_template_args={enable_thinking=false}",
        ],
    );
    let prompts: &'static Mutex<Vec<String>> = Box::leak(Box::default());
    let reward = move |i: &RewardInput<'_>| -> Result<f64, String> {
        prompts.lock().unwrap().push(i.prompt.to_string());
        target_reward(i)
    };
    let mut t = trainer_with(cfg, "e", Scorer::Task(Box::new(reward)));
    let batch = t.rollout().unwrap();
    let seen = prompts.lock().unwrap();
    assert_eq!(seen.len(), batch.on_policy.len() + batch.ief.len());
    for p in seen.iter() {
        assert!(
            p.starts_with("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n"),
            "{p:?}"
        );
        assert!(p.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"), "{p:?}");
    }
    // The default: no system turn, thinking left to the template.
    let tok = common::tokenizer();
    let plain = icpo_train::TrainConfig::default().data.prompt_builder(&tok);
    let text = plain.plain_text("1+1?").unwrap();
    assert!(
        text.starts_with("<|im_start|>user\n") && text.ends_with("<|im_start|>assistant\n"),
        "{text:?}"
    );
}

/// Records the size of every batch it is asked to score.
struct Recording(&'static Mutex<Vec<usize>>);

impl icpo_train::TaskReward for Recording {
    fn score(&self, input: &RewardInput<'_>) -> Result<icpo_train::RewardOutput, String> {
        target_reward(input).map(Into::into)
    }
    fn score_batch(
        &self,
        inputs: &[RewardInput<'_>],
    ) -> Vec<Result<icpo_train::RewardOutput, String>> {
        self.0.lock().unwrap().push(inputs.len());
        inputs.iter().map(|i| self.score(i)).collect()
    }
}

#[test]
fn async_scoring_streams_batches_and_changes_nothing() {
    let sizes: &'static Mutex<Vec<usize>> = Box::leak(Box::default());
    let run = |name: &str, extra: &[&str]| {
        let cfg = config(name, extra);
        let mut t = trainer_with(cfg, "e", Scorer::Task(Box::new(Recording(sizes))));
        let b = t.rollout().unwrap();
        let rewards: Vec<f64> = b.trajectories.iter().map(|t| t.reward).collect();
        let adv: Vec<f64> = b.trajectories.iter().map(|t| t.advantage).collect();
        let n = b.on_policy.len() + b.ief.len();
        let m = t.update(b).unwrap();
        (rewards, adv, n, m)
    };
    let (r_sync, a_sync, n, m_sync) = run("icpo-task-sync", &["trainer.async_scoring=false"]);
    let sync_calls = std::mem::take(&mut *sizes.lock().unwrap());
    assert_eq!(sync_calls.iter().sum::<usize>(), n);
    let (r_async, a_async, _, m_async) =
        run("icpo-task-async", &["trainer.async_scoring=true", "trainer.scoring_batch=3"]);
    let async_calls = std::mem::take(&mut *sizes.lock().unwrap());
    assert_eq!(async_calls.iter().sum::<usize>(), n, "every rollout scored once");
    assert!(async_calls.iter().all(|&s| (1..=3).contains(&s)), "{async_calls:?}");
    assert!(async_calls.len() >= n.div_ceil(3), "{async_calls:?}");
    assert_eq!(r_sync, r_async);
    assert_eq!(a_sync, a_async);
    for key in ["actor/pg_loss", "actor/grad_norm", "reward/mean", "reward/on_policy_mean"] {
        assert_eq!(m_sync[key], m_async[key], "{key}");
    }
    assert!(m_async["timing/scoring_busy_s"] >= 0.0);
    let e = icpo_train::TrainConfig::load(None, &["trainer.scoring_batch=0".into()]).unwrap_err();
    assert!(e.to_string().contains("trainer.scoring_batch"), "{e}");
}

#[test]
fn the_math_verifier_is_a_task_reward_and_mixes_with_others() {
    use icpo_train::TaskReward;
    let problem = icpo_train::Problem {
        id: "p".into(),
        problem: "Half of one?".into(),
        answer: "\\frac{1}{2}".into(),
        fields: serde_json::json!({}),
    };
    let input = |response: &'static str| RewardInput {
        problem: Box::leak(Box::new(problem.clone())),
        prompt: "",
        response,
        tokens: &[],
        finish_reason: &icpo_rollout::FinishReason::Eos,
        is_ief: false,
    };
    let math = icpo_verify::MathReward::default();
    // Math-Verify's verdicts: 0.5 is 1/2, 2 is not.
    assert_eq!(math.score(&input("so $\\boxed{0.5}$")).unwrap().score, 1.0);
    assert_eq!(math.score(&input("so $\\boxed{2}$")).unwrap().score, 0.0);
    let short = |i: &RewardInput<'_>| -> Result<f64, String> {
        Ok(f64::from(u8::from(i.response.len() < 10)))
    };
    let mix = WeightedRewards::new().with("math", 1.0, math).with("short", 0.5, short);
    let out = mix.score(&input("\\boxed{1/2}")).unwrap();
    assert_eq!((out.score, out.metrics["math"], out.metrics["short"]), (1.0, 1.0, 0.0));
}
