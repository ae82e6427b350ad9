//! AdamW with decoupled weight decay, gradient-norm clipping and the learning-rate schedule;
//! its state is plain tensors so checkpoints can hold it exactly.
//!
//! Mixed precision as GPU trainers run it: for weights held in bf16 (the forward and decoding
//! use them directly) the optimiser keeps an f32 master copy and an f32 gradient accumulator.
//! [`AdamW::accumulate`] folds each micro-batch's bf16 `.grad` into the accumulator (so
//! accumulation across micro-batches rounds in f32), the update is applied to the master and the
//! bf16 weight is the master rounded; an AdamW step of lr 1e-6 on weights of 1e-2, far below
//! bf16's resolution, then still accumulates in the master. f32 weights are updated in place.

use std::collections::{BTreeMap, BTreeSet};

use tch::{Kind, Tensor};

use crate::config::{LrSchedule, OptimSection};
use crate::error::Result;

/// AdamW state: first and second moments per parameter, the f32 master copies and gradient
/// accumulators of weights held in a narrower dtype, and the update count.
#[derive(Debug)]
pub struct AdamW {
    /// Updates taken.
    pub updates: u64,
    pub(crate) m: BTreeMap<String, Tensor>,
    pub(crate) v: BTreeMap<String, Tensor>,
    /// f32 master weights of the non-f32 parameters (saved with the state).
    pub(crate) master: BTreeMap<String, Tensor>,
    /// f32 gradient accumulators of the non-f32 parameters (not saved: zero between updates).
    accum: BTreeMap<String, Tensor>,
    /// Non-f32 parameters that received a gradient since the last update.
    touched: BTreeSet<String>,
}

impl AdamW {
    /// Fresh state.
    pub fn new() -> Self {
        AdamW {
            updates: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
            master: BTreeMap::new(),
            accum: BTreeMap::new(),
            touched: BTreeSet::new(),
        }
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

    /// Fresh state with its memory already allocated — both moments (f32 zeros shaped like
    /// each weight), and for non-f32 weights the f32 master (a copy of the weight) and gradient
    /// accumulator — so the optimiser's memory is taken when the trainer is built, not at the
    /// first update.
    pub fn for_params(params: &std::collections::HashMap<String, Tensor>) -> Result<Self> {
        let mut s = AdamW::new();
        for (name, p) in params {
            let zeros = || Tensor::f_zeros(p.size(), (Kind::Float, p.device()));
            s.m.insert(name.clone(), zeros()?);
            s.v.insert(name.clone(), zeros()?);
        }
        s.prepare(params)?;
        Ok(s)
    }

    /// Allocates what non-f32 weights need and lacks: the f32 master (a copy of the weight) and
    /// the gradient accumulator. A no-op for f32 weights.
    pub fn prepare(&mut self, params: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for (name, p) in params {
            self.ensure_buffers(name, p)?;
        }
        Ok(())
    }

    /// [`AdamW::prepare`] for one weight.
    fn ensure_buffers(&mut self, name: &str, p: &Tensor) -> Result<()> {
        if p.kind() == Kind::Float {
            return Ok(());
        }
        if !self.master.contains_key(name) {
            let copy = tch::no_grad(|| p.f_detach()?.f_to_kind(Kind::Float))?;
            self.master.insert(name.to_string(), copy);
        }
        if !self.accum.contains_key(name) {
            let zeros = Tensor::f_zeros(p.size(), (Kind::Float, p.device()))?;
            self.accum.insert(name.to_string(), zeros);
        }
        Ok(())
    }

    /// Folds the `.grad` of every non-f32 weight into its f32 accumulator and zeroes it: call
    /// after each micro-batch's backward, so gradients accumulate in f32 (a bf16 `.grad`
    /// summed over micro-batches rounds to 8 bits at every addition). [`AdamW::grad_norm`] and
    /// [`AdamW::step`] fold what is left first.
    pub fn accumulate(&mut self, params: &BTreeMap<String, Tensor>) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (name, p) in params {
                let mut g = p.grad();
                if p.kind() == Kind::Float || !g.defined() {
                    continue;
                }
                self.ensure_buffers(name, p)?;
                if let Some(acc) = self.accum.get_mut(name) {
                    let _ = acc.f_add_(&g)?;
                }
                let _ = g.f_zero_()?;
                self.touched.insert(name.clone());
            }
            Ok(())
        })
    }

    /// The f32 gradient of `name` since the last update (after [`AdamW::accumulate`]): its
    /// accumulator for a non-f32 weight that received one, else `.grad` when defined.
    fn gradient(&self, name: &str, p: &Tensor) -> Option<Tensor> {
        if p.kind() != Kind::Float {
            return self
                .touched
                .contains(name)
                .then(|| self.accum.get(name))
                .flatten()
                .map(Tensor::shallow_clone);
        }
        let g = p.grad();
        g.defined().then_some(g)
    }

    /// Sums the gradients since the last update over the ranks of `group`, in place, so every
    /// rank steps with the whole batch's gradient (data parallelism). Every rank reduces the
    /// same list, each trainable weight's gradient, zero where this rank made none.
    pub fn all_reduce_grads(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        group: &dyn icpo_dist::ProcessGroup,
    ) -> Result<()> {
        if group.world_size() == 1 {
            return Ok(());
        }
        self.accumulate(params)?;
        let trainable = || params.iter().filter(|(_, p)| p.requires_grad());
        // A weight this rank's micro-batches never reached has no `.grad` yet: make it zero.
        let missing: Vec<Tensor> = trainable()
            .filter(|(_, p)| p.kind() == Kind::Float && !p.grad().defined())
            .map(|(_, p)| p.f_sum(Kind::Float).and_then(|s| s.f_mul_scalar(0.0)))
            .collect::<std::result::Result<_, _>>()?;
        if !missing.is_empty() {
            Tensor::f_stack(&missing, 0)?.f_sum(Kind::Float)?.backward();
        }
        for (name, p) in trainable() {
            if p.kind() != Kind::Float {
                self.ensure_buffers(name, p)?;
                self.touched.insert(name.clone());
            }
        }
        let mut grads: Vec<Tensor> =
            trainable().filter_map(|(name, p)| self.gradient(name, p)).collect();
        tch::no_grad(|| group.all_reduce_sum("gradients", &mut grads))?;
        Ok(())
    }

    /// The f32 master of weight `name` (non-f32 weights).
    #[cfg(test)]
    pub(crate) fn master_of(&self, name: &str) -> Option<&Tensor> {
        self.master.get(name)
    }

    /// Bytes of state held: moments, f32 masters and gradient accumulators.
    pub fn state_bytes(&self) -> u64 {
        [&self.m, &self.v, &self.master, &self.accum]
            .iter()
            .flat_map(|map| map.values())
            .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
            .sum()
    }

    /// Sets every gradient to zero, accumulators included (after an update, or a skipped one).
    pub fn zero_grad(&mut self, params: &BTreeMap<String, Tensor>) -> Result<()> {
        zero_grads(params);
        for name in std::mem::take(&mut self.touched) {
            if let Some(a) = self.accum.get_mut(&name) {
                let _ = a.f_zero_()?;
            }
        }
        Ok(())
    }

    /// Global L2 norm of the gradients (NaN or ∞ when any gradient is). Each tensor's norm is
    /// taken in its own dtype (as `torch.nn.utils.clip_grad_norm_`), without an f64 copy of the
    /// gradients; the per-tensor norms are summed in f64. One host sync.
    pub fn grad_norm(&mut self, params: &BTreeMap<String, Tensor>) -> Result<f64> {
        self.accumulate(params)?;
        let mut norms = Vec::with_capacity(params.len());
        for (name, p) in params {
            if let Some(g) = self.gradient(name, p) {
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
        let scale = clip_scale(cfg, norm);
        self.accumulate(params)?;
        self.updates += 1;
        let t = self.updates;
        tch::no_grad(|| -> Result<()> {
            for (name, p) in params {
                let Some(g) = self.gradient(name, p) else {
                    continue;
                };
                let g = g.f_to_kind(Kind::Float)?;
                let m = self.m.entry(name.clone()).or_insert_with(|| g.zeros_like());
                let v = self.v.entry(name.clone()).or_insert_with(|| g.zeros_like());
                let update = adamw_update(m, v, &g, cfg, (lr, scale, t))?;
                let mut p = p.shallow_clone();
                if p.kind() == Kind::Float {
                    apply_update(&mut p, &update, cfg, lr)?;
                    continue;
                }
                // The update goes to the f32 master; the weight is the master rounded.
                self.ensure_buffers(name, &p)?;
                if let Some(master) = self.master.get_mut(name) {
                    apply_update(master, &update, cfg, lr)?;
                    p.f_copy_(master)?;
                }
            }
            Ok(())
        })?;
        self.zero_grad(params)
    }
}

/// The factor gradients are scaled by when their global norm `norm` exceeds `grad_clip`.
pub(crate) fn clip_scale(cfg: &OptimSection, norm: f64) -> f64 {
    if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
        cfg.grad_clip / (norm + 1e-6)
    } else {
        1.0
    }
}

/// AdamW's moment updates for gradient `g` (scaled by `scale`) at update number `t` (1-based),
/// in place, and the step to subtract, `lr · (m / c1) / (sqrt(v) / sqrt(c2) + eps)`: one
/// arithmetic for the replicated optimiser's tensors and a sharded one's flat shard.
pub(crate) fn adamw_update(
    m: &mut Tensor,
    v: &mut Tensor,
    g: &Tensor,
    cfg: &OptimSection,
    (lr, scale, t): (f64, f64, u64),
) -> Result<Tensor> {
    let (b1, b2) = (cfg.beta1, cfg.beta2);
    let t = i32::try_from(t).unwrap_or(i32::MAX);
    let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
    // m ← β1·m + (1−β1)·g·scale;  v ← β2·v + (1−β2)·(g·scale)²
    let _ = m.f_mul_scalar_(b1)?.f_add_(&g.f_mul_scalar((1.0 - b1) * scale)?)?;
    let _ =
        v.f_mul_scalar_(b2)?.f_add_(&g.f_square()?.f_mul_scalar_((1.0 - b2) * scale * scale)?)?;
    let denom = v.f_sqrt()?.f_div_scalar_(c2.sqrt())?.f_add_scalar_(cfg.eps)?;
    Ok(m.f_div(&denom)?.f_mul_scalar_(lr / c1)?)
}

/// `x ← x·(1 − lr·wd) − update`: decoupled weight decay, then the step.
pub(crate) fn apply_update(
    x: &mut Tensor,
    update: &Tensor,
    cfg: &OptimSection,
    lr: f64,
) -> Result<()> {
    let _ = x.f_mul_scalar_(1.0 - lr * cfg.weight_decay)?.f_sub_(update)?;
    Ok(())
}

/// Sets every gradient to zero (after an update, or after a skipped one).
fn zero_grads(params: &BTreeMap<String, Tensor>) {
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
            let norm = opt.grad_norm(&params).unwrap();
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
            let norm = pre.grad_norm(&params2).unwrap();
            pre.step(&params2, &cfg, lr, norm).unwrap();
            zero_grads(&params2);
        }
        let got2: Vec<f32> = Vec::try_from(&w2.detach()).unwrap();
        assert_eq!(got, got2);
    }

    /// bf16 weights: the update goes to the f32 master exactly as AdamW on f32 weights (the
    /// f64 reference), the weight is the master rounded, an lr-1e-6 step moves the master
    /// at once and the bf16 weight only once the steps add up to its resolution; micro-batch
    /// gradients accumulate in f32; the master is saved and required at load.
    #[test]
    fn bf16_weights_update_an_f32_master() {
        let cfg = OptimSection { weight_decay: 0.0, grad_clip: 1e9, ..OptimSection::default() };
        let init = [0.01f32, -0.02, 0.015];
        let w = Tensor::from_slice(&init).to_kind(Kind::BFloat16).set_requires_grad(true);
        let params: BTreeMap<String, Tensor> = [("w".to_string(), w.shallow_clone())].into();
        let named: std::collections::HashMap<String, Tensor> =
            [("w".to_string(), w.shallow_clone())].into();
        let mut opt = AdamW::for_params(&named).unwrap();
        let rounded: Vec<f64> = Vec::<f32>::try_from(&w.to_kind(Kind::Float))
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        // Two micro-batches of 1/3 each: summed in bf16 they would round, in f32 they do not.
        let third = Tensor::from_slice(&[1.0f32 / 3.0; 3]);
        let mut grads = Vec::new();
        for _ in 0..2 {
            (&w * third.to_kind(Kind::BFloat16)).sum(Kind::Float).backward();
            opt.accumulate(&params).unwrap();
        }
        let g1 = opt.accum["w"].double_value(&[0]);
        let bf16_third = third.to_kind(Kind::BFloat16).double_value(&[0]);
        assert_eq!(g1, 2.0 * bf16_third, "f32 sum of the two bf16 gradients");
        grads.push(vec![g1; 3]);
        let lr = 1e-6;
        let norm = opt.grad_norm(&params).unwrap();
        opt.step(&params, &cfg, lr, norm).unwrap();
        let master: Vec<f32> = Vec::try_from(&opt.master["w"]).unwrap();
        let mut expect = rounded.clone();
        reference(&mut expect, &grads, &cfg, lr);
        for (a, b) in master.iter().zip(&expect) {
            assert!((*a as f64 - b).abs() < 1e-9, "master {a} vs reference {b}");
        }
        assert!(master.iter().zip(&rounded).all(|(a, b)| (*a as f64 - b).abs() > 5e-7));
        let now: Vec<f32> = Vec::try_from(&w.to_kind(Kind::Float)).unwrap();
        assert_eq!(
            now.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            rounded,
            "below bf16's resolution"
        );
        assert_eq!(opt.accum["w"].abs().sum(Kind::Float).double_value(&[]), 0.0, "zeroed");
        // Enough steps of the same gradient move the bf16 weights too (their resolution at 0.02
        // is 2^-13 ≈ 1.2e-4: about 60 steps of 1e-6 reach half of it).
        for _ in 0..150 {
            (&w * &third.to_kind(Kind::BFloat16)).sum(Kind::Float).backward();
            let norm = opt.grad_norm(&params).unwrap();
            opt.step(&params, &cfg, lr, norm).unwrap();
        }
        let moved: Vec<f32> = Vec::try_from(&w.to_kind(Kind::Float)).unwrap();
        assert!(moved.iter().zip(&rounded).all(|(a, b)| (*a as f64) < *b), "{moved:?}");
        let master = opt.master["w"].to_kind(Kind::BFloat16).to_kind(Kind::Float);
        assert_eq!(
            Vec::<f32>::try_from(&master).unwrap(),
            moved,
            "the weight is the master rounded"
        );
        // Saved and loaded with its master; without it, the state is refused by name.
        let dir = std::env::temp_dir().join(format!("icpo-optim-master-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("optimizer.safetensors");
        opt.save(&path).unwrap();
        let back = AdamW::load(&path, tch::Device::Cpu).unwrap();
        back.validate(&path, &named).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&back.master["w"]).unwrap(),
            Vec::<f32>::try_from(&opt.master["w"]).unwrap()
        );
        let mut lost = back;
        lost.master.clear();
        let e = lost.validate(&path, &named).unwrap_err().to_string();
        assert!(e.contains("master.w") && e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
