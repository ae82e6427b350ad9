//! The generation engine: prefill once per prompt, share it across the prompt's group, decode
//! with the KV cache, drop finished sequences from the batch as they stop.

use icpo_policy::{CausalLm, KvCache, Tokenizer};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, RolloutError};
use crate::sampling::{sample, SamplingParams};

/// A model the engine can decode with: [`CausalLm`], or a mock in tests.
pub trait DecodeModel {
    /// Per-batch decoding state.
    type Cache;
    /// A handle on the same model that another thread decodes with.
    type Fork: DecodeModel + Send;
    /// A handle to decode with (possibly in another thread; [`CausalLm`]'s packs its weights
    /// for decoding on a CPU), or `None` to decode with the model itself in one stream.
    fn fork(&self) -> Result<Option<Self::Fork>>;
    /// Device of the model's tensors.
    fn device(&self) -> Device;
    /// Runs left-padded prompts `(batch, len)`; returns last-position logits `(batch, vocab)`.
    fn prefill(&self, ids: &Tensor, mask: &Tensor, capacity: i64) -> Result<(Tensor, Self::Cache)>;
    /// Feeds one token per row `(batch, 1)`; returns the next logits `(batch, vocab)`.
    fn step(&self, tokens: &Tensor, cache: &mut Self::Cache) -> Result<Tensor>;
    /// Repeats each row `n` times (row `i` → rows `i*n..i*n+n`).
    fn repeat_rows(&self, cache: &mut Self::Cache, n: i64) -> Result<()>;
    /// Keeps rows `index` in that order.
    fn select_rows(&self, cache: &mut Self::Cache, index: &Tensor) -> Result<()>;
}

impl DecodeModel for CausalLm {
    type Cache = KvCache;
    type Fork = CausalLm;
    fn fork(&self) -> Result<Option<CausalLm>> {
        Ok(Some(self.decoding_copy()?))
    }
    fn device(&self) -> Device {
        CausalLm::device(self)
    }
    fn prefill(&self, ids: &Tensor, mask: &Tensor, capacity: i64) -> Result<(Tensor, KvCache)> {
        Ok(CausalLm::prefill(self, ids, mask, capacity)?)
    }
    fn step(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let ones = tokens.f_ones_like()?;
        Ok(self.decode(tokens, &ones, cache)?.f_select(1, 0)?)
    }
    fn repeat_rows(&self, cache: &mut KvCache, n: i64) -> Result<()> {
        Ok(cache.repeat_interleave(n)?)
    }
    fn select_rows(&self, cache: &mut KvCache, index: &Tensor) -> Result<()> {
        Ok(cache.select(index)?)
    }
}

/// Why a sample ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// It produced an EOS id (kept as its last token).
    Eos,
    /// It produced one of `stop_token_ids` (kept as its last token).
    StopToken,
    /// Its decoded text reached one of `stop_strings`.
    StopString,
    /// It reached `max_new_tokens`.
    Length,
}

/// One generated sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Index of its prompt in the request.
    pub prompt_index: usize,
    /// Index among the prompt's `n` samples.
    pub sample_index: usize,
    /// Generated token ids (the stopping token included).
    pub tokens: Vec<i64>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Log-prob of each token under the sampling distribution (temperature and filters).
    pub sampling_logprobs: Vec<f32>,
    /// Log-prob of each token under the unmodified policy (temperature 1, no truncation): the
    /// `π_old` of importance ratios.
    pub policy_logprobs: Vec<f32>,
}

/// Engine settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Bound on `rows × (prompt_len + max_new_tokens)` decoded at once; larger requests are
    /// split into chunks of prompts (a prompt's group is never split). Default 262,144.
    pub max_tokens_in_flight: usize,
    /// Decoding streams: the prompts of a chunk are dealt to this many threads, each decoding
    /// its share with `threads / streams` libtorch threads. On a CPU this keeps every core busy
    /// through the many small ops of a decoding step, which one multi-threaded stream runs one
    /// core at a time. 0 (the default) picks libtorch's thread count on a CPU and 1 on a GPU.
    /// Samples do not depend on it (each draws from its own seeded stream).
    pub streams: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { max_tokens_in_flight: 1 << 18, streams: 0 }
    }
}

/// A generation request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Prompt token ids (unpadded).
    pub prompts: &'a [Vec<i64>],
    /// Samples per prompt (the group size).
    pub n: usize,
    /// Sampling settings.
    pub params: &'a SamplingParams,
    /// Ids that end a sample when `params.stop_on_eos`.
    pub eos_token_ids: &'a [i64],
    /// Seed: sample `s` of prompt `p` draws from stream `p·n + s` of a ChaCha8 generator seeded
    /// with it, so results do not depend on batching or chunking.
    pub seed: u64,
}

/// How a [`generate`] call used its decode slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct EngineStats {
    /// Batches decoded (chunks × streams).
    pub batches: usize,
    /// Decode steps, summed over batches (a batch steps until its longest member ends).
    pub decode_steps: usize,
    /// Most rows decoding at once (over concurrent streams).
    pub slots: usize,
    /// Σ over batches of rows × steps: the slot-steps reserved.
    pub slot_steps: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
}

impl EngineStats {
    /// Generated tokens ÷ slot-steps reserved: the share of decode slots doing useful work.
    pub fn slot_utilization(&self) -> f64 {
        self.generated_tokens as f64 / self.slot_steps.max(1) as f64
    }

    /// Adds the batches of one concurrent round (one per stream).
    fn add_round(&mut self, batches: &[Vec<Rollout>]) {
        let mut rows_now = 0;
        for b in batches {
            let steps = b.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
            self.batches += 1;
            self.decode_steps += steps;
            self.slot_steps += b.len() * steps;
            self.generated_tokens += b.iter().map(|r| r.tokens.len()).sum::<usize>();
            rows_now += b.len();
        }
        self.slots = self.slots.max(rows_now);
    }
}

/// Generates `n` samples for every prompt, ordered by prompt then sample. Runs without
/// gradient. `tokenizer` is needed only for stop strings.
pub fn generate<M: DecodeModel>(
    model: &M,
    request: &Request<'_>,
    tokenizer: Option<&Tokenizer>,
    config: &EngineConfig,
) -> Result<Vec<Rollout>> {
    Ok(generate_with_stats(model, request, tokenizer, config)?.0)
}

/// [`generate`], with how the decode slots were used.
pub fn generate_with_stats<M: DecodeModel>(
    model: &M,
    request: &Request<'_>,
    tokenizer: Option<&Tokenizer>,
    config: &EngineConfig,
) -> Result<(Vec<Rollout>, EngineStats)> {
    let params = request.params;
    params.validate()?;
    if request.n == 0 {
        return Err(RolloutError::Setting {
            field: "n",
            value: "0".into(),
            message: "must be ≥ 1",
        });
    }
    if !params.stop_strings.is_empty() && tokenizer.is_none() {
        return Err(RolloutError::Input("stop_strings need a tokenizer to decode with".into()));
    }
    if let Some(i) = request.prompts.iter().position(Vec::is_empty) {
        return Err(RolloutError::Input(format!("prompt {i} is empty")));
    }
    let mut out = Vec::with_capacity(request.prompts.len() * request.n);
    let mut stats = EngineStats::default();
    // One decoding handle (packed weights on a CPU) for all chunks and streams.
    let base = model.fork()?;
    let mut start = 0;
    while start < request.prompts.len() {
        // Grow the chunk while its footprint stays within the bound (at least one prompt).
        let mut end = start + 1;
        let mut max_len = request.prompts[start].len();
        while end < request.prompts.len() {
            let len = max_len.max(request.prompts[end].len());
            if (end + 1 - start) * request.n * (len + params.max_new_tokens)
                > config.max_tokens_in_flight
            {
                break;
            }
            max_len = len;
            end += 1;
        }
        let round = generate_streams(model, base.as_ref(), request, start..end, tokenizer, config)?;
        stats.add_round(&round);
        out.extend(round.into_iter().flatten());
        start = end;
    }
    out.sort_by_key(|r| (r.prompt_index, r.sample_index));
    Ok((out, stats))
}

/// Deals the prompts of `range` round-robin to decoding streams on scoped threads (one stream
/// on the calling thread when there is a single one or the model cannot fork); one batch of
/// rollouts per stream.
fn generate_streams<M: DecodeModel>(
    model: &M,
    base: Option<&M::Fork>,
    request: &Request<'_>,
    range: std::ops::Range<usize>,
    tokenizer: Option<&Tokenizer>,
    config: &EngineConfig,
) -> Result<Vec<Vec<Rollout>>> {
    let threads = tch::get_num_threads().max(1) as usize;
    let wanted = match (config.streams, model.device()) {
        (0, Device::Cpu) => threads,
        (0, _) => 1,
        (s, _) => s,
    };
    let streams = wanted.min(range.len()).max(1);
    let all: Vec<usize> = range.collect();
    let Some(base) = base else {
        return Ok(vec![tch::no_grad(|| generate_chunk(model, request, &all, tokenizer))?]);
    };
    let forks = if streams > 1 {
        (0..streams).map(|_| base.fork()).collect::<Result<Option<Vec<_>>>>()?
    } else {
        None
    };
    let Some(forks) = forks else {
        return Ok(vec![tch::no_grad(|| generate_chunk(base, request, &all, tokenizer))?]);
    };
    let per_stream = (threads / streams).max(1) as i32;
    let results: Vec<Result<Vec<Rollout>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = forks
            .into_iter()
            .enumerate()
            .map(|(j, fork)| {
                let shard: Vec<usize> = all.iter().copied().skip(j).step_by(streams).collect();
                scope.spawn(move || {
                    // Thread count and grad mode are per thread in libtorch.
                    tch::set_num_threads(per_stream);
                    tch::no_grad(|| generate_chunk(&fork, request, &shard, tokenizer))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(RolloutError::Input("a decoding stream panicked".into()))
                })
            })
            .collect()
    });
    // Workers' set_num_threads also set libtorch's default for new threads: restore it.
    tch::set_num_threads(threads as i32);
    results.into_iter().collect()
}

fn generate_chunk<M: DecodeModel>(
    model: &M,
    request: &Request<'_>,
    indices: &[usize],
    tokenizer: Option<&Tokenizer>,
) -> Result<Vec<Rollout>> {
    let params = request.params;
    let n = request.n;
    let prompts: Vec<&Vec<i64>> = indices.iter().map(|&i| &request.prompts[i]).collect();
    let plen = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut ids = vec![0i64; prompts.len() * plen];
    let mut mask = vec![0i64; prompts.len() * plen];
    for (i, p) in prompts.iter().enumerate() {
        let off = i * plen + plen - p.len();
        ids[off..off + p.len()].copy_from_slice(p);
        mask[off..off + p.len()].iter_mut().for_each(|m| *m = 1);
    }
    let shape = [prompts.len() as i64, plen as i64];
    let device = model.device();
    let ids = Tensor::f_from_slice(&ids)?.f_view(shape)?.f_to_device(device)?;
    let mask = Tensor::f_from_slice(&mask)?.f_view(shape)?.f_to_device(device)?;
    let (logits, mut cache) = model.prefill(&ids, &mask, (plen + params.max_new_tokens) as i64)?;
    let mut logits = logits.f_repeat_interleave_self_int(n as i64, 0, None)?;
    model.repeat_rows(&mut cache, n as i64)?;

    let mut rows: Vec<Rollout> = Vec::with_capacity(prompts.len() * n);
    let mut rngs: Vec<ChaCha8Rng> = Vec::with_capacity(prompts.len() * n);
    for &p in indices {
        for s in 0..n {
            let mut rng = ChaCha8Rng::seed_from_u64(request.seed);
            rng.set_stream((p * n + s) as u64);
            rngs.push(rng);
            rows.push(Rollout {
                prompt_index: p,
                sample_index: s,
                tokens: Vec::new(),
                finish_reason: FinishReason::Length,
                sampling_logprobs: Vec::new(),
                policy_logprobs: Vec::new(),
            });
        }
    }
    let max_stop = params.stop_strings.iter().map(String::len).max().unwrap_or(0);
    let mut done: Vec<Rollout> = Vec::with_capacity(rows.len());
    loop {
        let draws = sample(&logits, params, &mut rngs)?;
        let mut keep = Vec::with_capacity(rows.len());
        for (k, (o, d)) in rows.iter_mut().zip(draws).enumerate() {
            o.tokens.push(d.token);
            o.sampling_logprobs.push(d.sampling_logprob);
            o.policy_logprobs.push(d.policy_logprob);
            let reason = if params.stop_on_eos && request.eos_token_ids.contains(&d.token) {
                Some(FinishReason::Eos)
            } else if params.stop_token_ids.contains(&d.token) {
                Some(FinishReason::StopToken)
            } else if max_stop > 0
                && hits_stop_string(o, &params.stop_strings, max_stop, tokenizer)?
            {
                Some(FinishReason::StopString)
            } else if o.tokens.len() >= params.max_new_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            match reason {
                Some(r) => o.finish_reason = r,
                None => keep.push(k),
            }
        }
        // Move finished rows out; compact the batch so they cost nothing more.
        let mut kept_rows = Vec::with_capacity(keep.len());
        let mut kept_rngs = Vec::with_capacity(keep.len());
        let mut next = Vec::with_capacity(keep.len());
        let mut ki = 0;
        for (k, (row, rng)) in rows.drain(..).zip(rngs.drain(..)).enumerate() {
            if ki < keep.len() && keep[ki] == k {
                next.push(row.tokens.last().copied().unwrap_or(0));
                kept_rows.push(row);
                kept_rngs.push(rng);
                ki += 1;
            } else {
                done.push(row);
            }
        }
        if kept_rows.is_empty() {
            break;
        }
        if keep.len() < logits.size()[0] as usize {
            let index = Tensor::f_from_slice(&keep.iter().map(|&k| k as i64).collect::<Vec<_>>())?
                .f_to_device(device)?;
            model.select_rows(&mut cache, &index)?;
        }
        rows = kept_rows;
        rngs = kept_rngs;
        let tokens =
            Tensor::f_from_slice(&next)?.f_view([next.len() as i64, 1])?.f_to_device(device)?;
        logits = model.step(&tokens, &mut cache)?.f_to_kind(Kind::Float)?;
    }
    done.sort_by_key(|r| (r.prompt_index, r.sample_index));
    Ok(done)
}

fn hits_stop_string(
    o: &Rollout,
    stops: &[String],
    max_stop: usize,
    tokenizer: Option<&Tokenizer>,
) -> Result<bool> {
    let Some(tok) = tokenizer else { return Ok(false) };
    // A token decodes to at least one byte, so the last `max_stop + 8` tokens cover any stop
    // string that the newest token completed.
    let tail = &o.tokens[o.tokens.len().saturating_sub(max_stop + 8)..];
    let text = tok.decode(tail, false)?;
    Ok(stops.iter().any(|s| text.contains(s.as_str())))
}
