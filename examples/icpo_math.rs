//! ICPO on maths: *Think Outside the Policy: In-Context Steered Policy Optimization*
//! (Huang, Tang, Liu, Bai, Yang, Wu; arXiv 2510.26519), on icpo-rs.
//!
//! `cargo run --release --example icpo_math` runs the embedded default on a laptop CPU: a tiny
//! Qwen3-architecture policy and a synthetic task made in code (examples/common), a supervised
//! warm start, then GRPO and ICPO from the same start with the same seeds, evaluated on held-out
//! problems. Outputs in runs/icpo_math: metrics JSONL per method, icpo_math.png, table.md.
//!
//! `cargo run --release --example icpo_math -- --config configs/qwen3-1.7b-icpo.toml
//! [--set section.key=value ...]` runs a real setup from a config (docs/guide.md).

#![allow(missing_docs)] // an example, not an API

pub mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use icpo::train::{TrainConfig, Trainer};

#[derive(Parser)]
#[command(about = "ICPO on maths: the embedded CPU default, or a real run from --config")]
pub struct Args {
    /// A TOML training config; without it the embedded default runs.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Config overrides, `section.key=value` (repeatable).
    #[arg(long = "set")]
    pub overrides: Vec<String>,
    /// Continue a run from its output directory or a checkpoint. Config values that change
    /// the run's meaning must match the checkpoint's unless given again with --set.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start afresh in an output directory that holds a run, deleting it
    /// (trainer.overwrite = true).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Output directory of the embedded default.
    #[arg(long, default_value = "runs/icpo_math")]
    pub out: PathBuf,
    /// Seed of the embedded default.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

impl Args {
    /// The `--set` overrides, with `--overwrite` as `trainer.overwrite=true`.
    pub fn overrides(&self) -> Vec<String> {
        let mut o = self.overrides.clone();
        if self.overwrite {
            o.push("trainer.overwrite=true".into());
        }
        o
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    match &args.config {
        Some(path) => real_run(path, &args.overrides(), args.resume.as_deref(), true),
        None => {
            let t = Instant::now();
            let mut s = common::Settings::default_run(args.out.clone());
            s.seed = args.seed;
            let report = common::run(&s)?;
            println!("\n{}", report.table);
            println!(
                "plot: {}   metrics: {}/{{grpo,icpo}}/metrics.jsonl",
                report.plot.display(),
                args.out.display()
            );
            println!("total time {:.0} s", t.elapsed().as_secs_f64());
            Ok(())
        }
    }
}

/// A run from a config: [`Trainer::from_config`] loads the policy, reference, data, demo pool
/// and benchmarks it names; `fit` evaluates on `data.eval_paths` every `trainer.eval_every`
/// steps and writes checkpoints and metrics to `trainer.output_dir` (as `icpo train` does).
pub fn real_run(
    path: &std::path::Path,
    overrides: &[String],
    resume: Option<&std::path::Path>,
    ief_default: bool,
) -> Result<()> {
    let mut overrides = overrides.to_vec();
    if !ief_default {
        overrides.insert(0, "algorithm.ief=false".into());
    }
    let cfg = TrainConfig::load(Some(path), &overrides)?;
    let total = cfg.trainer.total_steps;
    let mut trainer = Trainer::from_config(cfg)?;
    println!(
        "{} training problems ({} skipped without an answer, {} longer than data.max_prompt_tokens)",
        trainer.num_problems(),
        trainer.skipped_without_answer,
        trainer.dropped_overlong
    );
    if let Some(r) = resume {
        // Only what the user set on the command line may change the run's meaning.
        for change in trainer.resume_with(r, &overrides)? {
            println!("resume: accepted config change {change}");
        }
        println!("resumed at step {}", trainer.step());
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_position(trainer.step());
    trainer.fit(|t, m| {
        pb.set_position(t.step());
        pb.set_message(format!(
            "reward {:.3} acc.IEF {:.2} γ {:.2}",
            m["reward/on_policy_mean"],
            m.get("ief/acceptance_rate").copied().unwrap_or(0.0),
            m.get("shaping/gamma").copied().unwrap_or(0.0)
        ));
        for (k, v) in m {
            if let Some(name) = k.strip_prefix("eval/").and_then(|k| k.strip_suffix("/accuracy")) {
                pb.println(format!("step {}: {name}: {:.1}%", t.step(), 100.0 * v));
            }
        }
        Ok(())
    })?;
    pb.finish();
    Ok(())
}
