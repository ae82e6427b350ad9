//! End-to-end training on the tiny Qwen3 checkpoint: finite losses, reward rising on a task a
//! tiny model can learn, IEF prompts carrying the demonstration, ERRS keeping the group size,
//! γ(t) decreasing, and a resumed run equal to an uninterrupted one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;

use common::{config, tiny, trainer};
use icpo_policy::{CausalLm, LoadOptions, Tokenizer};
use icpo_rollout::DemoPool;
use icpo_train::{Metrics, Scorer, TrainConfig, Trainer};

fn run(t: &mut Trainer, steps: usize) -> Vec<Metrics> {
    (0..steps).map(|_| t.train_step().unwrap()).collect()
}

/// Every metric of `b` equals `a`'s to `tol` (relative), timings and memory aside.
fn assert_same_metrics(a: &Metrics, b: &Metrics, tol: f64, what: &str) {
    for (k, v) in a {
        if k.starts_with("timing/") || k.starts_with("perf/") {
            continue;
        }
        assert!((v - b[k]).abs() <= tol * v.abs().max(1.0), "{what} {k}: {v} vs {}", b[k]);
    }
}

#[test]
fn icpo_trains_with_finite_losses_and_annealed_bonus() {
    let cfg = config("icpo-e2e-a", &["loss.kl_coef=0.001"]);
    let mut t = trainer(cfg, "e");
    let ms = run(&mut t, 4);
    for m in &ms {
        for k in ["actor/pg_loss", "actor/kl", "actor/grad_norm", "actor/entropy"] {
            assert!(m[k].is_finite(), "{k} = {}", m[k]);
        }
        assert_eq!(m["train/group_size"], 4.0, "ERRS keeps G members per group");
        // With δ = 1 only correct IEF rollouts are accepted: acceptance equals IEF success.
        assert!((m["ief/acceptance_rate"] - m["ief/success_rate"]).abs() < 1e-12);
    }
    // γ(t) = 1 − t/T decreases step by step.
    let g: Vec<f64> = ms.iter().map(|m| m["shaping/gamma"]).collect();
    assert_eq!(g, vec![1.0, 1.0 - 1.0 / 6.0, 1.0 - 2.0 / 6.0, 0.5]);
    // The sampler saw the steered prompts: the demonstration's text is in them.
    let tok = Tokenizer::from_dir(tiny()).unwrap();
    assert_eq!(t.last_ief_prompts.len(), 4);
    for p in &t.last_ief_prompts {
        let text = tok.decode(p, false).unwrap();
        assert!(text.contains("Write a letter.") || text.contains("Name a vowel."), "{text}");
    }
}

/// Mixed precision (bf16 products): finite losses, and the f32 weights move.
#[test]
fn mixed_precision_trains_f32_weights() {
    let cfg = config("icpo-e2e-bf16", &["model.compute_dtype=\"bfloat16\"", "loss.kl_coef=0.001"]);
    let mut t = trainer(cfg, "e");
    assert_eq!(t.policy().compute_dtype(), icpo_policy::DType::BF16);
    let before: Vec<(String, tch::Tensor)> =
        t.policy().named_weights().into_iter().map(|(n, w)| (n, w.copy())).collect();
    for m in run(&mut t, 2) {
        for k in ["actor/pg_loss", "actor/kl", "actor/grad_norm", "actor/entropy"] {
            assert!(m[k].is_finite(), "{k} = {}", m[k]);
        }
        assert_eq!(m["train/skipped_updates"], 0.0);
    }
    let after = t.policy().named_weights();
    let mut moved = 0;
    for (n, w) in &before {
        assert_eq!(after[n].kind(), tch::Kind::Float, "{n} stays f32");
        if (&after[n] - w).abs().max().double_value(&[]) > 0.0 {
            moved += 1;
        }
    }
    assert!(moved * 2 > before.len(), "only {moved} of {} weights moved", before.len());
}

/// A step is its two public halves: `rollout` then `update` on the untouched batch equals
/// `train_step` (metrics and weights), and a batch goes to `update` once, in order.
#[test]
fn rollout_then_update_equals_train_step() {
    let (mut a, mut b) = (
        trainer(config("icpo-e2e-split-a", &["loss.kl_coef=0.001"]), "e"),
        trainer(config("icpo-e2e-split-b", &["loss.kl_coef=0.001"]), "e"),
    );
    for step in 0..2 {
        let x = a.train_step().unwrap();
        let batch = b.rollout().unwrap();
        assert_eq!(batch.step, step);
        assert_eq!(batch.prompts, 4);
        assert_eq!(batch.on_policy.len(), 4 * 4, "every on-policy rollout with its reward");
        assert_eq!(batch.trajectories.len(), 4 * 4, "ERRS keeps G members per group");
        let y = b.update(batch).unwrap();
        assert_same_metrics(&x, &y, 0.0, &format!("step {step}"));
    }
    let (wa, wb) = (a.policy().named_weights(), b.policy().named_weights());
    for (n, w) in &wa {
        assert!(w.equal(&wb[n]), "{n}");
    }
    // A batch of an earlier step is refused.
    let stale = b.rollout().unwrap();
    let _ = b.train_step();
    let e = b.update(stale).unwrap_err().to_string();
    assert!(e.contains("step 2") && e.contains("step 3"), "{e}");
}

/// The batch between the halves is the user's to change: with every advantage set to zero
/// (no KL, no entropy bonus, no weight decay) the update leaves every weight as it was, while
/// the same batch unedited moves them.
#[test]
fn edited_advantages_change_the_update() {
    let o = ["loss.kl_coef=0.0", "loss.entropy_coef=0.0"];
    let (mut a, mut b) =
        (trainer(config("icpo-e2e-edit-a", &o), "e"), trainer(config("icpo-e2e-edit-b", &o), "e"));
    let snapshot = |t: &Trainer| -> Vec<(String, tch::Tensor)> {
        let mut v: Vec<_> =
            t.policy().named_weights().into_iter().map(|(n, w)| (n, w.copy())).collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    let before = snapshot(&a);
    let mut batch = a.rollout().unwrap();
    assert!(batch.trajectories.iter().any(|t| t.advantage != 0.0), "the task gives some signal");
    for t in batch.trajectories.iter_mut() {
        t.advantage = 0.0;
    }
    let m = a.update(batch).unwrap();
    assert_eq!(m["actor/pg_loss"], 0.0);
    for ((n, w0), (_, w1)) in before.iter().zip(snapshot(&a)) {
        assert!(w0.equal(&w1), "{n} moved with zero advantages");
    }
    let batch = b.rollout().unwrap();
    b.update(batch).unwrap();
    let moved = before.iter().zip(snapshot(&b)).filter(|((_, w0), (_, w1))| !w0.equal(w1)).count();
    assert!(moved * 2 > before.len(), "only {moved} weights moved unedited");
}

/// bf16 weights with f32 masters in the optimiser: finite steps, weights stay bf16 and move,
/// the reference is held in bf16 without gradients, the checkpoint's policy is a bf16 Hugging
/// Face checkpoint, and a resumed run equals an uninterrupted one (the masters are saved).
#[test]
fn bf16_weights_train_and_resume_exactly() {
    let out = std::env::temp_dir().join(format!("icpo-e2e-bf16w-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = format!("trainer.output_dir=\"{}\"", out.display());
    let cfg = || {
        config(
            "unused",
            &[
                &o,
                "model.dtype=\"bfloat16\"",
                "model.compute_dtype=\"bfloat16\"",
                "loss.kl_coef=0.001",
            ],
        )
    };
    let mut straight = trainer(cfg(), "e");
    let before: Vec<(String, tch::Tensor)> =
        straight.policy().named_weights().into_iter().map(|(n, w)| (n, w.copy())).collect();
    let full = run(&mut straight, 3);
    for m in &full {
        for k in ["actor/pg_loss", "actor/kl", "actor/grad_norm"] {
            assert!(m[k].is_finite(), "{k} = {}", m[k]);
        }
        assert_eq!(m["train/skipped_updates"], 0.0);
    }
    let after = straight.policy().named_weights();
    let moved = before
        .iter()
        .filter(|(n, w)| {
            assert_eq!(after[n].kind(), tch::Kind::BFloat16, "{n} stays bf16");
            (&after[n] - w).abs().max().double_value(&[]) > 0.0
        })
        .count();
    assert!(moved * 2 > before.len(), "only {moved} of {} weights moved", before.len());
    let reference = straight.reference().expect("β > 0 keeps a reference");
    for (n, w) in reference.named_weights() {
        assert_eq!(w.kind(), tch::Kind::BFloat16, "reference {n}");
        assert!(!w.requires_grad(), "reference {n} is frozen");
    }

    let mut first = trainer(cfg(), "e");
    let _ = run(&mut first, 2);
    first.save_checkpoint(&out).unwrap();
    drop(first);
    let ckpt = out.join("step_000002/policy");
    let saved = std::fs::read_to_string(ckpt.join("config.json")).unwrap();
    assert!(saved.contains("\"bfloat16\""), "{saved}");
    let mut resumed = trainer(cfg(), "e");
    resumed.resume(&out).unwrap();
    let third = resumed.train_step().unwrap();
    assert_same_metrics(&full[2], &third, 1e-6, "uninterrupted vs resumed:");
    let resumed_w = resumed.policy().named_weights();
    for (n, w) in &after {
        assert!(w.equal(&resumed_w[n]), "{n}: resumed weights differ");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// Activation checkpointing changes memory, not training: two steps with and without it give
/// the same metrics and the same weights (up to float rounding).
#[test]
fn gradient_checkpointing_trains_the_same() {
    let plain = config("icpo-e2e-ckpt-a", &["loss.kl_coef=0.001"]);
    let ckpt =
        config("icpo-e2e-ckpt-b", &["loss.kl_coef=0.001", "model.gradient_checkpointing=true"]);
    let (mut a, mut b) = (trainer(plain, "e"), trainer(ckpt, "e"));
    assert!(!a.policy().gradient_checkpointing() && b.policy().gradient_checkpointing());
    let (ma, mb) = (run(&mut a, 2), run(&mut b, 2));
    for (step, (x, y)) in ma.iter().zip(&mb).enumerate() {
        assert_same_metrics(x, y, 1e-5, &format!("step {step}"));
    }
    let (wa, wb) = (a.policy().named_weights(), b.policy().named_weights());
    for (n, w) in &wa {
        let d = (w - &wb[n]).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{n}: weights differ by {d}");
    }
}

#[test]
fn errs_off_keeps_every_ief_rollout() {
    // A reward no rollout can earn: ERRS rejects every IEF sample, −ERRS accepts all.
    let mut on = trainer(config("icpo-e2e-b", &[]), "\u{1F600}");
    let m = on.train_step().unwrap();
    assert_eq!(m["ief/acceptance_rate"], 0.0);
    assert_eq!(m["train/group_size"], 4.0);
    let mut off = trainer(config("icpo-e2e-c", &["algorithm.errs.enabled=false"]), "\u{1F600}");
    let m = off.train_step().unwrap();
    assert_eq!(m["ief/acceptance_rate"], 1.0);
    assert_eq!(m["train/group_size"], 4.0);
}

#[test]
fn reward_rises_on_a_learnable_task() {
    let cfg =
        config("icpo-e2e-d", &["algorithm.ief=false", "trainer.total_steps=14", "optim.lr=0.01"]);
    let mut t = trainer(cfg, "e");
    let ms = run(&mut t, 14);
    // GRPO reports no IEF metrics.
    assert!(
        ms[0].keys().all(|k| !k.starts_with("ief/") && k != "shaping/gamma"),
        "{:?}",
        ms[0].keys()
    );
    let r: Vec<f64> = ms.iter().map(|m| m["reward/on_policy_mean"]).collect();
    let first = r[..4].iter().sum::<f64>() / 4.0;
    let last = r[10..].iter().sum::<f64>() / 4.0;
    assert!(last > first + 0.2, "on-policy reward {first:.2} → {last:.2}: {r:?}");
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let out = std::env::temp_dir().join(format!("icpo-e2e-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let dir = out.to_str().unwrap().to_string();
    let o = format!("trainer.output_dir=\"{dir}\"");
    let mut straight = trainer(config("unused", &[&o]), "e");
    let full = run(&mut straight, 3);

    let mut first = trainer(config("unused", &[&o]), "e");
    let _ = run(&mut first, 2);
    first.save_checkpoint(&out).unwrap();
    drop(first);
    let mut resumed = trainer(config("unused", &[&o]), "e");
    resumed.resume(&out).unwrap();
    assert_eq!(resumed.step(), 2);
    let third = resumed.train_step().unwrap();
    assert_same_metrics(&full[2], &third, 1e-6, "uninterrupted vs resumed:");
    // The checkpoint's policy is a Hugging Face checkpoint with its tokenizer.
    let ckpt = out.join("step_000002/policy");
    assert!(CausalLm::load(&ckpt, LoadOptions::default()).is_ok());
    assert!(ckpt.join("tokenizer.json").exists());
    std::fs::remove_dir_all(&out).unwrap();
}

/// A run as `icpo_math --config` does it: config file, JSONL problems, demo pool from
/// ../shared, `fit` with checkpoints and metrics, then `resume` for one more step.
#[test]
fn fit_from_files_checkpoints_and_resumes() {
    let dir = std::env::temp_dir().join(format!("icpo-e2e-fit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let train = dir.join("train.jsonl");
    std::fs::write(&train, "{\"id\": \"q1\", \"problem\": \"What is 1+1?\", \"answer\": \"2\"}\n{\"problem\": \"What is 2+2?\", \"answer\": 4}\n{\"problem\": \"No answer\", \"answer\": null}\n").unwrap();
    let out = dir.join("run");
    let toml_text = format!(
        "[model]\npath = {:?}\n[data]\ntrain_path = {:?}\ndemo_pool_path = {:?}\nmax_prompt_tokens = 3000\n\
         [rollout]\ngroup_size = 3\nmax_new_tokens = 4\n[trainer]\ntotal_steps = 2\nbatch_prompts = 2\nsave_every = 1\n\
         eval_every = 0\noutput_dir = {:?}\n[optim]\nmini_batch_prompts = 1\nmicro_batch_size = 4\n",
        tiny().display().to_string(),
        train.display().to_string(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/train/math_train.jsonl"),
        out.display().to_string()
    );
    let cfg_path = dir.join("run.toml");
    std::fs::write(&cfg_path, toml_text).unwrap();
    let build = |overrides: &[String]| {
        let cfg = TrainConfig::load(Some(&cfg_path), overrides).unwrap();
        let (problems, skipped) = icpo_train::load_problems(&cfg.data.train_path).unwrap();
        assert_eq!((problems.len(), skipped), (2, 1));
        let demos = DemoPool::from_jsonl(&cfg.data.demo_pool_path).unwrap();
        let policy = CausalLm::load(&cfg.model.path, LoadOptions::default()).unwrap();
        let reference = CausalLm::load(&cfg.model.path, LoadOptions::default()).unwrap();
        let tok = Tokenizer::from_dir(&cfg.model.path).unwrap();
        Trainer::new(
            cfg,
            policy,
            Some(reference),
            tok,
            problems,
            Some(demos),
            Scorer::Text(Box::new(icpo_verify::MathReward::default())),
        )
        .unwrap()
    };
    let mut t = build(&[]);
    let mut seen = 0;
    t.fit(|_, m| {
        assert!(m["actor/pg_loss"].is_finite() && m["actor/kl"].is_finite());
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, 2);
    let lines = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().lines().count();
    assert_eq!(lines(&out.join("metrics.jsonl")), 2);
    assert!(
        out.join("step_000001/trainer_state.json").exists()
            && out.join("step_000002/policy/model.safetensors").exists()
    );
    assert_eq!(std::fs::read_to_string(out.join("latest")).unwrap(), "step_000002");
    assert!(!out.join("step_000002.tmp").exists(), "no half-written checkpoint left behind");
    drop(t); // releases the output directory's lock

    let mut resumed = build(&["trainer.total_steps=3".to_string()]);
    resumed.resume(&out).unwrap();
    assert_eq!(resumed.step(), 2);
    resumed.fit(|_, _| Ok(())).unwrap();
    assert_eq!(lines(&out.join("metrics.jsonl")), 3);
    assert!(out.join("step_000003").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nonfinite_updates_abort_after_k_in_a_row_without_damage() {
    let out = std::env::temp_dir().join(format!("icpo-e2e-nan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = format!("trainer.output_dir=\"{}\"", out.display());
    let mut t = trainer(
        config("unused", &[&o, "trainer.max_nonfinite_in_a_row=2", "algorithm.ief=false"]),
        "e",
    );
    t.train_step().unwrap();
    t.save_checkpoint(&out).unwrap();
    // Poison the weights: every later loss is NaN.
    for (_, w) in t.policy().named_weights() {
        tch::no_grad(|| {
            let _ = w.shallow_clone().fill_(f64::NAN);
        });
    }
    let e = match t.train_step() {
        Ok(m) => {
            assert_eq!(
                m["train/skipped_updates"], 1.0,
                "first non-finite update skipped and logged"
            );
            t.train_step().unwrap_err().to_string()
        }
        Err(e) => e.to_string(),
    };
    assert!(e.contains("non-finite") && e.contains("in a row"), "{e}");
    // The checkpoint written before is intact.
    let ckpt = CausalLm::load(out.join("step_000001/policy"), LoadOptions::default()).unwrap();
    let w = &ckpt.named_weights()["model.norm.weight"];
    assert!(w.isfinite().all().int64_value(&[]) == 1);
    std::fs::remove_dir_all(&out).unwrap();
}

/// Every shipped config (the paper's runs) loads and runs a step on the tiny checkpoint, with
/// only sizes, paths and device overridden.
#[test]
fn shipped_configs_run_a_step_on_the_tiny_checkpoint() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let out = std::env::temp_dir().join(format!("icpo-e2e-cfg-{}", std::process::id()));
        let overrides: Vec<String> = vec![
            format!("model.path=\"{}\"", tiny().display()),
            "model.device=\"cpu\"".into(),
            "data.max_prompt_tokens=400".into(),
            "data.demo_min_solution_chars=0".into(),
            "rollout.group_size=2".into(),
            "rollout.max_new_tokens=4".into(),
            "trainer.batch_prompts=2".into(),
            format!("trainer.output_dir=\"{}\"", out.display()),
            "optim.mini_batch_prompts=1".into(),
            "optim.micro_batch_size=4".into(),
        ];
        let cfg = TrainConfig::load(Some(&path), &overrides).unwrap();
        let mut t = trainer(cfg, "e");
        let m = t.train_step().unwrap();
        assert!(m["actor/pg_loss"].is_finite() && m["actor/kl"].is_finite(), "{path:?}: {m:?}");
        n += 1;
    }
    assert_eq!(n, 6);
}
