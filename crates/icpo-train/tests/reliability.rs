//! Fault injection and careless use of the trainer (the reliability issue): a forgotten
//! `--resume`, two runs in one directory, a resume whose config changed, broken optimiser
//! files, a resume with nothing left to do, demo pools too small, over-long prompts, mistyped
//! config values, configs that do not fit their weights, and NaN weights in evaluation. The
//! crash-between-file-operations cases of a checkpoint save are unit tests of `checkpoint.rs`;
//! `scripts/reliability-check` adds the slow ones (kill -9 during real runs, the verifier's
//! time budget in release).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{config, tiny, trainer};
use icpo_policy::{CausalLm, LoadOptions, Tokenizer};
use icpo_rollout::{Demo, DemoPool};
use icpo_train::{Problem, Scorer, TrainConfig, Trainer};

fn out_dir(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("icpo-rel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn out_arg(p: &Path) -> String {
    format!("trainer.output_dir=\"{}\"", p.display())
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A finished two-step run (checkpoints at steps 1 and 2) in `out`.
fn finished_run(out: &Path) {
    let o = out_arg(out);
    let mut t =
        trainer(config("unused", &[&o, "trainer.total_steps=2", "trainer.save_every=1"]), "e");
    t.fit(|_, _| Ok(())).unwrap();
}

#[test]
fn a_fresh_run_into_a_used_directory_fails_and_leaves_it_byte_identical() {
    let out = out_dir("used");
    finished_run(&out);
    let before = snapshot(&out);
    let o = out_arg(&out);
    let mut again = trainer(config("unused", &[&o, "trainer.total_steps=2"]), "e");
    let e = again.fit(|_, _| Ok(())).unwrap_err().to_string();
    assert!(e.contains("--resume") && e.contains("--overwrite"), "{e}");
    assert_eq!(again.step(), 0, "no step was taken");
    drop(again);
    let after = snapshot(&out);
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    for (p, bytes) in &before {
        if !p.ends_with(icpo_train::LOCK_FILE) {
            assert!(after[p] == *bytes, "{} changed", p.display());
        }
    }
    // With the explicit flag the old run is replaced: metrics restart at step 0.
    let mut over =
        trainer(config("unused", &[&o, "trainer.total_steps=1", "trainer.overwrite=true"]), "e");
    over.fit(|_, _| Ok(())).unwrap();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 1);
    assert!(!out.join("step_000002").exists());
    assert_eq!(std::fs::read_to_string(out.join("latest")).unwrap(), "step_000001");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_second_run_in_the_same_directory_fails_at_once() {
    let out = out_dir("two-runs");
    let o = out_arg(&out);
    let mut first = trainer(config("unused", &[&o, "trainer.total_steps=1"]), "e");
    let mut second = Some(trainer(config("unused", &[&o, "trainer.total_steps=1"]), "e"));
    first
        .fit(|_, _| {
            // While the first run holds the directory.
            let mut s = second.take().unwrap();
            let t = std::time::Instant::now();
            let e = s.fit(|_, _| Ok(())).unwrap_err().to_string();
            assert!(t.elapsed().as_secs_f64() < 1.0, "fails at once");
            assert!(e.contains("in use by another run") && e.contains("pid"), "{e}");
            assert_eq!(s.step(), 0);
            Ok(())
        })
        .unwrap();
    assert_eq!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().count(), 1);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn resume_refuses_a_changed_lr_unless_overridden_and_reports_it() {
    let out = out_dir("lr");
    finished_run(&out);
    let o = out_arg(&out);
    let mut changed =
        trainer(config("unused", &[&o, "trainer.total_steps=3", "optim.lr=0.001"]), "e");
    let e = changed.resume(&out).unwrap_err().to_string();
    assert!(e.contains("optim.lr") && e.contains("0.003") && e.contains("0.001"), "{e}");
    assert_eq!(changed.step(), 0, "nothing restored");
    drop(changed);
    let mut explicit =
        trainer(config("unused", &[&o, "trainer.total_steps=3", "optim.lr=0.001"]), "e");
    let changes = explicit.resume_with(&out, &["optim.lr=0.001".into()]).unwrap();
    let keys: Vec<String> = changes.iter().map(|c| c.key.clone()).collect();
    assert_eq!(
        keys,
        ["optim.lr", "trainer.save_every", "trainer.total_steps"],
        "every accepted difference is reported"
    );
    assert_eq!(explicit.step(), 2);
    explicit.fit(|_, _| Ok(())).unwrap();
    assert!(out.join("step_000003").exists());
    drop(explicit);
    // The seed and the data mean a different run too.
    for change in ["trainer.seed=7", "rollout.group_size=3", "algorithm.ief=false"] {
        let mut t = trainer(config("unused", &[&o, "trainer.total_steps=4", change]), "e");
        let key = change.split('=').next().unwrap();
        let e = t.resume(&out).unwrap_err().to_string();
        assert!(e.contains(key), "{change}: {e}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn broken_optimiser_state_fails_at_load_naming_the_file() {
    let out = out_dir("optim");
    finished_run(&out);
    let o = out_arg(&out);
    let optim = out.join("step_000002/optimizer.safetensors");
    let good = std::fs::read(&optim).unwrap();
    let resume = || {
        let mut t = trainer(config("unused", &[&o, "trainer.total_steps=3"]), "e");
        t.resume(&out).map(|_| ()).unwrap_err().to_string()
    };
    // Truncated.
    std::fs::write(&optim, &good[..good.len() / 2]).unwrap();
    let e = resume();
    assert!(e.contains("optimizer.safetensors"), "{e}");
    // Without the moments (only the update count).
    tch::Tensor::write_safetensors(&[("updates", &tch::Tensor::from_slice(&[2i64]))], &optim)
        .unwrap();
    let e = resume();
    assert!(e.contains("optimizer.safetensors") && e.contains("missing"), "{e}");
    // A moment of the wrong shape.
    let mut named =
        tch::Tensor::read_safetensors(out.join("step_000001/optimizer.safetensors")).unwrap();
    let (name, t) = named.iter_mut().find(|(n, _)| n.starts_with("m.")).unwrap();
    let name = name.clone();
    *t = tch::Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu));
    let refs: Vec<(&str, &tch::Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tch::Tensor::write_safetensors(&refs, &optim).unwrap();
    let e = resume();
    assert!(e.contains("optimizer.safetensors") && e.contains(&name) && e.contains("shape"), "{e}");
    std::fs::write(&optim, &good).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn resuming_a_finished_run_says_there_is_nothing_to_do() {
    let out = out_dir("finished");
    finished_run(&out);
    let o = out_arg(&out);
    let mut t = trainer(config("unused", &[&o, "trainer.total_steps=2"]), "e");
    t.resume(&out).unwrap();
    let e = t.fit(|_, _| Ok(())).unwrap_err().to_string();
    assert!(e.contains("trainer.total_steps") && e.contains("step 2"), "{e}");
    std::fs::remove_dir_all(&out).unwrap();
}

fn build(cfg: TrainConfig, problems: Vec<Problem>, demos: usize) -> icpo_train::Result<Trainer> {
    let policy = CausalLm::load(tiny(), LoadOptions::default()).unwrap();
    let tok = Tokenizer::from_dir(tiny()).unwrap();
    let pool = DemoPool::new(
        (0..demos)
            .map(|i| Demo { id: format!("d{i}"), problem: format!("Q{i}"), solution: "A".into() })
            .collect(),
    );
    Trainer::new(
        cfg,
        policy,
        None,
        tok,
        problems,
        Some(pool),
        Scorer::Text(Box::new(common::Contains)),
    )
}

#[test]
fn a_demo_pool_smaller_than_rollout_demos_is_refused_at_start() {
    let problems = vec![Problem {
        id: "p".into(),
        problem: "Say e.".into(),
        answer: "e".into(),
        ..Default::default()
    }];
    let cfg = config("unused", &["rollout.demos=3", "data.demo_pool_path=\"pool.jsonl\""]);
    let e = build(cfg, problems, 2).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("rollout.demos") && e.contains("pool.jsonl") && e.contains("only 2"), "{e}");
}

#[test]
fn over_long_prompts_are_dropped_at_load_and_counted() {
    let short = Problem {
        id: "s".into(),
        problem: "Say e.".into(),
        answer: "e".into(),
        ..Default::default()
    };
    let long = Problem {
        id: "l".into(),
        problem: "word ".repeat(400),
        answer: "e".into(),
        ..Default::default()
    };
    let cfg = config("unused", &["data.max_prompt_tokens=100", "trainer.batch_prompts=2"]);
    let mut t = build(cfg.clone(), vec![short.clone(), long.clone(), short], 1).unwrap();
    assert_eq!(t.dropped_overlong, 1);
    let m = t.train_step().unwrap();
    assert_eq!(m["data/overlong_dropped"], 1.0);
    assert!(m["perf/peak_memory_gb"] > 0.0, "peak memory is reported");
    let e = build(cfg, vec![long], 1).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("data.max_prompt_tokens"), "{e}");
}

#[test]
fn mistyped_config_values_name_the_key_and_the_expected_type() {
    let e =
        TrainConfig::load(None, &["model.path=\"m\"".into(), "optim.micro_batch_size=-2".into()])
            .unwrap_err()
            .to_string();
    assert!(e.contains("optim.micro_batch_size") && e.contains("usize"), "{e}");
    let dir = out_dir("toml");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, "[rollout]\ntemperature = \"hot\"\n").unwrap();
    let e = TrainConfig::load(Some(&path), &[]).unwrap_err().to_string();
    assert!(e.contains("rollout.temperature") && e.contains("f64"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn copy_tiny(name: &str) -> PathBuf {
    let dir = out_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(tiny()).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    dir
}

#[test]
fn a_config_with_more_layers_than_the_weights_fails_before_allocating() {
    let dir = copy_tiny("layers");
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["num_hidden_layers"] = serde_json::json!(100_000);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = CausalLm::load(&dir, LoadOptions::default()).map(|_| ()).unwrap_err().to_string();
    assert!(
        e.contains("config.json") && e.contains("num_hidden_layers") && e.contains("100000"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn evaluating_nan_weights_is_an_error_naming_the_weight() {
    let policy = CausalLm::load(tiny(), LoadOptions::default()).unwrap();
    let tok = Tokenizer::from_dir(tiny()).unwrap();
    tch::no_grad(|| {
        let _ = policy.named_weights()["model.norm.weight"].shallow_clone().fill_(f64::NAN);
    });
    let builder = icpo_rollout::PromptBuilder::new(&tok);
    let problems = vec![Problem {
        id: "p".into(),
        problem: "1+1?".into(),
        answer: "2".into(),
        ..Default::default()
    }];
    let mut cfg = icpo_train::EvalConfig::default();
    cfg.sampling.max_new_tokens = 2;
    let e = icpo_train::evaluate(
        &policy,
        &tok,
        &builder,
        &problems,
        &icpo_verify::MathReward::default(),
        tok.eos_token_ids(),
        &cfg,
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(e.contains("model.norm.weight") && e.contains("NaN"), "{e}");
}
