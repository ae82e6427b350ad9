//! Math answer verification for RLVR rewards, in pure Rust.
//!
//! [`verify`] decides whether a model's response states the same answer as a gold answer:
//! it extracts the answer ([`extract`]: the last `\boxed{}` group, "final answer is", the last
//! math environment or number), normalises the LaTeX, parses it into an expression
//! ([`Expr`]) and compares with Math-Verify's rules (exact rationals, numbers to a precision,
//! symbolic equality by evaluation at seeded random points, unordered sets, ordered tuples,
//! intervals, matrices, equations, gold inequalities as intervals). [`Reward`] is what the
//! trainer calls, batch-parallel.
//!
//! Every call is bounded: the text inspected, the tokens parsed, the nesting followed and the
//! comparison steps are capped, so hostile inputs end in "not equivalent", never a hang or a
//! panic.

mod compare;
mod expr;
pub mod extract;
mod lex;
mod normalize;
mod parse;
mod relations;
mod reward;

use serde::{Deserialize, Serialize};

pub use expr::{Expr, RelOp};
pub use extract::{Candidate, Source};
pub use normalize::normalize;
pub use parse::parse_str;
pub use reward::{MathReward, Reward};

/// Comparison settings, with Math-Verify's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Relative precision (decimal digits) of numeric comparison. Default 6.
    pub precision: u32,
    /// Different free variables make answers different (`f(x)` ≠ `f(y)`). Default true.
    pub strict: bool,
    /// Comparison steps allowed per call before answering "not equivalent". Default 20,000.
    pub max_steps: u32,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig { precision: 6, strict: true, max_steps: 20_000 }
    }
}

/// The outcome of [`verify_detailed`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Whether the response's answer is equivalent to the gold answer.
    pub correct: bool,
    /// The gold answer as extracted (None when nothing parsed).
    pub gold_answer: Option<String>,
    /// The response's answer as extracted (None when nothing parsed).
    pub pred_answer: Option<String>,
    /// Why: `equivalent`, `different`, `gold unparsed`, `no answer in response`.
    pub reason: &'static str,
    /// The family of the gold answer: `number`, `expression`, `relation`, `equation`,
    /// `interval`, `set`, `several answers`, `tuple`, `matrix`, `text` (empty when unparsed).
    pub family: &'static str,
    /// The comparison rule that decided (empty when nothing was compared).
    pub rule: &'static str,
}

/// The first candidate of `text` that parses, as (normalised text, expression as parsed,
/// canonical expression).
fn parsed(text: &str) -> Option<(String, Expr, Expr)> {
    for c in extract::candidates(text) {
        let raw = if c.source == Source::Number {
            normalize::plain_number(&c.text)
        } else {
            c.text.clone()
        };
        let norm = normalize(&raw);
        if norm.is_empty() {
            continue;
        }
        if let Some(e) = parse_str(&norm) {
            let canonical = compare::canonical(e.clone());
            return Some((norm, e, canonical));
        }
        if c.source == Source::Whole {
            // A bare text answer: fall back to its last number.
            continue;
        }
    }
    None
}

/// Whether `response` answers `gold`, with the extracted answers and the reason.
pub fn verify_detailed(gold: &str, response: &str, config: &VerifyConfig) -> Verdict {
    let Some((gold_answer, g_raw, g)) = parsed(gold) else {
        return Verdict {
            correct: false,
            gold_answer: None,
            pred_answer: None,
            reason: "gold unparsed",
            family: "",
            rule: "",
        };
    };
    let Some((pred_answer, p_raw, p)) = parsed(response) else {
        return Verdict {
            correct: false,
            gold_answer: Some(gold_answer),
            pred_answer: None,
            reason: "no answer in response",
            family: compare::family(&g_raw),
            rule: "",
        };
    };
    let mut budget = compare::Budget::new(config.max_steps);
    let (correct, rule) = compare::equiv_answers((&g_raw, &g), (&p_raw, &p), config, &mut budget);
    Verdict {
        correct,
        gold_answer: Some(gold_answer),
        pred_answer: Some(pred_answer),
        reason: if correct { "equivalent" } else { "different" },
        family: compare::family(&g_raw),
        rule,
    }
}

/// [`verify`] on bytes that may not be valid UTF-8 (read lossily).
pub fn verify_bytes(gold: &[u8], response: &[u8]) -> bool {
    verify(&String::from_utf8_lossy(gold), &String::from_utf8_lossy(response))
}

/// Whether `response` answers `gold`, with the default settings.
pub fn verify(gold: &str, response: &str) -> bool {
    verify_detailed(gold, response, &VerifyConfig::default()).correct
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_names_the_family_and_the_rule() {
        let v = verify_detailed("x \\le 3", "so $\\boxed{3 \\ge x}$", &VerifyConfig::default());
        assert!(v.correct);
        assert_eq!(
            (v.family, v.rule),
            ("relation", "relations: the same variable and set, or the same sides")
        );
        let v = verify_detailed("1 \\le y \\le 4", "$\\boxed{[1,4]}$", &VerifyConfig::default());
        assert_eq!(
            (v.correct, v.family, v.rule),
            (true, "relation", "relation against the set it describes")
        );
        let v =
            verify_detailed("y = 3x + 2", "$\\boxed{2y - 6x - 4 = 0}$", &VerifyConfig::default());
        assert_eq!((v.correct, v.family), (true, "equation"));
        let v = verify_detailed("\\frac{1}{2}", "$\\boxed{0.5}$", &VerifyConfig::default());
        assert_eq!(
            (v.correct, v.family, v.rule),
            (true, "number", "numbers: exact, or to the decimals written")
        );
        let v = verify_detailed("2, 5", "the roots are $2$ and $5$.", &VerifyConfig::default());
        assert_eq!((v.correct, v.family), (true, "several answers"));
    }
}
