//! The trainer's optimiser: replicated [`AdamW`] (`optim.zero_stage = 0`) or sharded
//! [`ZeroAdamW`] (stages 1 and 2), one interface for the update loop and checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use icpo_dist::ProcessGroup;
use tch::{Kind, Tensor};

use crate::config::OptimSection;
use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use crate::shard_ckpt::{read_pieces, write_index, write_shard};
use crate::zero::ZeroAdamW;

/// Replicated or sharded AdamW state.
#[derive(Debug)]
pub(crate) enum Optimizer {
    /// Every rank holds the whole state; gradients are all-reduced.
    Replicated(AdamW),
    /// Each rank holds its shard, made for the trainer's process group when first needed (not
    /// at construction: a whole-size state would be allocated before the group is known).
    Sharded { stage: u8, state: Option<ZeroAdamW> },
}

impl Optimizer {
    /// The optimiser `optim.zero_stage` asks for; the replicated one's memory taken now.
    pub fn new(stage: u8, weights: &HashMap<String, Tensor>) -> Result<Self> {
        Ok(match stage {
            0 => Optimizer::Replicated(AdamW::for_params(weights)?),
            _ => Optimizer::Sharded { stage, state: None },
        })
    }

    /// The `optim.zero_stage` this optimiser was made for.
    pub fn stage(&self) -> u8 {
        match self {
            Optimizer::Replicated(_) => 0,
            Optimizer::Sharded { stage, .. } => *stage,
        }
    }

    /// The sharded state for `group`, made now if missing or cut for another world size.
    fn zero(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        group: &dyn ProcessGroup,
    ) -> Result<Option<&mut ZeroAdamW>> {
        let Optimizer::Sharded { stage, state } = self else { return Ok(None) };
        let fits = state
            .as_ref()
            .is_some_and(|z| z.rank_and_world() == (group.rank(), group.world_size()));
        if !fits {
            *state = None; // freed before the new one is allocated
            *state = Some(ZeroAdamW::new(params, group, *stage)?);
        }
        Ok(state.as_mut())
    }

    /// Allocates the sharded state for `group` (at `set_process_group`, so its memory is taken
    /// at start-up).
    pub fn prepare(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        group: &dyn ProcessGroup,
    ) -> Result<()> {
        self.zero(params, group).map(|_| ())
    }

    /// Bytes of optimiser state this rank holds (0 for a sharded state not yet made).
    pub fn state_bytes(&self) -> u64 {
        match self {
            Optimizer::Replicated(a) => a.state_bytes(),
            Optimizer::Sharded { state, .. } => state.as_ref().map_or(0, ZeroAdamW::state_bytes),
        }
    }

    /// Updates taken.
    pub fn updates(&self) -> u64 {
        match self {
            Optimizer::Replicated(a) => a.updates,
            Optimizer::Sharded { state, .. } => state.as_ref().map_or(0, |z| z.updates),
        }
    }

    /// Whether each micro-batch's gradient is reduced at once (ZeRO-2): every rank must then
    /// call [`Optimizer::accumulate`] the same number of times.
    pub fn reduces_per_micro_batch(&self) -> bool {
        matches!(self, Optimizer::Sharded { stage, .. } if *stage >= 2)
    }

    /// After each micro-batch's backward (see [`AdamW::accumulate`], [`ZeroAdamW::accumulate`]).
    pub fn accumulate(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        group: &dyn ProcessGroup,
    ) -> Result<()> {
        match self {
            Optimizer::Replicated(a) => a.accumulate(params),
            Optimizer::Sharded { .. } => match self.zero(params, group)? {
                Some(z) => z.accumulate(params, group),
                None => Ok(()),
            },
        }
    }

    /// The whole batch's gradient, ready for the norm and the step: all-reduced (replicated)
    /// or reduce-scattered into the shards.
    pub fn finish_gradients(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        group: &dyn ProcessGroup,
    ) -> Result<()> {
        match self {
            Optimizer::Replicated(a) => a.all_reduce_grads(params, group),
            Optimizer::Sharded { .. } => match self.zero(params, group)? {
                Some(z) => z.finish_gradients(params, group),
                None => Ok(()),
            },
        }
    }

    /// The global gradient norm (a collective when sharded: every rank calls it).
    pub fn grad_norm(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        group: &dyn ProcessGroup,
    ) -> Result<f64> {
        match self {
            Optimizer::Replicated(a) => a.grad_norm(params),
            Optimizer::Sharded { .. } => match self.zero(params, group)? {
                Some(z) => z.grad_norm(group),
                None => Ok(0.0),
            },
        }
    }

    /// One AdamW step at `lr`, clipped by `norm`.
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        cfg: &OptimSection,
        lr: f64,
        norm: f64,
        group: &dyn ProcessGroup,
    ) -> Result<()> {
        match self {
            Optimizer::Replicated(a) => a.step(params, cfg, lr, norm),
            Optimizer::Sharded { .. } => match self.zero(params, group)? {
                Some(z) => z.step(params, cfg, lr, norm, group),
                None => Ok(()),
            },
        }
    }

    /// Drops every gradient.
    pub fn zero_grad(&mut self, params: &BTreeMap<String, Tensor>) -> Result<()> {
        match self {
            Optimizer::Replicated(a) => a.zero_grad(params),
            Optimizer::Sharded { state: Some(z), .. } => z.zero_grad(params),
            Optimizer::Sharded { state: None, .. } => Ok(()),
        }
    }

    /// Writes the state into checkpoint directory `ckpt` (every rank calls it). Replicated:
    /// rank 0 writes `optimizer.safetensors`. Sharded: each rank its file of `optimizer/`,
    /// then rank 0 the index once all have.
    pub fn save(
        &self,
        ckpt: &Path,
        params: &BTreeMap<String, Tensor>,
        group: &dyn ProcessGroup,
    ) -> Result<()> {
        let fresh;
        let z = match self {
            Optimizer::Replicated(a) => {
                if group.rank() == 0 {
                    a.save(&ckpt.join("optimizer.safetensors"))?;
                }
                return Ok(());
            }
            Optimizer::Sharded { state: Some(z), .. }
                if z.rank_and_world() == (group.rank(), group.world_size()) =>
            {
                z
            }
            // Saved before any update and before the group was set: the fresh state.
            Optimizer::Sharded { stage, .. } => {
                fresh = ZeroAdamW::new(params, group, *stage)?;
                &fresh
            }
        };
        let dir = ckpt.join("optimizer");
        if group.rank() == 0 {
            std::fs::create_dir_all(&dir).map_err(crate::error::io_err(&dir))?;
        }
        group.barrier("checkpoint: optimizer folder made")?;
        write_shard(z, &dir)?;
        group.barrier("checkpoint: optimizer shards written")?;
        if group.rank() == 0 {
            write_index(z, &dir)?;
            icpo_policy::sync_dir(&dir);
        }
        Ok(())
    }

    /// Reads the state of checkpoint `ckpt`, whichever layout and world size wrote it, into
    /// this optimiser's kind and `group`'s shards; every tensor is checked against `weights`.
    pub fn load(
        &mut self,
        ckpt: &Path,
        weights: &HashMap<String, Tensor>,
        group: &dyn ProcessGroup,
    ) -> Result<()> {
        let params: BTreeMap<String, Tensor> =
            weights.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
        match self {
            Optimizer::Replicated(_) => {
                *self = Optimizer::Replicated(load_replicated(ckpt, weights)?);
                Ok(())
            }
            Optimizer::Sharded { .. } => {
                let Some(z) = self.zero(&params, group)? else { return Ok(()) };
                let mut got: BTreeMap<(String, String), i64> = BTreeMap::new();
                let (updates, path) = read_pieces(ckpt, weights, |p| {
                    let n = z.take_piece(p.prefix, p.name, p.lo, p.values)?;
                    *got.entry((p.prefix.to_string(), p.name.to_string())).or_default() += n;
                    Ok(())
                })?;
                z.updates = updates;
                let names: Vec<String> = z.slots.iter().map(|s| s.name.clone()).collect();
                for name in names {
                    let want = z.owned(&name);
                    for prefix in ["m", "v", "master"] {
                        let have =
                            got.get(&(prefix.to_string(), name.clone())).copied().unwrap_or(0);
                        match (prefix, have) {
                            (_, h) if h == want => {}
                            ("master", 0) if weights[&name].kind() == Kind::Float => {
                                z.master_from_weight(&name, &weights[&name])?
                            }
                            (_, 0) if prefix != "master" && updates == 0 => {}
                            _ => {
                                return Err(TrainError::Data {
                                    path,
                                    line: 0,
                                    message: format!(
                                        "tensor `{prefix}.{name}`: {have} of the {want} elements this rank needs (missing or incomplete)"
                                    ),
                                });
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// The replicated state from either layout: `optimizer.safetensors` as written, or a sharded
/// run's files assembled into whole tensors.
fn load_replicated(ckpt: &Path, weights: &HashMap<String, Tensor>) -> Result<AdamW> {
    let whole = ckpt.join("optimizer.safetensors");
    if whole.exists() && !ckpt.join("optimizer").join("index.json").exists() {
        let mut a =
            AdamW::load(&whole, weights.values().next().map_or(tch::Device::Cpu, Tensor::device))?;
        a.validate(&whole, weights)?;
        a.prepare(weights)?;
        return Ok(a);
    }
    let mut flat: BTreeMap<(String, String), (Tensor, i64)> = BTreeMap::new();
    let (updates, path) = read_pieces(ckpt, weights, |p| {
        let w = &weights[p.name];
        let key = (p.prefix.to_string(), p.name.to_string());
        if !flat.contains_key(&key) {
            let t = Tensor::f_zeros([w.numel() as i64], (Kind::Float, w.device()))?;
            flat.insert(key.clone(), (t, 0));
        }
        if let Some((t, n)) = flat.get_mut(&key) {
            let len = p.values.numel() as i64;
            t.f_narrow(0, p.lo, len)?.f_copy_(&p.values.f_to_kind(Kind::Float)?)?;
            *n += len;
        }
        Ok(())
    })?;
    let mut named = Vec::new();
    for ((prefix, name), (t, n)) in flat {
        let w = &weights[&name];
        if n != w.numel() as i64 {
            return Err(TrainError::Data {
                path,
                line: 0,
                message: format!(
                    "tensor `{prefix}.{name}`: {n} of its {} elements stored",
                    w.numel()
                ),
            });
        }
        // A sharded run keeps masters of f32 weights too: the weight itself is that master.
        if prefix == "master" && w.kind() == Kind::Float {
            continue;
        }
        named.push((format!("{prefix}.{name}"), t.f_view(w.size().as_slice())?));
    }
    let mut a = AdamW::from_named(named, updates)?;
    a.validate(&path, weights)?;
    a.prepare(weights)?;
    Ok(a)
}
