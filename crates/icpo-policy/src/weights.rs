//! Reading and writing Hugging Face safetensors checkpoints, single-file or sharded.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype as StDtype, SafeTensors};
use tch::{Kind, Tensor};

use crate::error::{io_err, read_json, write_atomic, PolicyError, Result};

/// Largest shard written by [`save_safetensors`] before it splits the checkpoint (as transformers).
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5 * 1024 * 1024 * 1024;

/// Where each tensor of a checkpoint lives.
fn tensor_files(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<String>>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.exists() {
        return Ok(BTreeMap::from([(single, Vec::new())]));
    }
    if !index.exists() {
        return Err(PolicyError::Io {
            path: single,
            error: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.safetensors nor model.safetensors.index.json in the checkpoint",
            ),
        });
    }
    let json: serde_json::Value = read_json(&index)?;
    let map =
        json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| PolicyError::Config {
            path: index.clone(),
            field: "weight_map".into(),
            message: "missing or not an object".into(),
        })?;
    let mut files: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| PolicyError::Config {
            path: index.clone(),
            field: format!("weight_map.{name}"),
            message: "expected a file name".into(),
        })?;
        files.entry(dir.join(file)).or_default().push(name.clone());
    }
    Ok(files)
}

/// Largest safetensors header read when only the tensor table is wanted.
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Name → shape of every tensor of the checkpoint in `dir`, from the files' headers only
/// (nothing is loaded), so a config can be checked against the weights before allocating.
pub fn checkpoint_shapes(dir: &Path) -> Result<BTreeMap<String, Vec<i64>>> {
    use std::io::Read;
    let mut out = BTreeMap::new();
    for path in tensor_files(dir)?.keys() {
        let bad = |message: String| PolicyError::Tensor {
            file: path.clone(),
            name: "(header)".into(),
            message,
        };
        let mut f = std::fs::File::open(path).map_err(io_err(path))?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let len = u64::from_le_bytes(len);
        if len > MAX_HEADER_BYTES {
            return Err(bad(format!("not a valid safetensors file: header of {len} bytes")));
        }
        let mut header = vec![0u8; len as usize];
        f.read_exact(&mut header).map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let json: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let Some(table) = json.as_object() else {
            return Err(bad("not a valid safetensors file: header is not an object".into()));
        };
        for (name, info) in table {
            if name == "__metadata__" {
                continue;
            }
            let shape = info["shape"]
                .as_array()
                .and_then(|dims| dims.iter().map(|d| d.as_i64()).collect::<Option<Vec<_>>>())
                .ok_or_else(|| bad(format!("tensor `{name}` has no valid shape")))?;
            out.insert(name.clone(), shape);
        }
    }
    Ok(out)
}

fn kind_of(dtype: StDtype) -> Option<Kind> {
    match dtype {
        StDtype::F32 => Some(Kind::Float),
        StDtype::BF16 => Some(Kind::BFloat16),
        StDtype::F16 => Some(Kind::Half),
        _ => None,
    }
}

/// Copies every tensor of the checkpoint in `dir` into `targets` (name → variable), converting
/// dtype and device. Shapes must match exactly; a missing tensor is an error naming it and the
/// file it was looked for in. Tensors the model does not use are ignored.
pub fn load_safetensors(dir: &Path, targets: &HashMap<String, Tensor>) -> Result<()> {
    let files = tensor_files(dir)?;
    let mut loaded = 0usize;
    let mut seen = std::collections::HashSet::new();
    // One shard in memory at a time.
    for path in files.keys() {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| PolicyError::Tensor {
            file: path.clone(),
            name: "(header)".into(),
            message: format!("not a valid safetensors file: {e}"),
        })?;
        for (name, view) in st.tensors() {
            let Some(target) = targets.get(&name) else { continue };
            let err = |message: String| PolicyError::Tensor {
                file: path.clone(),
                name: name.clone(),
                message,
            };
            let kind = kind_of(view.dtype()).ok_or_else(|| {
                err(format!("unsupported dtype {:?} (valid: F32, BF16, F16)", view.dtype()))
            })?;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let want = target.size();
            if shape != want {
                return Err(err(format!(
                    "shape {shape:?} in the file, the model expects {want:?}"
                )));
            }
            let src = Tensor::f_from_data_size(view.data(), &shape, kind)
                .map_err(|e| err(e.to_string()))?;
            tch::no_grad(|| -> Result<()> {
                let src = src.f_to(target.device())?.f_to_kind(target.kind())?;
                target.shallow_clone().f_copy_(&src)?;
                Ok(())
            })?;
            seen.insert(name);
            loaded += 1;
        }
    }
    if loaded < targets.len() {
        let mut missing: Vec<&String> = targets.keys().filter(|k| !seen.contains(*k)).collect();
        missing.sort();
        let where_ = files.keys().next().cloned().unwrap_or_else(|| dir.to_path_buf());
        let where_ =
            if files.len() > 1 { dir.join("model.safetensors.index.json") } else { where_ };
        return Err(PolicyError::Tensor {
            file: where_,
            name: missing[0].clone(),
            message: format!(
                "missing from the checkpoint ({} missing in all: {:?})",
                missing.len(),
                missing
            ),
        });
    }
    Ok(())
}

fn st_dtype(kind: Kind) -> Result<StDtype> {
    match kind {
        Kind::Float => Ok(StDtype::F32),
        Kind::BFloat16 => Ok(StDtype::BF16),
        Kind::Half => Ok(StDtype::F16),
        k => Err(PolicyError::Shape(format!("cannot save tensors of kind {k:?}"))),
    }
}

struct Raw {
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Raw {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn to_raw(t: &Tensor) -> Result<Raw> {
    let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.f_kind()?.elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(Raw {
        dtype: st_dtype(t.f_kind()?)?,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data,
    })
}

/// Writes `tensors` as `model.safetensors` in `dir` (with `{"format": "pt"}` metadata, as
/// transformers writes), or as shards plus `model.safetensors.index.json` when larger than
/// `max_shard_bytes`. Each file is written atomically.
pub fn save_safetensors(
    dir: &Path,
    tensors: &[(String, Tensor)],
    max_shard_bytes: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut shards: Vec<Vec<(String, Raw)>> = vec![Vec::new()];
    let mut size = 0usize;
    let mut total = 0usize;
    for (name, t) in tensors {
        let raw = to_raw(t)?;
        if size > 0 && size + raw.data.len() > max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += raw.data.len();
        total += raw.data.len();
        if let Some(last) = shards.last_mut() {
            last.push((name.clone(), raw));
        }
    }
    let meta = Some(std::collections::HashMap::from([("format".to_string(), "pt".to_string())]));
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
        };
        let path = dir.join(&file);
        let views: Vec<(&str, &Raw)> = shard.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let bytes = safetensors::serialize(views, meta.clone()).map_err(|e| {
            PolicyError::Tensor { file: path.clone(), name: "(all)".into(), message: e.to_string() }
        })?;
        write_atomic(&path, &bytes)?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), file.clone().into());
        }
    }
    if n > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let path = dir.join("model.safetensors.index.json");
        let text = serde_json::to_string_pretty(&index)
            .map_err(|error| PolicyError::Json { path: path.clone(), error })?;
        write_atomic(&path, text.as_bytes())?;
    }
    Ok(())
}
