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
