//! Agreement with Math-Verify's labelled cases (../shared/conformance/math_verify_cases.jsonl):
//! at least 97%, every disagreement printed with its reason.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use icpo_verify::{verify_detailed, VerifyConfig};

#[test]
fn agrees_with_math_verify_labels() {
    let path =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/conformance/math_verify_cases.jsonl");
    let text = std::fs::read_to_string(path).expect("shared/conformance/math_verify_cases.jsonl");
    let (mut total, mut agree) = (0usize, 0usize);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let mut config = VerifyConfig::default();
        if let Some(p) = case["config"]["precision"].as_u64() {
            config.precision = p as u32;
        }
        let gold = case["gold"].as_str().unwrap();
        let pred = case["pred"].as_str().unwrap();
        let expected = case["expected"].as_i64().unwrap() == 1;
        let v = verify_detailed(gold, pred, &config);
        total += 1;
        if v.correct == expected {
            agree += 1;
        } else {
            println!(
                "DISAGREE {}: expected {expected}, got {} ({}); gold {:?} → {:?}; pred → {:?}",
                case["id"],
                v.correct,
                v.reason,
                truncate(gold),
                v.gold_answer,
                v.pred_answer
            );
        }
    }
    let rate = agree as f64 / total as f64;
    println!("agreement: {agree}/{total} = {:.1}%", 100.0 * rate);
    assert!(total >= 100, "conformance file has {total} cases");
    assert!(rate >= 0.97, "agreement {agree}/{total} = {:.1}% < 97%", 100.0 * rate);
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}
