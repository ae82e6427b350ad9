//! `icpo train` end to end on the tiny checkpoint: a config file, JSONL problems, the demo pool
//! from ../shared, periodic evaluation, checkpoints, then `--resume` for one more step.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared").join(rel)
}

fn icpo_train(config: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_icpo"))
        .args(["train", "--plain", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .unwrap()
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A run directory with a config for the tiny policy: 3 problems (one without an answer),
/// a 2-problem benchmark evaluated every 2 steps, checkpoints every step.
fn setup(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("icpo-cli-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let train = dir.join("train.jsonl");
    std::fs::write(&train, "{\"id\": \"q1\", \"problem\": \"What is 1+1?\", \"answer\": \"2\"}\n{\"problem\": \"What is 2+2?\", \"answer\": 4}\n{\"problem\": \"No answer\", \"answer\": null}\n").unwrap();
    let bench = dir.join("tinybench.jsonl");
    std::fs::write(&bench, "{\"id\": \"a\", \"problem\": \"3+4?\", \"answer\": \"7\"}\n{\"id\": \"b\", \"problem\": \"5+5?\", \"answer\": \"10\"}\n").unwrap();
    let out = dir.join("run");
    let text = format!(
        "[model]\npath = {:?}\n[data]\ntrain_path = {:?}\ndemo_pool_path = {:?}\neval_paths = [{:?}]\n\
         max_prompt_tokens = 3000\n[rollout]\ngroup_size = 3\nmax_new_tokens = 4\n\
         [trainer]\ntotal_steps = 3\nbatch_prompts = 2\nsave_every = 1\neval_every = 2\noutput_dir = {:?}\n\
         [optim]\nmini_batch_prompts = 1\nmicro_batch_size = 4\n",
        testdata("tiny-qwen3").display().to_string(),
        train.display().to_string(),
        shared("data/train/math_train.jsonl").display().to_string(),
        bench.display().to_string(),
        out.display().to_string(),
    );
    let config = dir.join("run.toml");
    std::fs::write(&config, text).unwrap();
    (dir, config, out)
}

#[test]
fn train_runs_evaluates_checkpoints_and_resumes() {
    let (dir, config, out) = setup("e2e");
    let o = icpo_train(&config, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("2 training problems (1 skipped without an answer"), "{stderr}");
    let m = metrics(&out);
    assert_eq!(m.len(), 3, "one line per step");
    for (i, line) in m.iter().enumerate() {
        assert_eq!(line["step"].as_f64(), Some(i as f64), "{line}");
        assert!(line["actor/pg_loss"].as_f64().unwrap().is_finite());
        assert!(line["actor/kl"].as_f64().unwrap().is_finite(), "β > 0 by default: a reference");
        assert!(line["ief/acceptance_rate"].is_number(), "ICPO by default");
        // Evaluated after step 2 (every 2) and after the last step (3).
        let evaluated = line.get("eval/tinybench/accuracy").is_some();
        assert_eq!(evaluated, i == 1 || i == 2, "step {i}: {line}");
        if evaluated {
            // The accuracy is the mean verdict of the responses written beside it.
            let responses = std::fs::read_to_string(
                out.join(format!("eval/step_{:06}/tinybench.jsonl", i + 1)),
            )
            .unwrap();
            let rewards: Vec<f64> = responses
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["reward"]
                        .as_f64()
                        .unwrap()
                })
                .collect();
            assert_eq!(rewards.len(), 2, "2 problems × avg@1");
            let mean = rewards.iter().sum::<f64>() / 2.0;
            assert_eq!(line["eval/tinybench/accuracy"].as_f64(), Some(mean));
            assert!(stderr.contains(&format!("step {}: tinybench:", i + 1)), "{stderr}");
        }
    }
    assert_eq!(std::fs::read_to_string(out.join("latest")).unwrap(), "step_000003");
    assert!(out.join("step_000003/policy/model.safetensors").exists());

    // A second fresh start over the run is refused and names the way out; nothing is lost.
    let o = icpo_train(&config, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("--resume"), "{stderr}");
    assert_eq!(metrics(&out).len(), 3);

    // Resume for one more step: the step count is operational, accepted and reported.
    let o =
        icpo_train(&config, &["--set", "trainer.total_steps=4", "--resume", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("resumed at step 3") && stderr.contains("trainer.total_steps"),
        "{stderr}"
    );
    let m = metrics(&out);
    assert_eq!(m.len(), 4);
    assert_eq!(m[3]["step"].as_f64(), Some(3.0));
    assert!(m[3].get("eval/tinybench/accuracy").is_some(), "the new last step is evaluated");
    assert_eq!(std::fs::read_to_string(out.join("latest")).unwrap(), "step_000004");

    // A change of meaning at resume is refused unless set explicitly.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace("group_size = 3", "group_size = 2");
    std::fs::write(&config, text).unwrap();
    let o =
        icpo_train(&config, &["--set", "trainer.total_steps=5", "--resume", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("rollout.group_size"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn train_names_a_missing_file_or_bad_key_before_loading() {
    let (dir, config, out) = setup("bad");
    let o = icpo_train(&config, &["--set", "data.eval_paths=[\"/nonexistent/bench.jsonl\"]"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("data.eval_paths") && stderr.contains("/nonexistent/bench.jsonl"),
        "{stderr}"
    );
    let o = icpo_train(&config, &["--set", "trainer.eval_evry=3"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("eval_every"), "lists the valid keys: {stderr}");
    assert!(!out.join("metrics.jsonl").exists(), "nothing trained");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same run on 2 ranks under torchrun (the CPU development backend) records what 1 process
/// records: the same rollouts' rewards and lengths, and evaluation of the same weights.
#[test]
fn train_under_torchrun_matches_one_process() {
    let (dir, config, out) = setup("torchrun");
    let o = icpo_train(&config, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let one = metrics(&out);
    let out2 = dir.join("run2");
    let torchrun = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/torchrun");
    let o = Command::new(torchrun)
        .args(["--standalone", "--nproc-per-node", "2", "--no-python"])
        .arg(env!("CARGO_BIN_EXE_icpo"))
        .args(["train", "--plain", "--config"])
        .arg(&config)
        .arg("--set")
        .arg(format!("trainer.output_dir={:?}", out2.display().to_string()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("data parallel over 2 ranks"), "{stderr}");
    assert_eq!(stderr.matches("2 training problems").count(), 1, "rank 0 alone speaks: {stderr}");
    let two = metrics(&out2);
    assert_eq!(two.len(), one.len(), "rank 0 alone writes metrics.jsonl");
    for (a, b) in one.iter().zip(&two) {
        for key in [
            "reward/on_policy_mean",
            "reward/ief_mean",
            "response_length/mean",
            "ief/acceptance_rate",
        ] {
            assert_eq!(a[key], b[key], "{key}: {a} vs {b}");
        }
        assert_eq!(b["perf/world_size"].as_f64(), Some(2.0));
        // Each rank graded its share of the benchmark: the same verdicts as one process.
        assert_eq!(
            a.get("eval/tinybench/accuracy"),
            b.get("eval/tinybench/accuracy"),
            "{a} vs {b}"
        );
        let (x, y) = (a["actor/pg_loss"].as_f64().unwrap(), b["actor/pg_loss"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "actor/pg_loss: {x} vs {y}");
    }
    assert!(out2.join("step_000003/policy/model.safetensors").exists());
    let graded = std::fs::read_to_string(out2.join("eval/step_000003/tinybench.jsonl")).unwrap();
    assert_eq!(graded.lines().count(), 2, "rank 0 writes every rank's verdicts: {graded}");
    std::fs::remove_dir_all(&dir).unwrap();
}
