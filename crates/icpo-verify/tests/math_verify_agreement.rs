//! Agreement with Math-Verify's verdicts (tests/golden/mv_labels.json, made by the script
//! beside it) on 1,000 realistic pairs: MATH train worked solutions against their own answer
//! or the next problem's, rebuilt here from ../shared.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use icpo_verify::verify;

#[test]
fn agrees_with_math_verify_on_math_train_solutions() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/train/math_train.jsonl");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(path)
        .expect("shared/data/train/math_train.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["answer"].is_string())
        .take(1001)
        .collect();
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/mv_labels.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let labels: Vec<bool> =
        golden["labels"].as_array().unwrap().iter().map(|v| v.as_i64() == Some(1)).collect();
    assert_eq!(labels.len(), 1000);
    let mut disagree = 0;
    for (i, &want) in labels.iter().enumerate() {
        let gold = rows[if i % 2 == 0 { i } else { i + 1 }]["answer"].as_str().unwrap();
        let pred = rows[i]["solution"].as_str().unwrap();
        if verify(gold, pred) != want {
            disagree += 1;
            println!("DISAGREE pair {i}: gold {gold:?}, Math-Verify says {want}");
        }
    }
    // Both classes are well represented, so agreement is not trivial.
    let positives = labels.iter().filter(|&&l| l).count();
    assert!((400..600).contains(&positives), "{positives}");
    assert!(disagree <= 10, "{disagree} disagreements out of 1000");
}
