//! The tokenizer of answer text: LaTeX commands, numerals, identifiers, relations, matrices
//! and set braces as [`Tok`]s, within a token budget and limits on numeral and name lengths.

use num_bigint::BigInt;
use num_rational::BigRational;

use crate::expr::{Expr, RelOp};

/// Most tokens parsed in one answer.
const MAX_TOKENS: usize = 20_000;
/// Deepest nesting followed.
pub(crate) const MAX_DEPTH: usize = 200;
/// Longest numeral parsed: 6,000 digits is past every exact result kept (`expr::MAX_BITS`), and
/// decimal parsing is quadratic in the digits.
const MAX_NUMERAL_CHARS: usize = 6_000;
/// Longest command or function name looked up; longer runs of letters are no command.
const MAX_NAME_CHARS: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Num(String),
    Ident(String),
    Cmd(String),
    Text(String),
    /// Cells by rows, and the nesting depth the cells are parsed at.
    Matrix(Vec<Vec<String>>, usize),
    Op(char),
    Rel(RelOp),
    SetOpen,
    SetClose,
}

pub(crate) const FUNCS: [&str; 19] = [
    "sin", "cos", "tan", "sec", "csc", "cot", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
    "ln", "log", "exp", "sqrt", "min", "max", "gcd",
];
pub(crate) const GREEK: [&str; 20] = [
    "alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "nu", "rho", "sigma",
    "tau", "phi", "psi", "omega", "varphi", "kappa", "eta", "zeta", "xi",
];

fn braced_end(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '{' => depth += 1,
            '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Index in `c` where `pat` next occurs at or after `from`.
fn find_chars(c: &[char], from: usize, pat: &[char]) -> Option<usize> {
    let first = *pat.first()?;
    (from..c.len().checked_sub(pat.len())? + 1).find(|&i| c[i] == first && c[i..].starts_with(pat))
}

pub(crate) fn tokenize(s: &str, depth: usize) -> Option<Vec<Tok>> {
    if depth > MAX_DEPTH {
        return None;
    }
    let c: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if out.len() > MAX_TOKENS {
            return None;
        }
        let ch = c[i];
        if ch.is_whitespace() || ch == '&' {
            i += 1;
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < c.len()
                && (c[i].is_ascii_digit()
                    || (c[i] == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                i += 1;
            }
            if i - start > MAX_NUMERAL_CHARS {
                return None;
            }
            out.push(Tok::Num(c[start..i].iter().collect()));
        } else if ch.is_alphabetic() {
            // Known function names written without a backslash; otherwise one letter each.
            // At most a few letters are read: a run of thousands must not be copied per letter.
            let word: String = c[i..]
                .iter()
                .take(MAX_NAME_CHARS)
                .take_while(|x| x.is_ascii_alphabetic())
                .collect();
            if let Some(f) = FUNCS.iter().find(|f| word == **f) {
                out.push(Tok::Cmd(f.to_string()));
                i += f.len();
            } else {
                i += 1;
                let mut name = ch.to_string();
                if c.get(i) == Some(&'_') {
                    let (sub, next) = subscript(&c, i + 1)?;
                    name = format!("{name}_{sub}");
                    i = next;
                }
                out.push(Tok::Ident(name));
            }
        } else if ch == '\\' {
            let next = *c.get(i + 1)?;
            if next.is_alphabetic() {
                let len = c[i + 1..].iter().take_while(|x| x.is_ascii_alphabetic()).count();
                let name: String = c[i + 1..i + 1 + len].iter().collect();
                i += 1 + len;
                match name.as_str() {
                    "text" | "texttt" | "textsf" => {
                        while c.get(i) == Some(&' ') {
                            i += 1;
                        }
                        let end = braced_end(&c, i)?;
                        let body: String =
                            c[i + 1..end].iter().collect::<String>().trim().to_string();
                        i = end + 1;
                        if body.chars().count() == 1 && body.chars().all(char::is_alphabetic) {
                            out.push(Tok::Ident(body));
                        } else if !body.is_empty() {
                            out.push(Tok::Text(body));
                        }
                    }
                    "begin" => {
                        let end = braced_end(&c, i)?;
                        let env: String = c[i + 1..end].iter().collect();
                        let close: Vec<char> = format!("\\end{{{env}}}").chars().collect();
                        let body_end = find_chars(&c, end + 1, &close)?;
                        let mut body_start = end + 1;
                        // `\begin{array}{cc}`: the column spec is no cell.
                        if env == "array" && c.get(body_start) == Some(&'{') {
                            body_start = braced_end(&c, body_start)?.min(body_end) + 1;
                        }
                        let body: String = c[body_start.min(body_end)..body_end].iter().collect();
                        i = body_end + close.len();
                        if env.contains("matrix") || env == "array" {
                            let rows = body
                                .split("\\\\")
                                .map(|r| {
                                    r.split('&').map(|x| x.trim().to_string()).collect::<Vec<_>>()
                                })
                                .filter(|r: &Vec<String>| r.iter().any(|x| !x.is_empty()))
                                .collect();
                            out.push(Tok::Matrix(rows, depth + 1));
                        } else {
                            out.extend(tokenize(&body, depth + 1)?);
                        }
                    }
                    "le" | "leq" | "leqslant" => out.push(Tok::Rel(RelOp::Le)),
                    "ge" | "geq" | "geqslant" => out.push(Tok::Rel(RelOp::Ge)),
                    "lt" => out.push(Tok::Rel(RelOp::Lt)),
                    "gt" => out.push(Tok::Rel(RelOp::Gt)),
                    "ne" | "neq" => out.push(Tok::Rel(RelOp::Ne)),
                    "cdot" | "times" | "ast" => out.push(Tok::Op('*')),
                    "div" => out.push(Tok::Op('/')),
                    "to" | "rightarrow" | "Rightarrow" | "implies" | "iff" => return None,
                    g if GREEK.contains(&g) => out.push(Tok::Ident(g.to_string())),
                    other => out.push(Tok::Cmd(other.to_string())),
                }
            } else {
                match next {
                    '{' => out.push(Tok::SetOpen),
                    '}' => out.push(Tok::SetClose),
                    '\\' => out.push(Tok::Op(';')),
                    _ => {}
                }
                i += 2;
            }
        } else {
            match ch {
                '≤' => out.push(Tok::Rel(RelOp::Le)),
                '≥' => out.push(Tok::Rel(RelOp::Ge)),
                '≠' => out.push(Tok::Rel(RelOp::Ne)),
                '<' if c.get(i + 1) == Some(&'=') => {
                    out.push(Tok::Rel(RelOp::Le));
                    i += 1;
                }
                '!' if c.get(i + 1) == Some(&'=') => {
                    out.push(Tok::Rel(RelOp::Ne));
                    i += 1;
                }
                '>' if c.get(i + 1) == Some(&'=') => {
                    out.push(Tok::Rel(RelOp::Ge));
                    i += 1;
                }
                '<' => out.push(Tok::Rel(RelOp::Lt)),
                '>' => out.push(Tok::Rel(RelOp::Gt)),
                '=' => out.push(Tok::Rel(RelOp::Eq)),
                '×' | '·' => out.push(Tok::Op('*')),
                '÷' => out.push(Tok::Op('/')),
                // A ratio `3:8` is the quotient it states (and `m:n = 7` a labelled value);
                // after a word (`Answer: 2`) a colon is prose, and the text is no answer.
                ':' if matches!(out.last(), Some(Tok::Num(_) | Tok::Ident(_)))
                    && !matches!(
                        out.len().checked_sub(2).and_then(|k| out.get(k)),
                        Some(Tok::Ident(_) | Tok::Num(_))
                    ) =>
                {
                    out.push(Tok::Op('/'))
                }
                '±' => out.push(Tok::Cmd("pm".into())),
                '∞' => out.push(Tok::Cmd("infty".into())),
                'π' => out.push(Tok::Cmd("pi".into())),
                '+' | '-' | '*' | '/' | '^' | '!' | '(' | ')' | '[' | ']' | '{' | '}' | ','
                | ';' | '|' | '_' => out.push(Tok::Op(ch)),
                _ => return None,
            }
            i += 1;
        }
    }
    Some(out)
}

/// A subscript after `_`: a braced group or one character.
fn subscript(c: &[char], i: usize) -> Option<(String, usize)> {
    match c.get(i)? {
        '{' => {
            let end = braced_end(c, i)?;
            Some((c[i + 1..end].iter().collect::<String>().replace(' ', ""), end + 1))
        }
        ch => Some((ch.to_string(), i + 1)),
    }
}

pub(crate) fn number(s: &str) -> Option<Expr> {
    let (int, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let digits = format!("{int}{frac}");
    let n: BigInt = if digits.is_empty() { return None } else { digits.parse().ok()? };
    let d = BigInt::from(10).pow(frac.len() as u32);
    Some(Expr::Num(
        BigRational::new(n, d),
        (!frac.is_empty() || s.contains('.')).then_some(frac.len() as u32),
    ))
}
