//! Checkpoint I/O: what icpo-policy saves loads in transformers with the same logits; bad files
//! are errors naming the file and the tensor; dtypes convert.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::path::{Path, PathBuf};
use std::process::Command;

use icpo_policy::{CausalLm, DType, LoadOptions};
use tch::{Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn testdata(name: &str) -> PathBuf {
    root().join("testdata").join(name)
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("icpo-ckpt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of a checkpoint directory whose files a test may then break.
fn copy_checkpoint(name: &str, tag: &str) -> PathBuf {
    let dst = tmp(tag);
    for entry in std::fs::read_dir(testdata(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

fn load_err(dir: &Path) -> String {
    CausalLm::load(dir, LoadOptions::default()).unwrap_err().to_string()
}

#[test]
fn saved_checkpoints_load_in_transformers() {
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "scripts/setup-libtorch installs {}", python.display());
    for name in ["tiny-qwen3", "tiny-llama", "tiny-qwen2"] {
        let model = CausalLm::load(testdata(name), LoadOptions::default()).unwrap();
        let out = tmp(&format!("hf-{name}"));
        model.save_pretrained(&out).unwrap();
        let o = Command::new(&python)
            .arg(testdata("check_hf_load.py"))
            .arg(&out)
            .arg(testdata(name).join("golden.safetensors"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let line =
            String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or_default().to_string();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let d = v["max_abs_diff"].as_f64().unwrap();
        assert!(d <= 1e-4, "{name}: transformers on our save: max |Δlogit| = {d:e}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_checkpoint("tiny-qwen2", "missing");
    let model = CausalLm::load(&dir, LoadOptions::default()).unwrap();
    let mut tensors: Vec<(String, Tensor)> = model.named_weights().into_iter().collect();
    tensors.retain(|(n, _)| n != "model.layers.1.self_attn.k_proj.bias");
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors")
            && e.contains("model.layers.1.self_attn.k_proj.bias")
            && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn misshaped_and_wrong_dtype_tensors_are_named() {
    let dir = copy_checkpoint("tiny-qwen3", "shape");
    let model = CausalLm::load(&dir, LoadOptions::default()).unwrap();
    let mut tensors: Vec<(String, Tensor)> = model.named_weights().into_iter().collect();
    for (n, t) in tensors.iter_mut() {
        if n == "model.norm.weight" {
            *t = Tensor::ones([3], (Kind::Float, tch::Device::Cpu));
        }
    }
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.norm.weight") && e.contains("[3]") && e.contains("[64]"), "{e}");

    for (n, t) in tensors.iter_mut() {
        if n == "model.norm.weight" {
            *t = Tensor::ones([64], (Kind::Int64, tch::Device::Cpu));
        }
    }
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.norm.weight") && e.contains("unsupported dtype"), "{e}");
}

#[test]
fn malformed_files_are_named() {
    let dir = copy_checkpoint("tiny-qwen3", "malformed");
    std::fs::write(dir.join("model.safetensors"), b"not a safetensors file").unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "{e}");
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"qwen3\",\n \"hidden_size\": }")
        .unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("config.json") && e.contains("malformed JSON") && e.contains("line 2"),
        "{e}"
    );
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::copy(testdata("tiny-qwen3/config.json"), dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors.index.json"), "{e}");

    let sharded = copy_checkpoint("tiny-llama", "index");
    std::fs::write(sharded.join("model.safetensors.index.json"), "{\"metadata\": {}}").unwrap();
    let e = load_err(&sharded);
    assert!(e.contains("model.safetensors.index.json") && e.contains("weight_map"), "{e}");
}

#[test]
fn bf16_and_f16_weights_stay_close_to_f32() {
    let g: Vec<(String, Tensor)> =
        Tensor::read_safetensors(testdata("tiny-qwen3/golden.safetensors")).unwrap();
    let get = |k: &str| g.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone();
    let ids = get("single_ids").unsqueeze(0);
    for dtype in [DType::BF16, DType::F16] {
        let model =
            CausalLm::load(testdata("tiny-qwen3"), LoadOptions { dtype, ..Default::default() })
                .unwrap();
        assert_eq!(model.named_weights()["model.norm.weight"].kind(), dtype.kind());
        let logits =
            tch::no_grad(|| model.forward(&ids, None)).unwrap().squeeze_dim(0).to_kind(Kind::Float);
        let want = get("single_logits");
        // Half precision: errors of a few percent of the logit scale, not garbage.
        let d = (&logits - &want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        assert!(d < 0.05 * scale, "{dtype:?}: max |Δ| {d} vs scale {scale}");
        let agree = logits
            .argmax(-1, false)
            .eq_tensor(&want.argmax(-1, false))
            .to_kind(Kind::Float)
            .mean(Kind::Float);
        assert!(agree.double_value(&[]) >= 0.85, "{dtype:?}: argmax agreement");
        // Saving keeps the dtype, in the file and in config.json.
        let out = tmp(&format!("save-{dtype:?}"));
        model.save_pretrained(&out).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["dtype"], dtype.hf_name());
        let saved = Tensor::read_safetensors(out.join("model.safetensors")).unwrap();
        assert!(saved.iter().all(|(_, t)| t.kind() == dtype.kind()));
    }
}
