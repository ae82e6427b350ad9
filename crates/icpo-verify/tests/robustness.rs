//! Hostile and random inputs: no panic, bounded work, and the properties Math-Verify has
//! (reflexive on well-formed answers, symmetric for plain values).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::time::Instant;

use icpo_verify::{verify, verify_bytes, MathReward, Reward};
use proptest::prelude::*;

mod hostile;

/// Generous bound for debug builds on a loaded 2-core machine; a hang would exceed it by far.
const LIMIT_SECS: f64 = 5.0;

fn bounded(gold: &str, pred: &str) -> bool {
    let t = Instant::now();
    let r = verify(gold, pred);
    assert!(
        t.elapsed().as_secs_f64() < LIMIT_SECS,
        "took {:?} on {:?}",
        t.elapsed(),
        &pred[..pred.len().min(60)]
    );
    r
}

#[test]
fn hostile_inputs_are_bounded_and_not_equivalent() {
    assert!(!bounded("5", "\\boxed{10^{10^{10^{10}}}}"));
    assert!(!bounded("5", &format!("\\boxed{{{}5{}}}", "{".repeat(10_000), "}".repeat(10_000))));
    assert!(!bounded("5", &"(".repeat(50_000)));
    assert!(!bounded("5", &"\\frac{".repeat(20_000)));
    assert!(!bounded("5", &format!("{}!", "9".repeat(2000))));
    assert!(!bounded("2", &format!("\\boxed{{{}}}", "x+".repeat(30_000) + "1")));
    let big = format!("{} \\boxed{{42}}", "lorem ipsum $x$ ".repeat(70_000));
    assert!(big.len() > 1_000_000);
    assert!(bounded("42", &big));
    assert!(!bounded("1", "$$$$$$\\(\\(\\[\\[\\boxed{"));
}

/// Every hostile case (operator chains of thousands, 1 MB golds and predictions, thousands of
/// boxes, huge matrices, deep relation chains) is "not equivalent", without a crash, on the main
/// thread and inside rayon's 2 MiB worker threads, as the trainer scores rollouts. The time
/// bound here only catches hangs; the 10 ms budget is checked in release by the `hostile` bench.
#[test]
fn hostile_cases_end_not_equivalent_in_bounded_time() {
    let reward = MathReward::default();
    for (name, gold, pred) in hostile::cases(4_000) {
        let t = Instant::now();
        assert!(!verify(&gold, &pred), "{name}: scored correct");
        let scores =
            reward.score_batch(&[(gold.as_str(), pred.as_str()), (pred.as_str(), gold.as_str())]);
        assert_eq!(scores, vec![0.0, 0.0], "{name}: score_batch");
        assert!(t.elapsed().as_secs_f64() < 3.0 * LIMIT_SECS, "{name} took {:?}", t.elapsed());
    }
}

/// The first inputs found to overflow the stack, kept as named cases.
#[test]
fn long_operator_chains_do_not_overflow_the_stack() {
    let n = 100_000;
    let reward = MathReward::default();
    for pred in [
        format!("\\boxed{{{}}}", vec!["2"; n].join("*")),
        format!("${}$", vec!["2"; n].join("\\cdot ")),
        format!("\\boxed{{3{}}}", "!".repeat(n)),
        format!("\\boxed{{{}}}", "x".repeat(n)),
    ] {
        assert_eq!(reward.score_batch(&[("5", pred.as_str()); 4]), vec![0.0; 4]);
    }
    assert_eq!(reward.score_batch(&[(&"ab".repeat(n), "\\boxed{5}")]), vec![0.0]);
    // Chains within the limits still parse and compare.
    assert!(verify(&vec!["2"; 40].join("\\cdot "), "\\boxed{1099511627776}"));
    assert!(verify("\\frac{1}{8}", "\\boxed{1/2/2/2}"));
    assert!(verify("6", "\\boxed{3!}"));
}

#[test]
fn invalid_utf8_is_read_lossily() {
    let mut bytes = b"the answer is \\boxed{7}".to_vec();
    bytes.insert(3, 0xff);
    assert!(verify_bytes(b"7", &bytes));
    assert!(!verify_bytes(&[0xc3], b"\\boxed{7}"));
}

fn answer() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        (1i64..1000).prop_map(|n| n.to_string()),
        (1i64..50, 1i64..50).prop_map(|(a, b)| format!("\\frac{{{a}}}{{{b}}}")),
        (2i64..30).prop_map(|n| format!("\\sqrt{{{n}}}")),
        Just("\\pi".to_string()),
        Just("x".to_string()),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}+{b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a})({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a},{b})")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("\\{{{a},{b}\\}}")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn never_panics(gold in "\\PC{0,60}", pred in "\\PC{0,200}") {
        let _ = verify(&gold, &pred);
    }

    #[test]
    fn never_panics_on_latexish(gold in "[\\\\{}()\\[\\]$^_0-9a-z+\\-*/=,.!| ]{0,60}", pred in "[\\\\{}()\\[\\]$^_0-9a-z+\\-*/=,.!| ]{0,120}") {
        let _ = verify(&gold, &pred);
    }

    #[test]
    fn reflexive_on_well_formed_answers(a in answer()) {
        prop_assert!(verify(&a, &format!("The answer is $\\boxed{{{a}}}$.")), "{}", a);
    }

    #[test]
    fn symmetric_on_plain_values(a in answer(), b in answer()) {
        prop_assert_eq!(verify(&a, &b), verify(&b, &a), "{} vs {}", a, b);
    }
}

#[test]
fn everyday_equivalences() {
    for (gold, pred) in [
        ("\\frac{3}{4}", "The answer is $\\boxed{0.75}$."),
        ("(-\\infty, 2]", "$\\boxed{(-\\infty,2]}$"),
        ("5\\sqrt{2}", "\\boxed{\\sqrt{50}}"),
        ("\\{1,2,3\\}", "\\boxed{\\{3,1,2\\}}"),
        ("x^2+2x+1", "\\boxed{(x+1)^2}"),
        ("2\\pi", "\\boxed{6.283185}"),
        ("10\\%", "\\boxed{10}"),
        (
            "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
            "\\boxed{\\begin{bmatrix} 1 \\\\ 2 \\end{bmatrix}}",
        ),
        ("3", "so $x = 3$."),
        ("90^\\circ", "\\boxed{90}"),
        ("\\dfrac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt3}{2}}"),
        ("e^{i\\pi}", "\\boxed{e^{i\\pi}}"),
        ("4!", "\\boxed{24}"),
    ] {
        assert!(verify(gold, pred), "{gold} vs {pred}");
    }
    for (gold, pred) in [
        ("\\frac{3}{4}", "\\boxed{0.7}"),
        ("(1,2)", "\\boxed{(2,1)}"),
        ("[1,2]", "\\boxed{(1,2)}"),
        ("x^2+1", "\\boxed{(x+1)^2}"),
        ("5", "no answer here"),
        ("3", "\\boxed{-3}"),
    ] {
        assert!(!verify(gold, pred), "{gold} vs {pred} should differ");
    }
}
