//! Finding the answer in a response: `\boxed{}` groups, "final answer is", math environments,
//! and the last number, in Math-Verify's spirit.

use std::sync::OnceLock;

use regex::Regex;

use crate::normalize::re;

/// Longest text inspected: the tail of longer responses (answers come last). 64 KiB is about
/// 16k tokens of English or LaTeX, twice the paper's longest responses; the cap keeps every
/// call within a fixed time whatever the input's size.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Longest answer candidate parsed; a longer "answer" is no answer. A 20 × 20 matrix of
/// fractions (8 KiB) fits.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024;
/// Most `\boxed{}` joined into one answer ("2 and 5", one box per root).
const MAX_BOXES_JOINED: usize = 64;
/// Deepest brace nesting followed; deeper input is treated as having no answer there.
const MAX_BRACE_DEPTH: usize = 500;

/// Where an extracted answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Source {
    /// One or more `\boxed{}` / `\fbox{}`.
    Boxed,
    /// The text after "final answer is".
    FinalAnswer,
    /// The last math environment (`$…$`, `$$…$$`, `\(…\)`, `\[…\]`).
    MathEnv,
    /// The last number in the text.
    Number,
    /// The whole text (a bare answer such as a gold `\frac{3}{4}`).
    Whole,
}

/// An answer candidate: its text and origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The answer's LaTeX or plain text.
    pub text: String,
    /// Where it came from.
    pub source: Source,
}

/// Collapses doubly escaped commands (`\\frac` written for `\frac`) without touching `\\` row
/// separators followed by a space, digit or another backslash.
pub fn unescape_double_backslashes(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let mut j = i;
            while j < b.len() && b[j] == b'\\' {
                j += 1;
            }
            let run = j - i;
            if run == 2 && j < b.len() && b[j].is_ascii_alphabetic() {
                out.push('\\');
            } else {
                out.push_str(&s[i..j]);
            }
            i = j;
        } else {
            let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&s[i..i + ch_len]);
            i += ch_len;
        }
    }
    out
}

/// Content of a braced group starting at byte `open` (which must be `{`); returns the content
/// and the index after the closing brace.
fn braced(s: &str, open: usize) -> Option<(&str, usize)> {
    let b = s.as_bytes();
    if b.get(open) != Some(&b'{') {
        return None;
    }
    let mut depth = 0usize;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1, // skip escaped char (\{ \})
            b'{' => {
                depth += 1;
                if depth > MAX_BRACE_DEPTH {
                    return None;
                }
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&s[open + 1..i], i + 1));
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// `(start, end, content)` of every `\boxed{…}` / `\fbox{…}`.
fn boxes(s: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    // The next occurrence of each spelling, searched again only once passed (`None`: none
    // left): searching both from every box would be quadratic in the number of boxes.
    const SPELLINGS: [&str; 2] = ["\\boxed", "\\fbox"];
    let mut next = SPELLINGS.map(|pat| s.find(pat));
    loop {
        for (k, pat) in SPELLINGS.iter().enumerate() {
            if next[k].is_some_and(|at| at < from) {
                next[k] = s[from..].find(pat).map(|o| from + o);
            }
        }
        let (start, len) = match (next[0], next[1]) {
            (Some(a), Some(b)) if b < a => (b, 5),
            (Some(a), _) => (a, 6),
            (None, Some(b)) => (b, 5),
            (None, None) => break,
        };
        let mut k = start + len;
        while k < s.len() && s.as_bytes()[k] == b' ' {
            k += 1;
        }
        match braced(s, k) {
            Some((content, end)) => {
                out.push((start, end, content.to_string()));
                from = end;
            }
            None => {
                // `\boxed 5`: the next token.
                let rest: String =
                    s[k..].chars().take_while(|c| !c.is_whitespace() && *c != '$').collect();
                if !rest.is_empty() && k > start + len {
                    out.push((start, k + rest.len(), rest.clone()));
                }
                from = (k + rest.len()).max(start + len);
            }
        }
    }
    out
}

/// `(start, end, content)` of math environments, in order.
fn math_envs(s: &str) -> Vec<(usize, usize, String)> {
    // Byte-wise: every delimiter is ASCII, so slicing at them is always on a char boundary.
    const KINDS: [(&[u8], &[u8]); 4] =
        [(b"$$", b"$$"), (b"\\[", b"\\]"), (b"\\(", b"\\)"), (b"$", b"$")];
    let b = s.as_bytes();
    let mut out = Vec::new();
    // A kind whose closing delimiter was not found from some opener cannot be closed from any
    // later one either (inline `$` aside, whose search ends at the line): skipping it keeps the
    // scan linear on thousands of unterminated openers.
    let mut unclosed = [false; 3];
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let kind = if rest.starts_with(b"$$") {
            0
        } else if rest.starts_with(b"\\[") {
            1
        } else if rest.starts_with(b"\\(") {
            2
        } else if b[i] == b'$' && (i == 0 || b[i - 1] != b'\\') {
            3
        } else {
            i += 1;
            continue;
        };
        let (open, close) = KINDS[kind];
        if kind < 3 && unclosed[kind] {
            i += open.len();
            continue;
        }
        let body_start = i + open.len();
        let mut j = body_start;
        let mut found = None;
        while j < b.len() {
            if b[j..].starts_with(close) && !(close == b"$" && b[j - 1] == b'\\') {
                found = Some(j);
                break;
            }
            // Inline `$…$` never spans a line break.
            if open == b"$" && b[j] == b'\n' {
                break;
            }
            j += 1;
        }
        match found {
            Some(j) => {
                out.push((i, j + close.len(), s[body_start..j].to_string()));
                i = j + close.len();
            }
            None => {
                if kind < 3 {
                    unclosed[kind] = true;
                }
                i += open.len();
            }
        }
    }
    out
}

fn number_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    re(&RE, || r"-?(?:\d{1,3}(?:(?:,|\{,\}|,\\!| )\d{3})+(?:\.\d+)?|\d+(?:[.,]\d+)?|\.\d+)")
}

fn prose_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    re(&RE, || r"(?:^|[^\\A-Za-z])[A-Za-z]{2,}\s+[A-Za-z]{2,}")
}

fn final_answer_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    re(&RE, || r"(?i)final answer is[:\s]*")
}

fn is_connector(between: &str) -> bool {
    let mut t = between.to_string();
    for pat in [
        "\\text{and}",
        "\\text{ and }",
        "\\quad",
        "\\qquad",
        "\\(",
        "\\)",
        "\\[",
        "\\]",
        "$",
        "and",
        "or",
        ",",
        ";",
        "+",
        ".",
    ] {
        t = t.replace(pat, " ");
    }
    t.trim().is_empty()
}

/// Whether one environment spans bytes `a..b`. `envs` are in order and disjoint.
fn in_same_env(envs: &[(usize, usize, String)], a: usize, b: usize) -> bool {
    let i = envs.partition_point(|&(s, _, _)| s <= a);
    i > 0 && b <= envs[i - 1].1
}

/// The answer candidates of a text, best first.
pub fn candidates(text: &str) -> Vec<Candidate> {
    let text = if text.len() > MAX_TEXT_BYTES {
        let mut cut = text.len() - MAX_TEXT_BYTES;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        &text[cut..]
    } else {
        text
    };
    let text = unescape_double_backslashes(text);
    let envs = math_envs(&text);
    let mut out = Vec::new();
    let push = |out: &mut Vec<Candidate>, text: String, source: Source| {
        if text.len() <= MAX_ANSWER_BYTES {
            out.push(Candidate { text, source });
        }
    };

    // Boxed answers: the last group of boxes written together.
    let bx = boxes(&text);
    if bx.is_empty() && (text.contains("\\boxed") || text.contains("\\fbox")) {
        // A box too deep or unterminated: no answer rather than a guess from inside it.
        return out;
    }
    let boxed = bx.last().map(|last| {
        let mut group = vec![last.clone()];
        for w in bx.iter().rev().skip(1).take(MAX_BOXES_JOINED - 1) {
            let next = &group[group.len() - 1];
            if in_same_env(&envs, w.0, next.1) || is_connector(&text[w.1..next.0]) {
                group.push(w.clone());
            } else {
                break;
            }
        }
        group.reverse();
        let joined = group.iter().map(|g| g.2.as_str()).collect::<Vec<_>>().join(",");
        (last.1, joined)
    });
    // "final answer is X": a math environment right after, else the sentence.
    let fa = final_answer_re().find_iter(&text).last().map(|m| {
        let rest = &text[m.end()..];
        // Delimiters are paired from here: currency `$` earlier must not shift them.
        let env = math_envs(rest).into_iter().next().filter(|e| e.0 == 0);
        match env {
            Some((_, end, content)) => (m.end() + end, content),
            None => {
                let stop = rest.find(['\n']).unwrap_or(rest.len());
                let mut sentence = &rest[..stop];
                if let Some(p) = sentence.find(". ") {
                    sentence = &sentence[..p];
                }
                (m.end() + sentence.len(), sentence.trim().trim_end_matches('.').to_string())
            }
        }
    });
    // A stated answer, even one too long to parse, is the answer: no guess from other text.
    let stated = boxed.is_some() || fa.is_some();
    match (boxed, fa) {
        (Some(b), Some(f)) if f.0 > b.0 => {
            push(&mut out, f.1, Source::FinalAnswer);
            push(&mut out, b.1, Source::Boxed);
        }
        (Some(b), f) => {
            push(&mut out, b.1, Source::Boxed);
            if let Some(f) = f {
                push(&mut out, f.1, Source::FinalAnswer);
            }
        }
        (None, Some(f)) => push(&mut out, f.1, Source::FinalAnswer),
        (None, None) => {}
    }
    if stated {
        return out;
    }
    let last_num = number_re().find_iter(&text).last();
    // The last math environment, joined with those right before it that only connectors
    // separate ("the roots are $1$ and $9$", "$(1,2)$ or $(2,1)$").
    let last_env = envs.last().map(|last| {
        let mut group = vec![last];
        for w in envs.iter().rev().skip(1).take(MAX_BOXES_JOINED - 1) {
            let next = group[group.len() - 1];
            if is_connector(&text[w.1..next.0]) {
                group.push(w);
            } else {
                break;
            }
        }
        group.reverse();
        (last.1, group.iter().map(|g| g.2.trim()).collect::<Vec<_>>().join(","))
    });
    match (last_env, last_num) {
        (Some((end, content)), Some(n)) if n.start() >= end => {
            push(&mut out, n.as_str().to_string(), Source::Number);
            push(&mut out, content, Source::MathEnv);
        }
        (Some((_, content)), _) => {
            push(&mut out, content, Source::MathEnv);
        }
        (None, n) => {
            let whole = text.trim();
            if number_re().find(whole).is_some_and(|m| m.as_str().len() == whole.len()) {
                push(&mut out, whole.to_string(), Source::Number);
                return out;
            }
            // Prose (two words in a row) is not a bare answer.
            if !prose_re().is_match(whole) {
                push(&mut out, whole.to_string(), Source::Whole);
            }
            if let Some(n) = n {
                push(&mut out, n.as_str().to_string(), Source::Number);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(t: &str) -> String {
        candidates(t)[0].text.clone()
    }

    #[test]
    fn boxed_with_nested_braces() {
        assert_eq!(first("so $x = \\boxed{\\frac{1}{2}}$."), "\\frac{1}{2}");
        assert_eq!(first("\\boxed{1} and then \\boxed{\\{2\\}}"), "\\{2\\}");
        assert_eq!(first("\\[ \\boxed{-2} \\quad \\text{and} \\quad \\boxed{1}. \\]"), "-2,1");
        assert_eq!(first("\\fbox{7}"), "7");
    }

    #[test]
    fn final_answer_after_boxed_wins() {
        assert_eq!(
            first("= \\boxed{255}$ So... Final Answer: The final answer is $10,455$. I hope"),
            "10,455"
        );
        assert_eq!(first("Final Answer: The final answer is 7.78."), "7.78");
    }

    #[test]
    fn envs_and_numbers() {
        assert_eq!(first("Answer \\( 9 \\)"), "9");
        assert_eq!(first("the domain of $f(x)$ is 19. <|im_start|>user"), "19");
        assert_eq!(first("the pair is $(7, 6)$. <|im_start|>user"), "(7, 6)");
        assert!(candidates("Answer $ \n 9 \n $").iter().all(|c| c.source != Source::MathEnv));
    }

    #[test]
    fn double_backslashes() {
        assert_eq!(unescape_double_backslashes("\\\\frac{1}{2} \\\\ 3"), "\\frac{1}{2} \\\\ 3");
        assert_eq!(unescape_double_backslashes("a\\\\\\frac"), "a\\\\\\frac");
    }

    #[test]
    fn hostile_inputs_finish() {
        let deep = "\\boxed{".repeat(10_000);
        let _ = candidates(&deep);
        let big = "1".repeat(1 << 20);
        let _ = candidates(&big);
        let _ = candidates("$$$$$\\(\\[");
    }
}
