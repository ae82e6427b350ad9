//! Hostile verifier inputs, shared by the robustness test (no crash, "not equivalent", bounded
//! time in a debug build) and the `hostile` bench (the time budget, in a release build).
//! Each is a `(name, gold, prediction)`; none of them is a correct answer.

/// Repeats `unit` `n` times, joined by `sep`.
fn chain(unit: &str, sep: &str, n: usize) -> String {
    vec![unit; n].join(sep)
}

/// The hostile cases at scale `n` (thousands of operators; the byte sizes reach 1 MB).
pub fn cases(n: usize) -> Vec<(String, String, String)> {
    let mb = 1 << 20;
    let boxed = |s: &str| format!("The answer is \\boxed{{{s}}}.");
    let mut out: Vec<(&str, String, String)> = vec![
        // Operator chains: left-nested trees without a depth budget overflowed the stack.
        ("chain *", "5".into(), boxed(&chain("2", "*", n))),
        ("chain /", "5".into(), boxed(&chain("2", "/", n))),
        ("chain \\cdot in $", "5".into(), format!("so ${}$", chain("2", "\\cdot ", n))),
        ("chain \\times", "5".into(), boxed(&chain("3", "\\times ", n))),
        ("chain \\div", "5".into(), boxed(&chain("3", "\\div ", n))),
        ("implicit product", "5".into(), boxed(&"x".repeat(n))),
        ("implicit product of groups", "5".into(), boxed(&"(x)".repeat(n))),
        ("factorials", "5".into(), boxed(&format!("3{}", "!".repeat(n)))),
        ("negations", "5".into(), boxed(&"-".repeat(n))),
        ("powers", "5".into(), boxed(&chain("2", "^", n))),
        ("braced powers", "5".into(), boxed(&format!("{}2{}", "2^{".repeat(n), "}".repeat(n)))),
        ("fractions", "5".into(), boxed(&format!("{}1{}", "\\frac{1}{".repeat(n), "}".repeat(n)))),
        ("sqrt", "5".into(), boxed(&format!("{}2{}", "\\sqrt{".repeat(n), "}".repeat(n)))),
        ("mixed * and /", "5".into(), boxed(&chain("a*b/c", "/", n))),
        ("gold of letters", "ab".repeat(n), boxed("5")),
        ("gold chain *", chain("2", "*", n), boxed("5")),
        ("gold factorials", format!("3{}", "!".repeat(n)), boxed("5")),
        // Relations and sets.
        ("relation chain", "5".into(), boxed(&chain("x", "<", n))),
        ("relation chain \\le", "x \\le 5".into(), boxed(&chain("x", "\\le ", n))),
        ("equation chain", "5".into(), boxed(&chain("x", "=", n))),
        ("unions", "5".into(), boxed(&chain("[1,2]", "\\cup ", n))),
        ("set", "\\{1,2\\}".into(), boxed(&format!("\\{{{}\\}}", chain("x", ",", n)))),
        ("gold and pred lists", chain("x", ",", n), boxed(&chain("y", ",", n))),
        ("many boxes", "5".into(), chain("\\boxed{1}", " and ", 10 * n)),
        ("many boxes in one env", "5".into(), format!("${}$", chain("\\boxed{1}", ",", 10 * n))),
        (
            "huge matrix",
            "5".into(),
            boxed(&format!(
                "\\begin{{pmatrix}}{}\\end{{pmatrix}}",
                chain(&chain("x", "&", 60), "\\\\", 60)
            )),
        ),
        (
            "matrix product",
            "5".into(),
            boxed(&chain("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "", n / 10)),
        ),
        (
            "nested environments",
            "5".into(),
            boxed(
                &(0..n)
                    .map(|i| format!("\\begin{{e{i}}}"))
                    .chain((0..n).rev().map(|i| format!("\\end{{e{i}}}")))
                    .collect::<String>(),
            ),
        ),
        (
            "nested matrices",
            "5".into(),
            boxed(
                &(0..n)
                    .map(|i| format!("\\begin{{matrix{i}}}"))
                    .chain((0..n).rev().map(|i| format!("\\end{{matrix{i}}}")))
                    .collect::<String>(),
            ),
        ),
        ("unterminated \\(", "5".into(), "\\(".repeat(mb / 2)),
        ("unterminated \\[", "5".into(), "\\[".repeat(mb / 2)),
        ("unterminated $$", "5".into(), format!("$${}", "x".repeat(mb))),
        ("dollars", "5".into(), "$".repeat(mb)),
        ("unterminated boxes", "5".into(), "\\boxed{".repeat(mb / 7)),
        // Sizes: 1 MB gold and prediction strings.
        ("1 MB of digits", "7".repeat(mb), format!("{}8", "7".repeat(mb - 1))),
        ("1 MB numbers", "5".into(), chain("12345", " ", mb / 6)),
        ("1 MB gold of numbers", chain("12345", " ", mb / 6), boxed("5")),
        ("1 MB gold of letters", "x".repeat(mb), boxed("x")),
        ("1 MB gold in a box", format!("\\boxed{{{}}}", "9".repeat(mb)), boxed("9")),
        ("1 MB box", "5".into(), boxed(&chain("x", "+", mb / 2))),
        ("1 MB thousands separators", "5".into(), format!("1{}", ",000".repeat(mb / 4))),
        ("1 MB decimal", "5".into(), format!("0.{}", "3".repeat(mb))),
        ("1 MB of text", "5".into(), "lorem ipsum ".repeat(mb / 12)),
        ("1 MB of \\text", "5".into(), boxed(&format!("\\text{{{}}}", "a".repeat(mb)))),
        ("1 MB of commands", "5".into(), boxed(&"\\alpha".repeat(mb / 6))),
        ("1 MB of braces", "5".into(), boxed(&"{}".repeat(mb / 2))),
        ("1 MB of percent", "7".into(), boxed(&"5\\%".repeat(mb / 3))),
        ("1 MB of units", "7".into(), boxed(&"5 \\text{ cm}".repeat(mb / 12))),
        ("big exponents", "5".into(), boxed(&chain("10^{10^{10}}", "+", n))),
        ("big factorial", "5".into(), boxed(&format!("{}!", "9".repeat(5_000)))),
        ("big numerals", "5".into(), boxed(&chain(&"9".repeat(5_000), "*", 100))),
    ];
    out.push((
        "both 1 MB",
        format!("{}1", "9".repeat(mb)),
        format!("\\boxed{{{}}}", "9".repeat(mb)),
    ));
    out.into_iter().map(|(name, g, p)| (name.to_string(), g, p)).collect()
}
