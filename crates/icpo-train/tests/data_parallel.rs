//! Data-parallel ICPO on the CPU development backend, launched as separate processes (this
//! test binary re-runs itself as the ranks, with torchrun's variables): 2 ranks reach the same
//! weights after 3 steps as 1 process on the same global batch; a 1-process checkpoint resumes
//! on 2 ranks and a 2-rank checkpoint in 1 process, both landing where the uninterrupted run
//! does.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{config, trainer};
use icpo_dist::{DistEnv, StoreGroup};
use icpo_train::Trainer;
use tch::Tensor;

const STEPS: usize = 3;

fn run_config(out: &str) -> icpo_train::TrainConfig {
    config(
        out,
        &[
            "trainer.batch_prompts=4",
            "optim.mini_batch_prompts=2",
            "optim.micro_batch_size=3",
            "loss.kl_coef=0.01",
            "trainer.total_steps=3",
        ],
    )
}

/// Steps the trainer `steps` times, then writes its weights and per-step metrics under
/// `dir/name.*`.
fn train_and_save(t: &mut Trainer, dir: &Path, name: &str, steps: usize) {
    let mut metrics = Vec::new();
    for _ in 0..steps {
        metrics.push(t.train_step().unwrap());
    }
    let weights = t.policy().named_weights();
    let named: Vec<(String, Tensor)> =
        weights.iter().map(|(k, v)| (k.clone(), v.detach())).collect();
    Tensor::write_safetensors(&named, dir.join(format!("{name}.safetensors"))).unwrap();
    std::fs::write(dir.join(format!("{name}.json")), serde_json::to_string(&metrics).unwrap())
        .unwrap();
}

fn load(dir: &Path, name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join(format!("{name}.safetensors"))).unwrap().into_iter().collect()
}

/// One rank of the 2-process run (started by the test below).
#[test]
#[ignore = "a rank of the multi-process test, started by it"]
fn rank_entry() {
    let Ok(dir) = std::env::var("ICPO_DP_DIR") else { return };
    let dir = PathBuf::from(dir);
    let scenario = std::env::var("ICPO_DP_SCENARIO").unwrap();
    let env = DistEnv::from_env().unwrap().unwrap();
    let pid = std::process::id();
    let mut t = trainer(run_config(&format!("icpo-dp-{scenario}-rank{}-{pid}", env.rank)), "e");
    let timeout = if scenario == "dies" { 3 } else { 120 };
    let group = StoreGroup::connect(&env, Duration::from_secs(timeout)).unwrap();
    t.set_process_group(Arc::new(group)).unwrap();
    let name = format!("{scenario}-rank{}", env.rank);
    match scenario.as_str() {
        "train" => train_and_save(&mut t, &dir, &name, STEPS),
        "save" => {
            train_and_save(&mut t, &dir, &name, STEPS - 1);
            if t.is_main() {
                t.save_checkpoint(&dir.join("ckpt-2ranks")).unwrap();
            }
        }
        "resume" => {
            t.resume(&dir.join("ckpt-1process")).unwrap();
            assert_eq!(t.step(), (STEPS - 1) as u64);
            train_and_save(&mut t, &dir, &name, 1);
        }
        "dies" => {
            t.train_step().unwrap();
            if env.rank == 1 {
                // Gone in the middle of the run, as a killed process.
                std::process::exit(0);
            }
            let e = t.train_step().unwrap_err().to_string();
            eprintln!("rank 0 stopped: {e}");
            std::process::exit(3);
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// Starts ranks 0 and 1 of `scenario`; `meanwhile` runs in this process while they do.
fn two_ranks(dir: &Path, scenario: &str, meanwhile: impl FnOnce()) {
    for (rank, o) in spawn_ranks(dir, scenario, meanwhile).into_iter().enumerate() {
        assert!(
            o.status.success(),
            "{scenario} rank {rank}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// The outputs of ranks 0 and 1 of `scenario`.
fn spawn_ranks(dir: &Path, scenario: &str, meanwhile: impl FnOnce()) -> Vec<std::process::Output> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "rank_entry", "--ignored", "--nocapture", "--test-threads=1"])
                .env("ICPO_DP_DIR", dir)
                .env("ICPO_DP_SCENARIO", scenario)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                // Two processes on two cores: one libtorch thread each.
                .env("OMP_NUM_THREADS", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    meanwhile();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

/// `‖a − b‖ / ‖b‖` ≤ 1e-5 for every weight.
fn assert_close(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, what: &str) {
    assert_eq!(a.len(), b.len());
    for (name, w) in b {
        let diff = (&a[name] - w).norm().double_value(&[]);
        let scale = w.norm().double_value(&[]).max(1e-12);
        assert!(diff / scale <= 1e-5, "{what}: {name}: relative difference {:.2e}", diff / scale);
    }
}

#[test]
fn two_ranks_train_like_one_process_and_checkpoints_cross_world_sizes() {
    let dir = std::env::temp_dir().join(format!("icpo-dp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // 2 ranks for 3 steps, and the same global batch in this process meanwhile.
    two_ranks(&dir, "train", || {
        let mut single = trainer(run_config("icpo-dp-single"), "e");
        train_and_save(&mut single, &dir, "single", STEPS);
    });
    let (one, r0, r1) =
        (load(&dir, "single"), load(&dir, "train-rank0"), load(&dir, "train-rank1"));
    for (name, w) in &r0 {
        assert!(w.equal(&r1[name]), "{name}: the two ranks hold different weights");
    }
    assert_close(&r0, &one, "2 ranks vs 1 process");
    let start: HashMap<String, Tensor> =
        trainer(run_config("icpo-dp-start"), "e").policy().named_weights().into_iter().collect();
    let moved: f64 = one.iter().map(|(k, w)| (w - &start[k]).norm().double_value(&[])).sum();
    assert!(moved > 0.0, "the weights changed: the comparison is not vacuous");
    // The metrics rank 0 reports are the whole batch's.
    let metrics = |n: &str| -> Vec<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{n}.json"))).unwrap())
            .unwrap()
    };
    let (m1, m2) = (metrics("single"), metrics("train-rank0"));
    for (a, b) in m1.iter().zip(&m2) {
        for key in [
            "reward/on_policy_mean",
            "reward/ief_mean",
            "ief/acceptance_rate",
            "response_length/mean",
            "train/group_size",
        ] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-12, "{key}: {x} vs {y}");
        }
        let (x, y) = (a["actor/pg_loss"].as_f64().unwrap(), b["actor/pg_loss"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "actor/pg_loss: {x} vs {y}");
    }

    // A 1-process checkpoint after 2 steps, resumed on 2 ranks for the third.
    let mut first = trainer(run_config("icpo-dp-first"), "e");
    for _ in 0..STEPS - 1 {
        first.train_step().unwrap();
    }
    first.save_checkpoint(&dir.join("ckpt-1process")).unwrap();
    drop(first);
    two_ranks(&dir, "resume", || {});
    assert_close(&load(&dir, "resume-rank0"), &one, "1-process checkpoint resumed on 2 ranks");

    // A 2-rank checkpoint after 2 steps, resumed in 1 process for the third.
    two_ranks(&dir, "save", || {});
    let mut resumed = trainer(run_config("icpo-dp-resumed"), "e");
    resumed.resume(&dir.join("ckpt-2ranks")).unwrap();
    assert_eq!(resumed.step(), (STEPS - 1) as u64);
    train_and_save(&mut resumed, &dir, "resumed-1process", 1);
    assert_close(&load(&dir, "resumed-1process"), &one, "2-rank checkpoint resumed in 1 process");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A rank killed in the middle of a run makes the other stop within the timeout (3 s here),
/// naming it and the collective it never reached.
#[test]
fn a_rank_killed_mid_run_stops_the_other_naming_it() {
    let dir = std::env::temp_dir().join(format!("icpo-dp-dies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t0 = std::time::Instant::now();
    let outs = spawn_ranks(&dir, "dies", || {});
    let stderr = String::from_utf8_lossy(&outs[0].stderr);
    assert_eq!(outs[0].status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("rank 0 stopped") && stderr.contains("rank 1 did not reach"),
        "{stderr}"
    );
    assert!(t0.elapsed() < Duration::from_secs(60), "no hang: {:?}", t0.elapsed());
    std::fs::remove_dir_all(&dir).unwrap();
}
