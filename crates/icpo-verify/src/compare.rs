//! Equivalence of two parsed answers, after Math-Verify's rules: exact rationals, numbers to a
//! precision, symbolic expressions by evaluation at seeded random points, sets unordered,
//! tuples ordered, intervals by ends, relations through [`crate::relations`].

use std::collections::BTreeSet;

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Signed};
use rand::{Rng, SeedableRng};

use crate::expr::{Expr, RelOp};
use crate::relations::{inequality_set, rel_eq};
use crate::VerifyConfig;

/// A budget of comparison steps, so deep or huge answers end in "not equivalent".
pub(crate) struct Budget(u32);

impl Budget {
    pub(crate) fn new(steps: u32) -> Self {
        Budget(steps)
    }
    fn spend(&mut self) -> bool {
        self.0 = self.0.saturating_sub(1);
        self.0 > 0
    }
}

pub(crate) fn is_symbol_like(e: &Expr) -> bool {
    match e {
        Expr::Sym(_) => true,
        Expr::Func(_, args) => args.iter().all(is_symbol_like),
        Expr::Tuple(xs) => xs.iter().all(is_symbol_like),
        // `g(t)`, `f(x)`: a function of a variable, parsed as a product of symbols.
        Expr::Mul(xs) => xs.iter().all(is_symbol_like),
        _ => false,
    }
}

/// A name for a quantity on the left of `=`: `|PQ|`, `AB`, `m:n`, `P(A)`.
fn is_label(e: &Expr) -> bool {
    match e {
        Expr::Abs(x) => is_symbol_like(x),
        Expr::Div(a, b) => is_symbol_like(a) && is_symbol_like(b),
        _ => false,
    }
}

/// Whether `e` holds no free variable (a bound of an inequality).
pub(crate) fn is_constant(e: &Expr) -> bool {
    let mut syms = BTreeSet::new();
    e.symbols(&mut syms);
    syms.is_empty()
}

/// The value an answer stands for: `x = 3` → 3, `(p,q) = (1,2)` → (1,2), `x ∈ S` → S,
/// `a ± b` → {a+b, a−b}. Inequalities stay relations: [`equiv_answers`] compares a gold
/// relation with the set it describes.
pub(crate) fn canonical(e: Expr) -> Expr {
    match e {
        // `x = 3`, `|PQ| = 7`, and chains `t = 2 + 2 = 4`: the last side is the answer.
        Expr::Rel(mut parts, ops)
            if ops.iter().all(|o| *o == RelOp::Eq)
                && (is_symbol_like(&parts[0]) || is_label(&parts[0]))
                && parts.len() >= 2 =>
        {
            let last = parts.pop().unwrap_or(Expr::Inf);
            canonical(last)
        }
        Expr::In(_, set) => canonical(*set),
        Expr::PlusMinus(a, b) => Expr::List(vec![
            Expr::Add(vec![(*a).clone(), (*b).clone()]),
            Expr::Add(vec![*a, Expr::Neg(b)]),
        ]),
        Expr::List(items) => {
            let mut flat = Vec::new();
            for it in items {
                match canonical(it) {
                    Expr::List(inner) => flat.extend(inner),
                    other => flat.push(other),
                }
            }
            if flat.len() == 1 {
                flat.remove(0)
            } else {
                Expr::List(flat)
            }
        }
        Expr::Tuple(items) => Expr::Tuple(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

fn round_to(r: &BigRational, decimals: u32) -> BigRational {
    let scale = BigRational::from_integer(BigInt::from(10).pow(decimals));
    let half = BigRational::new(BigInt::one(), BigInt::from(2));
    let x = r * &scale;
    let rounded = if x.is_negative() { -((-x) + &half).floor() } else { (x + half).floor() };
    rounded / scale
}

fn decimals_of(e: &Expr) -> Option<u32> {
    match e {
        Expr::Num(_, d) => *d,
        Expr::Neg(x) => decimals_of(x),
        _ => None,
    }
}

/// The free variables of `a` and `b` together, in order; `None` when `strict` and they differ.
pub(crate) fn joint_symbols(a: &Expr, b: &Expr, strict: bool) -> Option<Vec<String>> {
    let (mut sa, mut sb) = (BTreeSet::new(), BTreeSet::new());
    a.symbols(&mut sa);
    b.symbols(&mut sb);
    if strict && sa != sb {
        return None;
    }
    sa.extend(sb);
    Some(sa.into_iter().collect())
}

/// `a` and `b` evaluated at `n` points of `syms` drawn (each in [0.3, 2.7)) from a generator
/// seeded with `seed`; a point is `None` once the comparison budget is spent.
pub(crate) fn at_points<'a>(
    a: &'a Expr,
    b: &'a Expr,
    syms: &'a [String],
    seed: u64,
    n: usize,
    budget: &'a mut Budget,
) -> impl Iterator<Item = Option<(Option<f64>, Option<f64>)>> + 'a {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(move |_| {
        if !budget.spend() {
            return None;
        }
        let vals: Vec<f64> = syms.iter().map(|_| rng.gen_range(0.3..2.7)).collect();
        let lookup = |name: &str| syms.iter().position(|s| s == name).map(|i| vals[i]);
        Some((a.eval(&lookup), b.eval(&lookup)))
    })
}

/// The letters of a product of one-letter symbols (`no` parsed as `n·o`), in order.
fn letters(e: &Expr) -> Option<String> {
    match e {
        Expr::Sym(s) if s.chars().count() == 1 => Some(s.clone()),
        Expr::Mul(xs) => xs.iter().map(letters).collect(),
        _ => None,
    }
}

/// Scalar equivalence: exact, rounded to a written decimal, numeric, then symbolic.
pub(crate) fn scalar_eq(g: &Expr, p: &Expr, cfg: &VerifyConfig, budget: &mut Budget) -> bool {
    if !budget.spend() {
        return false;
    }
    if g == p {
        return true;
    }
    let clean = |s: &str| s.replace([' ', '(', ')'], "").to_lowercase();
    if let (Expr::Text(a), Expr::Text(b)) = (g, p) {
        return clean(a) == clean(b);
    }
    // A short word written without `\text` parses as a product of letters (`no`).
    match (g, p) {
        (Expr::Text(a), other) | (other, Expr::Text(a)) => {
            return letters(other).is_some_and(|w| clean(&w) == clean(a));
        }
        _ => {}
    }
    if matches!(g, Expr::Text(_)) || matches!(p, Expr::Text(_)) {
        return false;
    }
    let (eg, ep) = (g.exact(), p.exact());
    if let (Some(a), Some(b)) = (&eg, &ep) {
        if a == b {
            return true;
        }
        // A decimal written to d places matches the other side rounded to d places.
        // (decimal side, its value, other side, its value), both ways round.
        for (dec, dec_value, other, other_value) in [(p, b, g, a), (g, a, p, b)] {
            if let Some(d) = decimals_of(dec) {
                if d >= 1 && decimals_of(other).is_none() && round_to(other_value, d) == *dec_value
                {
                    return true;
                }
            }
        }
        return false;
    }
    let Some(syms) = joint_symbols(g, p, cfg.strict) else { return false };
    let tol = 10f64.powi(-(cfg.precision as i32));
    let mut agree = 0;
    for point in at_points(g, p, &syms, 0x1c90, 16, budget) {
        let Some(values) = point else { return false };
        match values {
            (Some(a), Some(b)) => {
                if a.is_infinite() || b.is_infinite() {
                    if a != b {
                        return false;
                    }
                } else if (a - b).abs() > tol * a.abs().max(b.abs()).max(1.0) {
                    // Decimal answers: compare at the written precision.
                    let d = decimals_of(p).or(decimals_of(g));
                    match d {
                        Some(d)
                            if syms.is_empty()
                                && (a - b).abs() <= 0.5 * 10f64.powi(-(d as i32)) + 1e-12 => {}
                        _ => return false,
                    }
                }
                agree += 1;
                if syms.is_empty() {
                    return true;
                }
            }
            (None, None) => {}
            _ => return false,
        }
    }
    agree >= 3
}

fn interval_parts(e: &Expr) -> Option<(&Expr, &Expr, bool, bool)> {
    match e {
        Expr::Interval(a, b, lc, hc) => Some((a, b, *lc, *hc)),
        Expr::Tuple(xs) if xs.len() == 2 => Some((&xs[0], &xs[1], false, false)),
        _ => None,
    }
}

fn set_items(e: &Expr) -> Option<Vec<&Expr>> {
    match e {
        Expr::List(xs) | Expr::Set(xs) | Expr::Union(xs) => Some(xs.iter().collect()),
        _ => None,
    }
}

fn set_eq(g: &[&Expr], p: &[&Expr], cfg: &VerifyConfig, budget: &mut Budget) -> bool {
    g.iter().all(|x| p.iter().any(|y| equiv(x, y, cfg, budget)))
        && p.iter().all(|y| g.iter().any(|x| equiv(x, y, cfg, budget)))
}

fn matrix_value(e: &Expr) -> Option<Vec<Vec<Expr>>> {
    match e {
        Expr::Matrix(m) => Some(m.clone()),
        Expr::Tuple(xs) if xs.len() == 1 => matrix_value(&xs[0]),
        Expr::Add(xs) => {
            let ms: Vec<Vec<Vec<Expr>>> = xs.iter().map(matrix_value).collect::<Option<_>>()?;
            let first = ms.first()?;
            let mut out = first.clone();
            for m in &ms[1..] {
                if m.len() != out.len() || m.iter().zip(&out).any(|(a, b)| a.len() != b.len()) {
                    return None;
                }
                for (r, row) in out.iter_mut().enumerate() {
                    for (c, cell) in row.iter_mut().enumerate() {
                        *cell = Expr::Add(vec![cell.clone(), m[r][c].clone()]);
                    }
                }
            }
            Some(out)
        }
        Expr::Mul(xs) if xs.len() >= 2 => {
            let mut acc = matrix_value(&xs[0])?;
            for x in &xs[1..] {
                acc = matrix_product(&acc, &matrix_value(x)?)?;
                // Entries of a product chain grow geometrically as expressions.
                if !acc.iter().flatten().all(|e| e.nodes_within(MAX_ENTRY_NODES)) {
                    return None;
                }
            }
            Some(acc)
        }
        _ => None,
    }
}

/// Largest entry of a computed matrix (a sum or product of matrices), in expression nodes.
const MAX_ENTRY_NODES: usize = 2_000;

/// `a · b` of two matrices, entries as expressions; `None` when the shapes do not chain.
fn matrix_product(a: &[Vec<Expr>], b: &[Vec<Expr>]) -> Option<Vec<Vec<Expr>>> {
    let inner = b.len();
    if a.iter().any(|r| r.len() != inner) {
        return None;
    }
    let cols = b.first()?.len();
    Some(
        a.iter()
            .map(|row| {
                (0..cols)
                    .map(|c| {
                        Expr::Add(
                            (0..inner)
                                .map(|k| Expr::Mul(vec![row[k].clone(), b[k][c].clone()]))
                                .collect(),
                        )
                    })
                    .collect()
            })
            .collect(),
    )
}

/// Are the answers `gold` and `pred` (both canonical) the same? As Math-Verify: a gold
/// inequality in one variable also matches the set it describes (`1 ≤ y ≤ 4` and `[1, 4]`,
/// `0 < g(t) < 2` and `(0, 2)`), but a predicted inequality does not match a gold set, and
/// inside a list of answers relations match relations only.
pub(crate) fn equiv_answers(
    (g_raw, g): (&Expr, &Expr),
    (p_raw, p): (&Expr, &Expr),
    cfg: &VerifyConfig,
    budget: &mut Budget,
) -> (bool, &'static str) {
    // Two equations (`y = 3x + 2`, `2y − 6x − 4 = 0`) are compared as equations first, before
    // `lhs =` labels are read away.
    if let (Expr::Rel(a, oa), Expr::Rel(b, ob)) = (g_raw, p_raw) {
        let eqs = |o: &[RelOp]| o.len() == 1 && o[0] == RelOp::Eq;
        if eqs(oa) && eqs(ob) && rel_eq(a, oa, b, ob, cfg, budget) {
            return (true, "equations: the same up to a non-zero factor");
        }
    }
    if let (Expr::Rel(parts, ops), false) = (g, matches!(p, Expr::Rel(..))) {
        if ops.iter().any(|o| *o != RelOp::Eq) {
            let same = inequality_set(parts, ops).is_some_and(|set| equiv(&set, p, cfg, budget));
            return (same, "relation against the set it describes");
        }
    }
    (equiv(g, p, cfg, budget), rule_for(g, p))
}

/// The family of an answer as parsed.
pub(crate) fn family(e: &Expr) -> &'static str {
    match e {
        Expr::Rel(_, ops) if ops.iter().all(|o| *o == RelOp::Eq) => "equation",
        Expr::Rel(..) | Expr::In(..) => "relation",
        Expr::Matrix(_) => "matrix",
        Expr::Interval(..) | Expr::Union(_) => "interval",
        Expr::Set(_) => "set",
        Expr::List(_) | Expr::PlusMinus(..) => "several answers",
        Expr::Tuple(_) => "tuple",
        Expr::Text(_) => "text",
        e if e.exact().is_some() => "number",
        _ => "expression",
    }
}

/// The comparison [`equiv`] makes for canonical answers of these shapes.
fn rule_for(g: &Expr, p: &Expr) -> &'static str {
    if matrix_value(g).is_some() && matrix_value(p).is_some() {
        return "matrices: entry by entry";
    }
    match (g, p) {
        (Expr::Rel(..), Expr::Rel(..)) => "relations: the same variable and set, or the same sides",
        (_, Expr::Rel(..)) => "derivation: the last side of the chain",
        (Expr::Interval(..), _) | (_, Expr::Interval(..)) => "intervals: ends and closedness",
        (Expr::Tuple(_), _) | (_, Expr::Tuple(_)) => "tuples: in order",
        (Expr::Text(_), _) | (_, Expr::Text(_)) => "text: case and spacing ignored",
        _ if set_items(g).is_some() || set_items(p).is_some() => {
            "sets: unordered, member by member"
        }
        _ if g.exact().is_some() && p.exact().is_some() => {
            "numbers: exact, or to the decimals written"
        }
        _ => "expressions: values at seeded random points",
    }
}

/// Are `gold` and `pred` (both already canonical) the same answer?
pub(crate) fn equiv(g: &Expr, p: &Expr, cfg: &VerifyConfig, budget: &mut Budget) -> bool {
    if !budget.spend() {
        return false;
    }
    if let (Some(mg), Some(mp)) = (matrix_value(g), matrix_value(p)) {
        return mg.len() == mp.len()
            && mg.iter().zip(&mp).all(|(a, b)| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| scalar_eq(x, y, cfg, budget))
            });
    }
    match (g, p) {
        (Expr::Tuple(a), Expr::Tuple(b) | Expr::List(b)) | (Expr::List(a), Expr::Tuple(b))
            if a.len() == b.len() =>
        {
            if let (Expr::List(_), Expr::Tuple(_)) = (g, p) {
                // Several gold answers against one pred tuple: a set of one.
                return false;
            }
            a.iter().zip(b).all(|(x, y)| equiv(x, y, cfg, budget))
        }
        (Expr::Interval(..), _) | (_, Expr::Interval(..)) => {
            match (interval_parts(g), interval_parts(p)) {
                (Some((a, b, lc, hc)), Some((c, d, lc2, hc2))) => {
                    lc == lc2
                        && hc == hc2
                        && scalar_eq(a, c, cfg, budget)
                        && scalar_eq(b, d, cfg, budget)
                }
                _ => match (set_items(g), set_items(p)) {
                    (Some(gs), None) if gs.len() == 1 => equiv(gs[0], p, cfg, budget),
                    (None, Some(ps)) if ps.len() == 1 => equiv(g, ps[0], cfg, budget),
                    _ => false,
                },
            }
        }
        _ => match (set_items(g), set_items(p)) {
            (Some(gs), Some(ps)) => set_eq(&gs, &ps, cfg, budget),
            (Some(gs), None) => gs.len() == 1 && equiv(gs[0], p, cfg, budget),
            (None, Some(ps)) => ps.len() == 1 && equiv(g, ps[0], cfg, budget),
            (None, None) => match (g, p) {
                (Expr::Rel(a, oa), Expr::Rel(b, ob)) => rel_eq(a, oa, b, ob, cfg, budget),
                // A derivation `… = value` answers a gold value with its last part.
                (_, Expr::Rel(b, ob)) if ob.iter().all(|o| *o == RelOp::Eq) => {
                    b.last().is_some_and(|last| equiv(g, last, cfg, budget))
                }
                (Expr::Rel(..), _) | (_, Expr::Rel(..)) => false,
                (Expr::Tuple(_), _) | (_, Expr::Tuple(_)) => false,
                _ => scalar_eq(g, p, cfg, budget),
            },
        },
    }
}
