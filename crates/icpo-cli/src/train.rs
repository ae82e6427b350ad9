//! `icpo train`: a training run from a TOML config, as `icpo_math --config` runs it.

use std::path::{Path, PathBuf};

use anyhow::Result;
use icpo_train::{Metrics, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

/// The arguments of `icpo train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// The TOML training config (docs/guide.md; configs/ holds the paper's runs).
    #[arg(long)]
    pub config: PathBuf,
    /// Config overrides, `section.key=value` (repeatable), applied after the file.
    #[arg(long = "set")]
    pub overrides: Vec<String>,
    /// Continue a run from its output directory (its `latest` checkpoint) or from one
    /// checkpoint. Values that change the run's meaning must match the checkpoint's unless
    /// given again with --set.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start afresh in an output directory that holds a run, deleting it
    /// (trainer.overwrite = true).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// One line per step instead of a progress bar (logs, CI).
    #[arg(long)]
    pub plain: bool,
}

/// The one-line summary of a step's metrics shown beside the progress bar.
fn summary(m: &Metrics) -> String {
    let mut s =
        format!("reward {:.3}", m.get("reward/on_policy_mean").copied().unwrap_or(f64::NAN));
    if let Some(a) = m.get("ief/acceptance_rate") {
        s.push_str(&format!(" acc.IEF {a:.2}"));
    }
    if let Some(g) = m.get("shaping/gamma") {
        s.push_str(&format!(" γ {g:.2}"));
    }
    s
}

/// The evaluation results of a step, one line per benchmark.
fn eval_lines(step: u64, m: &Metrics) -> Vec<String> {
    m.iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("eval/")?.strip_suffix("/accuracy")?;
            Some(format!("step {step}: {name}: {:.1}%", 100.0 * v))
        })
        .collect()
}

/// Runs `icpo train`.
pub fn train(args: TrainArgs) -> Result<()> {
    let mut overrides = args.overrides.clone();
    if args.overwrite {
        overrides.push("trainer.overwrite=true".into());
    }
    run(&args.config, &overrides, args.resume.as_deref(), args.plain)
}

fn run(config: &Path, overrides: &[String], resume: Option<&Path>, plain: bool) -> Result<()> {
    let cfg = TrainConfig::load(Some(config), overrides)?;
    let total = cfg.trainer.total_steps;
    let mut trainer = Trainer::from_config(cfg)?;
    // Under torchrun, rank 0 speaks for the job.
    let main = trainer.is_main();
    let say = |line: &str| {
        if main {
            eprintln!("{line}");
        }
    };
    let world = trainer.process_group().world_size();
    if world > 1 {
        say(&format!("data parallel over {world} ranks"));
    }
    say(&format!(
        "{} training problems ({} skipped without an answer, {} longer than data.max_prompt_tokens)",
        trainer.num_problems(),
        trainer.skipped_without_answer,
        trainer.dropped_overlong
    ));
    if let Some(ev) = trainer.evaluation() {
        say(&format!("evaluating on {} every trainer.eval_every steps", ev.names().join(", ")));
    }
    if let Some(r) = resume {
        // Only what the user set on the command line may change the run's meaning.
        for change in trainer.resume_with(r, overrides)? {
            say(&format!("resume: accepted config change {change}"));
        }
        say(&format!("resumed at step {}", trainer.step()));
    }
    let bar = if plain || !main { ProgressBar::hidden() } else { ProgressBar::new(total) };
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {elapsed} <{eta} {msg}")
    {
        bar.set_style(style);
    }
    bar.set_position(trainer.step());
    trainer.fit(|t, m| {
        bar.set_position(t.step());
        bar.set_message(summary(m));
        if plain {
            say(&format!("step {}/{total}: {}", t.step(), summary(m)));
        }
        for line in eval_lines(t.step(), m) {
            bar.println(&line);
            if plain {
                say(&line);
            }
        }
        Ok(())
    })?;
    bar.finish();
    say(&format!(
        "done: step {} of {total}; metrics and checkpoints in {}",
        trainer.step(),
        trainer.output_dir().display()
    ));
    Ok(())
}
