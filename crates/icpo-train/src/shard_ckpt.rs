//! Optimiser state in checkpoints, at any world size (the distributed issue's item 5).
//!
//! Two layouts, both read by either optimiser:
//! - `optimizer.safetensors`: the replicated [`crate::AdamW`]'s whole state (`m.<weight>`,
//!   `v.<weight>`, `master.<weight>` for non-f32 weights, `updates`);
//! - `optimizer/`: one file per rank of a sharded run, `shard-RRRRR-of-WWWWW.safetensors`,
//!   holding that rank's elements of every flattened `m`/`v`/`master` (1-D), and
//!   `index.json`, written by rank 0, listing each weight's shape and dtype and which file
//!   holds which element range of it (`ranges: {weight: [[file, lo, hi], ...]}`).
//!
//! Reading goes file by file ([`read_pieces`]): each rank keeps what overlaps its own shard
//! (or, replicated, everything), so resuming at a different world size holds at most one
//! file in memory beside its state. The checkpoint directory must be one every rank sees
//! (a shared filesystem on several nodes), as for FSDP's sharded checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{io_err, Result, TrainError};
use crate::zero::ZeroAdamW;

/// The format tag of `index.json`.
pub const SHARDED_FORMAT: &str = "icpo-sharded-adamw/1";

/// `optimizer/index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardIndex {
    /// [`SHARDED_FORMAT`].
    pub format: String,
    /// Ranks of the run that wrote it (one file each).
    pub world_size: usize,
    /// Optimiser updates taken.
    pub updates: u64,
    /// The files, in rank order.
    pub files: Vec<String>,
    /// Each weight's shape and dtype (as the policy holds it).
    pub weights: BTreeMap<String, WeightEntry>,
    /// Which file holds which flattened elements `[lo, hi)` of each weight.
    pub ranges: BTreeMap<String, Vec<(usize, i64, i64)>>,
}

/// One weight in [`ShardIndex`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightEntry {
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its dtype (`Float`, `BFloat16`, ...).
    pub dtype: String,
}

fn shard_file(rank: usize, world: usize) -> String {
    format!("shard-{rank:05}-of-{world:05}.safetensors")
}

/// Writes this rank's shard into `dir` (`<checkpoint>/optimizer`), durably.
pub(crate) fn write_shard(z: &ZeroAdamW, dir: &Path) -> Result<()> {
    let (rank, world) = z.rank_and_world();
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for s in &z.slots {
        let (lo, hi) = s.range(rank);
        if hi > lo {
            for (prefix, t) in [("m", &z.m), ("v", &z.v), ("master", &z.master)] {
                named.push((format!("{prefix}.{}", s.name), t.f_narrow(0, s.offset, hi - lo)?));
            }
        }
    }
    named.push(("updates".into(), Tensor::from_slice(&[z.updates as i64])));
    let path = dir.join(shard_file(rank, world));
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let tmp = path.with_extension("tmp");
    Tensor::write_safetensors(&refs, &tmp)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// Writes `index.json` for the shards of `z`'s layout (rank 0, after every rank wrote).
pub(crate) fn write_index(z: &ZeroAdamW, dir: &Path) -> Result<()> {
    let (_, world) = z.rank_and_world();
    let mut weights = BTreeMap::new();
    let mut ranges = BTreeMap::new();
    for s in &z.slots {
        weights.insert(
            s.name.clone(),
            WeightEntry { shape: s.shape.clone(), dtype: format!("{:?}", s.kind) },
        );
        let parts: Vec<(usize, i64, i64)> = (0..world)
            .map(|r| (r, s.range(r)))
            .filter(|(_, (lo, hi))| hi > lo)
            .map(|(r, (lo, hi))| (r, lo, hi))
            .collect();
        ranges.insert(s.name.clone(), parts);
    }
    let index = ShardIndex {
        format: SHARDED_FORMAT.into(),
        world_size: world,
        updates: z.updates,
        files: (0..world).map(|r| shard_file(r, world)).collect(),
        weights,
        ranges,
    };
    let text =
        serde_json::to_string_pretty(&index).map_err(|e| TrainError::Aborted(e.to_string()))?;
    crate::error::write_atomic(&dir.join("index.json"), text.as_bytes())
}

/// One stored run of elements: elements `[lo, lo + numel)` of the flattened `prefix` state
/// (`m`, `v`, `master`) of weight `name`.
pub(crate) struct Piece<'a> {
    pub prefix: &'a str,
    pub name: &'a str,
    pub lo: i64,
    pub values: &'a Tensor,
}

/// The optimiser state of checkpoint `ckpt` (its `optimizer/` index or its
/// `optimizer.safetensors`), checked against the policy's `weights` (names, shapes; a state
/// tensor naming no weight is refused), handed over piece by piece, file by file. Returns the
/// update count and the file it came from (for errors).
pub(crate) fn read_pieces(
    ckpt: &Path,
    weights: &std::collections::HashMap<String, Tensor>,
    mut take: impl FnMut(Piece<'_>) -> Result<()>,
) -> Result<(u64, PathBuf)> {
    let dir = ckpt.join("optimizer");
    let index_path = dir.join("index.json");
    if !index_path.exists() {
        let path = ckpt.join("optimizer.safetensors");
        if !path.exists() {
            return Err(TrainError::Data {
                path: ckpt.into(),
                line: 0,
                message:
                    "no optimiser state: neither optimizer.safetensors nor optimizer/index.json"
                        .into(),
            });
        }
        let mut updates = None;
        for (key, t) in Tensor::read_safetensors(&path)? {
            if key == "updates" {
                updates = Some(t.f_int64_value(&[0])? as u64);
                continue;
            }
            let (prefix, name) = split_key(&key, &path)?;
            check_shape(&path, &key, &t.size(), weights.get(name))?;
            take(Piece { prefix, name, lo: 0, values: &t.f_reshape([-1])? })?;
        }
        let updates = updates.ok_or_else(|| bad(&path, "updates", "missing"))?;
        return Ok((updates, path));
    }
    let text = std::fs::read_to_string(&index_path).map_err(io_err(&index_path))?;
    let index: ShardIndex = serde_json::from_str(&text).map_err(|e| TrainError::Data {
        path: index_path.clone(),
        line: e.line(),
        message: e.to_string(),
    })?;
    if index.format != SHARDED_FORMAT {
        return Err(bad(
            &index_path,
            "format",
            &format!("`{}`, expected `{SHARDED_FORMAT}`", index.format),
        ));
    }
    if index.files.len() != index.world_size {
        return Err(bad(
            &index_path,
            "files",
            &format!("{} files for world_size {}", index.files.len(), index.world_size),
        ));
    }
    for (name, entry) in &index.weights {
        check_shape(&index_path, name, &entry.shape, weights.get(name.as_str()))?;
    }
    for (rank, file) in index.files.iter().enumerate() {
        let path = dir.join(file);
        // Each weight's range in this file, from the index (the file holds exactly those).
        let lo_of: BTreeMap<&str, (i64, i64)> = index
            .ranges
            .iter()
            .filter_map(|(name, parts)| {
                parts.iter().find(|p| p.0 == rank).map(|&(_, lo, hi)| (name.as_str(), (lo, hi)))
            })
            .collect();
        if !path.exists() {
            return Err(bad(&path, "", "missing: the index lists it"));
        }
        for (key, t) in Tensor::read_safetensors(&path)? {
            if key == "updates" {
                let u = t.f_int64_value(&[0])? as u64;
                if u != index.updates {
                    return Err(bad(
                        &path,
                        "updates",
                        &format!("{u}, the index says {}", index.updates),
                    ));
                }
                continue;
            }
            let (prefix, name) = split_key(&key, &path)?;
            let Some(&(lo, hi)) = lo_of.get(name) else {
                return Err(bad(&path, &key, "the index gives this file no range of it"));
            };
            if t.numel() as i64 != hi - lo || t.kind() != Kind::Float {
                return Err(bad(
                    &path,
                    &key,
                    &format!(
                        "{} {:?} elements, the index says {} f32",
                        t.numel(),
                        t.kind(),
                        hi - lo
                    ),
                ));
            }
            take(Piece { prefix, name, lo, values: &t })?;
        }
    }
    Ok((index.updates, index_path))
}

fn bad(path: &Path, key: &str, message: &str) -> TrainError {
    let what = if key.is_empty() { String::new() } else { format!("tensor `{key}`: ") };
    TrainError::Data { path: path.into(), line: 0, message: format!("{what}{message}") }
}

fn split_key<'a>(key: &'a str, path: &Path) -> Result<(&'a str, &'a str)> {
    match key.split_once('.') {
        Some((p @ ("m" | "v" | "master"), name)) => Ok((p, name)),
        _ => Err(bad(
            path,
            key,
            "unexpected tensor (expected m.<weight>, v.<weight>, master.<weight> or updates)",
        )),
    }
}

fn check_shape(path: &Path, key: &str, shape: &[i64], weight: Option<&Tensor>) -> Result<()> {
    let name =
        key.split_once('.')
            .map_or(key, |(p, n)| if matches!(p, "m" | "v" | "master") { n } else { key });
    let Some(w) = weight else {
        return Err(bad(path, key, &format!("names no weight of the policy (`{name}`)")));
    };
    if shape != w.size().as_slice() {
        return Err(bad(path, key, &format!("shape {shape:?}, the weight is {:?}", w.size())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::Optimizer;
    use crate::zero::{Seat, ZeroAdamW};
    use icpo_dist::Single;
    use std::collections::HashMap;

    /// Known whole state: element i of `prefix` of weight number w is 1000·p + 100·w + i.
    fn whole(prefix: usize, w: usize, numel: i64) -> Tensor {
        Tensor::arange(numel, (Kind::Float, tch::Device::Cpu)) + (1000 * prefix + 100 * w) as f64
    }

    /// Two ranks' shards written with their index, then read back whole into one process,
    /// sharded and replicated: every element where it belongs. A missing file and an index
    /// disagreeing with the policy are errors naming them.
    #[test]
    fn shards_of_two_ranks_resume_in_one_process_either_way() {
        let dir = std::env::temp_dir().join(format!("icpo-shard-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opt_dir = dir.join("optimizer");
        std::fs::create_dir_all(&opt_dir).unwrap();
        let params: BTreeMap<String, Tensor> = [
            ("a".to_string(), Tensor::zeros([5], (Kind::BFloat16, tch::Device::Cpu))),
            ("b".to_string(), Tensor::zeros([2, 3], (Kind::BFloat16, tch::Device::Cpu))),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.set_requires_grad(true)))
        .collect();
        let weights: HashMap<String, Tensor> =
            params.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
        for rank in 0..2 {
            let mut z = ZeroAdamW::new(&params, &Seat(rank, 2), 2).unwrap();
            z.updates = 7;
            for (w, (name, p)) in params.iter().enumerate() {
                for (i, prefix) in ["m", "v", "master"].iter().enumerate() {
                    z.take_piece(prefix, name, 0, &whole(i, w, p.numel() as i64)).unwrap();
                }
            }
            write_shard(&z, &opt_dir).unwrap();
            if rank == 0 {
                write_index(&z, &opt_dir).unwrap();
            }
        }
        // Sharded, one rank: its shard is every weight whole.
        let mut sharded = Optimizer::Sharded { stage: 1, state: None };
        sharded.load(&dir, &weights, &Single).unwrap();
        assert_eq!(sharded.updates(), 7);
        let Optimizer::Sharded { state: Some(z), .. } = &sharded else { panic!("sharded") };
        for (i, t) in [&z.m, &z.v, &z.master].into_iter().enumerate() {
            let want = Tensor::cat(&[whole(i, 0, 5), whole(i, 1, 6)], 0);
            assert!(t.equal(&want), "sharded state {i}: {t:?}");
        }
        // Replicated: whole tensors, masters included for the bf16 weights.
        let mut replicated = Optimizer::new(0, &weights).unwrap();
        replicated.load(&dir, &weights, &Single).unwrap();
        let Optimizer::Replicated(rep) = &replicated else { panic!("replicated") };
        assert_eq!(rep.updates, 7);
        let path = dir.join("whole.safetensors");
        rep.save(&path).unwrap();
        let saved: HashMap<String, Tensor> =
            Tensor::read_safetensors(&path).unwrap().into_iter().collect();
        for (w, (name, p)) in params.iter().enumerate() {
            for (i, prefix) in ["m", "v", "master"].iter().enumerate() {
                let want = whole(i, w, p.numel() as i64);
                let got = saved[&format!("{prefix}.{name}")].reshape([-1]);
                assert!(got.equal(&want), "replicated {prefix}.{name}");
            }
        }
        // The index must agree with the policy.
        let mut other: HashMap<String, Tensor> =
            weights.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
        other.insert("b".into(), Tensor::zeros([3, 2], (Kind::BFloat16, tch::Device::Cpu)));
        let e = Optimizer::Sharded { stage: 1, state: None }
            .load(&dir, &other, &Single)
            .unwrap_err()
            .to_string();
        assert!(e.contains("index.json") && e.contains("`b`") && e.contains("[2, 3]"), "{e}");
        std::fs::remove_file(opt_dir.join("shard-00001-of-00002.safetensors")).unwrap();
        let e = sharded.load(&dir, &weights, &Single).unwrap_err().to_string();
        assert!(e.contains("shard-00001-of-00002.safetensors") && e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
