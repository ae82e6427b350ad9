//! `config.json` of Qwen2, Qwen3 and Llama checkpoints, with Hugging Face's field names.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{read_json, PolicyError, Result};

/// The model families this crate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Architecture {
    /// Qwen2 / Qwen2.5: biases on the q, k and v projections.
    Qwen2,
    /// Qwen3 (dense): per-head RMSNorm on q and k, explicit `head_dim`.
    Qwen3,
    /// Llama 2 / 3 and compatible models.
    Llama,
}

impl Architecture {
    const VALID: &'static str = "qwen2, qwen3, llama";

    fn from_model_type(name: &str) -> Option<Self> {
        match name {
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            "llama" => Some(Self::Llama),
            _ => None,
        }
    }
}

/// Floating-point dtype of a model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub enum DType {
    /// 32-bit float (default; what CPU training and parity tests use).
    #[default]
    #[serde(rename = "float32")]
    F32,
    /// bfloat16.
    #[serde(rename = "bfloat16")]
    BF16,
    /// IEEE half precision.
    #[serde(rename = "float16")]
    F16,
}

impl DType {
    /// The libtorch kind.
    pub fn kind(self) -> tch::Kind {
        match self {
            DType::F32 => tch::Kind::Float,
            DType::BF16 => tch::Kind::BFloat16,
            DType::F16 => tch::Kind::Half,
        }
    }

    /// Hugging Face's name (`torch_dtype` / `dtype` in config.json).
    pub fn hf_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
        }
    }

    /// Parses Hugging Face's name; an unknown one is an error listing the valid ones.
    pub fn from_hf_name(name: &str) -> std::result::Result<Self, String> {
        match name {
            "float32" | "fp32" | "f32" => Ok(DType::F32),
            "bfloat16" | "bf16" => Ok(DType::BF16),
            "float16" | "fp16" | "f16" | "half" => Ok(DType::F16),
            other => Err(format!("unknown dtype `{other}` (valid: float32, bfloat16, float16)")),
        }
    }
}

/// How rotary position frequencies are scaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Scale of the low frequencies.
        factor: f64,
        /// Wavelength bound (in units of the original context) of the low band.
        low_freq_factor: f64,
        /// Wavelength bound of the high band.
        high_freq_factor: f64,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: f64,
    },
}

/// A model's configuration, read from `config.json`.
///
/// Field names are Hugging Face's. Both layouts of RoPE settings are accepted: `rope_theta` and
/// `rope_scaling` at the top level (transformers 4, most checkpoints on the Hub) and
/// `rope_parameters` (transformers 5).
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The model family, from `model_type`.
    pub architecture: Architecture,
    /// `vocab_size`.
    pub vocab_size: i64,
    /// `hidden_size`.
    pub hidden_size: i64,
    /// `intermediate_size` of the gated MLP.
    pub intermediate_size: i64,
    /// `num_hidden_layers`.
    pub num_hidden_layers: i64,
    /// `num_attention_heads`.
    pub num_attention_heads: i64,
    /// `num_key_value_heads` (defaults to `num_attention_heads`).
    pub num_key_value_heads: i64,
    /// `head_dim` (defaults to `hidden_size / num_attention_heads`).
    pub head_dim: i64,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f64,
    /// `rope_theta`.
    pub rope_theta: f64,
    /// Scaling of the rotary frequencies.
    pub rope_scaling: RopeScaling,
    /// `tie_word_embeddings`: the output projection shares the input embedding.
    pub tie_word_embeddings: bool,
    /// Biases on q, k and v (`attention_bias`; always true for Qwen2).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Biases in the MLP (`mlp_bias`).
    pub mlp_bias: bool,
    /// `torch_dtype` / `dtype` of the stored weights.
    pub dtype: Option<DType>,
    /// `max_position_embeddings`.
    pub max_position_embeddings: i64,
    /// The JSON as read, so that saving keeps fields this crate does not interpret.
    pub raw: serde_json::Value,
}

type Obj = serde_json::Map<String, serde_json::Value>;

struct Fields<'a> {
    path: &'a Path,
    obj: &'a Obj,
}

impl Fields<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> PolicyError {
        PolicyError::Config {
            path: self.path.to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn opt_i64(&self, field: &str) -> Result<Option<i64>> {
        match self.obj.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => match v.as_i64() {
                Some(x) if x > 0 => Ok(Some(x)),
                _ => Err(self.err(field, format!("expected a positive integer, got {v}"))),
            },
        }
    }

    fn i64(&self, field: &str) -> Result<i64> {
        self.opt_i64(field)?.ok_or_else(|| self.err(field, "missing"))
    }

    fn opt_f64_in(&self, obj: &Obj, field: &str) -> Result<Option<f64>> {
        match obj.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
                _ => Err(self.err(field, format!("expected a positive number, got {v}"))),
            },
        }
    }

    fn bool(&self, field: &str, default: bool) -> Result<bool> {
        match self.obj.get(field) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => {
                v.as_bool().ok_or_else(|| self.err(field, format!("expected a bool, got {v}")))
            }
        }
    }
}

impl ModelConfig {
    /// Reads `config.json` from a checkpoint directory (or the file itself).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let mut path: PathBuf = path.as_ref().into();
        if path.is_dir() || path.extension().is_none_or(|e| e != "json") {
            path = path.join("config.json");
        }
        let raw: serde_json::Value = read_json(&path)?;
        Self::from_json(raw, &path)
    }

    /// Interprets an already parsed config; `path` is only used in error messages.
    pub fn from_json(raw: serde_json::Value, path: &Path) -> Result<Self> {
        let obj = raw.as_object().ok_or_else(|| PolicyError::Config {
            path: path.into(),
            field: "(root)".into(),
            message: "expected a JSON object".into(),
        })?;
        let f = Fields { path, obj };
        let model_type = obj
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| f.err("model_type", "missing"))?;
        let architecture = Architecture::from_model_type(model_type).ok_or_else(|| {
            f.err(
                "model_type",
                format!(
                    "unsupported architecture `{model_type}` (supported: {})",
                    Architecture::VALID
                ),
            )
        })?;
        let hidden_size = f.i64("hidden_size")?;
        let num_attention_heads = f.i64("num_attention_heads")?;
        let num_key_value_heads = f.opt_i64("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}"),
            ));
        }
        let head_dim = match f.opt_i64("head_dim")? {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(f.err(
                    "head_dim",
                    format!("missing, and hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"),
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(f.err("head_dim", format!("{head_dim} must be even for rotary embeddings")));
        }
        if let Some(act) = obj.get("hidden_act").and_then(|v| v.as_str()) {
            if act != "silu" {
                return Err(f.err(
                    "hidden_act",
                    format!("unsupported activation `{act}` (supported: silu)"),
                ));
            }
        }
        if f.bool("use_sliding_window", false)? {
            return Err(f.err("use_sliding_window", "sliding-window attention is not supported"));
        }
        let (rope_theta, rope_scaling) = Self::rope(&f)?;
        let attention_bias = f.bool("attention_bias", false)?;
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 => (true, false),
            Architecture::Qwen3 => (attention_bias, attention_bias),
            Architecture::Llama => (attention_bias, attention_bias),
        };
        let dtype_field = if obj.contains_key("dtype") { "dtype" } else { "torch_dtype" };
        let dtype = match obj.get(dtype_field).and_then(|v| v.as_str()) {
            None => None,
            Some(name) => Some(DType::from_hf_name(name).map_err(|m| f.err(dtype_field, m))?),
        };
        let rms_norm_eps = f.opt_f64_in(obj, "rms_norm_eps")?.unwrap_or(1e-6);
        Ok(ModelConfig {
            architecture,
            vocab_size: f.i64("vocab_size")?,
            hidden_size,
            intermediate_size: f.i64("intermediate_size")?,
            num_hidden_layers: f.i64("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: f.bool("tie_word_embeddings", false)?,
            qkv_bias,
            o_bias,
            mlp_bias: f.bool("mlp_bias", false)?,
            dtype,
            max_position_embeddings: f.opt_i64("max_position_embeddings")?.unwrap_or(32768),
            raw,
        })
    }

    fn rope(f: &Fields<'_>) -> Result<(f64, RopeScaling)> {
        // transformers 5 keeps everything in `rope_parameters`; older files use top-level fields.
        let (params, field) = match f.obj.get("rope_parameters") {
            Some(serde_json::Value::Object(p)) => (Some(p), "rope_parameters"),
            Some(serde_json::Value::Null) | None => match f.obj.get("rope_scaling") {
                Some(serde_json::Value::Object(p)) => (Some(p), "rope_scaling"),
                Some(serde_json::Value::Null) | None => (None, "rope_scaling"),
                Some(v) => {
                    return Err(f.err("rope_scaling", format!("expected an object, got {v}")))
                }
            },
            Some(v) => return Err(f.err("rope_parameters", format!("expected an object, got {v}"))),
        };
        let theta = match params.map(|p| f.opt_f64_in(p, "rope_theta")).transpose()?.flatten() {
            Some(t) => t,
            None => f.opt_f64_in(f.obj, "rope_theta")?.unwrap_or(10000.0),
        };
        let Some(p) = params else { return Ok((theta, RopeScaling::Default)) };
        let kind = p
            .get("rope_type")
            .or_else(|| p.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let num = |name: &str| -> Result<f64> {
            f.opt_f64_in(p, name)?.ok_or_else(|| f.err(&format!("{field}.{name}"), "missing"))
        };
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: num("factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            },
            other => {
                return Err(f.err(
                    &format!("{field}.rope_type"),
                    format!(
                        "unsupported rope scaling `{other}` (supported: default, linear, llama3)"
                    ),
                ))
            }
        };
        Ok((theta, scaling))
    }

    /// The config as JSON for saving, with the dtype fields set to `dtype`.
    pub fn to_json(&self, dtype: DType) -> serde_json::Value {
        let mut raw = self.raw.clone();
        if let Some(obj) = raw.as_object_mut() {
            let key = if obj.contains_key("dtype") { "dtype" } else { "torch_dtype" };
            obj.insert(key.into(), serde_json::Value::String(dtype.hf_name().into()));
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<ModelConfig> {
        ModelConfig::from_json(json, Path::new("config.json"))
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "model_type": "qwen3", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "head_dim": 6, "rope_theta": 5000.0, "torch_dtype": "bfloat16"
        })
    }

    #[test]
    fn legacy_and_transformers5_rope_layouts() {
        let c = parse(base()).unwrap();
        assert_eq!(c.rope_theta, 5000.0);
        assert_eq!(c.head_dim, 6);
        assert_eq!(c.dtype, Some(DType::BF16));
        let mut v = base();
        v["rope_parameters"] = serde_json::json!({"rope_theta": 7.0e5, "rope_type": "default"});
        assert_eq!(parse(v).unwrap().rope_theta, 7.0e5);
    }

    #[test]
    fn llama3_scaling_read_from_rope_scaling() {
        let mut v = base();
        v["model_type"] = "llama".into();
        v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = parse(v).unwrap();
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    }

    #[test]
    fn unsupported_things_are_named() {
        let mut v = base();
        v["model_type"] = "mistral".into();
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("model_type") && e.contains("mistral") && e.contains("qwen3"), "{e}");
        let mut v = base();
        v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("yarn") && e.contains("llama3"), "{e}");
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(parse(v).unwrap_err().to_string().contains("hidden_size"));
        let mut v = base();
        v["num_key_value_heads"] = 3.into();
        assert!(parse(v).unwrap_err().to_string().contains("num_key_value_heads"));
        let mut v = base();
        v["torch_dtype"] = "int8".into();
        assert!(parse(v).unwrap_err().to_string().contains("torch_dtype"));
    }
}
