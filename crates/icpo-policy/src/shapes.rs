//! The shapes a model expects: its parameter table (names as in Hugging Face checkpoints,
//! shapes, initialisation), a config checked against a checkpoint's tensors before anything is
//! allocated, and token-id inputs checked before a pass.

use std::path::Path;

use tch::nn::Init;
use tch::{Kind, Tensor};

use crate::config::{Architecture, ModelConfig};
use crate::error::{PolicyError, Result};
use crate::weights;

/// Checks the config's sizes against the checkpoint's tensor table before anything is
/// allocated: a config naming far more layers (or a larger vocabulary) than the weights hold
/// would otherwise allocate for them first and fail inside libtorch.
pub(crate) fn check_against_weights(config: &ModelConfig, dir: &Path) -> Result<()> {
    let shapes = weights::checkpoint_shapes(dir)?;
    let config_path = dir.join("config.json");
    let layers = shapes
        .keys()
        .filter_map(|k| k.strip_prefix("model.layers.")?.split('.').next()?.parse::<i64>().ok())
        .max()
        .map_or(0, |m| m + 1);
    if config.num_hidden_layers > layers {
        return Err(PolicyError::Config {
            path: config_path,
            field: "num_hidden_layers".into(),
            message: format!(
                "{} in the config, but the checkpoint holds weights for {layers} layers",
                config.num_hidden_layers
            ),
        });
    }
    if let Some(shape) = shapes.get("model.embed_tokens.weight") {
        let want = [config.vocab_size, config.hidden_size];
        if shape.as_slice() != want {
            return Err(PolicyError::Config {
                path: config_path,
                field: "vocab_size, hidden_size".into(),
                message: format!(
                    "{want:?} in the config, but model.embed_tokens.weight is {shape:?} in the checkpoint"
                ),
            });
        }
    }
    Ok(())
}

/// `(name, shape, init)` of every weight, in checkpoint naming.
pub(crate) fn weight_specs(c: &ModelConfig) -> Vec<(String, Vec<i64>, Init)> {
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

/// `(batch, seq)` of i64 `ids` (with `mask`'s shape equal) whose values lie in `[0, vocab)`;
/// else a shape error naming `what`.
pub(crate) fn check_ids(
    ids: &Tensor,
    mask: Option<&Tensor>,
    vocab: i64,
    what: &str,
) -> Result<(i64, i64)> {
    check_ids_in(ids, mask, Some(vocab), what)
}

/// [`check_ids`]; with `vocab` None the id range is not read back (a device sync), only the
/// shapes and dtype are checked.
pub(crate) fn check_ids_in(
    ids: &Tensor,
    mask: Option<&Tensor>,
    vocab: Option<i64>,
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
    if let Some(vocab) = vocab.filter(|_| ids.numel() > 0) {
        // One read for both ends.
        let ends = Tensor::f_stack(&[ids.f_min()?, ids.f_max()?], 0)?;
        let ends = Vec::<i64>::try_from(&ends.f_to_device(tch::Device::Cpu)?)?;
        let (lo, hi) = (ends[0], ends[1]);
        if lo < 0 || hi >= vocab {
            return Err(PolicyError::Shape(format!(
                "{what}: token ids must lie in [0, vocab_size = {vocab}), found {lo}..={hi}"
            )));
        }
    }
    Ok((size[0], size[1]))
}
