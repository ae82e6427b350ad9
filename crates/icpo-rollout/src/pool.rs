//! Continuous batching: a fixed pool of decode slots, refilled as sequences end.
//!
//! A step's rollouts have long-tailed lengths (most stop early, a few run to the cap). Decoding
//! a batch until its longest member ends leaves most slots idle; here a slot freed by a finished
//! sequence takes the next pending one at the next step: the newcomers' prompts are prefilled
//! (each distinct prompt once) and their keys and values written into the freed rows of the
//! cache, right-aligned to the cache's current column, with the rows' earlier columns masked
//! out — nothing else of the cache is copied, and a newcomer attends to nothing of its
//! predecessor. When the columns run out, the live windows (which all end at the current column)
//! are moved to the front. Once nothing is pending, the batch is compacted whenever half its
//! slots are idle.
//!
//! Every sequence draws from its own counter-based stream (keyed by seed and the sequence's
//! global index, [`crate::stream_key`]; draw `i` a hash of the key and `i`), so its tokens do
//! not depend on the number of slots, the order of admission or the device. The draws are made
//! on the device from the rows' keys and positions; each decode step reads the device once
//! (the new tokens with their log-probs).

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use crate::counter::{counter_uniforms, stream_key};
use crate::engine::{DecodeModel, EngineStats, FinishReason, OnFinished, Request, Rollout};
use crate::error::Result;
use crate::sampling::sample_with;
use icpo_policy::Tokenizer;

/// One sequence in a slot.
struct Seq {
    rollout: Rollout,
    /// Its random stream's key.
    key: [u32; 2],
    /// Cache column where its (left-padded) prompt starts.
    start: i64,
}

/// Prompt ids of `prompts`, left padded to the longest: `(ids, mask)`, `(k, len)` on `device`.
fn left_padded(prompts: &[&Vec<i64>], device: tch::Device) -> Result<(Tensor, Tensor, i64)> {
    let plen = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut ids = vec![0i64; prompts.len() * plen];
    let mut mask = vec![0i64; prompts.len() * plen];
    for (i, p) in prompts.iter().enumerate() {
        let off = i * plen + plen - p.len();
        ids[off..off + p.len()].copy_from_slice(p);
        mask[off..off + p.len()].iter_mut().for_each(|m| *m = 1);
    }
    let shape = [prompts.len() as i64, plen as i64];
    let ids = Tensor::f_from_slice(&ids)?.f_view(shape)?.f_to_device(device)?;
    let mask = Tensor::f_from_slice(&mask)?.f_view(shape)?.f_to_device(device)?;
    Ok((ids, mask, plen as i64))
}

fn index(v: &[i64], device: tch::Device) -> Result<Tensor> {
    Ok(Tensor::f_from_slice(v)?.f_to_device(device)?)
}

/// Decodes every sample of the prompts `indices` of `request` through `slots` decode slots;
/// the rollouts in no particular order. `columns` is the cache's column budget (at least the
/// longest prompt plus `max_new_tokens`, plus room before the live windows must move).
pub(crate) fn decode_pool<M: DecodeModel>(
    model: &M,
    request: &Request<'_>,
    indices: &[usize],
    (slots, columns): (usize, i64),
    tokenizer: Option<&Tokenizer>,
    on_finished: Option<&OnFinished<'_>>,
    stats: &mut EngineStats,
) -> Result<Vec<Rollout>> {
    let params = request.params;
    let n = request.n;
    let device = model.device();
    let mut pending: std::collections::VecDeque<(usize, usize)> =
        indices.iter().flat_map(|&p| (0..n).map(move |s| (p, s))).collect();
    let slots = slots.max(1);
    let max_stop = params.stop_strings.iter().map(String::len).max().unwrap_or(0);
    let mut done = Vec::with_capacity(pending.len());
    let mut cache: Option<M::Cache> = None;
    let mut live: Vec<Option<Seq>> = Vec::new();
    let mut logits: Option<Tensor> = None;
    loop {
        // 1. Admit pending sequences into free slots.
        let free: Vec<usize> = if cache.is_none() {
            (0..slots.min(pending.len())).collect()
        } else {
            (0..live.len()).filter(|&i| live[i].is_none()).collect()
        };
        let take = free.len().min(pending.len());
        if take > 0 {
            let admitted: Vec<(usize, usize)> = pending.drain(..take).collect();
            // Each distinct prompt is prefilled once.
            let mut rows_of: BTreeMap<usize, i64> = BTreeMap::new();
            let mut distinct: Vec<&Vec<i64>> = Vec::new();
            let rows: Vec<i64> = admitted
                .iter()
                .map(|&(p, _)| {
                    *rows_of.entry(p).or_insert_with(|| {
                        distinct.push(&request.prompts[p]);
                        distinct.len() as i64 - 1
                    })
                })
                .collect();
            let (ids, mask, plen) = left_padded(&distinct, device)?;
            let rows_t = index(&rows, device)?;
            let slots_now = &free[..take];
            match cache.as_mut() {
                None => {
                    let (l, mut c) = model.prefill(&ids, &mask, columns.max(plen + 1))?;
                    model.select_rows(&mut c, &rows_t)?;
                    logits = Some(l.f_index_select(0, &rows_t)?.f_to_kind(Kind::Float)?);
                    cache = Some(c);
                    live = (0..take).map(|_| None).collect();
                }
                Some(c) => {
                    let (l, fresh) = model.prefill(&ids, &mask, plen)?;
                    let at: Vec<i64> = slots_now.iter().map(|&s| s as i64).collect();
                    let at_t = index(&at, device)?;
                    let grown = model.admit(c, &at_t, &fresh, &rows_t)?;
                    if grown > 0 {
                        // The cache grew columns at the front for a longer prompt.
                        for s in live.iter_mut().flatten() {
                            s.start += grown;
                        }
                    }
                    if let Some(lg) = logits.as_mut() {
                        let new = l.f_index_select(0, &rows_t)?.f_to_kind(Kind::Float)?;
                        let _ = lg.f_index_copy_(0, &at_t, &new)?;
                    }
                }
            }
            let len = cache.as_ref().map_or(plen, |c| model.filled(c));
            for (&slot, &(p, s)) in slots_now.iter().zip(&admitted) {
                let key = stream_key(request.seed, ((request.first_prompt + p) * n + s) as u64);
                live[slot] = Some(Seq {
                    rollout: Rollout {
                        prompt_index: p,
                        sample_index: s,
                        tokens: Vec::new(),
                        finish_reason: FinishReason::Length,
                        sampling_logprobs: Vec::new(),
                        policy_logprobs: Vec::new(),
                    },
                    key,
                    start: len - plen,
                });
            }
        }
        let (Some(c), Some(lg)) = (cache.as_mut(), logits.as_ref()) else {
            break;
        };
        // 2. Sample a token for every live sequence.
        let active: Vec<usize> = (0..live.len()).filter(|&i| live[i].is_some()).collect();
        if active.is_empty() {
            break;
        }
        let rows_now = live.len();
        // Every row is sampled (an idle one's draw is ignored): no index of the live rows goes
        // up, and the random numbers are made on the device from keys and positions.
        let u = if params.temperature == 0.0 {
            None
        } else {
            let mut counters = vec![0i64; rows_now * 3];
            for (i, seq) in live.iter().enumerate() {
                if let Some(seq) = seq {
                    let at = i * 3;
                    counters[at] = i64::from(seq.key[0]);
                    counters[at + 1] = i64::from(seq.key[1]);
                    counters[at + 2] = seq.rollout.tokens.len() as i64;
                }
            }
            let c = Tensor::f_from_slice(&counters)?
                .f_view([rows_now as i64, 3])?
                .f_to_device(lg.device())?;
            Some(counter_uniforms(&c.f_narrow(1, 0, 2)?, &c.f_select(1, 2)?)?)
        };
        let draws = sample_with(lg, params, u.as_ref())?;
        stats.decode_steps += 1;
        stats.slot_steps += rows_now;
        stats.slots = stats.slots.max(rows_now);
        let mut next = vec![0i64; rows_now];
        let mut go = vec![0i64; rows_now];
        for &i in &active {
            let Some(seq) = live[i].as_mut() else { continue };
            let d = &draws[i];
            let o = &mut seq.rollout;
            o.tokens.push(d.token);
            o.sampling_logprobs.push(d.sampling_logprob);
            o.policy_logprobs.push(d.policy_logprob);
            stats.generated_tokens += 1;
            let reason = if params.stop_on_eos && request.eos_token_ids.contains(&d.token) {
                Some(FinishReason::Eos)
            } else if params.stop_token_ids.contains(&d.token) {
                Some(FinishReason::StopToken)
            } else if max_stop > 0
                && crate::engine::hits_stop_string(o, &params.stop_strings, max_stop, tokenizer)?
            {
                Some(FinishReason::StopString)
            } else if o.tokens.len() >= params.max_new_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            match reason {
                Some(r) => {
                    o.finish_reason = r;
                    if let Some(seq) = live[i].take() {
                        if let Some(f) = on_finished {
                            f(&seq.rollout);
                        }
                        done.push(seq.rollout);
                    }
                }
                None => {
                    next[i] = d.token;
                    go[i] = 1;
                }
            }
        }
        let still = go.iter().filter(|&&g| g == 1).count();
        if still == 0 && pending.is_empty() {
            break;
        }
        // 3. Nothing left to admit: drop idle slots once half the batch is idle.
        if pending.is_empty() && still * 2 <= rows_now {
            let keep: Vec<usize> = (0..rows_now).filter(|&i| go[i] == 1).collect();
            let k: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
            model.select_rows(c, &index(&k, device)?)?;
            live = keep.iter().map(|&i| live[i].take()).collect();
            next = keep.iter().map(|&i| next[i]).collect();
            go = vec![1; keep.len()];
        }
        if still == 0 {
            // Every slot ended at once: refill before stepping.
            continue;
        }
        // 4. Out of columns: move the live windows (which all end at `len`) to the front.
        let len = model.filled(c);
        if len + 1 > columns {
            let oldest = live.iter().flatten().map(|s| s.start).min().unwrap_or(len);
            let keep = len - oldest;
            model.compact(c, keep)?;
            for s in live.iter_mut().flatten() {
                s.start -= len - keep;
            }
        }
        // 5. One decode step; idle slots feed a masked token.
        // Tokens and mask go up in one copy.
        let rows = next.len() as i64;
        let mut up = next.clone();
        up.extend_from_slice(&go);
        let up = Tensor::f_from_slice(&up)?.f_view([2, rows, 1])?.f_to_device(device)?;
        let (tokens, mask) = (up.f_get(0)?, up.f_get(1)?);
        logits = Some(model.step(&tokens, &mask, c)?.f_to_kind(Kind::Float)?);
    }
    Ok(done)
}
