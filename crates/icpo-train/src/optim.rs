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

    /// Fresh state with both moments already allocated (f32 zeros shaped like each weight), so
    /// the optimiser's memory is taken when the trainer is built, not at the first update.
    pub fn for_params(params: &std::collections::HashMap<String, Tensor>) -> Result<Self> {
        let mut s = AdamW::new();
        for (name, p) in params {
            let zeros = || Tensor::f_zeros(p.size(), (Kind::Float, p.device()));
            s.m.insert(name.clone(), zeros()?);
            s.v.insert(name.clone(), zeros()?);
        }
        Ok(s)
    }

    /// Global L2 norm of the gradients (NaN or ∞ when any gradient is). Each tensor's norm is
    /// taken in its own dtype (as `torch.nn.utils.clip_grad_norm_`), without an f64 copy of the
    /// gradients; the per-tensor norms are summed in f64. One host sync.
    pub fn grad_norm(params: &BTreeMap<String, Tensor>) -> Result<f64> {
        let mut norms = Vec::with_capacity(params.len());
        for p in params.values() {
            let g = p.grad();
            if g.defined() {
                norms.push(g.f_norm()?.f_to_kind(Kind::Double)?);
            }
        }
        if norms.is_empty() {
            return Ok(0.0);
        }
        Ok(Tensor::f_stack(&norms, 0)?.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?.sqrt())
    }

    /// Clips gradients to `max_norm` (when > 0), then takes one AdamW step at `lr`, as
    /// `torch.optim.AdamW` does (decoupled decay, bias-corrected moments, `eps` added to
    /// `sqrt(v̂)`), in place.
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
                let g = g.f_to_kind(Kind::Float)?;
                let m = self.m.entry(name.clone()).or_insert_with(|| g.zeros_like());
                let v = self.v.entry(name.clone()).or_insert_with(|| g.zeros_like());
                // m ← β1·m + (1−β1)·g·scale;  v ← β2·v + (1−β2)·(g·scale)²
                let _ = m.f_mul_scalar_(b1)?.f_add_(&g.f_mul_scalar((1.0 - b1) * scale)?)?;
                let _ = v
                    .f_mul_scalar_(b2)?
                    .f_add_(&g.f_square()?.f_mul_scalar_((1.0 - b2) * scale * scale)?)?;
                // p ← p·(1 − lr·wd) − lr · (m / c1) / (sqrt(v) / sqrt(c2) + eps)
                let denom = v.f_sqrt()?.f_div_scalar_(c2.sqrt())?.f_add_scalar_(cfg.eps)?;
                let update = m.f_div(&denom)?.f_mul_scalar_(lr / c1)?;
                let mut p = p.shallow_clone();
                if p.kind() == Kind::Float {
                    let _ = p.f_mul_scalar_(1.0 - lr * cfg.weight_decay)?.f_sub_(&update)?;
                } else {
                    let new = p
                        .f_to_kind(Kind::Float)?
                        .f_mul_scalar(1.0 - lr * cfg.weight_decay)?
                        .f_sub(&update)?
                        .f_to_kind(p.kind())?;
                    p.f_copy_(&new)?;
                }
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
        // On disk before the rename, so a crash never leaves a renamed but partial file.
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(crate::error::io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(crate::error::io_err(path))
    }

    /// Checks loaded state against the policy's weights: every moment names a weight, has its
    /// shape and is float32; after any update every weight has both moments (a file without
    /// them would silently restart AdamW). Errors name `path` and the tensor.
    pub fn validate(
        &self,
        path: &Path,
        weights: &std::collections::HashMap<String, Tensor>,
    ) -> Result<()> {
        let bad = |name: &str, message: String| TrainError::Data {
            path: path.into(),
            line: 0,
            message: format!("tensor `{name}`: {message}"),
        };
        for (prefix, moments) in [("m", &self.m), ("v", &self.v)] {
            for (name, t) in moments {
                let key = format!("{prefix}.{name}");
                let Some(w) = weights.get(name) else {
                    return Err(bad(&key, "names no weight of the policy".into()));
                };
                if t.size() != w.size() {
                    return Err(bad(
                        &key,
                        format!("shape {:?}, the weight is {:?}", t.size(), w.size()),
                    ));
                }
                if t.kind() != Kind::Float {
                    return Err(bad(&key, format!("dtype {:?}, expected Float", t.kind())));
                }
            }
            if self.updates > 0 {
                let mut names: Vec<&String> = weights.keys().collect();
                names.sort();
                if let Some(missing) = names.into_iter().find(|n| !moments.contains_key(*n)) {
                    return Err(bad(
                        &format!("{prefix}.{missing}"),
                        format!("missing, after {} updates", self.updates),
                    ));
                }
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `torch.optim.AdamW`'s algorithm (its documentation's pseudo-code) in f64 scalars.
    fn reference(p: &mut [f64], grads: &[Vec<f64>], cfg: &OptimSection, lr: f64) {
        let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
            let s = if norm > cfg.grad_clip { cfg.grad_clip / (norm + 1e-6) } else { 1.0 };
            for i in 0..p.len() {
                let gi = g[i] * s;
                p[i] *= 1.0 - lr * cfg.weight_decay;
                m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * gi;
                v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * gi * gi;
                let mh = m[i] / (1.0 - cfg.beta1.powi(t));
                let vh = v[i] / (1.0 - cfg.beta2.powi(t));
                p[i] -= lr * mh / (vh.sqrt() + cfg.eps);
            }
        }
    }

    #[test]
    fn steps_match_torch_adamw_with_clipping() {
        let cfg = OptimSection {
            weight_decay: 0.1,
            grad_clip: 1.0,
            beta2: 0.99,
            ..OptimSection::default()
        };
        let lr = 0.01;
        let init = [0.5, -0.25, 1.5, 0.0, -2.0];
        // The second step's gradient has norm > 1, so it is clipped.
        let grads = vec![
            vec![0.1, -0.2, 0.05, 0.3, -0.1],
            vec![1.5, 0.5, -2.0, 0.1, 0.7],
            vec![-0.3, 0.2, 0.1, -0.05, 0.4],
        ];
        let w = Tensor::from_slice(&init.map(|x| x as f32)).set_requires_grad(true);
        let params: BTreeMap<String, Tensor> = [("w".to_string(), w.shallow_clone())].into();
        let mut opt = AdamW::new();
        for g in &grads {
            let gt = Tensor::from_slice(&g.iter().map(|&x| x as f32).collect::<Vec<_>>());
            (&w * &gt).sum(Kind::Float).backward();
            let norm = AdamW::grad_norm(&params).unwrap();
            let want = g.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!((norm - want).abs() < 1e-6, "grad norm {norm} vs {want}");
            opt.step(&params, &cfg, lr, norm).unwrap();
            zero_grads(&params);
        }
        let mut expect = init.to_vec();
        reference(&mut expect, &grads, &cfg, lr);
        let got: Vec<f32> = Vec::try_from(&w.detach()).unwrap();
        for (a, b) in got.iter().zip(&expect) {
            assert!((*a as f64 - b).abs() < 1e-6, "AdamW {a} vs reference {b}");
        }
        assert_eq!(opt.updates, 3);
        // Moments allocated up front give the same updates.
        let w2 = Tensor::from_slice(&init.map(|x| x as f32)).set_requires_grad(true);
        let params2: BTreeMap<String, Tensor> = [("w".to_string(), w2.shallow_clone())].into();
        let named: std::collections::HashMap<String, Tensor> =
            [("w".to_string(), w2.shallow_clone())].into();
        let mut pre = AdamW::for_params(&named).unwrap();
        assert_eq!((pre.m["w"].size(), pre.v["w"].kind()), (vec![5], Kind::Float));
        pre.validate(std::path::Path::new("(memory)"), &named).unwrap();
        for g in &grads {
            let gt = Tensor::from_slice(&g.iter().map(|&x| x as f32).collect::<Vec<_>>());
            (&w2 * &gt).sum(Kind::Float).backward();
            let norm = AdamW::grad_norm(&params2).unwrap();
            pre.step(&params2, &cfg, lr, norm).unwrap();
            zero_grads(&params2);
        }
        let got2: Vec<f32> = Vec::try_from(&w2.detach()).unwrap();
        assert_eq!(got, got2);
    }
}
