//! Data-parallel training over an [`icpo_dist::ProcessGroup`] (the distributed issue's
//! item 3). A step's problems are drawn identically on every rank and split into contiguous
//! shards, so a group never crosses ranks (rollouts, scoring, ERRS, shaping and advantages stay
//! local); sampling streams are keyed by the global prompt index, ERRS's draws by the global
//! group index. The update forms the same global mini-batches as one process would, weighs
//! each rank's micro-batches by global token counts, and sums gradients across ranks before
//! each optimiser step; metrics are reduced over ranks, and only rank 0 writes files.

use std::sync::Arc;

use icpo_dist::{ProcessGroup, Single};

use crate::error::{Result, TrainError};
use crate::trainer::{Metrics, Trainer};

impl From<icpo_dist::DistError> for TrainError {
    fn from(e: icpo_dist::DistError) -> Self {
        TrainError::Aborted(format!("distributed: {e}"))
    }
}

/// The process group of a trainer that was given none: world size 1.
pub(crate) fn single() -> Arc<dyn ProcessGroup> {
    Arc::new(Single)
}

/// `[lo, hi)` of rank `rank`'s contiguous share of `n` items over `world` ranks.
pub(crate) fn shard(n: usize, rank: usize, world: usize) -> (usize, usize) {
    let per = n / world.max(1);
    (rank * per, (rank + 1) * per)
}

/// `[lo, hi)` of rank `rank`'s share of `n` items that need not divide evenly (benchmarks).
pub(crate) fn shard_uneven(n: usize, rank: usize, world: usize) -> (usize, usize) {
    let world = world.max(1);
    (n * rank / world, n * (rank + 1) / world)
}

/// Sums maps of metrics over ranks (a key missing on a rank counts 0 there).
pub(crate) fn sum_maps(g: &dyn ProcessGroup, what: &str, local: &Metrics) -> Result<Metrics> {
    if g.world_size() == 1 {
        return Ok(local.clone());
    }
    let bytes = serde_json::to_vec(local).map_err(|e| TrainError::Aborted(e.to_string()))?;
    let mut out = Metrics::new();
    for part in g.all_gather_bytes(what, &bytes)? {
        let m: Metrics =
            serde_json::from_slice(&part).map_err(|e| TrainError::Aborted(e.to_string()))?;
        for (k, v) in m {
            *out.entry(k).or_default() += v;
        }
    }
    Ok(out)
}

impl Trainer {
    /// Trains data-parallel over `group` (a [`icpo_dist::StoreGroup`] on CPUs; world size 1
    /// needs none). Checks at once that every rank runs the same config and code version
    /// (naming the rank that differs) and that `trainer.batch_prompts` divides among the
    /// ranks. Call it before the first step and before `resume`.
    pub fn set_process_group(&mut self, group: Arc<dyn ProcessGroup>) -> Result<()> {
        let world = group.world_size();
        if !self.cfg.trainer.batch_prompts.is_multiple_of(world) {
            return Err(TrainError::Config {
                key: "trainer.batch_prompts".into(),
                message: format!(
                    "{} problems per step do not split evenly over {world} ranks",
                    self.cfg.trainer.batch_prompts
                ),
            });
        }
        // Operational keys (output folder, device, ...) may differ per rank; nothing else may.
        let mut cfg =
            serde_json::to_value(&self.cfg).map_err(|e| TrainError::Aborted(e.to_string()))?;
        for key in crate::resume_check::OPERATIONAL_KEYS {
            let (section, name) = key.split_once('.').unwrap_or((key, ""));
            if let Some(obj) = cfg.get_mut(section).and_then(|s| s.as_object_mut()) {
                obj.remove(name);
            }
        }
        group.check_same("the code version", env!("CARGO_PKG_VERSION"))?;
        group.check_same("the training config", &cfg.to_string())?;
        // Resume may change the stage, but ranks must agree on it.
        group.check_same("optim.zero_stage", &self.cfg.optim.zero_stage.to_string())?;
        let params = self.policy.named_weights().into_iter().collect();
        self.optim.prepare(&params, group.as_ref())?;
        self.group = group;
        Ok(())
    }

    /// Bytes of optimiser state this rank holds: the whole AdamW state (moments, f32 masters
    /// and accumulators of non-f32 weights), or with `optim.zero_stage` ≥ 1 its shard's.
    pub fn optimizer_state_bytes(&self) -> u64 {
        self.optim.state_bytes()
    }

    /// The process group (world size 1 unless [`Trainer::set_process_group`] set one).
    pub fn process_group(&self) -> &dyn ProcessGroup {
        self.group.as_ref()
    }

    /// Whether this process writes the run's files (rank 0).
    pub fn is_main(&self) -> bool {
        self.group.rank() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_contiguous_and_cover_the_batch() {
        assert_eq!(shard(8, 0, 1), (0, 8));
        assert_eq!((shard(8, 0, 2), shard(8, 1, 2)), ((0, 4), (4, 8)));
        assert_eq!(shard(6, 2, 3), (4, 6));
        let parts: Vec<(usize, usize)> = (0..3).map(|r| shard_uneven(7, r, 3)).collect();
        assert_eq!(parts, [(0, 2), (2, 4), (4, 7)]);
    }
}
