//! A step's generation and scoring (phases 2 and 3): the on-policy and IEF rollouts, and their
//! rewards. With `trainer.async_scoring` (the default) a scoring thread takes each rollout the
//! moment the engine finishes it, in batches of `trainer.scoring_batch`, so rewards (a sandbox
//! running tests, a service call) are computed while the rest of the step's rollouts are still
//! decoding; the rewards are the same as scoring after generation, in the same order.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Instant;

use icpo_policy::Tokenizer;
use icpo_rollout::{generate_streaming, EngineConfig, OnFinished, Request, Rollout};

use crate::data::Problem;
use crate::error::{Result, TrainError};
use crate::task_reward::{fold_outputs, task_outputs, RewardOutput, Scored};
use crate::trainer::{Scorer, Trainer};

type Output = std::result::Result<RewardOutput, String>;

/// Rewards by (is IEF, prompt, sample), as the scoring thread produces them.
type ByRollout = HashMap<(bool, usize, usize), Output>;

/// The step's rollouts with their rewards and timings.
pub(crate) struct Generated {
    pub(crate) on: Vec<Rollout>,
    pub(crate) ief: Vec<Rollout>,
    pub(crate) on_scored: Scored,
    pub(crate) ief_scored: Scored,
    /// Seconds from the first prefill to the last token.
    pub(crate) gen_s: f64,
    /// Seconds of scoring left after the last token (all of it without async scoring).
    pub(crate) score_wait_s: f64,
    /// Seconds the scorer spent in all (overlapping generation when async).
    pub(crate) score_busy_s: f64,
}

/// What one generation pass asks for.
pub(crate) struct Pass<'a> {
    pub(crate) prompts: &'a [Vec<i64>],
    pub(crate) n: usize,
    pub(crate) seed: u64,
    /// Global index of `prompts[0]` (a rank's shard).
    pub(crate) first_prompt: usize,
}

/// The rewards of `rs` (in order) from any scorer, before the error policy is applied.
fn outputs(
    scorer: &Scorer,
    tok: &Tokenizer,
    problems: &[Problem],
    prompt_texts: &[String],
    rs: &[Rollout],
    is_ief: bool,
) -> Result<Vec<Output>> {
    let answer = |r: &Rollout| problems[r.prompt_index].answer.as_str();
    Ok(match scorer {
        Scorer::Text(reward) => {
            let texts: Vec<String> = rs
                .iter()
                .map(|r| tok.decode(&r.tokens, true))
                .collect::<std::result::Result<_, _>>()?;
            let pairs: Vec<(&str, &str)> =
                rs.iter().zip(&texts).map(|(r, t)| (answer(r), t.as_str())).collect();
            reward.score_batch(&pairs).into_iter().map(|s| Ok(s.into())).collect()
        }
        Scorer::Tokens(f) => rs.iter().map(|r| Ok(f(answer(r), &r.tokens).into())).collect(),
        Scorer::Task(reward) => {
            task_outputs(reward.as_ref(), tok, problems, prompt_texts, rs, is_ief)?
        }
    })
}

impl Trainer {
    /// Generates the on-policy pass and then the IEF pass (when it has prompts) and scores
    /// every rollout, overlapped with generation when `trainer.async_scoring`.
    pub(crate) fn generate_and_score(
        &self,
        problems: &[Problem],
        on_pass: Pass<'_>,
        ief_pass: Pass<'_>,
        engine: &EngineConfig,
    ) -> Result<Generated> {
        let params = self.sampling();
        let (tok, scorer) = (&self.tokenizer, &self.scorer);
        // Prompt texts are for task rewards only.
        let texts = |prompts: &[Vec<i64>]| -> Result<Vec<String>> {
            if !matches!(scorer, Scorer::Task(_)) {
                return Ok(Vec::new());
            }
            Ok(prompts
                .iter()
                .map(|p| tok.decode(p, false))
                .collect::<std::result::Result<_, _>>()?)
        };
        let (on_texts, ief_texts) = (texts(on_pass.prompts)?, texts(ief_pass.prompts)?);
        let run = |pass: &Pass<'_>, cb: Option<&OnFinished<'_>>| -> Result<Vec<Rollout>> {
            if pass.prompts.is_empty() || pass.n == 0 {
                return Ok(Vec::new());
            }
            let request = Request {
                prompts: pass.prompts,
                n: pass.n,
                params: &params,
                eos_token_ids: &self.eos_token_ids,
                seed: pass.seed,
                first_prompt: pass.first_prompt,
            };
            Ok(generate_streaming(&self.policy, &request, Some(tok), engine, cb)?.0)
        };
        let policy = self.cfg.trainer.reward_errors;
        let t_gen = Instant::now();
        if !self.cfg.trainer.async_scoring {
            let on = run(&on_pass, None)?;
            let ief = run(&ief_pass, None)?;
            let gen_s = t_gen.elapsed().as_secs_f64();
            let t = Instant::now();
            let on_out = outputs(scorer, tok, problems, &on_texts, &on, false)?;
            let ief_out = outputs(scorer, tok, problems, &ief_texts, &ief, true)?;
            let on_scored = fold_outputs(on_out, policy, problems, &on, false)?;
            let ief_scored = fold_outputs(ief_out, policy, problems, &ief, true)?;
            let score_s = t.elapsed().as_secs_f64();
            return Ok(Generated {
                on,
                ief,
                on_scored,
                ief_scored,
                gen_s,
                score_wait_s: score_s,
                score_busy_s: score_s,
            });
        }
        let batch = self.cfg.trainer.scoring_batch.max(1);
        let (on, ief, gen_s, mut done, busy) = std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<(bool, Rollout)>();
            let (on_texts, ief_texts) = (&on_texts, &ief_texts);
            let worker = scope.spawn(move || -> Result<(ByRollout, f64)> {
                let mut done = HashMap::new();
                let mut busy = 0.0;
                let mut queued: [Vec<Rollout>; 2] = [Vec::new(), Vec::new()];
                let mut flush = |is_ief: bool, q: &mut Vec<Rollout>| -> Result<()> {
                    let t = Instant::now();
                    let texts = if is_ief { ief_texts } else { on_texts };
                    let outs = outputs(scorer, tok, problems, texts, q, is_ief)?;
                    for (r, o) in q.drain(..).zip(outs) {
                        done.insert((is_ief, r.prompt_index, r.sample_index), o);
                    }
                    busy += t.elapsed().as_secs_f64();
                    Ok(())
                };
                for (is_ief, r) in rx {
                    let q = &mut queued[usize::from(is_ief)];
                    q.push(r);
                    if q.len() >= batch {
                        flush(is_ief, q)?;
                    }
                }
                for (i, q) in queued.iter_mut().enumerate() {
                    if !q.is_empty() {
                        flush(i == 1, q)?;
                    }
                }
                Ok((done, busy))
            });
            let generated = (|| -> Result<(Vec<Rollout>, Vec<Rollout>)> {
                let send = |is_ief: bool| {
                    let tx = tx.clone();
                    // A closed channel means the scorer failed: its error is reported at join.
                    move |r: &Rollout| drop(tx.send((is_ief, r.clone())))
                };
                let (to_on, to_ief) = (send(false), send(true));
                let on = run(&on_pass, Some(&to_on))?;
                let ief = run(&ief_pass, Some(&to_ief))?;
                Ok((on, ief))
            })();
            let gen_s = t_gen.elapsed().as_secs_f64();
            // Closing the channel ends the scorer's loop, on every path.
            drop(tx);
            let scored = worker
                .join()
                .unwrap_or_else(|_| Err(TrainError::Aborted("the scoring thread panicked".into())));
            let (on, ief) = generated?;
            let (done, busy) = scored?;
            Ok::<_, TrainError>((on, ief, gen_s, done, busy))
        })?;
        let mut take = |rs: &[Rollout], is_ief: bool| -> Result<Vec<Output>> {
            rs.iter()
                .map(|r| {
                    done.remove(&(is_ief, r.prompt_index, r.sample_index)).ok_or_else(|| {
                        TrainError::Aborted(format!(
                            "rollout {} of prompt {} was never scored",
                            r.sample_index, r.prompt_index
                        ))
                    })
                })
                .collect()
        };
        let (on_out, ief_out) = (take(&on, false)?, take(&ief, true)?);
        let on_scored = fold_outputs(on_out, policy, problems, &on, false)?;
        let ief_scored = fold_outputs(ief_out, policy, problems, &ief, true)?;
        // Scoring still running after the last token (its last batches) is waited for.
        let score_wait_s = (t_gen.elapsed().as_secs_f64() - gen_s).max(0.0);
        Ok(Generated { on, ief, on_scored, ief_scored, gen_s, score_wait_s, score_busy_s: busy })
    }
}
