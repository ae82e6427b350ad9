//! The generation engine: requests, rollouts, the model interface, and the decoding streams
//! that run the continuous-batching slot pool of [`crate::pool`].

use icpo_policy::{CausalLm, KvCache, Tokenizer};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::error::{Result, RolloutError};
use crate::pool::decode_pool;
use crate::sampling::SamplingParams;

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
    /// Feeds one token per row `(batch, 1)`, where `live (batch, 1)` is 1 (a row whose slot
    /// is idle feeds a masked token that later tokens do not see); returns the next logits
    /// `(batch, vocab)`.
    fn step(&self, tokens: &Tensor, live: &Tensor, cache: &mut Self::Cache) -> Result<Tensor>;
    /// Keeps rows `index` in that order (rows may repeat).
    fn select_rows(&self, cache: &mut Self::Cache, index: &Tensor) -> Result<()>;
    /// Writes rows `rows` of `from` (a prefill of new prompts) into rows `slots` of `cache`, its
    /// last prompt column at the cache's last filled column and nothing else of those rows
    /// visible; returns how many columns the cache grew at the front to make room (for a prompt
    /// longer than what it holds).
    fn admit(
        &self,
        cache: &mut Self::Cache,
        slots: &Tensor,
        from: &Self::Cache,
        rows: &Tensor,
    ) -> Result<i64>;
    /// Keeps only the last `keep` filled columns, moved to the front.
    fn compact(&self, cache: &mut Self::Cache, keep: i64) -> Result<()>;
    /// Filled columns of `cache` (every row's next token goes into the next one).
    fn filled(&self, cache: &Self::Cache) -> i64;
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
    fn step(&self, tokens: &Tensor, live: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        // The sampler's ids: no range read-back (one sync per step saved).
        Ok(self.decode_sampled(tokens, live, cache)?.f_select(1, 0)?)
    }
    fn select_rows(&self, cache: &mut KvCache, index: &Tensor) -> Result<()> {
        Ok(cache.select(index)?)
    }
    fn admit(
        &self,
        cache: &mut KvCache,
        slots: &Tensor,
        from: &KvCache,
        rows: &Tensor,
    ) -> Result<i64> {
        Ok(cache.admit(slots, from, rows)?)
    }
    fn compact(&self, cache: &mut KvCache, keep: i64) -> Result<()> {
        Ok(cache.keep_last(keep)?)
    }
    fn filled(&self, cache: &KvCache) -> i64 {
        cache.len()
    }
}

/// Why a sample ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
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
    /// Bound on the KV cache's token slots: the engine decodes through
    /// `max_tokens_in_flight / columns` slots (at least one), where `columns` is 1.5 ×
    /// (longest prompt + `max_new_tokens`), refilling a slot as soon as its sequence ends
    /// (continuous batching). Default 262,144.
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
    /// Seed: sample `s` of prompt `p` draws from the counter-based stream keyed by it and
    /// `(first_prompt + p)·n + s` ([`crate::stream_key`]), so results do not depend on batching,
    /// slots, admission order or the device.
    pub seed: u64,
    /// The global index of `prompts[0]` when they are a slice of a larger batch (a rank's
    /// shard in data-parallel training), so each sequence draws what it would in the whole
    /// batch; 0 otherwise.
    pub first_prompt: usize,
}

/// How a [`generate`] call used its decode slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct EngineStats {
    /// Slot pools decoded (one per stream).
    pub batches: usize,
    /// Decode steps (one token for every live slot), summed over streams.
    pub decode_steps: usize,
    /// Most rows of one stream's batch at once, summed over streams.
    pub slots: usize,
    /// Σ over decode steps of the rows in the batch: the slot-steps reserved.
    pub slot_steps: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
}

impl EngineStats {
    /// Generated tokens ÷ slot-steps reserved: the share of decode slots doing useful work.
    pub fn slot_utilization(&self) -> f64 {
        self.generated_tokens as f64 / self.slot_steps.max(1) as f64
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

/// Called with each rollout as soon as it ends, from the decoding thread that finished it
/// (several at once with several decode streams), while the others go on decoding.
pub type OnFinished<'a> = dyn Fn(&Rollout) + Sync + 'a;

/// [`generate`], with how the decode slots were used.
pub fn generate_with_stats<M: DecodeModel>(
    model: &M,
    request: &Request<'_>,
    tokenizer: Option<&Tokenizer>,
    config: &EngineConfig,
) -> Result<(Vec<Rollout>, EngineStats)> {
    generate_streaming(model, request, tokenizer, config, None)
}

/// [`generate_with_stats`] that hands each rollout to `on_finished` the moment it ends, so work
/// on it (scoring) overlaps the decoding of the rest. The returned rollouts are the same, in
/// the same order.
pub fn generate_streaming<M: DecodeModel>(
    model: &M,
    request: &Request<'_>,
    tokenizer: Option<&Tokenizer>,
    config: &EngineConfig,
    on_finished: Option<&OnFinished<'_>>,
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
    // One decoding handle (packed weights on a CPU) for all streams.
    let base = model.fork()?;
    let longest = request.prompts.iter().map(Vec::len).max().unwrap_or(0);
    let window = (longest + params.max_new_tokens) as i64;
    let columns = window + window / 2;
    let slots = (config.max_tokens_in_flight / columns.max(1) as usize).max(1);
    let all: Vec<usize> = (0..request.prompts.len()).collect();
    let (mut out, stats) = generate_streams(
        model,
        base.as_ref(),
        request,
        &all,
        (slots, columns),
        tokenizer,
        config,
        on_finished,
    )?;
    out.sort_by_key(|r| (r.prompt_index, r.sample_index));
    Ok((out, stats))
}

/// Deals the prompts `all` round-robin to decoding streams on scoped threads (one stream on
/// the calling thread when there is a single one or the model cannot fork), each with its share
/// of the `slots`.
#[allow(clippy::too_many_arguments)] // the engine's internal plumbing
fn generate_streams<M: DecodeModel>(
    model: &M,
    base: Option<&M::Fork>,
    request: &Request<'_>,
    all: &[usize],
    (slots, columns): (usize, i64),
    tokenizer: Option<&Tokenizer>,
    config: &EngineConfig,
    on_finished: Option<&OnFinished<'_>>,
) -> Result<(Vec<Rollout>, EngineStats)> {
    let threads = tch::get_num_threads().max(1) as usize;
    let wanted = match (config.streams, model.device()) {
        (0, Device::Cpu) => threads,
        (0, _) => 1,
        (s, _) => s,
    };
    // Every stream gets at least one prompt and one slot.
    let streams = wanted.min(all.len()).min(slots).max(1);
    let one = |m: &dyn Fn(&mut EngineStats) -> Result<Vec<Rollout>>| {
        let mut stats = EngineStats { batches: 1, ..Default::default() };
        let out = tch::no_grad(|| m(&mut stats))?;
        Ok((out, stats))
    };
    let Some(base) = base else {
        return one(&|st| {
            decode_pool(model, request, all, (slots, columns), tokenizer, on_finished, st)
        });
    };
    let forks = if streams > 1 {
        (0..streams).map(|_| base.fork()).collect::<Result<Option<Vec<_>>>>()?
    } else {
        None
    };
    let Some(forks) = forks else {
        return one(&|st| {
            decode_pool(base, request, all, (slots, columns), tokenizer, on_finished, st)
        });
    };
    let per_stream = (threads / streams).max(1) as i32;
    let results: Vec<Result<(Vec<Rollout>, EngineStats)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = forks
            .into_iter()
            .enumerate()
            .map(|(j, fork)| {
                let shard: Vec<usize> = all.iter().copied().skip(j).step_by(streams).collect();
                let share = slots / streams + usize::from(j < slots % streams);
                scope.spawn(move || {
                    // Thread count and grad mode are per thread in libtorch.
                    tch::set_num_threads(per_stream);
                    let mut stats = EngineStats { batches: 1, ..Default::default() };
                    let out = tch::no_grad(|| {
                        decode_pool(
                            &fork,
                            request,
                            &shard,
                            (share, columns),
                            tokenizer,
                            on_finished,
                            &mut stats,
                        )
                    })?;
                    Ok((out, stats))
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
    let mut out = Vec::new();
    let mut stats = EngineStats::default();
    for r in results {
        let (o, s) = r?;
        out.extend(o);
        stats.batches += s.batches;
        stats.decode_steps += s.decode_steps;
        stats.slots += s.slots;
        stats.slot_steps += s.slot_steps;
        stats.generated_tokens += s.generated_tokens;
    }
    Ok((out, stats))
}

pub(crate) fn hits_stop_string(
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
