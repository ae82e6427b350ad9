//! The key/value cache and incremental decoding with it (prefill, decode).

use tch::{Device, Kind, Tensor};

use crate::attention::attention_mask_4d;
use crate::error::{PolicyError, Result};
use crate::model::{check_ids, CausalLm, Past};

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
        let new_cap = need.max(2 * cap);
        let grow = |t: &Tensor, dim: i64| -> Result<Tensor> {
            let mut size = t.size();
            let d = dim as usize;
            size[d] = new_cap - cap;
            let pad = Tensor::f_zeros(&size, (t.kind(), t.device()))?;
            Ok(Tensor::f_cat(&[t, &pad], dim)?)
        };
        for k in self.keys.iter_mut() {
            *k = grow(k, 2)?;
        }
        for v in self.values.iter_mut() {
            *v = grow(v, 2)?;
        }
        self.key_mask = grow(&self.key_mask, 1)?;
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
        let hidden = self.decode_hidden(input_ids, attention_mask, &mut cache)?;
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
        let hidden = self.decode_hidden(input_ids, attention_mask, cache)?;
        self.head(&hidden)
    }

    /// [`CausalLm::decode`] up to the final norm: the hidden states `(batch, new, hidden)`.
    fn decode_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (batch, new) =
            check_ids(input_ids, Some(attention_mask), self.config().vocab_size, "decode")?;
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
