//! Evaluation with the protocol of *Think Outside the Policy* (arXiv 2510.26519) §7 / LUFFY:
//! temperature 0.6, top-p 0.95, avg@32 on AIME and AMC, pass@1 otherwise.
//!
//! `cargo run --release --example eval_math -- --model DIR [--benchmark FILE ...] [--limit N]`
//! (default: the six sets in ../shared/data/eval). Prints a table per benchmark and the average;
//! writes every response with its verdict to eval_responses.jsonl. Same code as `icpo eval`.

#![allow(missing_docs)] // an example, not an API

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use icpo::policy::{CausalLm, DeviceOpt, LoadOptions, Tokenizer};
use icpo::rollout::{PromptBuilder, SamplingParams};
use icpo::train::{evaluate, load_problems, protocol_samples, write_responses, EvalConfig};
use icpo::verify::MathReward;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long = "benchmark")]
    benchmarks: Vec<PathBuf>,
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 8192)]
    max_new_tokens: usize,
    #[arg(long)]
    cuda: bool,
    #[arg(long, default_value = "eval_responses")]
    out_prefix: String,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let benches = if a.benchmarks.is_empty() {
        ["math500", "aime24", "aime25", "amc", "minerva", "olympiadbench"]
            .iter()
            .map(|n| PathBuf::from(format!("../shared/data/eval/{n}.jsonl")))
            .collect()
    } else {
        a.benchmarks.clone()
    };
    let device = if a.cuda { DeviceOpt::Cuda(0) } else { DeviceOpt::Cpu };
    let model = CausalLm::load(&a.model, LoadOptions { device, ..Default::default() })?;
    let tok = Tokenizer::from_dir(&a.model)?;
    let builder = PromptBuilder::new(&tok);
    let mut accs = Vec::new();
    println!("| benchmark | problems | metric | accuracy |\n|---|---|---|---|");
    for b in &benches {
        let (mut problems, _) = load_problems(b)?;
        if let Some(n) = a.limit {
            problems.truncate(n);
        }
        let name = b.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let k = protocol_samples(&name);
        let cfg = EvalConfig {
            sampling: SamplingParams {
                temperature: 0.6,
                top_p: 0.95,
                max_new_tokens: a.max_new_tokens,
                ..Default::default()
            },
            samples: k,
            ..Default::default()
        };
        let r = evaluate(
            &model,
            &tok,
            &builder,
            &problems,
            &MathReward::default(),
            tok.eos_token_ids(),
            &cfg,
        )?;
        write_responses(&PathBuf::from(format!("{}_{name}.jsonl", a.out_prefix)), &name, &r)?;
        let metric = if k > 1 { format!("avg@{k}") } else { "pass@1".into() };
        println!("| {name} | {} | {metric} | {:.1}% |", r.problems, 100.0 * r.accuracy);
        accs.push(r.accuracy);
    }
    println!(
        "| average | | | {:.1}% |",
        100.0 * accs.iter().sum::<f64>() / accs.len().max(1) as f64
    );
    Ok(())
}
