//! The key/value cache and incremental decoding with it (prefill, decode).

use tch::{Device, Kind, Tensor};

use crate::attention::attention_mask_4d;
use crate::error::{PolicyError, Result};
use crate::model::{CausalLm, Past};
use crate::shapes::{check_ids, check_ids_in};

/// Keys and values of every layer for a batch of sequences, preallocated along the sequence axis.
///
/// # Shapes
/// - `keys[l]`, `values[l]`: `(batch, num_key_value_heads, capacity, head_dim)`
/// - `key_mask`: `(batch, capacity)` bool, true where a slot holds a real (non-padding) token
/// - `next_position`: `(batch,)` i64, the position id the next real token of each row gets
///
/// Slots `0..len` are filled. Rows may be reordered or dropped ([`KvCache::select`]) and
/// repeated ([`KvCache::repeat_interleave`]) so that one prefill serves a group of samples.
#[derive(Debug)]
pub struct KvCache {
    pub(crate) keys: Vec<Tensor>,
    pub(crate) values: Vec<Tensor>,
    pub(crate) key_mask: Tensor,
    pub(crate) next_position: Tensor,
    pub(crate) len: i64,
}

impl KvCache {
    pub(crate) fn new(
        layers: usize,
        batch: i64,
        kv_heads: i64,
        head_dim: i64,
        capacity: i64,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let mut keys = Vec::with_capacity(layers);
        let mut values = Vec::with_capacity(layers);
        for _ in 0..layers {
            keys.push(Tensor::f_zeros([batch, kv_heads, capacity, head_dim], (kind, device))?);
            values.push(Tensor::f_zeros([batch, kv_heads, capacity, head_dim], (kind, device))?);
        }
        Ok(KvCache {
            keys,
            values,
            key_mask: Tensor::f_zeros([batch, capacity], (Kind::Bool, device))?,
            next_position: Tensor::f_zeros([batch], (Kind::Int64, device))?,
            len: 0,
        })
    }

    /// Number of rows.
    pub fn batch_size(&self) -> i64 {
        self.key_mask.size()[0]
    }

    /// Filled slots (including padding slots).
    pub fn len(&self) -> i64 {
        self.len
    }

    /// True before anything was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allocated slots.
    pub fn capacity(&self) -> i64 {
        self.key_mask.size()[1]
    }

    /// Position id the next real token of each row will get, `(batch,)`.
    pub fn next_position(&self) -> &Tensor {
        &self.next_position
    }

    /// Makes room for `extra` more slots, doubling the allocation when it is too small.
    pub(crate) fn reserve(&mut self, extra: i64) -> Result<()> {
        let need = self.len + extra;
        let cap = self.capacity();
        if need <= cap {
            return Ok(());
        }
        self.pad_columns(need.max(2 * cap) - cap, false)
    }

    /// Adds `extra` empty (masked) columns after the allocation, or before it when `front`.
    fn pad_columns(&mut self, extra: i64, front: bool) -> Result<()> {
        let pad = |t: &Tensor, dim: i64| -> Result<Tensor> {
            let mut size = t.size();
            size[dim as usize] = extra;
            let zeros = Tensor::f_zeros(&size, (t.kind(), t.device()))?;
            let parts = if front { [&zeros, t] } else { [t, &zeros] };
            Ok(Tensor::f_cat(&parts, dim)?)
        };
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = pad(t, 2)?;
        }
        self.key_mask = pad(&self.key_mask, 1)?;
        Ok(())
    }

    /// Keeps the rows `index` (i64 indices into the batch), in that order: drop finished
    /// sequences or reorder them.
    pub fn select(&mut self, index: &Tensor) -> Result<()> {
        let index = index.f_to_device(self.key_mask.device())?;
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.f_index_select(0, &index)?;
        }
        self.key_mask = self.key_mask.f_index_select(0, &index)?;
        self.next_position = self.next_position.f_index_select(0, &index)?;
        Ok(())
    }

    /// Writes rows `rows` of `from` (a prefill of new prompts, i64 indices) into rows `slots` of
    /// this cache, for continuous batching: `from`'s filled columns land right-aligned on this
    /// cache's, so a new prompt's last token sits in the last filled column like every other
    /// row's; the rest of those rows is masked out, so nothing of a slot's former sequence is
    /// seen. When `from` holds more columns than this cache has filled, the cache first grows
    /// that many at the front (returned; 0 otherwise). Only the written rows are copied.
    pub fn admit(&mut self, slots: &Tensor, from: &KvCache, rows: &Tensor) -> Result<i64> {
        if from.keys.len() != self.keys.len() {
            return Err(PolicyError::Shape(format!(
                "admit: the new rows have {} layers, the cache {}",
                from.keys.len(),
                self.keys.len()
            )));
        }
        let device = self.key_mask.device();
        let (slots, rows) = (slots.f_to_device(device)?, rows.f_to_device(device)?);
        let p = from.len;
        let grown = (p - self.len).max(0);
        if grown > 0 {
            self.pad_columns(grown, true)?;
            self.len += grown;
        }
        let start = self.len - p;
        for (dst, src) in
            self.keys.iter_mut().zip(&from.keys).chain(self.values.iter_mut().zip(&from.values))
        {
            let new = src.f_narrow(2, 0, p)?.f_index_select(0, &rows)?;
            let _ = dst.f_narrow(2, start, p)?.f_index_copy_(0, &slots, &new)?;
        }
        let _ = self.key_mask.f_index_fill_(0, &slots, 0)?;
        let new_mask = from.key_mask.f_narrow(1, 0, p)?.f_index_select(0, &rows)?;
        let _ = self.key_mask.f_narrow(1, start, p)?.f_index_copy_(0, &slots, &new_mask)?;
        let positions = from.next_position.f_index_select(0, &rows)?;
        let _ = self.next_position.f_index_copy_(0, &slots, &positions)?;
        Ok(grown)
    }

    /// Keeps only the last `keep` filled columns, moved to the front (`len` becomes `keep`):
    /// for continuous batching, whose rows' live tokens all end at the last filled column.
    pub fn keep_last(&mut self, keep: i64) -> Result<()> {
        if keep < 0 || keep > self.len {
            return Err(PolicyError::Shape(format!(
                "keep_last: {keep} columns of {} filled",
                self.len
            )));
        }
        let drop = self.len - keep;
        if drop == 0 {
            return Ok(());
        }
        // Through a copy: the source and destination columns may overlap.
        let shift = |t: &mut Tensor, dim: i64| -> Result<()> {
            let view = t.f_narrow(dim, drop, keep)?;
            let mut tail = view.f_empty_like()?;
            tail.f_copy_(&view)?;
            t.f_narrow(dim, 0, keep)?.f_copy_(&tail)?;
            Ok(())
        };
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            shift(t, 2)?;
        }
        shift(&mut self.key_mask, 1)?;
        self.len = keep;
        Ok(())
    }

    /// Repeats every row `n` times in place (row `i` becomes rows `i*n .. i*n+n`), so that the
    /// prefill of a prompt is shared by the `n` samples of its group.
    pub fn repeat_interleave(&mut self, n: i64) -> Result<()> {
        if n < 1 {
            return Err(PolicyError::Shape(format!("repeat_interleave: n = {n} must be ≥ 1")));
        }
        let batch = self.batch_size();
        let index = Tensor::f_arange(batch, (Kind::Int64, self.key_mask.device()))?
            .f_repeat_interleave_self_int(n, 0, None)?;
        self.select(&index)
    }
}

impl CausalLm {
    /// Runs a prompt batch through the model and returns the logits of its last position
    /// `(batch, vocab)` and a cache with room for `capacity` tokens in all (grown on demand).
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`: `(batch, prompt_len)`, left padded, so the last column
    ///   holds every row's last prompt token.
    pub fn prefill(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        capacity: i64,
    ) -> Result<(Tensor, KvCache)> {
        let (batch, seq) =
            check_ids(input_ids, Some(attention_mask), self.config().vocab_size, "prefill")?;
        let c = self.config();
        let mut cache = KvCache::new(
            c.num_hidden_layers as usize,
            batch,
            c.num_key_value_heads,
            c.head_dim,
            capacity.max(seq),
            self.compute_dtype().kind(),
            self.device(),
        )?;
        // Sampling needs the last position's logits only: the head runs on that position, not
        // on every prompt position (a (batch, prompt_len, vocab) block for long prompts).
        let hidden = self.decode_hidden(input_ids, attention_mask, &mut cache, false)?;
        let logits = self.head(&hidden.f_narrow(1, seq - 1, 1)?)?;
        Ok((logits.f_squeeze_dim(1)?, cache))
    }

    /// Appends tokens to the cached sequences and returns their logits `(batch, new, vocab)`.
    /// Decoding one token at a time is `new = 1`; a 0 in `attention_mask` marks a slot that
    /// holds no token for that row (a finished or padded row), which later tokens do not see.
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`: `(batch, new)`, batch as in the cache
    pub fn decode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let hidden = self.decode_hidden(input_ids, attention_mask, cache, true)?;
        self.head(&hidden)
    }

    /// [`CausalLm::decode`] of ids a sampler drew from this model's logits (so within the
    /// vocabulary by construction): shapes are checked, but the ids' range is not read back,
    /// which would cost a device→host sync every decode step. Out-of-range ids are an error of
    /// the embedding lookup on a CPU and a device-side assertion on CUDA: use
    /// [`CausalLm::decode`] for ids from anywhere else.
    pub fn decode_sampled(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let hidden = self.decode_hidden(input_ids, attention_mask, cache, false)?;
        self.head(&hidden)
    }

    /// [`CausalLm::decode`] up to the final norm: the hidden states `(batch, new, hidden)`.
    fn decode_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
        check_range: bool,
    ) -> Result<Tensor> {
        let vocab = check_range.then_some(self.config().vocab_size);
        let (batch, new) = check_ids_in(input_ids, Some(attention_mask), vocab, "decode")?;
        if batch != cache.batch_size() {
            return Err(PolicyError::Shape(format!(
                "decode: batch {batch} differs from the cache's batch {}",
                cache.batch_size()
            )));
        }
        let device = self.device();
        let new_mask = attention_mask.f_to_device(device)?.f_ne(0)?;
        let positions = new_mask
            .f_cumsum(1, Kind::Int64)?
            .f_sub_scalar(1)?
            .f_add(&cache.next_position.f_unsqueeze(1)?)?
            .f_clamp_min(0)?;
        cache.reserve(new)?;
        let start = cache.len;
        cache.key_mask.f_narrow(1, start, new)?.f_copy_(&new_mask)?;
        let key_mask = cache.key_mask.f_narrow(1, 0, start + new)?;
        let mask = attention_mask_4d(&key_mask, new, start)?;
        let hidden = self.run_layers(
            &input_ids.f_to_device(device)?,
            &positions,
            &mask,
            Past::Cache(&mut *cache, start),
            None,
        )?;
        cache.next_position =
            cache.next_position.f_add(&new_mask.f_sum_dim_intlist(1, false, Kind::Int64)?)?;
        cache.len = start + new;
        Ok(hidden)
    }
}
