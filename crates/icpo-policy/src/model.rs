//! The decoder-only transformer shared by Qwen2, Qwen3 and Llama.

use std::collections::HashMap;
use std::path::Path;

use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

use crate::cache::KvCache;
use crate::config::{Architecture, DType, ModelConfig};
use crate::error::{write_atomic, PolicyError, Result};
use crate::{rope, weights};

/// Where and in which dtype to put a model.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Device of the weights (default CPU).
    pub device: DeviceOpt,
    /// Weight dtype (default f32, whatever the checkpoint stores).
    pub dtype: DType,
}

/// A `tch::Device` with a `Default` (CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceOpt {
    /// The CPU.
    #[default]
    Cpu,
    /// CUDA device `n`.
    Cuda(usize),
}

impl DeviceOpt {
    /// The libtorch device.
    pub fn device(self) -> Device {
        match self {
            DeviceOpt::Cpu => Device::Cpu,
            DeviceOpt::Cuda(n) => Device::Cuda(n),
        }
    }
}

struct Layer {
    input_norm: Tensor,
    post_norm: Tensor,
    q: Tensor,
    q_bias: Option<Tensor>,
    k: Tensor,
    k_bias: Option<Tensor>,
    v: Tensor,
    v_bias: Option<Tensor>,
    o: Tensor,
    o_bias: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    gate: Tensor,
    gate_bias: Option<Tensor>,
    up: Tensor,
    up_bias: Option<Tensor>,
    down: Tensor,
    down_bias: Option<Tensor>,
}

/// A causal language model (the policy) with its weights in a [`VarStore`], named as in the
/// Hugging Face checkpoint so that an optimiser and the safetensors files agree on names.
pub struct CausalLm {
    config: ModelConfig,
    dtype: DType,
    vs: VarStore,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    inv_freq: Tensor,
}

impl std::fmt::Debug for CausalLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CausalLm")
            .field("architecture", &self.config.architecture)
            .field("layers", &self.layers.len())
            .field("dtype", &self.dtype)
            .field("device", &self.vs.device())
            .finish()
    }
}

/// `(name, shape, init)` of every weight, in checkpoint naming.
fn weight_specs(c: &ModelConfig) -> Vec<(String, Vec<i64>, Init)> {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (qd, kvd) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    let w = Init::Randn { mean: 0.0, stdev: 0.02 };
    let one = Init::Const(1.0);
    let zero = Init::Const(0.0);
    let mut s = vec![("model.embed_tokens.weight".to_string(), vec![v, h], w)];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        s.push((format!("{p}.input_layernorm.weight"), vec![h], one));
        s.push((format!("{p}.post_attention_layernorm.weight"), vec![h], one));
        for (n, out) in [("q_proj", qd), ("k_proj", kvd), ("v_proj", kvd)] {
            s.push((format!("{p}.self_attn.{n}.weight"), vec![out, h], w));
            if c.qkv_bias {
                s.push((format!("{p}.self_attn.{n}.bias"), vec![out], zero));
            }
        }
        s.push((format!("{p}.self_attn.o_proj.weight"), vec![h, qd], w));
        if c.o_bias {
            s.push((format!("{p}.self_attn.o_proj.bias"), vec![h], zero));
        }
        if c.architecture == Architecture::Qwen3 {
            s.push((format!("{p}.self_attn.q_norm.weight"), vec![c.head_dim], one));
            s.push((format!("{p}.self_attn.k_norm.weight"), vec![c.head_dim], one));
        }
        for (n, shape) in
            [("gate_proj", vec![i, h]), ("up_proj", vec![i, h]), ("down_proj", vec![h, i])]
        {
            let out = shape[0];
            s.push((format!("{p}.mlp.{n}.weight"), shape, w));
            if c.mlp_bias {
                s.push((format!("{p}.mlp.{n}.bias"), vec![out], zero));
            }
        }
    }
    s.push(("model.norm.weight".to_string(), vec![h], one));
    if !c.tie_word_embeddings {
        s.push(("lm_head.weight".to_string(), vec![v, h], w));
    }
    s
}

fn linear(x: &Tensor, w: &Tensor, b: &Option<Tensor>) -> Result<Tensor> {
    Ok(x.f_linear(w, b.as_ref())?)
}

/// RMSNorm as transformers computes it: in f32, cast back, then scaled by the weight.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let kind = x.kind();
    if kind == Kind::Float {
        // Same maths in one fused op.
        let dim = *x.size().last().unwrap_or(&1);
        return Ok(x.f_rms_norm(&[dim][..], Some(weight), eps)?);
    }
    let xf = x.f_to_kind(Kind::Float)?;
    let var = xf.f_square()?.f_mean_dim(-1, true, Kind::Float)?;
    let normed = xf.f_mul(&var.f_add_scalar(eps)?.f_rsqrt()?)?.f_to_kind(kind)?;
    Ok(normed.f_mul(weight)?)
}

pub(crate) fn check_ids(
    ids: &Tensor,
    mask: Option<&Tensor>,
    vocab: i64,
    what: &str,
) -> Result<(i64, i64)> {
    let size = ids.size();
    if size.len() != 2 || ids.kind() != Kind::Int64 {
        return Err(PolicyError::Shape(format!(
            "{what}: expected i64 ids of shape (batch, seq), got {:?} of shape {size:?}",
            ids.kind()
        )));
    }
    if let Some(m) = mask {
        if m.size() != size {
            return Err(PolicyError::Shape(format!(
                "{what}: attention mask shape {:?} differs from ids shape {size:?}",
                m.size()
            )));
        }
    }
    if ids.numel() > 0 {
        let (lo, hi) = (ids.f_min()?.int64_value(&[]), ids.f_max()?.int64_value(&[]));
        if lo < 0 || hi >= vocab {
            return Err(PolicyError::Shape(format!(
                "{what}: token ids must lie in [0, vocab_size = {vocab}), found {lo}..={hi}"
            )));
        }
    }
    Ok((size[0], size[1]))
}

impl CausalLm {
    /// A model with freshly initialised weights (normal, std 0.02; norms 1; biases 0), drawn from
    /// libtorch's global generator: call `tch::manual_seed` first for reproducibility.
    pub fn new(config: ModelConfig, options: LoadOptions) -> Result<Self> {
        let mut vs = VarStore::new(options.device.device());
        let root = vs.root();
        for (name, shape, init) in weight_specs(&config) {
            // tch forbids '.' inside one path component: walk the dotted name instead.
            let mut parts: Vec<&str> = name.split('.').collect();
            let leaf = parts.pop().unwrap_or_default();
            let path = parts[1..].iter().fold(root.sub(parts[0]), |p, part| p.sub(*part));
            let _ = path.f_var(leaf, &shape, init)?;
        }
        vs.set_kind(options.dtype.kind());
        let inv_freq = rope::inv_freq(&config, vs.device())?;
        let vars = vs.variables();
        let get = |n: &str| -> Result<Tensor> {
            vars.get(n).map(|t| t.shallow_clone()).ok_or_else(|| PolicyError::Tensor {
                file: "(model)".into(),
                name: n.into(),
                message: "not created".into(),
            })
        };
        let opt = |n: String| vars.get(&n).map(|t| t.shallow_clone());
        let mut layers = Vec::new();
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let a = format!("{p}.self_attn");
            let m = format!("{p}.mlp");
            layers.push(Layer {
                input_norm: get(&format!("{p}.input_layernorm.weight"))?,
                post_norm: get(&format!("{p}.post_attention_layernorm.weight"))?,
                q: get(&format!("{a}.q_proj.weight"))?,
                q_bias: opt(format!("{a}.q_proj.bias")),
                k: get(&format!("{a}.k_proj.weight"))?,
                k_bias: opt(format!("{a}.k_proj.bias")),
                v: get(&format!("{a}.v_proj.weight"))?,
                v_bias: opt(format!("{a}.v_proj.bias")),
                o: get(&format!("{a}.o_proj.weight"))?,
                o_bias: opt(format!("{a}.o_proj.bias")),
                q_norm: opt(format!("{a}.q_norm.weight")),
                k_norm: opt(format!("{a}.k_norm.weight")),
                gate: get(&format!("{m}.gate_proj.weight"))?,
                gate_bias: opt(format!("{m}.gate_proj.bias")),
                up: get(&format!("{m}.up_proj.weight"))?,
                up_bias: opt(format!("{m}.up_proj.bias")),
                down: get(&format!("{m}.down_proj.weight"))?,
                down_bias: opt(format!("{m}.down_proj.bias")),
            });
        }
        let embed = get("model.embed_tokens.weight")?;
        let lm_head =
            if config.tie_word_embeddings { embed.shallow_clone() } else { get("lm_head.weight")? };
        Ok(CausalLm {
            norm: get("model.norm.weight")?,
            embed,
            lm_head,
            layers,
            inv_freq,
            vs,
            dtype: options.dtype,
            config,
        })
    }

    /// Loads a Hugging Face checkpoint directory: `config.json` and `model.safetensors` (or a
    /// sharded `model.safetensors.index.json`).
    pub fn load(dir: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ModelConfig::from_path(dir)?;
        let model = Self::new(config, options)?;
        weights::load_safetensors(dir, &model.vs.variables())?;
        Ok(model)
    }

    /// Saves `config.json` and the weights (sharded above 5 GiB) in Hugging Face's layout, which
    /// transformers and vLLM load. Tied embeddings are written once, as transformers does.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let vars = self.vs.variables();
        let mut tensors: Vec<(String, Tensor)> = weight_specs(&self.config)
            .into_iter()
            .filter_map(|(n, _, _)| vars.get(&n).map(|t| (n, t.shallow_clone())))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        weights::save_safetensors(dir, &tensors, weights::DEFAULT_MAX_SHARD_BYTES)?;
        let path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.config.to_json(self.dtype))
            .map_err(|error| PolicyError::Json { path: path.clone(), error })?;
        write_atomic(&path, text.as_bytes())
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The weight dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The weights, for optimisers and checkpointing.
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// Mutable access to the weights (freezing, copying from another model).
    pub fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.vs
    }

    /// Named weights as `name → tensor` (shallow handles sharing storage).
    pub fn named_weights(&self) -> HashMap<String, Tensor> {
        self.vs.variables()
    }

    /// Logits for a batch, `(batch, seq, vocab)` in the model's dtype.
    ///
    /// # Shapes
    /// - `input_ids`: `(batch, seq)` i64
    /// - `attention_mask`: `(batch, seq)`, 1 for tokens and 0 for padding. Padding goes on the
    ///   left; position ids count real tokens only (`cumsum(mask) - 1`), as `generate` does, so a
    ///   left-padded row gives the logits of the same sequence unpadded. Logits at padding
    ///   positions are finite but meaningless.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let hidden = self.hidden_states(input_ids, attention_mask)?;
        Ok(hidden.f_linear::<Tensor>(&self.lm_head, None)?)
    }

    /// Final hidden states `(batch, seq, hidden)` after the last norm; see [`CausalLm::forward`].
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (batch, seq) = check_ids(input_ids, attention_mask, self.config.vocab_size, "forward")?;
        let device = self.device();
        let key_mask = match attention_mask {
            Some(m) => m.f_to_device(device)?.f_ne(0)?,
            None => Tensor::f_ones([batch, seq], (Kind::Bool, device))?,
        };
        let positions = key_mask.f_cumsum(1, Kind::Int64)?.f_sub_scalar(1)?.f_clamp_min(0)?;
        let mask = attention_mask_4d(&key_mask, seq, 0)?;
        self.run_layers(&input_ids.f_to_device(device)?, &positions, &mask, Past::None, None)
    }

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
            check_ids(input_ids, Some(attention_mask), self.config.vocab_size, "prefill")?;
        let c = &self.config;
        let mut cache = KvCache::new(
            self.layers.len(),
            batch,
            c.num_key_value_heads,
            c.head_dim,
            capacity.max(seq),
            self.dtype.kind(),
            self.device(),
        )?;
        let logits = self.decode(input_ids, attention_mask, &mut cache)?;
        Ok((logits.f_select(1, seq - 1)?, cache))
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
        let (batch, new) =
            check_ids(input_ids, Some(attention_mask), self.config.vocab_size, "decode")?;
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
        Ok(hidden.f_linear::<Tensor>(&self.lm_head, None)?)
    }

    /// The output projection `(vocab, hidden)` (the embedding when tied).
    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    /// Embeds `ids`, runs every layer and the final norm; `(batch, t, hidden)`. `kv_out`
    /// receives each layer's keys and values of these tokens (after RoPE).
    pub(crate) fn run_layers(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        mut past: Past<'_>,
        mut kv_out: Option<&mut Vec<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let eps = c.rms_norm_eps;
        let (cos, sin) = rope::cos_sin(&self.inv_freq, positions, self.dtype.kind())?;
        let mut x = Tensor::f_embedding(&self.embed, ids, -1, false, false)?;
        let size = ids.size();
        let (b, t) = (size[0], size[1]);
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        for (li, layer) in self.layers.iter().enumerate() {
            // Attention block.
            let h = rms_norm(&x, &layer.input_norm, eps)?;
            let mut q = linear(&h, &layer.q, &layer.q_bias)?.f_view([b, t, nh, hd])?;
            let mut k = linear(&h, &layer.k, &layer.k_bias)?.f_view([b, t, nkv, hd])?;
            let v =
                linear(&h, &layer.v, &layer.v_bias)?.f_view([b, t, nkv, hd])?.f_transpose(1, 2)?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                q = rms_norm(&q, qn, eps)?;
                k = rms_norm(&k, kn, eps)?;
            }
            let q = rope::apply(&q.f_transpose(1, 2)?, &cos, &sin)?;
            let k = rope::apply(&k.f_transpose(1, 2)?, &cos, &sin)?;
            if let Some(out) = kv_out.as_mut() {
                out.push((k.shallow_clone(), v.shallow_clone()));
            }
            let (k, v) = match &mut past {
                Past::Cache(cache, start) => {
                    cache.keys[li].f_narrow(2, *start, t)?.f_copy_(&k)?;
                    cache.values[li].f_narrow(2, *start, t)?.f_copy_(&v)?;
                    (
                        cache.keys[li].f_narrow(2, 0, *start + t)?,
                        cache.values[li].f_narrow(2, 0, *start + t)?,
                    )
                }
                Past::Prefix(kv) => {
                    let (pk, pv) = kv.get(li).ok_or_else(|| {
                        PolicyError::Shape(format!(
                            "shared prefix has {} layers of keys, the model {}",
                            kv.len(),
                            self.layers.len()
                        ))
                    })?;
                    (Tensor::f_cat(&[pk, &k], 2)?, Tensor::f_cat(&[pv, &v], 2)?)
                }
                Past::None => (k, v),
            };
            // Grouped-query attention without materialising repeated keys and values.
            let attn = Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(mask),
                0.0,
                false,
                None,
                nh != nkv,
            )?;
            let attn = attn.f_transpose(1, 2)?.f_reshape([b, t, nh * hd])?;
            x = x.f_add(&linear(&attn, &layer.o, &layer.o_bias)?)?;
            // MLP block.
            let h = rms_norm(&x, &layer.post_norm, eps)?;
            let gate = linear(&h, &layer.gate, &layer.gate_bias)?.f_silu()?;
            let up = linear(&h, &layer.up, &layer.up_bias)?;
            x = x.f_add(&linear(&gate.f_mul(&up)?, &layer.down, &layer.down_bias)?)?;
        }
        rms_norm(&x, &self.norm, eps)
    }
}

/// Where attention finds the keys and values of earlier tokens.
pub(crate) enum Past<'a> {
    /// Nowhere: the tokens attend among themselves.
    None,
    /// The decoding cache: new keys are written at slot `start`; attention reads `0..start + t`.
    Cache(&'a mut KvCache, i64),
    /// A prefix's keys and values per layer, `(batch, kv_heads, prefix_len, head_dim)`, put
    /// before the new tokens' without in-place writes, so gradients flow into the prefix.
    Prefix(&'a [(Tensor, Tensor)]),
}

/// Boolean attention mask `(batch, 1, new, offset + new)`: a query sees real keys at or before
/// its own slot, and always itself (so padding rows never softmax over nothing).
pub(crate) fn attention_mask_4d(key_mask: &Tensor, new: i64, offset: i64) -> Result<Tensor> {
    let device = key_mask.device();
    let total = key_mask.size()[1];
    let kpos = Tensor::f_arange(total, (Kind::Int64, device))?.f_view([1, total])?;
    let qpos =
        Tensor::f_arange(new, (Kind::Int64, device))?.f_add_scalar(offset)?.f_view([new, 1])?;
    let causal = kpos.f_le_tensor(&qpos)?;
    let diag = kpos.f_eq_tensor(&qpos)?;
    let keys = key_mask.f_view([-1, 1, 1, total])?;
    Ok(keys.f_logical_and(&causal)?.f_logical_or(&diag)?)
}
