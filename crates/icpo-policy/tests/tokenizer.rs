//! The tokenizer and chat template against transformers' output (testdata/tokenizer_golden.json,
//! written by testdata/make_tiny_models.py), and the special ids read from the checkpoint files.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::path::PathBuf;

use icpo_policy::{ChatMessage, Tokenizer};

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(name)
}

fn golden() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(testdata("tokenizer_golden.json")).unwrap())
        .unwrap()
}

#[test]
fn encodings_match_transformers() {
    let tok = Tokenizer::from_dir(testdata("tiny-qwen3")).unwrap();
    let g = golden();
    let cases = g["encodings"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<i64> =
            case["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), text, "round trip of {text:?}");
    }
}

#[test]
fn qwen3_chat_template_matches_transformers() {
    // tiny-qwen3 keeps the template in chat_template.jinja (transformers 5), tiny-qwen2 inside
    // tokenizer_config.json (older checkpoints): both must render the same.
    for dir in ["tiny-qwen3", "tiny-qwen2"] {
        let tok = Tokenizer::from_dir(testdata(dir)).unwrap();
        for case in golden()["chat"].as_array().unwrap() {
            let messages: Vec<ChatMessage> =
                serde_json::from_value(case["messages"].clone()).unwrap();
            let agp = case["add_generation_prompt"].as_bool().unwrap();
            let text = tok.apply_chat_template(&messages, agp).unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "{dir}: {messages:?} agp={agp}");
        }
    }
}

#[test]
fn special_ids_come_from_generation_config_and_tokenizer() {
    let tok = Tokenizer::from_dir(testdata("tiny-qwen3")).unwrap();
    let im_end = tok.token_id("<|im_end|>").unwrap();
    let eot = tok.token_id("<|endoftext|>").unwrap();
    assert_eq!(tok.eos_token_ids(), &[im_end, eot]);
    assert_eq!(tok.pad_token_id(), Some(eot));
}

#[test]
fn missing_and_malformed_files_are_named() {
    let err = Tokenizer::from_dir(testdata("no-such-dir")).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    let dir = std::env::temp_dir().join(format!("icpo-tok-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(testdata("tiny-qwen3/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), "{\"eos_token\": ").unwrap();
    let err = Tokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json") && err.contains("malformed JSON"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
