//! `icpo`: the command-line entry point of icpo-rs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use icpo_policy::{CausalLm, DType, DeviceOpt, LoadOptions};
use tch::{Kind, Tensor};

mod train;

#[derive(Parser)]
#[command(name = "icpo", version, about = "ICPO / GRPO for language models, on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes the logits of one token sequence as f32 tensor `logits` [T, V] in a safetensors file.
    Logits {
        /// Checkpoint directory (config.json + safetensors).
        #[arg(long)]
        model: PathBuf,
        /// Comma-separated token ids, e.g. 3,17,5.
        #[arg(long)]
        ids: String,
        /// Output .safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Device: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Weight dtype: float32, bfloat16 or float16.
        #[arg(long, default_value = "float32")]
        dtype: String,
    },
    /// Evaluates a checkpoint on benchmarks (JSONL `problem`, `answer`) with ICPO.md §7's
    /// protocol; prints a table and writes every response with its verdict.
    Eval {
        /// Checkpoint directory.
        #[arg(long)]
        model: PathBuf,
        /// Benchmark files (e.g. ../shared/data/eval/math500.jsonl); repeatable.
        #[arg(long = "benchmark", required = true)]
        benchmarks: Vec<PathBuf>,
        /// Responses JSONL to write.
        #[arg(long, default_value = "eval_responses.jsonl")]
        out: PathBuf,
        /// Samples per problem (default: 32 for AIME/AMC, 1 otherwise).
        #[arg(long)]
        samples: Option<usize>,
        /// Sampling temperature.
        #[arg(long, default_value_t = 0.6)]
        temperature: f64,
        /// Nucleus threshold.
        #[arg(long, default_value_t = 0.95)]
        top_p: f64,
        /// Longest response.
        #[arg(long, default_value_t = 8192)]
        max_new_tokens: usize,
        /// Only the first N problems of each benchmark.
        #[arg(long)]
        limit: Option<usize>,
        /// Device: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Weight dtype: float32, bfloat16 or float16.
        #[arg(long, default_value = "float32")]
        dtype: String,
        /// Seed of the sampling.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Checks answers: reads JSONL lines {"gold": ..., "pred": ...} and prints one
    /// {"correct": true|false} line per non-blank input line, in order.
    Verify {
        /// Input JSONL file (`-` for standard input).
        #[arg(long)]
        input: PathBuf,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Print {"correct": false, "error": ...} for malformed lines instead of stopping.
        #[arg(long)]
        skip_bad: bool,
        /// Also print the extracted answers, the gold answer's family and the rule that
        /// decided: {"correct", "gold_answer", "pred_answer", "family", "rule", "reason"}.
        #[arg(long)]
        explain: bool,
    },
    /// Trains a policy from a TOML config (ICPO, or GRPO with `algorithm.ief = false`):
    /// checkpoints, metrics.jsonl and periodic evaluation in `trainer.output_dir`.
    Train(train::TrainArgs),
}

fn parse_device(s: &str) -> Result<DeviceOpt> {
    s.parse().map_err(|e| anyhow::anyhow!("--device: {e}"))
}

fn parse_ids(s: &str) -> Result<Vec<i64>> {
    let ids = s
        .split(',')
        .enumerate()
        .map(|(i, t)| {
            t.trim()
                .parse::<i64>()
                .with_context(|| format!("--ids: item {} `{t}` is not an integer", i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        bail!("--ids: no ids given");
    }
    Ok(ids)
}

fn logits(model: PathBuf, ids: &str, out: PathBuf, device: &str, dtype: &str) -> Result<()> {
    let ids = parse_ids(ids)?;
    let options = LoadOptions {
        device: parse_device(device)?,
        dtype: DType::from_hf_name(dtype).map_err(|e| anyhow::anyhow!("--dtype: {e}"))?,
        compute_dtype: None,
    };
    let lm = CausalLm::load(&model, options)?;
    let input = Tensor::from_slice(&ids).unsqueeze(0);
    let logits = tch::no_grad(|| lm.forward(&input, None))?;
    let logits = logits.f_squeeze_dim(0)?.f_to_kind(Kind::Float)?.f_to_device(tch::Device::Cpu)?;
    let tmp = out.with_extension("safetensors.tmp");
    Tensor::write_safetensors(&[("logits", &logits)], &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn verify(input: PathBuf, threads: Option<usize>, skip_bad: bool, explain: bool) -> Result<()> {
    use std::io::Write;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let max_threads = 4 * cores;
    if let Some(n) = threads {
        if n == 0 || n > max_threads {
            bail!("--threads: {n} is out of range: use 1 to {max_threads} (4 × the {cores} cores here), or leave it out for one per core");
        }
    }
    // Parse every line first: a malformed line stops the run before anything is printed.
    // The one JSONL reader: BOM and blank lines ignored, lines numbered as in the file.
    let rows = icpo_policy::read_jsonl(&input)?;
    let mut pairs: Vec<std::result::Result<(String, String), String>> = Vec::new();
    for row in rows {
        let parsed = row.value.and_then(|v| {
            let field = |k: &str| match &v[k] {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Number(n) => Ok(n.to_string()),
                serde_json::Value::Null => Err(format!("missing field `{k}`")),
                other => Err(format!("field `{k}` must be a string, got {other}")),
            };
            Ok((field("gold")?, field("pred")?))
        });
        match parsed {
            Err(e) if !skip_bad => {
                bail!("{}:{}: {e} (--skip-bad to go on)", input.display(), row.line)
            }
            Err(e) => pairs.push(Err(format!("line {}: {e}", row.line))),
            Ok(p) => pairs.push(Ok(p)),
        }
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads.unwrap_or(0)).build()?;
    let config = icpo_verify::VerifyConfig::default();
    let verdicts: Vec<Option<icpo_verify::Verdict>> = pool.install(|| {
        use rayon::prelude::*;
        pairs
            .par_iter()
            .map(|p| p.as_ref().ok().map(|(g, r)| icpo_verify::verify_detailed(g, r, &config)))
            .collect()
    });
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (p, v) in pairs.iter().zip(&verdicts) {
        let line = match (p, v) {
            (Ok(_), Some(v)) if explain => serde_json::to_value(v)?,
            (Ok(_), Some(v)) => serde_json::json!({ "correct": v.correct }),
            (Err(e), _) => serde_json::json!({ "correct": false, "error": e }),
            (Ok(_), None) => serde_json::json!({ "correct": false }),
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn eval(
    model: PathBuf,
    benchmarks: Vec<PathBuf>,
    out: PathBuf,
    samples: Option<usize>,
    sampling: icpo_rollout::SamplingParams,
    limit: Option<usize>,
    options: LoadOptions,
    seed: u64,
) -> Result<()> {
    // Everything that can be checked is checked before the first generation: every benchmark
    // file, the output's folder, the model and its weights.
    let mut suites = Vec::new();
    for b in &benchmarks {
        let (mut problems, _) = icpo_train::load_problems(b)?;
        if let Some(n) = limit {
            problems.truncate(n);
        }
        let name = b.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        suites.push((name, problems));
    }
    let probe = out.with_extension("probe.tmp");
    std::fs::write(&probe, b"")
        .with_context(|| format!("--out {}: cannot write there", out.display()))?;
    let _ = std::fs::remove_file(&probe);
    let lm = CausalLm::load(&model, options)?;
    lm.check_finite().with_context(|| format!("--model {}", model.display()))?;
    let tok = icpo_policy::Tokenizer::from_dir(&model)?;
    let builder = icpo_rollout::PromptBuilder::new(&tok);
    let reward = icpo_verify::MathReward::default();
    let mut rows = Vec::new();
    let mut all = String::new();
    for (name, problems) in &suites {
        let k = samples.unwrap_or_else(|| icpo_train::protocol_samples(name));
        let cfg = icpo_train::EvalConfig {
            sampling: sampling.clone(),
            samples: k,
            seed,
            ..Default::default()
        };
        let r = icpo_train::evaluate(
            &lm,
            &tok,
            &builder,
            problems,
            &reward,
            tok.eos_token_ids(),
            &cfg,
        )?;
        let tmp = out.with_extension(format!("{name}.part"));
        icpo_train::write_responses(&tmp, name, &r)?;
        all.push_str(&std::fs::read_to_string(&tmp)?);
        std::fs::remove_file(&tmp)?;
        // Each benchmark's responses are on disk as soon as it completes.
        icpo_policy::write_atomic(&out, all.as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!(
            "{name}: {:.1}% ({} problems) written to {}",
            100.0 * r.accuracy,
            r.problems,
            out.display()
        );
        rows.push((name.clone(), k, r.problems, r.accuracy));
    }
    println!("| benchmark | problems | samples | accuracy |\n|---|---|---|---|");
    for (name, k, n, acc) in &rows {
        let metric = if *k > 1 { format!("avg@{k}") } else { "pass@1".into() };
        println!("| {name} | {n} | {metric} | {:.1}% |", 100.0 * acc);
    }
    let avg = rows.iter().map(|r| r.3).sum::<f64>() / rows.len().max(1) as f64;
    println!("| average | | | {:.1}% |", 100.0 * avg);
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Logits { model, ids, out, device, dtype } => {
            logits(model, &ids, out, &device, &dtype)
        }
        Command::Verify { input, threads, skip_bad, explain } => {
            verify(input, threads, skip_bad, explain)
        }
        Command::Train(args) => train::train(args),
        Command::Eval {
            model,
            benchmarks,
            out,
            samples,
            temperature,
            top_p,
            max_new_tokens,
            limit,
            device,
            dtype,
            seed,
        } => {
            let sampling = icpo_rollout::SamplingParams {
                temperature,
                top_p,
                max_new_tokens,
                ..Default::default()
            };
            let options = LoadOptions {
                device: parse_device(&device)?,
                dtype: DType::from_hf_name(&dtype).map_err(|e| anyhow::anyhow!("--dtype: {e}"))?,
                compute_dtype: None,
            };
            eval(model, benchmarks, out, samples, sampling, limit, options, seed)
        }
    }
}
