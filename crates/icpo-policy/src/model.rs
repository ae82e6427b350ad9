//! The decoder-only transformer shared by Qwen2, Qwen3 and Llama.

use std::collections::HashMap;
use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::attention::{attention_mask_4d, single_query_mask, upcast_attention};
use crate::cache::KvCache;
use crate::config::{DType, ModelConfig};
use crate::error::{write_atomic, PolicyError, Result};
use crate::fused::rms_norm;
use crate::layer::{Heads, Layer, PassInputs};
use crate::onednn::Proj;
use crate::options::LoadOptions;
use crate::recompute::recompute;
use crate::shapes::{check_against_weights, check_ids, weight_specs};
use crate::{rope, weights};

/// A causal language model (the policy) with its weights in a [`VarStore`], named as in the
/// Hugging Face checkpoint so that an optimiser and the safetensors files agree on names.
pub struct CausalLm {
    config: ModelConfig,
    dtype: DType,
    compute: DType,
    vs: VarStore,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    /// `lm_head` laid out for decoding, in a decoding copy on a CPU.
    head_proj: Option<Proj>,
    inv_freq: Tensor,
    /// Activation checkpointing per layer (see [`CausalLm::set_gradient_checkpointing`]).
    checkpointing: bool,
}

impl std::fmt::Debug for CausalLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CausalLm")
            .field("architecture", &self.config.architecture)
            .field("layers", &self.layers.len())
            .field("dtype", &self.dtype)
            .field("compute_dtype", &self.compute)
            .field("device", &self.vs.device())
            .field("gradient_checkpointing", &self.checkpointing)
            .finish()
    }
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
                packed: None,
            });
        }
        let embed = get("model.embed_tokens.weight")?;
        let lm_head =
            if config.tie_word_embeddings { embed.shallow_clone() } else { get("lm_head.weight")? };
        Ok(CausalLm {
            norm: get("model.norm.weight")?,
            embed,
            lm_head,
            head_proj: None,
            layers,
            inv_freq,
            checkpointing: false,
            vs,
            dtype: options.dtype,
            compute: options.compute_dtype.unwrap_or(options.dtype),
            config,
        })
    }

    /// Loads a Hugging Face checkpoint directory: `config.json` and `model.safetensors` (or a
    /// sharded `model.safetensors.index.json`).
    pub fn load(dir: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ModelConfig::from_path(dir)?;
        check_against_weights(&config, dir)?;
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

    /// A second handle on the same weights (nothing is copied; updates to one are seen by the
    /// other) that can move to another thread, so that shards of a batch decode in parallel.
    /// A fork of a [`CausalLm::decoding_copy`] shares its packed projections.
    pub fn fork(&self) -> CausalLm {
        let mut vs = VarStore::new(self.vs.device());
        vs.variables_ = self.vs.variables_.clone();
        CausalLm {
            config: self.config.clone(),
            dtype: self.dtype,
            compute: self.compute,
            vs,
            embed: self.embed.shallow_clone(),
            layers: self.layers.iter().map(Layer::shallow_clone).collect(),
            norm: self.norm.shallow_clone(),
            lm_head: self.lm_head.shallow_clone(),
            head_proj: self.head_proj.as_ref().map(Proj::shallow_clone),
            inv_freq: self.inv_freq.shallow_clone(),
            checkpointing: self.checkpointing,
        }
    }

    /// A handle to decode with: its projections are packed once, in the compute dtype, for the
    /// few-row products of decoding (q/k/v and gate/up fused, so a decode step neither
    /// re-concatenates gate/up nor runs q, k and v apart; on a CPU in oneDNN's pre-packed layout,
    /// see [`crate::onednn_decoding_enabled`], elsewhere transposed to `(in, out)`) — a copy of
    /// the weights, 2 bytes per parameter in bf16, held while decoding, on a GPU as on a CPU. On
    /// a CPU the output head gets a laid-out copy too (on a GPU the head's product reads the
    /// weight as it is). The copy does not follow later updates of the weights and passes no
    /// gradient to them: make a new one after an optimiser step, and train with the model
    /// itself.
    pub fn decoding_copy(&self) -> Result<CausalLm> {
        let mut copy = self.fork();
        tch::no_grad(|| -> Result<()> {
            if self.compute != self.dtype {
                // Cast once here rather than in every decoding step.
                let kind = self.compute.kind();
                copy.layers = self.layers.iter().map(|l| l.cast(kind)).collect::<Result<_>>()?;
                copy.embed = self.embed.f_to_kind(kind)?;
                copy.norm = self.norm.f_to_kind(kind)?;
                copy.lm_head = self.lm_head.f_to_kind(kind)?;
                copy.dtype = self.compute;
            }
            for layer in copy.layers.iter_mut() {
                layer.pack()?;
            }
            if self.device() == Device::Cpu {
                copy.head_proj = Some(Proj::new(&copy.lm_head)?);
            }
            Ok(())
        })?;
        Ok(copy)
    }

    /// Turns activation checkpointing per decoder layer on or off (default off; Hugging Face's
    /// `gradient_checkpointing_enable`). On, a pass with gradients keeps only each layer's
    /// input (and a shared prompt's keys and values) for the backward, which recomputes the
    /// layer: activation memory falls from every layer's intermediates to one layer's, for
    /// about one more forward of compute. Gradients are the same (the recomputation is exact).
    /// Passes without gradients and decoding are unaffected.
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }

    /// Whether activation checkpointing is on.
    pub fn gradient_checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The weight dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dtype of activations and products (see [`LoadOptions::compute_dtype`]).
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    /// Logits of final hidden states (in the compute dtype).
    pub(crate) fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(match &self.head_proj {
            Some(w) => w.apply(hidden, None)?,
            None => hidden.f_linear::<Tensor>(&self.lm_head.f_to_kind(hidden.kind())?, None)?,
        })
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// An error naming the first weight (by name) that holds NaN or ∞: such a model's logits
    /// are not finite, so its samples and scores would mean nothing.
    pub fn check_finite(&self) -> Result<()> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in vars {
            let finite = tch::no_grad(|| t.f_isfinite()?.f_all()?.f_int64_value(&[]))?;
            if finite == 0 {
                return Err(PolicyError::NonFinite(name));
            }
        }
        Ok(())
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

    /// Logits for a batch, `(batch, seq, vocab)` in the compute dtype.
    ///
    /// # Shapes
    /// - `input_ids`: `(batch, seq)` i64
    /// - `attention_mask`: `(batch, seq)`, 1 for tokens and 0 for padding. Padding goes on the
    ///   left; position ids count real tokens only (`cumsum(mask) - 1`), as `generate` does, so a
    ///   left-padded row gives the logits of the same sequence unpadded. Logits at padding
    ///   positions are finite but meaningless.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let hidden = self.hidden_states(input_ids, attention_mask)?;
        self.head(&hidden)
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
        self.run_masked(&input_ids.f_to_device(device)?, &key_mask, None)
    }

    /// [`CausalLm::hidden_states`] of checked ids with a bool `key_mask (batch, seq)`, both on
    /// the model's device; `kv_out` as in [`CausalLm::run_layers`].
    pub(crate) fn run_masked(
        &self,
        ids: &Tensor,
        key_mask: &Tensor,
        kv_out: Option<&mut Vec<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let positions = key_mask.f_cumsum(1, Kind::Int64)?.f_sub_scalar(1)?.f_clamp_min(0)?;
        let mask = attention_mask_4d(key_mask, key_mask.size()[1], 0)?;
        self.run_layers(ids, &positions, &mask, Past::None, kv_out)
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
        let kind = self.compute.kind();
        let (cos, sin) = rope::cos_sin(&self.inv_freq, positions, kind)?;
        let heads = Heads { q: c.num_attention_heads, kv: c.num_key_value_heads, dim: c.head_dim };
        let upcast_attention = upcast_attention(self.device(), kind)?;
        let pass =
            PassInputs { heads, eps, cos, sin, mask: mask.shallow_clone(), upcast_attention };
        let mut x = Tensor::f_embedding(&self.embed, ids, -1, false, false)?.f_to_kind(kind)?;
        if self.checkpointing && !matches!(past, Past::Cache(..)) {
            for (li, layer) in self.layers.iter().enumerate() {
                let prefix = match &past {
                    Past::Prefix(kv) => Some(prefix_of(kv, li, self.layers.len())?),
                    _ => None,
                };
                let (y, kv) =
                    self.checkpointed_layer(layer, &x, &pass, prefix, kv_out.is_some())?;
                if let (Some(out), Some(kv)) = (kv_out.as_mut(), kv) {
                    out.push(kv);
                }
                x = y;
            }
            return rms_norm(&x, Some(&self.norm), eps);
        }
        // Mixed precision: products use differentiable casts of the weights.
        let cast: Vec<Layer>;
        let layers = if self.compute == self.dtype {
            &self.layers
        } else {
            cast = self.layers.iter().map(|l| l.cast(kind)).collect::<Result<_>>()?;
            &cast
        };
        // A decoding step's single query per row: made additive once for all layers.
        let single_query_mask = match &past {
            Past::Cache(..) => single_query_mask(mask, kind)?,
            _ => None,
        };
        let t = ids.size()[1];
        for (li, layer) in layers.iter().enumerate() {
            if let Past::Cache(cache, start) = &mut past {
                let h = rms_norm(&x, Some(&layer.input_norm), eps)?;
                let (q, k, v) = layer.attention_inputs(&h, heads, eps, &pass.cos, &pass.sin)?;
                cache.keys[li].f_narrow(2, *start, t)?.f_copy_(&k)?;
                cache.values[li].f_narrow(2, *start, t)?.f_copy_(&v)?;
                let k = cache.keys[li].f_narrow(2, 0, *start + t)?;
                let v = cache.values[li].f_narrow(2, 0, *start + t)?;
                x = layer.attend_and_mlp(&x, &q, &k, &v, &pass, single_query_mask.as_ref())?;
                continue;
            }
            let prefix = match &past {
                Past::Prefix(kv) => Some(prefix_of(kv, li, self.layers.len())?),
                _ => None,
            };
            let (y, k, v) = layer.forward(&x, &pass, prefix)?;
            if let Some(out) = kv_out.as_mut() {
                out.push((k, v));
            }
            x = y;
        }
        rms_norm(&x, Some(&self.norm), eps)
    }
}

impl CausalLm {
    /// One layer under activation checkpointing (see [`crate::recompute`]): its output, and its
    /// keys and values when `want_kv`. Only `x` (and the prefix) stay for the backward; under
    /// mixed precision the weights' casts are made inside, so they are not kept either.
    fn checkpointed_layer(
        &self,
        layer: &Layer,
        x: &Tensor,
        pass: &PassInputs,
        prefix: Option<(&Tensor, &Tensor)>,
        want_kv: bool,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let layer = layer.shallow_clone();
        let pass = pass.shallow_clone();
        let cast = (self.compute != self.dtype).then_some(self.compute.kind());
        let mut inputs = vec![x.shallow_clone()];
        if let Some((pk, pv)) = prefix {
            inputs.extend([pk.shallow_clone(), pv.shallow_clone()]);
        }
        let outs = recompute(&inputs, move |t: &[Tensor]| -> Result<Vec<Tensor>> {
            let casted;
            let layer = match cast {
                Some(kind) => {
                    casted = layer.cast(kind)?;
                    &casted
                }
                None => &layer,
            };
            let prefix = match t {
                [_, pk, pv] => Some((pk, pv)),
                _ => None,
            };
            let (y, k, v) = layer.forward(&t[0], &pass, prefix)?;
            Ok(if want_kv { vec![y, k, v] } else { vec![y] })
        })?;
        let n = outs.len();
        let mut it = outs.into_iter();
        match (it.next(), it.next(), it.next(), want_kv) {
            (Some(y), None, None, false) => Ok((y, None)),
            (Some(y), Some(k), Some(v), true) if n == 3 => Ok((y, Some((k, v)))),
            _ => Err(PolicyError::Shape(format!(
                "checkpointed layer returned {n} tensors, expected {}",
                if want_kv { 3 } else { 1 }
            ))),
        }
    }
}

/// Layer `li`'s keys and values of a shared prefix.
fn prefix_of(kv: &[(Tensor, Tensor)], li: usize, layers: usize) -> Result<(&Tensor, &Tensor)> {
    kv.get(li).map(|(k, v)| (k, v)).ok_or_else(|| {
        PolicyError::Shape(format!(
            "shared prefix has {} layers of keys, the model {layers}",
            kv.len()
        ))
    })
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
