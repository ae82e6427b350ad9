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
mod normalize;
mod parse;
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
}

/// The first candidate of `text` that parses, as (normalised text, expression).
fn parsed(text: &str, gold: bool) -> Option<(String, Expr)> {
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
            return Some((norm, compare::canonical(e, gold)));
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
    let Some((gold_answer, g)) = parsed(gold, true) else {
        return Verdict {
            correct: false,
            gold_answer: None,
            pred_answer: None,
            reason: "gold unparsed",
        };
    };
    let Some((pred_answer, p)) = parsed(response, false) else {
        return Verdict {
            correct: false,
            gold_answer: Some(gold_answer),
            pred_answer: None,
            reason: "no answer in response",
        };
    };
    let mut budget = compare::Budget::new(config.max_steps);
    let correct = compare::equiv(&g, &p, config, &mut budget);
    Verdict {
        correct,
        gold_answer: Some(gold_answer),
        pred_answer: Some(pred_answer),
        reason: if correct { "equivalent" } else { "different" },
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
