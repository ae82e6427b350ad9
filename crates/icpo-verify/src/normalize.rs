//! String-level clean-up of an extracted answer before parsing.

use std::sync::OnceLock;

use regex::Regex;

const UNITS: &str = "cm|mm|km|m|meters?|metres?|miles?|mph|inch(?:es)?|in|feet|foot|ft|yards?|yd|kg|g|grams?|mg|lbs?|pounds?|ounces?|oz|seconds?|secs?|s|minutes?|mins?|hours?|hrs?|h|days?|weeks?|months?|years?|dollars?|cents?|yuan|euros?|degrees?|deg|units?|sq|square|cubic|liters?|litres?|L|ml|mL|people|students|points|ways";

/// The regex in `cell`, compiled from `pattern()` on first use (the pattern is only built then).
/// Patterns are constants; should one not compile, it matches nothing rather than panicking.
pub(crate) fn re<P: AsRef<str>>(
    cell: &'static OnceLock<Regex>,
    pattern: impl FnOnce() -> P,
) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern().as_ref()).unwrap_or_else(|_| never()))
}

fn never() -> Regex {
    // "$^" always compiles; the recursion is never entered.
    Regex::new("$^").unwrap_or_else(|_| never())
}

/// Normalises LaTeX: spacing commands, `\left`/`\right`, `\dfrac`, text-like commands, units,
/// degrees, percent signs, dollar signs, thousands separators, `\approx` tails, trailing
/// punctuation.
pub fn normalize(s: &str) -> String {
    static TEXT_UNIT: OnceLock<Regex> = OnceLock::new();
    static BARE_UNIT: OnceLock<Regex> = OnceLock::new();
    static THOUSANDS: OnceLock<Regex> = OnceLock::new();
    static TEXT_CMD: OnceLock<Regex> = OnceLock::new();
    static APPROX: OnceLock<Regex> = OnceLock::new();
    let mut t = s.to_string();
    // Thousands separators first: `14{,}916`, `14 {, }916`, `12,\!000`. Twice, since matches
    // cannot overlap and `12{,}000{,}003` shares the middle group.
    for _ in 0..2 {
        t = re(&THOUSANDS, || r"(\d)\s*(?:\{\s*,\s*\}|,\\!)\s*(\d{3})")
            .replace_all(&t, "$1$2")
            .into_owned();
    }
    for (from, to) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\displaystyle", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\!", ""),
        ("\\,", " "),
        ("\\;", " "),
        ("\\:", " "),
        ("\\qquad", " "),
        ("\\quad", " "),
        ("~", " "),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("°", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\mathbf", "\\text"),
        ("\\mathrm", "\\text"),
        ("\\textbf", "\\text"),
        ("\\textnormal", "\\text"),
        ("\\textrm", "\\text"),
        ("\\mbox", "\\text"),
        ("\\textit", "\\text"),
        ("\\mathit", "\\text"),
        ("\\emph", "\\text"),
        ("\\operatorname", "\\text"),
        ("\\varnothing", "\\emptyset"),
        ("\\infin", "\\infty"),
        ("\\lbrace", "\\{"),
        ("\\rbrace", "\\}"),
        ("²", "^2"),
        ("³", "^3"),
        ("−", "-"),
        ("\\text{and}", ","),
        ("\\text{ or }", ","),
        ("\\text{or}", ","),
        ("\\text{ or}", ","),
        ("\\text{or }", ","),
        ("\\text{ and }", ","),
    ] {
        t = t.replace(from, to);
    }
    // "2 and 5" written inside math: two answers.
    static AND: OnceLock<Regex> = OnceLock::new();
    if !t.contains("\\text") {
        // Twice: matches cannot overlap, and `5 and 6 and 10` shares the 6.
        for _ in 0..2 {
            t = re(&AND, || r"(\S)\s+(?:and|or)\s+(\S)").replace_all(&t, "$1,$2").into_owned();
        }
    }
    // `x ≈ 3.14` states the value 3.14; `1/3 ≈ 0.33` states 1/3 (the exact value first).
    static APPROX_VAR: OnceLock<Regex> = OnceLock::new();
    t = re(&APPROX_VAR, || r"^\s*[A-Za-z](?:_\{?\w+\}?)?\s*\\approx").replace(&t, "").into_owned();
    t = re(&APPROX, || r"\\approx.*$").replace(&t, "").into_owned();
    t = control_space(&t);
    t = thousands_commas(&t);
    // Units written as text (`\text{ cm}^2`) or bare words after a number.
    let text_unit =
        || format!(r"\\text\{{\s*(?:{UNITS})(?:\s+(?:{UNITS}))*\s*\}}(?:\^\{{?\d\}}?)?");
    t = re(&TEXT_UNIT, text_unit).replace_all(&t, "").into_owned();
    // Only before the end or a separator, so `2m+1` keeps its `m`.
    let bare_unit = || {
        format!(
            r"(\d|\}})\s*(?:{UNITS}|percentage|percent|pct)(?:\^\{{?\d\}}?|\^\d)?\s*($|[,;\)\]\}}])"
        )
    };
    t = re(&BARE_UNIT, bare_unit).replace_all(&t, "$1$2").into_owned();
    // `\text{(C)}` → `\text{C}`: answer letters.
    t = re(&TEXT_CMD, || r"\\text\{\s*\(([A-Za-z])\)\s*\}")
        .replace_all(&t, "\\text{$1}")
        .into_owned();
    let t = t.trim().trim_end_matches(['.', ',', ';', ' ', '\n']).trim();
    t.to_string()
}

/// `\ ` (a control space) → ` `, leaving `\\ ` (a row break followed by a space) alone.
fn control_space(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut backslashes = 0usize;
    for ch in s.chars() {
        if ch == ' ' && backslashes % 2 == 1 {
            out.pop();
        }
        backslashes = if ch == '\\' { backslashes + 1 } else { 0 };
        out.push(ch);
    }
    out
}

/// `12,000,023` → `12000023`: commas followed by exactly three digits inside a number that does
/// not start with 0 (so `(0,100)` stays a pair).
fn thousands_commas(s: &str) -> String {
    let c: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < c.len() {
        let starts_number = c[i].is_ascii_digit()
            && c[i] != '0'
            && (i == 0 || !(c[i - 1].is_ascii_digit() || c[i - 1] == '.' || c[i - 1] == ','));
        if starts_number {
            let mut j = i;
            while j < c.len() && c[j].is_ascii_digit() {
                j += 1;
            }
            let lead = j - i;
            let mut k = j;
            let mut groups = 0;
            while lead <= 3
                && k + 3 < c.len() + 1
                && c.get(k) == Some(&',')
                && c[k + 1..].iter().take(3).filter(|x| x.is_ascii_digit()).count() == 3
                && !c.get(k + 4).is_some_and(char::is_ascii_digit)
            {
                k += 4;
                groups += 1;
            }
            if groups > 0 {
                out.extend(c[i..k].iter().filter(|x| **x != ','));
                i = k;
                continue;
            }
            out.extend(&c[i..j]);
            i = j;
            continue;
        }
        out.push(c[i]);
        i += 1;
    }
    out
}

/// A number found by the text fallback, as a plain decimal: thousands separators removed, a
/// decimal comma (`2,74`) read as a point.
pub fn plain_number(s: &str) -> String {
    static DEC_COMMA: OnceLock<Regex> = OnceLock::new();
    let t = s.replace(' ', "").replace("{,}", "").replace(",\\!", "");
    if re(&DEC_COMMA, || r"^-?\d+,\d{1,2}$").is_match(&t) {
        return t.replace(',', ".");
    }
    t.replace(',', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans() {
        assert_eq!(normalize("14 {, }916"), "14916");
        assert_eq!(normalize("32,\\! 349"), "32349");
        assert_eq!(normalize("28 percentage"), "28");
        assert_eq!(normalize("125\\textnormal{ miles}"), "125");
        assert_eq!(normalize("15\\mbox{ cm}^2"), "15");
        assert_eq!(normalize("5225 \\text{ cubic inches}"), "5225");
        assert_eq!(normalize("x=1/3\\approx1.3"), "x=1/3");
        assert_eq!(normalize("x \\approx 37"), "37");
        assert_eq!(normalize("r_1 \\approx 2.5"), "2.5");
        assert_eq!(normalize("\\text{(C)}"), "\\text{C}");
        assert_eq!(normalize("\\dfrac{1}{2}."), "\\frac{1}{2}");
        assert_eq!(plain_number("2,74"), "2.74");
        assert_eq!(normalize("12,000,023"), "12000023");
        assert_eq!(normalize("(0,100)"), "(0,100)");
        assert_eq!(normalize("{1,3}"), "{1,3}");
        assert_eq!(normalize("32, 349"), "32, 349");
        assert_eq!(normalize("1 & 2 \\\\ 3"), "1 & 2 \\\\ 3");
        assert_eq!(plain_number("1,000.99"), "1000.99");
        assert_eq!(plain_number("1 000"), "1000");
    }
}
