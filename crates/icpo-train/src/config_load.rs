//! Reading a [`TrainConfig`]: a TOML file (or the defaults), `section.key=value` overrides,
//! unknown keys named with the valid ones, mistyped values named with their default, range
//! checks naming the key.

use std::path::Path;

use icpo_policy::DType;

use crate::config::TrainConfig;
use crate::error::{io_err, Result, TrainError};

pub(crate) fn cfg_err(key: &str, message: impl Into<String>) -> TrainError {
    TrainError::Config { key: key.into(), message: message.into() }
}

/// Every key of `doc` must exist in `defaults` (same nesting): the error names the first that
/// does not, with the valid keys of its section.
/// Tables whose keys are the user's own (passed through, not checked against the defaults).
const FREE_FORM_KEYS: [&str; 1] = ["data.chat_template_args"];

fn check_keys(doc: &toml::Value, defaults: &toml::Value, prefix: &str) -> Result<()> {
    if FREE_FORM_KEYS.contains(&prefix) {
        return Ok(());
    }
    let (Some(d), Some(t)) = (doc.as_table(), defaults.as_table()) else { return Ok(()) };
    for (k, v) in d {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match t.get(k) {
            Some(dv) => check_keys(v, dv, &key)?,
            // Optional fields absent from the defaults' serialisation are not in `t`; none here.
            None => {
                let valid: Vec<&String> = t.keys().collect();
                return Err(cfg_err(&key, format!("unknown key (valid here: {valid:?})")));
            }
        }
    }
    Ok(())
}

/// The default value at dotted `key`, as TOML, for error messages.
fn default_at(defaults: &toml::Value, key: &str) -> String {
    let mut node = Some(defaults);
    for part in key.split('.') {
        node = node.and_then(|n| n.get(part));
    }
    node.map_or_else(|| "unset".to_string(), ToString::to_string)
}

fn set_key(doc: &mut toml::Value, assignment: &str) -> Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| cfg_err(assignment, "an override must look like section.key=value"))?;
    let key = key.trim();
    // A TOML literal when it parses as one (numbers, bools, quoted strings), else a bare string.
    let value = toml::from_str::<toml::Table>(&format!("v = {}", raw.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let mut node = doc;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let table = node.as_table_mut().ok_or_else(|| cfg_err(key, "not a section"))?;
        if i + 1 == parts.len() {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        node =
            table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    Err(cfg_err(key, "empty key"))
}

impl TrainConfig {
    /// Reads a TOML file (or the defaults when `path` is None), applies `overrides`
    /// (`section.key=value`) and validates.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let mut doc = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(io_err(p))?;
                toml::from_str::<toml::Value>(&text).map_err(|e| TrainError::Data {
                    path: p.into(),
                    line: 0,
                    message: format!("malformed TOML: {e}"),
                })?
            }
            None => toml::Value::Table(toml::Table::new()),
        };
        for o in overrides {
            set_key(&mut doc, o)?;
        }
        let defaults = toml::Value::try_from(TrainConfig::default())
            .map_err(|e| cfg_err("(defaults)", e.to_string()))?;
        check_keys(&doc, &defaults, "")?;
        // Through serde_path_to_error so a mistyped value names its key, not only itself.
        let cfg: TrainConfig = serde_path_to_error::deserialize(doc).map_err(|e| {
            let key = e.path().to_string();
            cfg_err(
                &key,
                format!("{} (the default is {})", e.inner().message(), default_at(&defaults, &key)),
            )
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Range checks; the error names the key.
    pub fn validate(&self) -> Result<()> {
        match (self.model.dtype, self.model.compute_dtype) {
            (DType::F16, _) => {
                return Err(cfg_err(
                    "model.dtype",
                    "float16 weights are not supported for training (they need loss scaling); use \"bfloat16\" (f32 master weights in the optimiser) or \"float32\"",
                ))
            }
            (DType::BF16, c) if c != DType::BF16 => {
                return Err(cfg_err(
                    "model.compute_dtype",
                    format!("{} with bfloat16 weights would compute no wider than the weights; set model.compute_dtype = \"bfloat16\"", c.hf_name()),
                ))
            }
            _ => {}
        }
        self.model.load_options()?;
        let positive =
            |key: &str, v: usize| if v == 0 { Err(cfg_err(key, "must be ≥ 1")) } else { Ok(()) };
        positive("rollout.group_size", self.rollout.group_size)?;
        positive("rollout.max_new_tokens", self.rollout.max_new_tokens)?;
        positive("trainer.batch_prompts", self.trainer.batch_prompts)?;
        positive("optim.mini_batch_prompts", self.optim.mini_batch_prompts)?;
        positive("optim.micro_batch_size", self.optim.micro_batch_size)?;
        positive("optim.ppo_epochs", self.optim.ppo_epochs)?;
        if self.optim.zero_stage > 2 {
            return Err(cfg_err(
                "optim.zero_stage",
                format!(
                    "{} is not a stage: 0 (replicated), 1 or 2 (sharded)",
                    self.optim.zero_stage
                ),
            ));
        }
        positive("data.max_prompt_tokens", self.data.max_prompt_tokens)?;
        positive("trainer.scoring_batch", self.trainer.scoring_batch)?;
        if self.trainer.total_steps == 0 {
            return Err(cfg_err("trainer.total_steps", "must be ≥ 1"));
        }
        if self.rollout.group_size < 2 {
            return Err(cfg_err("rollout.group_size", "must be ≥ 2 for group-relative advantages"));
        }
        if self.algorithm.ief && self.rollout.demos == 0 {
            return Err(cfg_err("rollout.demos", "IEF needs at least one demonstration"));
        }
        for (key, v, ok) in [
            ("optim.lr", self.optim.lr, self.optim.lr > 0.0),
            ("optim.beta1", self.optim.beta1, (0.0..1.0).contains(&self.optim.beta1)),
            ("optim.beta2", self.optim.beta2, (0.0..1.0).contains(&self.optim.beta2)),
            ("optim.eps", self.optim.eps, self.optim.eps > 0.0),
            ("optim.weight_decay", self.optim.weight_decay, self.optim.weight_decay >= 0.0),
            ("optim.grad_clip", self.optim.grad_clip, self.optim.grad_clip >= 0.0),
            ("rollout.temperature", self.rollout.temperature, self.rollout.temperature >= 0.0),
            (
                "rollout.top_p",
                self.rollout.top_p,
                self.rollout.top_p > 0.0 && self.rollout.top_p <= 1.0,
            ),
            (
                "algorithm.shaping_alpha",
                self.algorithm.shaping_alpha,
                self.algorithm.shaping_alpha >= 0.0,
            ),
            ("algorithm.epsilon", self.algorithm.epsilon, self.algorithm.epsilon >= 0.0),
            (
                "algorithm.shaping_decay_steps",
                self.algorithm.shaping_decay_steps,
                self.algorithm.shaping_decay_steps > 0.0,
            ),
            ("algorithm.errs.delta", self.algorithm.errs.delta, true),
            (
                "trainer.dist_timeout_s",
                self.trainer.dist_timeout_s,
                self.trainer.dist_timeout_s > 0.0,
            ),
        ] {
            if !(v.is_finite() && ok) {
                return Err(cfg_err(key, format!("{v} is out of range")));
            }
        }
        self.loss.validate().map_err(|e| cfg_err("loss", e.to_string()))?;
        self.data.few_shot.validate().map_err(|e| cfg_err("data.few_shot.item", e.to_string()))?;
        Ok(())
    }

    /// For drivers that load the policy and the problems from the config's files (`icpo_math
    /// --config`): `model.path` and `data.train_path` must be set. A trainer built from a
    /// policy and problems in memory needs neither.
    pub fn require_paths(&self) -> Result<()> {
        if self.model.path.is_empty() {
            return Err(cfg_err("model.path", "required"));
        }
        if self.data.train_path.is_empty() {
            return Err(cfg_err("data.train_path", "required"));
        }
        Ok(())
    }

    /// GRPO's defaults: no IEF rollouts (so neither ERRS nor the expert bonus), everything else
    /// as [`TrainConfig::default`] (group of 8, token-mean loss, k3 KL 0.001, lr 1e-6).
    pub fn grpo() -> Self {
        let mut cfg = TrainConfig::default();
        cfg.algorithm.ief = false;
        cfg.algorithm.shaping = false;
        cfg.rollout.ief_samples = 0;
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icpo_core::ShapingSchedule;

    fn base() -> Vec<String> {
        vec!["model.path=\"m\"".into(), "data.train_path=\"d.jsonl\"".into()]
    }

    #[test]
    fn defaults_are_the_papers() {
        let c = TrainConfig::load(None, &base()).unwrap();
        assert_eq!(c.optim.lr, 1e-6);
        assert_eq!(c.loss.ief_lambda, 0.1);
        assert_eq!(c.loss.kl_coef, 0.001);
        assert_eq!(c.trainer.total_steps, 400);
        assert_eq!(c.rollout.group_size, 8);
        assert!(c.algorithm.errs.enabled && c.algorithm.errs.delta == 1.0);
    }

    #[test]
    fn overrides_and_errors_name_the_key() {
        let mut o = base();
        o.push("loss.ief_lambda=0.01".into());
        o.push("algorithm.shaping_schedule=cosine".into());
        let c = TrainConfig::load(None, &o).unwrap();
        assert_eq!(c.loss.ief_lambda, 0.01);
        assert_eq!(c.algorithm.shaping_schedule, ShapingSchedule::Cosine);
        let mut bad = base();
        bad.push("rollout.grup_size=4".into());
        let e = TrainConfig::load(None, &bad).unwrap_err().to_string();
        assert!(e.contains("rollout.grup_size") && e.contains("group_size"), "{e}");
        let mut bad = base();
        bad.push("optim.lr=-1".into());
        assert!(TrainConfig::load(None, &bad).unwrap_err().to_string().contains("optim.lr"));
        let mut bad = base();
        bad.push("algorithm.advantage=ppo".into());
        let e = TrainConfig::load(None, &bad).unwrap_err().to_string();
        assert!(e.contains("ppo") && e.contains("grpo"), "{e}");
        // Paths are asked for by the file drivers (`require_paths`), not by `load`.
        let empty = TrainConfig::load(None, &[]).unwrap();
        assert!(empty.require_paths().unwrap_err().to_string().contains("model.path"));
    }
}

#[cfg(test)]
mod paper_configs {
    use super::*;

    /// Every file in configs/ is a valid config whose values are the spec's §6.
    #[test]
    fn shipped_configs_parse_with_the_papers_values() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = TrainConfig::load(Some(&path), &[]).unwrap();
                assert_eq!(
                    (c.optim.lr, c.trainer.total_steps, c.trainer.batch_prompts),
                    (1e-6, 400, 128),
                    "{path:?}"
                );
                assert_eq!(
                    (c.loss.ief_lambda, c.loss.kl_coef, c.rollout.max_new_tokens),
                    (0.1, 0.001, 8192)
                );
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                assert_eq!(c.algorithm.ief, !name.contains("grpo"), "{name}");
                assert_eq!(c.algorithm.shaping, name.contains("-rs"), "{name}");
                assert_eq!(c.optim.mini_batch_prompts, if name.contains("8b") { 32 } else { 64 });
                // The authors' scripts train Qwen/Qwen3-{1.7B,8B}, not the -Base checkpoints.
                assert!(
                    c.model.path.ends_with(if name.contains("8b") {
                        "Qwen3-8B"
                    } else {
                        "Qwen3-1.7B"
                    }),
                    "{name}: {}",
                    c.model.path
                );
                // Mixed precision as GPU trainers run it: bf16 weights and products (f32
                // master weights in the optimiser).
                assert_eq!((c.model.dtype, c.model.compute_dtype), (DType::BF16, DType::BF16));
                n += 1;
            }
        }
        assert_eq!(n, 6);
    }

    /// The GRPO preset and the in-memory case: no paths needed to validate, required (by
    /// name) only by file-driven drivers.
    #[test]
    fn grpo_preset_and_paths_for_file_drivers() {
        let g = TrainConfig::grpo();
        assert!(!g.algorithm.ief && !g.algorithm.shaping && g.rollout.ief_samples == 0);
        assert_eq!(g.rollout.group_size, TrainConfig::default().rollout.group_size);
        g.validate().unwrap();
        let e = g.require_paths().unwrap_err().to_string();
        assert!(e.contains("model.path"), "{e}");
        let mut named = TrainConfig::grpo();
        named.model.path = "m".into();
        let e = named.require_paths().unwrap_err().to_string();
        assert!(e.contains("data.train_path"), "{e}");
        named.data.train_path = "t.jsonl".into();
        named.require_paths().unwrap();
        // Loading without paths is fine now; the config file drivers ask for them.
        TrainConfig::load(None, &[]).unwrap();
    }

    #[test]
    fn narrow_weights_and_bad_devices_are_refused_by_name() {
        let path = ["model.path=\"m\"".to_string(), "data.train_path=\"t.jsonl\"".to_string()];
        let with = |extra: &str| {
            let mut o = path.to_vec();
            o.push(extra.to_string());
            TrainConfig::load(None, &o).map(|_| ()).unwrap_err().to_string()
        };
        let e = with("model.dtype=\"float16\"");
        assert!(e.contains("model.dtype") && e.contains("loss scaling"), "{e}");
        // bf16 weights need bf16 products.
        let e = with("model.dtype=\"bfloat16\"");
        assert!(e.contains("model.compute_dtype") && e.contains("float32"), "{e}");
        let e = with("model.device=\"tpu\"");
        assert!(e.contains("model.device"), "{e}");
        let ok = TrainConfig::load(
            None,
            &[path[0].clone(), path[1].clone(), "model.compute_dtype=\"bfloat16\"".into()],
        )
        .unwrap();
        let opts = ok.model.load_options().unwrap();
        assert_eq!((opts.dtype, opts.compute_dtype), (DType::F32, Some(DType::BF16)));
        // The reference is held in the compute dtype.
        let opts = ok.model.reference_load_options().unwrap();
        assert_eq!((opts.dtype, opts.compute_dtype), (DType::BF16, Some(DType::BF16)));
    }
}
