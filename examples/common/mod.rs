//! The embedded default of `icpo_math` / `grpo_math`: warm start, GRPO and ICPO from the same
//! start with the same seeds, held-out evaluation, metrics, a plot and a table.

#![allow(dead_code)] // each example uses part of it

pub mod plot;
pub mod task;

use std::path::PathBuf;

use anyhow::Result;
use icpo::policy::{CausalLm, LoadOptions, Tokenizer};
use icpo::rollout::{DemoPool, PromptBuilder, SamplingParams};
use icpo::train::{
    evaluate, supervised_step, AdamW, EvalConfig, Metrics, OptimSection, Scorer, TrainConfig,
    Trainer,
};
use icpo::verify::MathReward;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Sizes of the default run (and of the reduced one the test runs).
#[derive(Debug, Clone)]
pub struct Settings {
    pub out_dir: PathBuf,
    pub seed: u64,
    pub sft_steps: usize,
    pub sft_batch: usize,
    pub rl_steps: u64,
    pub batch_prompts: usize,
    pub group_size: usize,
    pub eval_every: u64,
    pub methods: Vec<&'static str>,
    pub quiet: bool,
}

impl Settings {
    pub fn default_run(out_dir: PathBuf) -> Self {
        Settings {
            out_dir,
            seed: 7,
            sft_steps: 500,
            sft_batch: 32,
            rl_steps: 40,
            batch_prompts: 16,
            group_size: 8,
            eval_every: 5,
            methods: vec!["GRPO", "ICPO"],
            quiet: false,
        }
    }
}

/// Held-out accuracy, overall and on the `#` problems only.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Accuracy {
    pub all: f64,
    pub hash: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MethodResult {
    pub name: String,
    pub before: Accuracy,
    pub after: Accuracy,
    pub curve: Vec<(u64, f64)>,
    pub metrics: Vec<Metrics>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    /// IEF vs plain success of the warm start on the same held-out `#` prompts.
    pub warm_ief_success: f64,
    pub warm_plain_success: f64,
    pub methods: Vec<MethodResult>,
    pub plot: PathBuf,
    pub table: String,
}

fn bar(len: u64, msg: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} {elapsed} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(msg.to_string());
    pb
}

fn builder(tok: &Tokenizer) -> PromptBuilder<'_> {
    let mut b = PromptBuilder::new(tok);
    b.instruction = String::new();
    b.max_prompt_tokens = 1000;
    b
}

fn greedy_eval(policy: &CausalLm, tok: &Tokenizer, items: &[task::Item]) -> Result<Accuracy> {
    let cfg = EvalConfig { sampling: SamplingParams::greedy(16), samples: 1, ..Default::default() };
    let b = builder(tok);
    let reward = MathReward::default();
    let all =
        evaluate(policy, tok, &b, &task::problems(items), &reward, tok.eos_token_ids(), &cfg)?;
    let hash: Vec<task::Item> = items.iter().filter(|i| i.op == '#').cloned().collect();
    let h = evaluate(policy, tok, &b, &task::problems(&hash), &reward, tok.eos_token_ids(), &cfg)?;
    Ok(Accuracy { all: all.accuracy, hash: h.accuracy })
}

/// Success of sampled answers to the held-out `#` problems with and without demonstrations.
fn ief_vs_plain(
    policy: &CausalLm,
    tok: &Tokenizer,
    items: &[task::Item],
    hash_pool: &DemoPool,
    seed: u64,
) -> Result<(f64, f64)> {
    use icpo::rollout::{generate, EngineConfig, Request};
    use icpo::verify::Reward;
    let hash: Vec<&task::Item> = items.iter().filter(|i| i.op == '#').collect();
    let b = builder(tok);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let plain: Vec<Vec<i64>> =
        hash.iter().map(|i| b.plain(&i.problem)).collect::<std::result::Result<_, _>>()?;
    let ief: Vec<Vec<i64>> = hash
        .iter()
        .map(|i| b.in_context(&i.problem, &hash_pool.draw(2, &i.problem, &mut rng)?))
        .collect::<std::result::Result<_, _>>()?;
    let params = SamplingParams { temperature: 1.0, max_new_tokens: 16, ..Default::default() };
    let reward = MathReward::default();
    let rate = |prompts: &[Vec<i64>]| -> Result<f64> {
        let out = generate(
            policy,
            &Request {
                prompts,
                n: 4,
                params: &params,
                eos_token_ids: tok.eos_token_ids(),
                seed,
                first_prompt: 0,
            },
            None,
            &EngineConfig::default(),
        )?;
        let texts: Vec<String> = out
            .iter()
            .map(|r| tok.decode(&r.tokens, true))
            .collect::<std::result::Result<_, _>>()?;
        let pairs: Vec<(&str, &str)> = out
            .iter()
            .zip(&texts)
            .map(|(r, t)| (hash[r.prompt_index].answer.as_str(), t.as_str()))
            .collect();
        let s = reward.score_batch(&pairs);
        Ok(s.iter().sum::<f64>() / s.len().max(1) as f64)
    };
    Ok((rate(&ief)?, rate(&plain)?))
}

/// The whole demo. Deterministic for a given seed.
pub fn run(s: &Settings) -> Result<Report> {
    tch::set_num_threads(2);
    std::fs::create_dir_all(&s.out_dir)?;
    // Phase 1: task, tokenizer and a fresh tiny policy.
    let (train, test) = task::split(s.seed);
    let init_dir = s.out_dir.join("init");
    let policy = task::new_policy(&init_dir, s.seed as i64)?;
    let tok = Tokenizer::from_dir(&init_dir)?;
    let pool = DemoPool::new(task::demos(&train));
    let hash_train: Vec<&task::Item> = train.iter().filter(|i| i.op == '#').collect();
    let hash_pool =
        DemoPool::new(task::demos(&hash_train.iter().map(|i| (*i).clone()).collect::<Vec<_>>()));

    // Phase 2: supervised warm start: `+`/`-` plain, `#` only with worked examples in context.
    let b = builder(&tok);
    let mut optim = AdamW::new();
    let ocfg = OptimSection { weight_decay: 0.0, grad_clip: 1.0, ..Default::default() };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s.seed);
    let pb = bar(s.sft_steps as u64, "warm start", s.quiet);
    let eos = tok.eos_token_ids()[0];
    for step in 0..s.sft_steps {
        let mut prompts = Vec::with_capacity(s.sft_batch);
        let mut responses = Vec::with_capacity(s.sft_batch);
        for _ in 0..s.sft_batch {
            let it = train.choose(&mut rng).ok_or_else(|| anyhow::anyhow!("empty task"))?;
            let prompt = if it.op == '#' {
                b.in_context(&it.problem, &hash_pool.draw(2, &it.problem, &mut rng)?)?
            } else if step % 4 == 0 {
                b.in_context(&it.problem, &pool.draw(2, &it.problem, &mut rng)?)?
            } else {
                b.plain(&it.problem)?
            };
            let mut r = tok.encode(&it.solution, false)?;
            r.push(eos);
            prompts.push(prompt);
            responses.push(r);
        }
        let lr = 3e-3 * (1.0 - step as f64 / s.sft_steps as f64).max(0.1);
        let loss = supervised_step(&policy, &mut optim, &ocfg, lr, &prompts, &responses)?;
        pb.inc(1);
        if step % 20 == 0 {
            pb.set_message(format!("loss {loss:.3}"));
        }
    }
    pb.finish();
    let warm_dir = s.out_dir.join("warm_start");
    policy.save_pretrained(&warm_dir)?;
    task::write_tokenizer(&warm_dir)?;
    let (warm_ief, warm_plain) = ief_vs_plain(&policy, &tok, &test, &hash_pool, s.seed)?;
    if !s.quiet {
        println!("warm start, held-out `#` problems: success {:.1}% with demonstrations in context (IEF) vs {:.1}% without", 100.0 * warm_ief, 100.0 * warm_plain);
    }
    let before = greedy_eval(&policy, &tok, &test)?;
    drop(policy);

    // Phase 3: GRPO and ICPO from the same start, same seeds.
    let mut methods = Vec::new();
    for &name in &s.methods {
        let out = s.out_dir.join(name.to_lowercase());
        let _ = std::fs::remove_dir_all(&out);
        let overrides = vec![
            format!("model.path=\"{}\"", warm_dir.display()),
            "data.train_path=\"(synthetic)\"".into(),
            "data.instruction=\"\"".into(),
            "data.max_prompt_tokens=1000".into(),
            // The synthetic solutions are shorter than the authors' pool filter keeps.
            "data.demo_min_solution_chars=0".into(),
            format!("algorithm.ief={}", name != "GRPO"),
            "rollout.demos=2".into(),
            format!("rollout.group_size={}", s.group_size),
            "rollout.max_new_tokens=16".into(),
            format!("trainer.batch_prompts={}", s.batch_prompts),
            format!("trainer.total_steps={}", s.rl_steps),
            "trainer.save_every=0".into(),
            format!("trainer.seed={}", s.seed),
            format!("trainer.output_dir=\"{}\"", out.display()),
            "optim.lr=0.0002".into(),
            "optim.weight_decay=0.0".into(),
            format!("optim.mini_batch_prompts={}", s.batch_prompts),
            "optim.micro_batch_size=64".into(),
            "loss.kl_coef=0.0".into(),
        ];
        let cfg = TrainConfig::load(None, &overrides)?;
        let policy = CausalLm::load(&warm_dir, LoadOptions::default())?;
        let problems = task::problems(&train);
        let demos = (name != "GRPO").then(|| hash_pool.clone());
        let mut trainer = Trainer::new(
            cfg,
            policy,
            None,
            Tokenizer::from_dir(&warm_dir)?,
            problems,
            demos,
            Scorer::Text(Box::new(MathReward::default())),
        )?;
        let pb = bar(s.rl_steps, name, s.quiet);
        let mut curve = vec![(0, before.all)];
        let mut metrics = Vec::new();
        trainer.fit(|t, m| {
            metrics.push(m.clone());
            if t.step() % s.eval_every == 0 || t.step() == s.rl_steps {
                let acc = greedy_eval(t.policy(), &tok, &test)
                    .map_err(|e| icpo::train::TrainError::Aborted(e.to_string()))?;
                curve.push((t.step(), acc.all));
            }
            pb.inc(1);
            pb.set_message(format!(
                "reward {:.2} ief-accept {:.2}",
                m["reward/on_policy_mean"],
                m.get("ief/acceptance_rate").copied().unwrap_or(0.0)
            ));
            Ok(())
        })?;
        pb.finish();
        let after = greedy_eval(trainer.policy(), &tok, &test)?;
        methods.push(MethodResult { name: name.into(), before, after, curve, metrics });
    }

    // Phase 4: plot and table.
    let plot_path = s.out_dir.join("icpo_math.png");
    plot::draw(&plot_path, &methods)?;
    let mut table = format!("seed {}\n| method | held-out acc. before | after | `#` before | `#` after |\n|---|---|---|---|---|\n", s.seed);
    for m in &methods {
        table.push_str(&format!(
            "| {} | {:.1}% | {:.1}% | {:.1}% | {:.1}% |\n",
            m.name,
            100.0 * m.before.all,
            100.0 * m.after.all,
            100.0 * m.before.hash,
            100.0 * m.after.hash
        ));
    }
    let report = Report {
        seed: s.seed,
        warm_ief_success: warm_ief,
        warm_plain_success: warm_plain,
        methods,
        plot: plot_path,
        table,
    };
    std::fs::write(s.out_dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(s.out_dir.join("table.md"), &report.table)?;
    Ok(report)
}
