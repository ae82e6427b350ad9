//! Relations as answers: one-variable inequalities as the interval sets they describe
//! (`x ≤ 3`, `3 ≥ −x`, `1 < x < 2`, `|x| ≤ 2`), and two relations compared — equations up to a
//! non-zero factor of their sides' difference, inequalities by variable and set, chains side
//! by side in either direction.

use std::collections::BTreeSet;

use crate::compare::{
    at_points, equiv, is_constant, is_symbol_like, joint_symbols, scalar_eq, Budget,
};
use crate::expr::{Expr, RelOp};
use crate::VerifyConfig;

fn neg_inf() -> Expr {
    Expr::Neg(Box::new(Expr::Inf))
}

fn flip(op: RelOp) -> RelOp {
    match op {
        RelOp::Lt => RelOp::Gt,
        RelOp::Gt => RelOp::Lt,
        RelOp::Le => RelOp::Ge,
        RelOp::Ge => RelOp::Le,
        other => other,
    }
}

/// `x op v` (variable first, `v` constant) as a set.
fn ray(op: RelOp, v: &Expr) -> Option<Expr> {
    let closed = matches!(op, RelOp::Le | RelOp::Ge);
    Some(match op {
        RelOp::Lt | RelOp::Le => {
            Expr::Interval(Box::new(neg_inf()), Box::new(v.clone()), false, closed)
        }
        RelOp::Gt | RelOp::Ge => {
            Expr::Interval(Box::new(v.clone()), Box::new(Expr::Inf), closed, false)
        }
        RelOp::Ne => Expr::Union(vec![
            Expr::Interval(Box::new(neg_inf()), Box::new(v.clone()), false, false),
            Expr::Interval(Box::new(v.clone()), Box::new(Expr::Inf), false, false),
        ]),
        RelOp::Eq => return None,
    })
}

/// `(variable side, op, value)` of a one-variable relation `parts[0] op parts[1]`, with the
/// variable moved to the left and a negated variable (`−x > 3`) turned around (`x < −3`).
fn one_sided(parts: &[Expr], op: RelOp) -> Option<(Expr, RelOp, Expr)> {
    let (lhs, rhs) = (&parts[0], &parts[1]);
    let (var, op, v) = if is_constant(rhs) && !is_constant(lhs) {
        (lhs, op, rhs)
    } else if is_constant(lhs) && !is_constant(rhs) {
        (rhs, flip(op), lhs)
    } else {
        return None;
    };
    match var {
        Expr::Neg(x) if is_symbol_like(x) => {
            Some(((**x).clone(), flip(op), Expr::Neg(Box::new(v.clone()))))
        }
        x if is_symbol_like(x) => Some((x.clone(), op, v.clone())),
        _ => None,
    }
}

/// The variable and the set of a one-variable inequality (`x ≤ 3`, `3 ≥ −x`, `1 < x < 2`).
fn one_variable(parts: &[Expr], ops: &[RelOp]) -> Option<(Expr, Expr)> {
    if ops.iter().all(|o| *o == RelOp::Eq) {
        return None;
    }
    let var = match (parts, ops) {
        ([_, _], [op]) => one_sided(parts, *op)?.0,
        ([_, x, _], [_, _]) => x.clone(),
        _ => return None,
    };
    Some((var, inequality_set(parts, ops)?))
}

/// `a < x ≤ b`, `x ≥ a`, `a > −x`, `x ≠ a`, `a ≤ |x| ≤ b` as intervals (or unions of them).
pub(crate) fn inequality_set(parts: &[Expr], ops: &[RelOp]) -> Option<Expr> {
    let closed = |op: RelOp| matches!(op, RelOp::Le | RelOp::Ge);
    match (parts, ops) {
        ([a, x, b], [o1, o2])
            if (is_symbol_like(x) || matches!(x, Expr::Abs(_)))
                && is_constant(a)
                && is_constant(b) =>
        {
            let (lo, hi, lc, hc) = match (o1, o2) {
                (RelOp::Lt | RelOp::Le, RelOp::Lt | RelOp::Le) => (a, b, closed(*o1), closed(*o2)),
                (RelOp::Gt | RelOp::Ge, RelOp::Gt | RelOp::Ge) => (b, a, closed(*o2), closed(*o1)),
                _ => return None,
            };
            if let Expr::Abs(_) = x {
                let neg = |e: &Expr| Expr::Neg(Box::new(e.clone()));
                return Some(Expr::Union(vec![
                    Expr::Interval(Box::new(neg(hi)), Box::new(neg(lo)), hc, lc),
                    Expr::Interval(Box::new(lo.clone()), Box::new(hi.clone()), lc, hc),
                ]));
            }
            Some(Expr::Interval(Box::new(lo.clone()), Box::new(hi.clone()), lc, hc))
        }
        ([_, _], [op]) => {
            let (_, op, v) = one_sided(parts, *op)?;
            ray(op, &v)
        }
        _ => None,
    }
}

/// Whether `a = k·b` for one constant `k ≠ 0` at seeded random points of their variables
/// (the same variables on both sides when `strict`).
fn proportional(a: &Expr, b: &Expr, cfg: &VerifyConfig, budget: &mut Budget) -> bool {
    let mut sa = BTreeSet::new();
    a.symbols(&mut sa);
    if sa.is_empty() {
        return false;
    }
    let Some(syms) = joint_symbols(a, b, cfg.strict) else { return false };
    let tol = 10f64.powi(-(cfg.precision as i32));
    let mut ratio: Option<f64> = None;
    let mut agree = 0;
    for point in at_points(a, b, &syms, 0x9e37, 12, budget) {
        let Some(values) = point else { return false };
        let (Some(x), Some(y)) = values else { continue };
        if y.abs() < 1e-9 || x.abs() < 1e-9 {
            continue;
        }
        let r = x / y;
        match ratio {
            None => ratio = Some(r),
            Some(k) if (r - k).abs() <= tol * k.abs().max(1.0) => {}
            Some(_) => return false,
        }
        agree += 1;
    }
    agree >= 4
}

pub(crate) fn rel_eq(
    a: &[Expr],
    oa: &[RelOp],
    b: &[Expr],
    ob: &[RelOp],
    cfg: &VerifyConfig,
    budget: &mut Budget,
) -> bool {
    if oa.len() == 1 && ob.len() == 1 && oa[0] == RelOp::Eq && ob[0] == RelOp::Eq {
        // Equations: the same sides, or differences of both sides proportional by a non-zero
        // constant (`y = 3x + 2` and `2y − 6x − 4 = 0`; a conic scaled on both sides).
        let diff = |x: &[Expr]| Expr::Add(vec![x[0].clone(), Expr::Neg(Box::new(x[1].clone()))]);
        let (da, db) = (diff(a), diff(b));
        return scalar_eq(&da, &db, cfg, budget)
            || scalar_eq(&da, &Expr::Neg(Box::new(db.clone())), cfg, budget)
            || proportional(&da, &db, cfg, budget);
    }
    // One-variable inequalities, however written (`x ≤ 3`, `3 ≥ x`, `−x ≥ −3`): the same
    // variable and the same set.
    if let (Some((va, sa)), Some((vb, sb))) = (one_variable(a, oa), one_variable(b, ob)) {
        return va == vb && equiv(&sa, &sb, cfg, budget);
    }
    let same = oa == ob && a.iter().zip(b).all(|(x, y)| equiv(x, y, cfg, budget));
    same || {
        let rb: Vec<Expr> = b.iter().rev().cloned().collect();
        let rob: Vec<RelOp> = ob.iter().rev().map(|o| flip(*o)).collect();
        oa == rob.as_slice() && a.iter().zip(&rb).all(|(x, y)| equiv(x, y, cfg, budget))
    }
}
