//! Agreement with Math-Verify per family of answers (relations, equations, matrices, several
//! answers, text, extraction and numbers), on the corpus `tests/families/make_families.py`
//! generated and labelled with Math-Verify 0.9.0. Disagreements are printed with the family,
//! the extracted answers and the rule that decided. Cases where Math-Verify is plainly wrong
//! and we differ on purpose are listed in docs/benchmarks.md and skipped by `id` here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::collections::BTreeMap;

use icpo_verify::{verify_detailed, VerifyConfig};

/// The agreement every family must reach.
const MIN_AGREEMENT: f64 = 0.99;

#[test]
fn agrees_with_math_verify_in_every_family() {
    let text = include_str!("families/families.jsonl");
    let mut by_family: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let family = case["family"].as_str().unwrap().to_string();
        let (gold, pred) = (case["gold"].as_str().unwrap(), case["pred"].as_str().unwrap());
        let expected = case["expected"].as_i64().unwrap() == 1;
        let v = verify_detailed(gold, pred, &VerifyConfig::default());
        let e = by_family.entry(family.clone()).or_default();
        e.0 += 1;
        if v.correct == expected {
            e.1 += 1;
        } else {
            println!(
                "DISAGREE [{family}] expected {expected}, got {} ({}; {} by {:?}): gold {gold:?} → {:?}; pred {:?} → {:?}",
                v.correct, v.reason, v.family, v.rule, v.gold_answer, pred, v.pred_answer
            );
        }
    }
    let mut failing = Vec::new();
    for (family, (total, agree)) in &by_family {
        let rate = *agree as f64 / *total as f64;
        println!("{family}: {agree}/{total} = {:.1}%", 100.0 * rate);
        assert!(*total >= 300, "{family} has {total} cases");
        if rate < MIN_AGREEMENT {
            failing.push(format!("{family} {:.1}%", 100.0 * rate));
        }
    }
    assert_eq!(by_family.len(), 6);
    assert!(failing.is_empty(), "below {MIN_AGREEMENT}: {failing:?}");
}
