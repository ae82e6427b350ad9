//! AdamW with decoupled weight decay, gradient-norm clipping and the learning-rate schedule;
//! its state is plain tensors so checkpoints can hold it exactly.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::config::{LrSchedule, OptimSection};
use crate::error::{Result, TrainError};

/// AdamW state: first and second moments per parameter, and the update count.
#[derive(Debug)]
pub struct AdamW {
    /// Updates taken.
    pub updates: u64,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
}

impl AdamW {
    /// Fresh state.
    pub fn new() -> Self {
        AdamW { updates: 0, m: BTreeMap::new(), v: BTreeMap::new() }
    }

    /// Learning rate of update number `update` (0-based) out of `total`.
    pub fn lr_at(cfg: &OptimSection, update: u64, total: u64) -> f64 {
        if update < cfg.warmup_steps {
            return cfg.lr * (update + 1) as f64 / cfg.warmup_steps as f64;
        }
        match cfg.lr_schedule {
            LrSchedule::Constant => cfg.lr,
            LrSchedule::Cosine => {
                let span = total.saturating_sub(cfg.warmup_steps).max(1) as f64;
                let t = (update - cfg.warmup_steps) as f64 / span;
                cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
            }
        }
    }

    /// Global L2 norm of the gradients (f64; NaN or ∞ when any gradient is).
    pub fn grad_norm(params: &BTreeMap<String, Tensor>) -> Result<f64> {
        let mut sq = 0.0;
        for p in params.values() {
            let g = p.grad();
            if g.defined() {
                sq += g
                    .f_to_kind(Kind::Double)?
                    .f_square()?
                    .f_sum(Kind::Double)?
                    .f_double_value(&[])?;
            }
        }
        Ok(sq.sqrt())
    }

    /// Clips gradients to `max_norm` (when > 0), then takes one AdamW step at `lr`.
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        cfg: &OptimSection,
        lr: f64,
        norm: f64,
    ) -> Result<()> {
        let scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
            cfg.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.updates += 1;
        let t = self.updates as i32;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        tch::no_grad(|| -> Result<()> {
            for (name, p) in params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = g.f_to_kind(Kind::Float)?.f_mul_scalar(scale)?;
                let m = self.m.entry(name.clone()).or_insert_with(|| g.zeros_like());
                let v = self.v.entry(name.clone()).or_insert_with(|| g.zeros_like());
                *m = m.f_mul_scalar(b1)?.f_add(&g.f_mul_scalar(1.0 - b1)?)?;
                *v = v.f_mul_scalar(b2)?.f_add(&g.f_square()?.f_mul_scalar(1.0 - b2)?)?;
                let update = m
                    .f_div_scalar(c1)?
                    .f_div(&v.f_div_scalar(c2)?.f_sqrt()?.f_add_scalar(cfg.eps)?)?;
                let mut p = p.shallow_clone();
                let decayed = p.f_mul_scalar(1.0 - lr * cfg.weight_decay)?;
                let new = decayed
                    .f_to_kind(Kind::Float)?
                    .f_sub(&update.f_mul_scalar(lr)?)?
                    .f_to_kind(p.kind())?;
                p.f_copy_(&new)?;
            }
            Ok(())
        })
    }

    /// Writes the moments (safetensors) and the update count (inside the same file's names).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (k, t) in &self.m {
            named.push((format!("m.{k}"), t.shallow_clone()));
        }
        for (k, t) in &self.v {
            named.push((format!("v.{k}"), t.shallow_clone()));
        }
        named.push(("updates".into(), Tensor::from_slice(&[self.updates as i64])));
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let tmp = path.with_extension("tmp");
        Tensor::write_safetensors(&refs, &tmp)?;
        std::fs::rename(&tmp, path).map_err(crate::error::io_err(path))
    }

    /// Reads state written by [`AdamW::save`], moving it to `device`.
    pub fn load(path: &Path, device: tch::Device) -> Result<Self> {
        let mut s = AdamW::new();
        for (k, t) in Tensor::read_safetensors(path)? {
            let t = t.f_to_device(device)?;
            if let Some(name) = k.strip_prefix("m.") {
                s.m.insert(name.into(), t);
            } else if let Some(name) = k.strip_prefix("v.") {
                s.v.insert(name.into(), t);
            } else if k == "updates" {
                s.updates = t.f_int64_value(&[0])? as u64;
            } else {
                return Err(TrainError::Data {
                    path: path.into(),
                    line: 0,
                    message: format!("unexpected tensor `{k}`"),
                });
            }
        }
        Ok(s)
    }
}

/// Sets every gradient to zero (after an update, or after a skipped one).
pub(crate) fn zero_grads(params: &BTreeMap<String, Tensor>) {
    for p in params.values() {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.f_zero_();
        }
    }
}

impl Default for AdamW {
    fn default() -> Self {
        Self::new()
    }
}
