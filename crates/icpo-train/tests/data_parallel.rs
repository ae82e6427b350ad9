//! Data-parallel ICPO on the CPU development backend, launched as separate processes (this
//! test binary re-runs itself as the ranks, with torchrun's variables): 2 ranks reach the same
//! weights after 3 steps as 1 process on the same global batch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;

use std::collections::HashMap;
use std::path::Path;
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

/// Steps the trainer, then writes its weights and per-step metrics under `dir/name.*`.
fn train_and_save(t: &mut Trainer, dir: &Path, name: &str) {
    let mut metrics = Vec::new();
    for _ in 0..STEPS {
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
    let env = DistEnv::from_env().unwrap().unwrap();
    let mut t = trainer(run_config(&format!("icpo-dp-rank{}", env.rank)), "e");
    let group = StoreGroup::connect(&env, Duration::from_secs(120)).unwrap();
    t.set_process_group(Arc::new(group)).unwrap();
    train_and_save(&mut t, Path::new(&dir), &format!("rank{}", env.rank));
}

#[test]
fn two_ranks_train_like_one_process() {
    let dir = std::env::temp_dir().join(format!("icpo-dp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "rank_entry", "--ignored", "--nocapture", "--test-threads=1"])
                .env("ICPO_DP_DIR", &dir)
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
    // The same global batch in this process, while the ranks run.
    let mut single = trainer(run_config("icpo-dp-single"), "e");
    train_and_save(&mut single, &dir, "single");
    for (rank, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "rank {rank}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let (one, r0, r1) = (load(&dir, "single"), load(&dir, "rank0"), load(&dir, "rank1"));
    assert_eq!(one.len(), r0.len());
    let mut moved = 0.0f64;
    let start: HashMap<String, Tensor> =
        trainer(run_config("icpo-dp-start"), "e").policy().named_weights().into_iter().collect();
    for (name, w) in &one {
        let (a, b) = (&r0[name], &r1[name]);
        assert!(a.equal(b), "{name}: the two ranks hold different weights");
        let diff = (a - w).norm().double_value(&[]);
        let scale = w.norm().double_value(&[]).max(1e-12);
        assert!(diff / scale <= 1e-5, "{name}: relative difference {:.2e}", diff / scale);
        moved += (w - &start[name]).norm().double_value(&[]);
    }
    assert!(moved > 0.0, "the weights changed: the comparison is not vacuous");
    // The metrics rank 0 reports are the whole batch's.
    let metrics = |n: &str| -> Vec<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{n}.json"))).unwrap())
            .unwrap()
    };
    let (m1, m2) = (metrics("single"), metrics("rank0"));
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
    std::fs::remove_dir_all(&dir).unwrap();
}
