//! The embedded default's synthetic task: single-digit problems with three operators, a
//! character-level tokenizer and a tiny Qwen3-architecture policy, all made in code.
//!
//! `a+b` and `a-b` are taught directly; `a#b` (= a+b+1) only ever appears with worked examples
//! in context, so a policy that reads its demonstrations solves it far more often with them
//! (IEF) than without: the situation ICPO is designed for.

use std::path::Path;

use anyhow::Result;
use icpo::policy::{CausalLm, LoadOptions, ModelConfig};
use icpo::rollout::Demo;
use icpo::train::Problem;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// One synthetic problem with its worked solution.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub problem: String,
    pub solution: String,
    pub answer: String,
    pub op: char,
}

pub fn item(a: u32, op: char, b: u32) -> Item {
    let (solution, answer) = match op {
        '+' => (format!("{a}+{b}={}", a + b), a + b),
        '-' => (format!("{a}-{b}={}", a - b), a - b),
        _ => (format!("{a}+{b}+1={}", a + b + 1), a + b + 1),
    };
    Item {
        id: format!("{a}{op}{b}"),
        problem: format!("{a}{op}{b}"),
        solution,
        answer: answer.to_string(),
        op,
    }
}

/// All problems, split into train and held-out (30%) per operator, seeded.
pub fn split(seed: u64) -> (Vec<Item>, Vec<Item>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for op in ['+', '-', '#'] {
        let mut items: Vec<Item> = (0..10)
            .flat_map(|a| (0..10).map(move |b| (a, b)))
            .filter(|&(a, b)| op != '-' || a >= b)
            .map(|(a, b)| item(a, op, b))
            .collect();
        items.shuffle(&mut rng);
        let cut = items.len() * 3 / 10;
        test.extend(items.drain(..cut));
        train.extend(items);
    }
    (train, test)
}

pub fn problems(items: &[Item]) -> Vec<Problem> {
    items
        .iter()
        .map(|i| Problem {
            id: i.id.clone(),
            problem: i.problem.clone(),
            answer: i.answer.clone(),
            ..Default::default()
        })
        .collect()
}

pub fn demos(items: &[Item]) -> Vec<Demo> {
    items
        .iter()
        .map(|i| Demo {
            id: i.id.clone(),
            problem: i.problem.clone(),
            solution: i.solution.clone(),
        })
        .collect()
}

/// Writes a character-level tokenizer (printable ASCII and newline, `<|endoftext|>` as EOS)
/// with a one-line chat template into `dir`.
pub fn write_tokenizer(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut vocab = serde_json::Map::new();
    vocab.insert("<|endoftext|>".into(), 0.into());
    let chars: Vec<char> = std::iter::once('\n').chain((32u8..127).map(char::from)).collect();
    for (i, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), (i + 1).into());
    }
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&tok)?)?;
    let cfg = serde_json::json!({
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}\n>{% endif %}"
    });
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&cfg)?)?;
    std::fs::write(
        dir.join("generation_config.json"),
        "{\"eos_token_id\": 0, \"pad_token_id\": 0}",
    )?;
    Ok(())
}

/// A fresh tiny Qwen3-architecture policy (vocab 128, hidden 96, 3 layers), seeded, saved as a
/// Hugging Face checkpoint in `dir` (with the tokenizer) and returned.
pub fn new_policy(dir: &Path, seed: i64) -> Result<CausalLm> {
    let config = serde_json::json!({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 128, "hidden_size": 96,
        "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 24, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": true,
        "max_position_embeddings": 1024, "torch_dtype": "float32", "eos_token_id": 0, "hidden_act": "silu"
    });
    tch::manual_seed(seed);
    let cfg = ModelConfig::from_json(config, &dir.join("config.json"))?;
    let model = CausalLm::new(cfg, LoadOptions::default())?;
    write_tokenizer(dir)?;
    model.save_pretrained(dir)?;
    Ok(model)
}
