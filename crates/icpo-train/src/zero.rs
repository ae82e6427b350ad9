//! Sharded AdamW, ZeRO stages 1 and 2 (the distributed issue's item 4): each rank holds the
//! f32 master weights, both AdamW moments and the f32 gradient of its shard only.
//!
//! Layout (FSDP2's per-parameter sharding, flattened): every trainable weight, in name order, is
//! flattened and cut into `world` chunks of `ceil(numel / world)` elements; rank `r` owns chunk
//! `r` of every weight (the last ones padded with zeros). A rank's shard is its chunks side by
//! side, so its state is four flat f32 tensors of `Σ ceil(numel / world)` elements. Weights are
//! grouped into buckets of one dtype: a bucket's gradients go through one reduce-scatter (in
//! f32, rank-major so each rank receives its chunks), its updated weights through one
//! all-gather (in the weights' own dtype).
//!
//! Stage 1 keeps whole f32 gradient accumulators (as [`crate::AdamW`] does) and reduce-scatters
//! once per optimiser step; stage 2 reduce-scatters after every micro-batch, so no whole f32
//! gradient is ever held (every rank then runs the same number of micro-batch rounds: the
//! update loop pads with empty ones). The arithmetic of the step is [`crate::AdamW`]'s, element
//! by element, so the weights equal the replicated optimiser's up to float summation order.

use std::collections::BTreeMap;

use icpo_dist::ProcessGroup;
use tch::{Device, Kind, Tensor};

use crate::config::OptimSection;
use crate::error::Result;
use crate::optim::{adamw_update, apply_update, clip_scale};

/// Elements (all ranks together) per bucket: 64 Mi, 256 MB of f32 gradient in flight.
const BUCKET_ELEMS: i64 = 1 << 26;

/// One weight's place in the shards.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub name: String,
    pub shape: Vec<i64>,
    pub numel: i64,
    /// Elements per rank: `ceil(numel / world)`.
    pub chunk: i64,
    /// Where this weight's chunk starts in a rank's shard.
    pub offset: i64,
    pub kind: Kind,
}

impl Slot {
    /// `[lo, hi)`: the elements of the flattened weight rank `rank` owns (empty past the end).
    pub fn range(&self, rank: usize) -> (i64, i64) {
        let lo = (rank as i64 * self.chunk).min(self.numel);
        (lo, (lo + self.chunk).min(self.numel))
    }

    /// Copies rank `rank`'s elements of `weight` into its place in the shard tensor `shard`.
    fn copy_owned(&self, rank: usize, weight: &Tensor, shard: &Tensor) -> Result<()> {
        let (lo, hi) = self.range(rank);
        if hi > lo {
            let w = weight.f_detach()?.f_reshape([-1])?.f_narrow(0, lo, hi - lo)?;
            shard.f_narrow(0, self.offset, hi - lo)?.f_copy_(&w)?;
        }
        Ok(())
    }
}

/// Consecutive slots of one dtype reduced and gathered together.
#[derive(Debug, Clone)]
struct Bucket {
    slots: std::ops::Range<usize>,
    offset: i64,
    len: i64,
    kind: Kind,
}

/// The shards of the weights in `params` (trainable ones, in name order) over `world` ranks.
pub(crate) fn layout(params: &BTreeMap<String, Tensor>, world: usize) -> Vec<Slot> {
    let mut offset = 0;
    let mut slots = Vec::new();
    for (name, p) in params.iter().filter(|(_, p)| p.requires_grad() && p.numel() > 0) {
        let numel = p.numel() as i64;
        let chunk = (numel + world as i64 - 1) / world as i64;
        slots.push(Slot {
            name: name.clone(),
            shape: p.size(),
            numel,
            chunk,
            offset,
            kind: p.kind(),
        });
        offset += chunk;
    }
    slots
}

fn buckets(slots: &[Slot], world: usize) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = Vec::new();
    for (i, s) in slots.iter().enumerate() {
        match out.last_mut() {
            Some(b) if b.kind == s.kind && (b.len + s.chunk) * world as i64 <= BUCKET_ELEMS => {
                b.slots.end = i + 1;
                b.len += s.chunk;
            }
            _ => out.push(Bucket { slots: i..i + 1, offset: s.offset, len: s.chunk, kind: s.kind }),
        }
    }
    out
}

/// The AdamW state of one rank's shard.
#[derive(Debug)]
pub struct ZeroAdamW {
    /// Updates taken.
    pub updates: u64,
    stage: u8,
    rank: usize,
    world: usize,
    pub(crate) slots: Vec<Slot>,
    buckets: Vec<Bucket>,
    /// Flat f32 shard tensors: master weights, moments, gradient since the last update.
    pub(crate) master: Tensor,
    pub(crate) m: Tensor,
    pub(crate) v: Tensor,
    grad: Tensor,
    /// Stage 1: whole f32 accumulators of the non-f32 weights between reductions.
    accum: BTreeMap<String, Tensor>,
}

impl ZeroAdamW {
    /// Fresh state for rank `group.rank()`: zero moments, masters copied from the weights.
    pub fn new(
        params: &BTreeMap<String, Tensor>,
        group: &dyn ProcessGroup,
        stage: u8,
    ) -> Result<Self> {
        let (rank, world) = (group.rank(), group.world_size());
        let slots = layout(params, world);
        let len: i64 = slots.iter().map(|s| s.chunk).sum();
        let device = params.values().next().map_or(Device::Cpu, Tensor::device);
        let zeros = || Tensor::f_zeros([len], (Kind::Float, device));
        let master = zeros()?;
        for s in &slots {
            s.copy_owned(rank, &params[&s.name], &master)?;
        }
        Ok(ZeroAdamW {
            updates: 0,
            stage,
            rank,
            world,
            buckets: buckets(&slots, world),
            slots,
            master,
            m: zeros()?,
            v: zeros()?,
            grad: zeros()?,
            accum: BTreeMap::new(),
        })
    }

    /// The ZeRO stage (1 or 2).
    pub fn stage(&self) -> u8 {
        self.stage
    }

    /// Whether every micro-batch's gradient is reduced at once (stage 2: a collective per
    /// micro-batch, so every rank must run the same number of them).
    pub fn reduces_per_micro_batch(&self) -> bool {
        self.stage >= 2
    }

    /// After each micro-batch's backward: stage 2 reduce-scatters the gradients into the shard
    /// (every rank calls it, with or without a backward of its own); stage 1 folds non-f32
    /// gradients into whole f32 accumulators.
    pub fn accumulate(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        group: &dyn ProcessGroup,
    ) -> Result<()> {
        if self.reduces_per_micro_batch() {
            return self.reduce_scatter(params, group);
        }
        self.fold(params)
    }

    /// Stage 1: non-f32 gradients into whole f32 accumulators (rounding once per addition in
    /// f32, not bf16), `.grad` zeroed.
    fn fold(&mut self, params: &BTreeMap<String, Tensor>) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for s in &self.slots {
                let mut g = params[&s.name].grad();
                if s.kind == Kind::Float || !g.defined() {
                    continue;
                }
                match self.accum.get_mut(&s.name) {
                    Some(a) => {
                        let _ = a.f_add_(&g)?;
                    }
                    None => {
                        self.accum.insert(s.name.clone(), g.f_to_kind(Kind::Float)?);
                    }
                }
                let _ = g.f_zero_()?;
            }
            Ok(())
        })
    }

    /// Before the norm and the step: stage 1 reduce-scatters what it accumulated (a collective
    /// every rank calls once per optimiser step); stage 2 has already.
    pub fn finish_gradients(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        group: &dyn ProcessGroup,
    ) -> Result<()> {
        if self.reduces_per_micro_batch() {
            return Ok(());
        }
        self.fold(params)?;
        self.reduce_scatter(params, group)
    }

    /// Sums every weight's gradient over the ranks; this rank's chunks join its shard's
    /// gradient. Gradients are zeroed as they are taken.
    fn reduce_scatter(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        group: &dyn ProcessGroup,
    ) -> Result<()> {
        let world = self.world as i64;
        tch::no_grad(|| -> Result<()> {
            for b in &self.buckets {
                let mut cols = Vec::with_capacity(b.slots.len());
                for s in &self.slots[b.slots.clone()] {
                    let p = &params[&s.name];
                    let g = match self.accum.get(&s.name) {
                        Some(a) => a.shallow_clone(),
                        None => p.grad(),
                    };
                    let flat = if g.defined() {
                        g.f_to_kind(Kind::Float)?.f_reshape([-1])?
                    } else {
                        Tensor::f_zeros([s.numel], (Kind::Float, self.grad.device()))?
                    };
                    let padded = flat.f_constant_pad_nd([0, world * s.chunk - s.numel])?;
                    cols.push(padded.f_view([world, s.chunk])?);
                }
                let input = Tensor::f_cat(&cols, 1)?.f_reshape([-1])?;
                let mut out = self.grad.f_narrow(0, b.offset, b.len)?;
                if self.world == 1 {
                    let _ = out.f_add_(&input)?;
                } else {
                    let mut reduced = Tensor::f_zeros([b.len], (Kind::Float, self.grad.device()))?;
                    group.reduce_scatter_sum("gradients (reduce-scatter)", &input, &mut reduced)?;
                    let _ = out.f_add_(&reduced)?;
                }
            }
            Ok(())
        })?;
        self.clear_local(params)
    }

    /// Zeroes the weights' `.grad` and the stage-1 accumulators (not the shard's gradient).
    fn clear_local(&mut self, params: &BTreeMap<String, Tensor>) -> Result<()> {
        for s in &self.slots {
            let mut g = params[&s.name].grad();
            if g.defined() {
                let _ = g.f_zero_()?;
            }
        }
        for a in self.accum.values_mut() {
            let _ = a.f_zero_()?;
        }
        Ok(())
    }

    /// Global L2 norm of the reduced gradient: each rank's shard, summed over ranks in f64.
    pub fn grad_norm(&self, group: &dyn ProcessGroup) -> Result<f64> {
        let mut sq = [self.grad.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?];
        group.all_reduce_f64("gradient norm", &mut sq)?;
        Ok(sq[0].sqrt())
    }

    /// [`crate::AdamW::step`] on this rank's shard (clipping by the global `norm`), then every
    /// weight all-gathered from the updated masters, rounded to its dtype.
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        cfg: &OptimSection,
        lr: f64,
        norm: f64,
        group: &dyn ProcessGroup,
    ) -> Result<()> {
        let scale = clip_scale(cfg, norm);
        self.updates += 1;
        let t = self.updates;
        tch::no_grad(|| -> Result<()> {
            let update = adamw_update(&mut self.m, &mut self.v, &self.grad, cfg, (lr, scale, t))?;
            apply_update(&mut self.master, &update, cfg, lr)?;
            let _ = self.grad.f_zero_()?;
            self.gather_weights(params, group)
        })
    }

    /// Every weight from the ranks' masters (all-gather per bucket, in the weights' dtype).
    fn gather_weights(
        &self,
        params: &BTreeMap<String, Tensor>,
        group: &dyn ProcessGroup,
    ) -> Result<()> {
        let world = self.world as i64;
        for b in &self.buckets {
            let mine = self.master.f_narrow(0, b.offset, b.len)?.f_to_kind(b.kind)?;
            let all = if self.world == 1 {
                mine
            } else {
                let mut all = Tensor::f_empty([world * b.len], (b.kind, mine.device()))?;
                group.all_gather_into("updated weights (all-gather)", &mine, &mut all)?;
                all
            };
            let rows = all.f_view([world, b.len])?;
            for s in &self.slots[b.slots.clone()] {
                let w = rows
                    .f_narrow(1, s.offset - b.offset, s.chunk)?
                    .f_reshape([-1])?
                    .f_narrow(0, 0, s.numel)?
                    .f_view(s.shape.as_slice())?;
                params[&s.name].shallow_clone().f_copy_(&w)?;
            }
        }
        Ok(())
    }

    /// Drops every gradient (a skipped update).
    pub fn zero_grad(&mut self, params: &BTreeMap<String, Tensor>) -> Result<()> {
        let _ = self.grad.f_zero_()?;
        self.clear_local(params)
    }

    /// Bytes of optimiser state this rank holds (masters, moments, shard gradient, stage-1
    /// accumulators).
    pub fn state_bytes(&self) -> u64 {
        let shard = 4 * 4 * self.master.numel() as u64;
        shard + self.accum.values().map(|a| 4 * a.numel() as u64).sum::<u64>()
    }

    /// This rank and the world size the shards were cut for.
    pub fn rank_and_world(&self) -> (usize, usize) {
        (self.rank, self.world)
    }

    /// Copies what of `piece` (elements `[lo, lo + numel)` of the flattened `m`, `v` or
    /// `master` of weight `name`, from a checkpoint) falls in this rank's range; returns the
    /// elements taken, for the caller's coverage count. Unknown names are the caller's to refuse.
    pub(crate) fn take_piece(
        &mut self,
        prefix: &str,
        name: &str,
        lo: i64,
        piece: &Tensor,
    ) -> Result<i64> {
        let Some(s) = self.slot(name) else { return Ok(0) };
        let dst = match prefix {
            "m" => &self.m,
            "v" => &self.v,
            "master" => &self.master,
            _ => return Ok(0),
        };
        let (mine_lo, mine_hi) = s.range(self.rank);
        let (a, b) = (lo.max(mine_lo), (lo + piece.numel() as i64).min(mine_hi));
        if b <= a {
            return Ok(0);
        }
        let src = piece.f_reshape([-1])?.f_narrow(0, a - lo, b - a)?.f_to_kind(Kind::Float)?;
        dst.f_narrow(0, s.offset + a - mine_lo, b - a)?.f_copy_(&src)?;
        Ok(b - a)
    }

    fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.name == name)
    }

    /// Elements this rank holds of weight `name` (0 for an unknown one).
    pub(crate) fn owned(&self, name: &str) -> i64 {
        self.slot(name).map_or(0, |s| {
            let (lo, hi) = s.range(self.rank);
            hi - lo
        })
    }

    /// Sets the master of weight `name` from the weight itself (a checkpoint of f32 weights
    /// holds no separate master).
    pub(crate) fn master_from_weight(&self, name: &str, weight: &Tensor) -> Result<()> {
        match self.slot(name) {
            Some(s) => s.copy_owned(self.rank, weight, &self.master),
            None => Ok(()),
        }
    }
}

/// A rank of a world that is never talked to (layouts and files only), for tests.
#[cfg(test)]
pub(crate) struct Seat(pub usize, pub usize);

#[cfg(test)]
impl ProcessGroup for Seat {
    fn rank(&self) -> usize {
        self.0
    }
    fn world_size(&self) -> usize {
        self.1
    }
    fn all_gather_bytes(&self, what: &str, _: &[u8]) -> icpo_dist::Result<Vec<Vec<u8>>> {
        Err(icpo_dist::DistError::Store(format!("no peers for `{what}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::AdamW;

    fn weights(kind: Kind) -> BTreeMap<String, Tensor> {
        let a = Tensor::from_slice(&[0.5f32, -0.25, 1.5, 0.01, -2.0]).to_kind(kind);
        let b =
            Tensor::from_slice(&[0.02f32, 0.3, -0.7, 0.9, 0.1, -0.4]).view([2, 3]).to_kind(kind);
        [("a".to_string(), a.set_requires_grad(true)), ("b".to_string(), b.set_requires_grad(true))]
            .into()
    }

    /// Each weight cut in `world` chunks of ceil(numel / world), rank r owning chunk r.
    #[test]
    fn the_layout_cuts_every_weight_in_equal_chunks() {
        let slots = layout(&weights(Kind::Float), 4);
        let (a, b) = (&slots[0], &slots[1]);
        assert_eq!((a.numel, a.chunk, a.offset), (5, 2, 0));
        assert_eq!((b.numel, b.chunk, b.offset), (6, 2, 2));
        let ranges: Vec<(i64, i64)> = (0..4).map(|r| a.range(r)).collect();
        assert_eq!(ranges, [(0, 2), (2, 4), (4, 5), (5, 5)]);
        // Rank 2's masters: a[4], a padding zero, then b[4], b[5].
        let z = ZeroAdamW::new(&weights(Kind::Float), &Seat(2, 4), 2).unwrap();
        assert_eq!(Vec::<f32>::try_from(&z.master).unwrap(), [-2.0, 0.0, 0.1, -0.4]);
    }

    /// On one rank, both stages give exactly the replicated AdamW's weights (bf16 weights
    /// with f32 masters, two micro-batches per update, clipping active).
    #[test]
    fn one_rank_sharded_equals_replicated_adamw() {
        let cfg = OptimSection { weight_decay: 0.1, grad_clip: 0.5, ..OptimSection::default() };
        for stage in [1u8, 2] {
            let (p1, p2) = (weights(Kind::BFloat16), weights(Kind::BFloat16));
            let named: std::collections::HashMap<String, Tensor> =
                p1.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
            let mut rep = AdamW::for_params(&named).unwrap();
            let mut zero = ZeroAdamW::new(&p2, &icpo_dist::Single, stage).unwrap();
            for step in 0..4 {
                for micro in 0..2 {
                    let k = (step * 2 + micro) as f64 * 0.37 + 1.0;
                    for p in [&p1, &p2] {
                        let loss = (p["a"].to_kind(Kind::Float).sin() * k).sum(Kind::Float)
                            + (p["b"].to_kind(Kind::Float).square() * k).sum(Kind::Float);
                        loss.backward();
                    }
                    rep.accumulate(&p1).unwrap();
                    zero.accumulate(&p2, &icpo_dist::Single).unwrap();
                }
                let n1 = rep.grad_norm(&p1).unwrap();
                zero.finish_gradients(&p2, &icpo_dist::Single).unwrap();
                let n2 = zero.grad_norm(&icpo_dist::Single).unwrap();
                assert!((n1 - n2).abs() <= 1e-6 * n1, "stage {stage}: norm {n1} vs {n2}");
                rep.step(&p1, &cfg, 1e-3, n1).unwrap();
                // The same clipping factor for both: the arithmetic is then the same, exactly.
                zero.step(&p2, &cfg, 1e-3, n1, &icpo_dist::Single).unwrap();
            }
            for name in ["a", "b"] {
                assert!(p1[name].equal(&p2[name]), "stage {stage}: {name} differs");
                let master = zero.master.narrow(
                    0,
                    zero.slots.iter().find(|s| s.name == name).unwrap().offset,
                    p1[name].numel() as i64,
                );
                let want = rep.master_of(name).unwrap().reshape([-1]);
                assert!(
                    master.allclose(&want, 0.0, 1e-7, false),
                    "stage {stage}: master of {name}"
                );
            }
            assert_eq!(zero.updates, 4);
        }
    }
}
