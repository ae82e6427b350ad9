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
    zero_config(out, 0)
}

/// The run's config with optimiser state sharding `stage` (0: replicated).
fn zero_config(out: &str, stage: u8) -> icpo_train::TrainConfig {
    let mut cfg = config(
        out,
        &[
            "trainer.batch_prompts=4",
            "optim.mini_batch_prompts=2",
            "optim.micro_batch_size=3",
            "loss.kl_coef=0.01",
            "trainer.total_steps=3",
            // Adam's normalised step turns float-order noise in gradient elements that nearly
            // cancel into differences of order lr: the shared tests' lr 3e-3 (on weights of
            // scale 0.02) makes those dominate a 1e-5 comparison; 3e-4 still moves every weight.
            "optim.lr=3e-4",
        ],
    );
    cfg.optim.zero_stage = stage;
    cfg
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
    let zero: u8 = std::env::var("ICPO_DP_ZERO").map_or(0, |s| s.parse().unwrap());
    let out = format!("icpo-dp-{scenario}-z{zero}-rank{}-{pid}", env.rank);
    let mut t = trainer(zero_config(&out, zero), "e");
    let timeout = if scenario == "dies" { 3 } else { 120 };
    let group = StoreGroup::connect(&env, Duration::from_secs(timeout)).unwrap();
    t.set_process_group(Arc::new(group)).unwrap();
    let name = format!("{scenario}-z{zero}-rank{}", env.rank);
    match scenario.as_str() {
        "train" => {
            train_and_save(&mut t, &dir, &name, STEPS);
            // This rank's optimiser state (sharded: about half of the whole).
            let bytes = t.optimizer_state_bytes();
            std::fs::write(dir.join(format!("{name}.state_bytes")), bytes.to_string()).unwrap();
        }
        "save" => {
            train_and_save(&mut t, &dir, &name, STEPS - 1);
            // Every rank takes part (sharded state: each writes its own file).
            t.save_checkpoint(&dir.join(format!("ckpt-2ranks-z{zero}"))).unwrap();
        }
        "resume" => {
            let from = std::env::var("ICPO_DP_FROM").unwrap_or_else(|_| "ckpt-1process".into());
            t.resume(&dir.join(from)).unwrap();
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
    two_ranks_with(dir, scenario, &[], meanwhile)
}

/// [`two_ranks`] with extra environment variables (`ICPO_DP_ZERO`, `ICPO_DP_FROM`).
fn two_ranks_with(dir: &Path, scenario: &str, env: &[(&str, &str)], meanwhile: impl FnOnce()) {
    for (rank, o) in spawn_ranks(dir, scenario, env, meanwhile).into_iter().enumerate() {
        assert!(
            o.status.success(),
            "{scenario} rank {rank}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// The outputs of ranks 0 and 1 of `scenario`.
fn spawn_ranks(
    dir: &Path,
    scenario: &str,
    env: &[(&str, &str)],
    meanwhile: impl FnOnce(),
) -> Vec<std::process::Output> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .envs(env.iter().copied())
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
        (load(&dir, "single"), load(&dir, "train-z0-rank0"), load(&dir, "train-z0-rank1"));
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
    let (m1, m2) = (metrics("single"), metrics("train-z0-rank0"));
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
        // The loss is a mean of terms −A·ratio with advantages of order 1 that nearly cancel:
        // float-order noise is relative to those terms, not to the small mean.
        assert!((x - y).abs() <= 1e-5 * x.abs().max(0.1), "actor/pg_loss: {x} vs {y}");
    }

    // A 1-process checkpoint after 2 steps, resumed on 2 ranks for the third.
    let mut first = trainer(run_config("icpo-dp-first"), "e");
    for _ in 0..STEPS - 1 {
        first.train_step().unwrap();
    }
    first.save_checkpoint(&dir.join("ckpt-1process")).unwrap();
    drop(first);
    two_ranks(&dir, "resume", || {});
    assert_close(&load(&dir, "resume-z0-rank0"), &one, "1-process checkpoint resumed on 2 ranks");

    // A 2-rank checkpoint after 2 steps, resumed in 1 process for the third.
    two_ranks(&dir, "save", || {});
    let mut resumed = trainer(run_config("icpo-dp-resumed"), "e");
    resumed.resume(&dir.join("ckpt-2ranks-z0")).unwrap();
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
    let outs = spawn_ranks(&dir, "dies", &[], || {});
    let stderr = String::from_utf8_lossy(&outs[0].stderr);
    assert_eq!(outs[0].status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("rank 0 stopped") && stderr.contains("rank 1 did not reach"),
        "{stderr}"
    );
    assert!(t0.elapsed() < Duration::from_secs(60), "no hang: {:?}", t0.elapsed());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sharded optimiser state (ZeRO-1 and ZeRO-2) on 2 ranks reaches the weights of the replicated
/// optimiser in 1 process; each rank holds about half of the state; the sharded checkpoint
/// (one file per rank and an index) resumes in 1 process, replicated or sharded, and a
/// 1-process replicated checkpoint resumes on 2 sharded ranks, each landing where the
/// uninterrupted run does.
#[test]
fn sharded_optimizer_state_trains_like_one_process_and_resumes_across_world_sizes() {
    let dir = std::env::temp_dir().join(format!("icpo-zero-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut whole_bytes = 0;
    two_ranks_with(&dir, "train", &[("ICPO_DP_ZERO", "2")], || {
        let mut single = trainer(run_config("icpo-zero-single"), "e");
        train_and_save(&mut single, &dir, "single", STEPS);
        whole_bytes = single.optimizer_state_bytes();
    });
    let one = load(&dir, "single");
    let start: HashMap<String, Tensor> =
        trainer(run_config("icpo-zero-start"), "e").policy().named_weights().into_iter().collect();
    let moved: f64 = one.iter().map(|(k, w)| (w - &start[k]).norm().double_value(&[])).sum();
    assert!(moved > 0.0, "the weights changed: the comparison is not vacuous");
    two_ranks_with(&dir, "train", &[("ICPO_DP_ZERO", "1")], || {});
    for stage in [1, 2] {
        let (r0, r1) = (
            load(&dir, &format!("train-z{stage}-rank0")),
            load(&dir, &format!("train-z{stage}-rank1")),
        );
        for (name, w) in &r0 {
            assert!(
                w.equal(&r1[name]),
                "ZeRO-{stage} {name}: the two ranks hold different weights"
            );
        }
        assert_close(&r0, &one, &format!("ZeRO-{stage} on 2 ranks vs replicated in 1 process"));
    }
    // ZeRO-2: each rank holds four f32 values (master, m, v, gradient) per element of its
    // chunk of every weight, chunks of ceil(numel / 2): about half of what one process would
    // hold for those four, and no whole-size f32 buffer.
    let bytes = |n: &str| -> u64 {
        std::fs::read_to_string(dir.join(format!("{n}.state_bytes"))).unwrap().parse().unwrap()
    };
    let shard: u64 = start.values().map(|w| 16 * (w.numel() as u64).div_ceil(2)).sum();
    assert_eq!((bytes("train-z2-rank0"), bytes("train-z2-rank1")), (shard, shard));
    assert!(whole_bytes > 0, "the replicated optimiser reports its state");

    // A 2-rank ZeRO-2 checkpoint after 2 steps: one file per rank and an index.
    two_ranks_with(&dir, "save", &[("ICPO_DP_ZERO", "2")], || {});
    let ckpt = dir.join("ckpt-2ranks-z2").join("step_000002").join("optimizer");
    let index: icpo_train::ShardIndex =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("index.json")).unwrap()).unwrap();
    // 4 problems per step in mini-batches of 2: two updates per step.
    assert_eq!((index.world_size, index.updates), (2, 4));
    assert_eq!(
        index.files,
        ["shard-00000-of-00002.safetensors", "shard-00001-of-00002.safetensors"]
    );
    for (name, w) in &start {
        let parts = &index.ranges[name];
        let covered: i64 = parts.iter().map(|&(_, lo, hi)| hi - lo).sum();
        assert_eq!(covered, w.numel() as i64, "{name}: the shards cover the weight");
    }
    // Resumed in 1 process, replicated and sharded (world size 1).
    for stage in [0, 1] {
        let mut resumed = trainer(zero_config(&format!("icpo-zero-resumed{stage}"), stage), "e");
        resumed.resume(&dir.join("ckpt-2ranks-z2")).unwrap();
        assert_eq!(resumed.step(), (STEPS - 1) as u64);
        let name = format!("zero-resumed-1process-z{stage}");
        train_and_save(&mut resumed, &dir, &name, 1);
        assert_close(
            &load(&dir, &name),
            &one,
            &format!("ZeRO-2 checkpoint resumed in 1 process, stage {stage}"),
        );
    }
    // A 1-process replicated checkpoint resumed on 2 ZeRO-2 ranks.
    let mut first = trainer(run_config("icpo-zero-first"), "e");
    for _ in 0..STEPS - 1 {
        first.train_step().unwrap();
    }
    first.save_checkpoint(&dir.join("ckpt-1process")).unwrap();
    drop(first);
    two_ranks_with(&dir, "resume", &[("ICPO_DP_ZERO", "2")], || {});
    assert_close(
        &load(&dir, "resume-z2-rank0"),
        &one,
        "1-process checkpoint resumed on 2 ZeRO-2 ranks",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
