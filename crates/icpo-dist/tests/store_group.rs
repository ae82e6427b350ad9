//! The CPU development backend across real processes: this test binary re-runs itself as the
//! ranks (as torchrun would start them, with its variables), and checks what each printed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use icpo_dist::{DistEnv, ProcessGroup, StoreGroup};
use tch::Tensor;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `world` copies of this binary running `scenario` as ranks 0..world.
fn launch(scenario: &str, world: usize, extra_env: &[(&str, &str)]) -> Vec<Output> {
    let port = free_port().to_string();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.args(["--exact", "rank_entry", "--ignored", "--nocapture", "--test-threads=1"])
                .env("ICPO_DIST_SCENARIO", scenario)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port);
            for (k, v) in extra_env {
                c.env(k, v);
            }
            c.spawn_and_wait()
        })
        .collect();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

trait SpawnPiped {
    fn spawn_and_wait(&mut self) -> std::process::Child;
}

impl SpawnPiped for Command {
    fn spawn_and_wait(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The body of one rank (run only as a child of the tests below).
#[test]
#[ignore = "a rank of the multi-process tests, started by them"]
fn rank_entry() {
    let Ok(scenario) = std::env::var("ICPO_DIST_SCENARIO") else { return };
    let env = DistEnv::from_env().unwrap().expect("launched with WORLD_SIZE");
    let timeout = Duration::from_secs_f64(
        std::env::var("ICPO_DIST_TIMEOUT").map_or(60.0, |s| s.parse().unwrap()),
    );
    let result = (|| -> icpo_dist::Result<()> {
        let g = StoreGroup::connect(&env, timeout)?;
        match scenario.as_str() {
            "collectives" => {
                let r = g.rank() as f64;
                // Each rank holds (r + 1) · [1, 2, 3] and [[r]]: the sums are known in closed form.
                let mut ts = vec![
                    Tensor::from_slice(&[1.0f32, 2.0, 3.0]) * (r + 1.0),
                    Tensor::from_slice(&[r]).view([1, 1]),
                ];
                g.all_reduce_sum("gradients", &mut ts)?;
                println!("sum0 {:?}", Vec::<f32>::try_from(&ts[0]).unwrap());
                println!("sum1 {:?}", Vec::<f64>::try_from(&ts[1].view([-1])).unwrap());
                let all = g.all_gather_bytes("names", format!("rank{}", g.rank()).as_bytes())?;
                println!(
                    "gather {:?}",
                    all.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>()
                );
                // Reduce-scatter: rank r holds (r + 1) · [0, 1, ..., 3w − 1]; the sum is
                // Σ(r + 1) · i and rank r receives elements [3r, 3r + 3).
                let w = env.world_size as i64;
                let input = Tensor::arange(3 * w, (tch::Kind::Float, tch::Device::Cpu)) * (r + 1.0);
                let mut out = Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu));
                g.reduce_scatter_sum("gradient shards", &input, &mut out)?;
                println!("reduce_scatter {:?}", Vec::<f32>::try_from(&out).unwrap());
                // All-gather in bf16, exact: rank r's [r, r + 0.5], side by side.
                let mine =
                    Tensor::from_slice(&[r as f32, r as f32 + 0.5]).to_kind(tch::Kind::BFloat16);
                let mut all = Tensor::zeros([2 * w], (tch::Kind::BFloat16, tch::Device::Cpu));
                g.all_gather_into("weights", &mine, &mut all)?;
                println!(
                    "all_gather {:?}",
                    Vec::<f32>::try_from(&all.to_kind(tch::Kind::Float)).unwrap()
                );
                // All-to-all: rank r sends "r->d" to rank d.
                let parts: Vec<Vec<u8>> = (0..env.world_size)
                    .map(|d| format!("{}->{d}", g.rank()).into_bytes())
                    .collect();
                let got = g.all_to_all_bytes("pairs", &parts)?;
                println!(
                    "all_to_all {:?}",
                    got.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>()
                );
                let b =
                    g.broadcast_bytes("config", if g.rank() == 1 { b"from one" } else { b"" }, 1)?;
                println!("broadcast {}", String::from_utf8_lossy(&b));
                // Many small collectives: keys are cleaned up as they go and nothing mixes.
                for i in 0..50 {
                    let mut v = [i as f64, r];
                    g.all_reduce_f64("counts", &mut v)?;
                    assert_eq!(
                        v,
                        [
                            i as f64 * env.world_size as f64,
                            1.0 + if env.world_size == 3 { 2.0 } else { 0.0 }
                        ]
                    );
                }
                // A part larger than one store value (the libuv backend takes 8 MiB at most).
                let big: Vec<u8> =
                    (0..9_000_000u32).map(|i| (i % 251) as u8 ^ g.rank() as u8).collect();
                let all = g.all_gather_bytes("a large part", &big)?;
                for (r, part) in all.iter().enumerate() {
                    assert!(
                        part.len() == big.len()
                            && part
                                .iter()
                                .enumerate()
                                .all(|(i, &b)| b == (i as u32 % 251) as u8 ^ r as u8)
                    );
                }
                g.barrier("end")?;
                println!("ok");
            }
            "mismatch" => {
                let version = if g.rank() == 1 { "config 2" } else { "config 1" };
                g.check_same("the config", version)?;
                println!("no mismatch seen");
            }
            "dies" => {
                if g.rank() == 1 {
                    // Gone without a word, as a killed process.
                    std::process::exit(0);
                }
                let mut v = [1.0];
                g.all_reduce_f64("gradients of step 3", &mut v)?;
            }
            other => panic!("unknown scenario {other}"),
        }
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("rank {} error: {e}", env.rank);
        std::process::exit(3);
    }
}

#[test]
fn collectives_agree_across_processes() {
    for world in [2, 3] {
        let outs = launch("collectives", world, &[]);
        for (rank, o) in outs.iter().enumerate() {
            let t = text(o);
            assert!(o.status.success(), "rank {rank} of {world}: {t}");
            // Σ_r (r + 1) = 3 for 2 ranks, 6 for 3; Σ_r r = 1 or 3.
            let k = (world * (world + 1) / 2) as f32;
            assert!(t.contains(&format!("sum0 {:?}", [k, 2.0 * k, 3.0 * k])), "{t}");
            assert!(t.contains(&format!("sum1 {:?}", [(world * (world - 1) / 2) as f64])), "{t}");
            let names: Vec<String> = (0..world).map(|r| format!("rank{r}")).collect();
            assert!(t.contains(&format!("gather {names:?}")), "{t}");
            assert!(t.contains("broadcast from one") && t.contains("ok"), "{t}");
            let mine: Vec<f32> = (0..3).map(|j| k * (3 * rank + j) as f32).collect();
            assert!(t.contains(&format!("reduce_scatter {mine:?}")), "{t}");
            let halves: Vec<f32> = (0..world).flat_map(|q| [q as f32, q as f32 + 0.5]).collect();
            assert!(t.contains(&format!("all_gather {halves:?}")), "{t}");
            let pairs: Vec<String> = (0..world).map(|q| format!("{q}->{rank}")).collect();
            assert!(t.contains(&format!("all_to_all {pairs:?}")), "{t}");
        }
    }
}

#[test]
fn a_config_mismatch_is_found_at_start_naming_the_rank() {
    let outs = launch("mismatch", 2, &[]);
    let t0 = text(&outs[0]);
    assert_eq!(outs[0].status.code(), Some(3), "{t0}");
    assert!(t0.contains("rank 1 differs from rank 0 in the config: config 2 vs config 1"), "{t0}");
    assert_eq!(outs[1].status.code(), Some(3), "{}", text(&outs[1]));
}

#[test]
fn a_dead_rank_is_named_within_the_timeout() {
    let start = Instant::now();
    let outs = launch("dies", 2, &[("ICPO_DIST_TIMEOUT", "3")]);
    let elapsed = start.elapsed();
    let t0 = text(&outs[0]);
    assert_eq!(outs[0].status.code(), Some(3), "{t0}");
    assert!(
        t0.contains("rank 1 did not reach `gradients of step 3"),
        "the survivor names the missing rank and the collective: {t0}"
    );
    assert!(elapsed < Duration::from_secs(30), "no hang: {elapsed:?}");
}

/// The NCCL backend is compiled and linked in (the CUDA/NCCL headers come with
/// scripts/setup-libtorch), and without a GPU it refuses with a clear error instead of
/// crashing. A 2-GPU equality run is in scripts/gpu-check.
#[test]
fn nccl_backend_is_built_and_fails_clearly_without_gpus() {
    assert!(icpo_dist::NcclGroup::available(), "built without NCCL: run scripts/setup-libtorch");
    if tch::Cuda::is_available() {
        return;
    }
    let env = DistEnv {
        rank: 0,
        local_rank: 0,
        world_size: 1,
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
        agent_store: false,
        restart: 0,
    };
    match icpo_dist::NcclGroup::connect(&env, Duration::from_secs(20)) {
        Err(e) => {
            let msg = e.to_string().to_lowercase();
            assert!(msg.contains("gpu") || msg.contains("cuda") || msg.contains("nccl"), "{e}");
        }
        Ok(g) => {
            // Constructed lazily: CPU tensors still reduce (through the store).
            let mut t = vec![Tensor::from_slice(&[1.0f32, 2.0])];
            g.all_reduce_sum("a CPU tensor", &mut t).unwrap();
            assert_eq!(Vec::<f32>::try_from(&t[0]).unwrap(), [1.0, 2.0]);
        }
    }
}
