//! [`AdamW`]'s state on disk: one safetensors file of moments, f32 masters and the update
//! count; read back, or assembled from a sharded checkpoint, and checked against the policy.

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Result, TrainError};
use crate::optim::AdamW;

impl AdamW {
    /// Writes the moments and f32 master weights (safetensors) and the update count (inside
    /// the same file's names).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (prefix, tensors) in [("m", &self.m), ("v", &self.v), ("master", &self.master)] {
            for (k, t) in tensors {
                named.push((format!("{prefix}.{k}"), t.shallow_clone()));
            }
        }
        named.push(("updates".into(), Tensor::from_slice(&[self.updates as i64])));
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let tmp = path.with_extension("tmp");
        Tensor::write_safetensors(&refs, &tmp)?;
        // On disk before the rename, so a crash never leaves a renamed but partial file.
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(crate::error::io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(crate::error::io_err(path))
    }

    /// Checks loaded state against the policy's weights: every moment and master names a weight,
    /// has its shape and is float32; after any update every weight has both moments (a file
    /// without them would silently restart AdamW), and every non-f32 weight has its master (the
    /// rounded weight cannot stand in for it: resuming would not be exact). Errors name `path`
    /// and the tensor.
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
        for (name, w) in weights {
            if w.kind() != Kind::Float && !self.master.contains_key(name) {
                return Err(bad(
                    &format!("master.{name}"),
                    format!("missing: the weight is {:?} and needs its f32 master", w.kind()),
                ));
            }
        }
        for (prefix, moments) in [("m", &self.m), ("v", &self.v), ("master", &self.master)] {
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
            if self.updates > 0 && prefix != "master" {
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
            s.insert(&k, t, path)?;
        }
        Ok(s)
    }

    /// State from named tensors as [`AdamW::save`] names them (`m.<weight>`, `v.<weight>`,
    /// `master.<weight>`) and the update count: a sharded checkpoint assembled whole.
    pub(crate) fn from_named(named: Vec<(String, Tensor)>, updates: u64) -> Result<Self> {
        let mut s = AdamW::new();
        for (k, t) in named {
            s.insert(&k, t, Path::new("(assembled shards)"))?;
        }
        s.updates = updates;
        Ok(s)
    }

    fn insert(&mut self, k: &str, t: Tensor, path: &Path) -> Result<()> {
        if let Some(name) = k.strip_prefix("m.") {
            self.m.insert(name.into(), t);
        } else if let Some(name) = k.strip_prefix("v.") {
            self.v.insert(name.into(), t);
        } else if let Some(name) = k.strip_prefix("master.") {
            self.master.insert(name.into(), t);
        } else if k == "updates" {
            self.updates = t.f_int64_value(&[0])? as u64;
        } else {
            return Err(TrainError::Data {
                path: path.into(),
                line: 0,
                message: format!("unexpected tensor `{k}`"),
            });
        }
        Ok(())
    }
}
