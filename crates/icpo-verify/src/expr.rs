//! Answer expressions and their evaluation: exact rationals where possible, floats otherwise.

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};

/// A relation between two parts of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelOp {
    /// `=`
    Eq,
    /// `≠`
    Ne,
    /// `<`
    Lt,
    /// `≤`
    Le,
    /// `>`
    Gt,
    /// `≥`
    Ge,
}

/// A parsed answer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Expr {
    /// A number; `decimals` is set when it was written with a decimal point.
    Num(BigRational, Option<u32>),
    /// A variable (or `e`, evaluated as Euler's number).
    Sym(String),
    /// π.
    Pi,
    /// ∞.
    Inf,
    /// A sum.
    Add(Vec<Expr>),
    /// A product.
    Mul(Vec<Expr>),
    /// Negation.
    Neg(Box<Expr>),
    /// A quotient.
    Div(Box<Expr>, Box<Expr>),
    /// A power.
    Pow(Box<Expr>, Box<Expr>),
    /// A named function applied to arguments.
    Func(String, Vec<Expr>),
    /// `n!`.
    Factorial(Box<Expr>),
    /// `|x|`.
    Abs(Box<Expr>),
    /// `a ± b`.
    PlusMinus(Box<Expr>, Box<Expr>),
    /// Parenthesised, ordered.
    Tuple(Vec<Expr>),
    /// A bare comma/semicolon list (several answers).
    List(Vec<Expr>),
    /// `\{…\}`.
    Set(Vec<Expr>),
    /// An interval with its closed ends.
    Interval(Box<Expr>, Box<Expr>, bool, bool),
    /// `A ∪ B ∪ …`.
    Union(Vec<Expr>),
    /// A matrix, by rows.
    Matrix(Vec<Vec<Expr>>),
    /// A chain `e0 op0 e1 op1 e2 …`.
    Rel(Vec<Expr>, Vec<RelOp>),
    /// `x ∈ S`.
    In(Box<Expr>, Box<Expr>),
    /// `\text{…}` content that is not a symbol.
    Text(String),
}

/// Largest exponent computed exactly; beyond it powers are floats (or give up).
const MAX_EXACT_EXP: i64 = 2048;
/// Largest magnitude (in bits) of an exact intermediate result.
const MAX_BITS: u64 = 20_000;

/// Big-number work allowed for one exact value, in units of (64-bit words)² (a gcd of two
/// n-word numbers costs about n² of them): chains of thousands of large factors give up
/// instead of reducing thousands of large fractions.
const EXACT_WORK: u64 = 400_000;

/// What remains of [`EXACT_WORK`].
struct ExactWork(u64);

impl ExactWork {
    /// Charges an operation on `a` and `b`; `None` once the work is spent.
    fn charge(&mut self, a: &BigRational, b: &BigRational) -> Option<()> {
        let words = |r: &BigRational| (r.numer().bits() + r.denom().bits()) / 64 + 1;
        let n = words(a).max(words(b));
        self.0 = self.0.checked_sub(n * n)?;
        Some(())
    }
}

fn small(r: &BigRational) -> bool {
    r.numer().bits() <= MAX_BITS && r.denom().bits() <= MAX_BITS
}

impl Expr {
    /// An integer.
    pub fn int(n: i64) -> Expr {
        Expr::Num(BigRational::from_integer(BigInt::from(n)), None)
    }

    /// Pushes the direct sub-expressions onto `out`.
    fn push_children<'a>(&'a self, out: &mut Vec<&'a Expr>) {
        match self {
            Expr::Add(xs)
            | Expr::Mul(xs)
            | Expr::Tuple(xs)
            | Expr::List(xs)
            | Expr::Set(xs)
            | Expr::Union(xs)
            | Expr::Func(_, xs)
            | Expr::Rel(xs, _) => out.extend(xs),
            Expr::Neg(x) | Expr::Factorial(x) | Expr::Abs(x) => out.push(x),
            Expr::Div(a, b)
            | Expr::Pow(a, b)
            | Expr::PlusMinus(a, b)
            | Expr::In(a, b)
            | Expr::Interval(a, b, _, _) => out.extend([&**a, &**b]),
            Expr::Matrix(rows) => out.extend(rows.iter().flatten()),
            Expr::Num(..) | Expr::Sym(_) | Expr::Pi | Expr::Inf | Expr::Text(_) => {}
        }
    }

    /// Whether the tree has at most `limit` nodes (counted without recursion, stopping early).
    pub fn nodes_within(&self, limit: usize) -> bool {
        let mut stack = vec![self];
        let mut seen = 0usize;
        while let Some(e) = stack.pop() {
            seen += 1;
            if seen > limit {
                return false;
            }
            e.push_children(&mut stack);
        }
        true
    }

    /// Exact rational value, when the expression is built from rationals only (and small enough
    /// to compute within a fixed amount of big-number work).
    pub fn exact(&self) -> Option<BigRational> {
        self.exact_in(&mut ExactWork(EXACT_WORK))
    }

    fn exact_in(&self, work: &mut ExactWork) -> Option<BigRational> {
        let r = match self {
            Expr::Num(r, _) => r.clone(),
            Expr::Add(xs) => {
                let mut acc = BigRational::zero();
                for x in xs {
                    let x = x.exact_in(work)?;
                    work.charge(&acc, &x)?;
                    acc += x;
                    if !small(&acc) {
                        return None;
                    }
                }
                acc
            }
            Expr::Mul(xs) => {
                let mut acc = BigRational::one();
                for x in xs {
                    let x = x.exact_in(work)?;
                    work.charge(&acc, &x)?;
                    acc *= x;
                    if !small(&acc) {
                        return None;
                    }
                }
                acc
            }
            Expr::Neg(x) => -x.exact_in(work)?,
            Expr::Div(a, b) => {
                let d = b.exact_in(work)?;
                if d.is_zero() {
                    return None;
                }
                let n = a.exact_in(work)?;
                work.charge(&n, &d)?;
                n / d
            }
            Expr::Pow(b, e) => {
                let e = e.exact_in(work)?;
                if !e.is_integer() {
                    return None;
                }
                let n = e.to_integer().to_i64()?;
                let b = b.exact_in(work)?;
                if n.abs() > MAX_EXACT_EXP
                    || (b.numer().bits() + b.denom().bits()) * n.unsigned_abs() > MAX_BITS
                {
                    return None;
                }
                if n < 0 && b.is_zero() {
                    return None;
                }
                let p = num_traits::pow::Pow::pow(&b, n as i32);
                work.charge(&p, &p)?;
                p
            }
            Expr::Factorial(x) => {
                let n = x.exact_in(work)?;
                if !n.is_integer()
                    || n.is_negative()
                    || n > BigRational::from_integer(BigInt::from(300))
                {
                    return None;
                }
                let n = n.to_integer().to_u64()?;
                let mut acc = BigInt::one();
                for k in 2..=n {
                    acc *= k;
                }
                BigRational::from_integer(acc)
            }
            Expr::Abs(x) => x.exact_in(work)?.abs(),
            _ => return None,
        };
        small(&r).then_some(r)
    }

    /// Numeric value with `vars` giving each free symbol's value; `None` outside the domain.
    pub fn eval(&self, vars: &dyn Fn(&str) -> Option<f64>) -> Option<f64> {
        let v = match self {
            Expr::Num(r, _) => r.to_f64()?,
            Expr::Sym(s) if s == "e" => std::f64::consts::E,
            Expr::Sym(s) => vars(s)?,
            Expr::Pi => std::f64::consts::PI,
            Expr::Inf => f64::INFINITY,
            Expr::Add(xs) => xs.iter().map(|x| x.eval(vars)).sum::<Option<f64>>()?,
            Expr::Mul(xs) => xs.iter().map(|x| x.eval(vars)).product::<Option<f64>>()?,
            Expr::Neg(x) => -x.eval(vars)?,
            Expr::Div(a, b) => a.eval(vars)? / b.eval(vars)?,
            Expr::Pow(b, e) => b.eval(vars)?.powf(e.eval(vars)?),
            Expr::Factorial(x) => {
                let n = x.eval(vars)?;
                if n < 0.0 || n.fract() != 0.0 || n > 170.0 {
                    return None;
                }
                (1..=n as u64).map(|k| k as f64).product()
            }
            Expr::Abs(x) => x.eval(vars)?.abs(),
            Expr::Func(name, args) => {
                let a: Vec<f64> = args.iter().map(|x| x.eval(vars)).collect::<Option<_>>()?;
                let x = *a.first()?;
                match (name.as_str(), a.len()) {
                    ("sin", 1) => x.sin(),
                    ("cos", 1) => x.cos(),
                    ("tan", 1) => x.tan(),
                    ("sec", 1) => 1.0 / x.cos(),
                    ("csc", 1) => 1.0 / x.sin(),
                    ("cot", 1) => 1.0 / x.tan(),
                    ("arcsin", 1) => x.asin(),
                    ("arccos", 1) => x.acos(),
                    ("arctan", 1) => x.atan(),
                    ("sinh", 1) => x.sinh(),
                    ("cosh", 1) => x.cosh(),
                    ("tanh", 1) => x.tanh(),
                    ("ln", 1) => x.ln(),
                    ("log", 1) => x.ln(),
                    ("log", 2) => a[1].ln() / x.ln(),
                    ("exp", 1) => x.exp(),
                    ("sqrt", 1) => x.sqrt(),
                    ("root", 2) => a[1].powf(1.0 / x),
                    _ => return None,
                }
            }
            _ => return None,
        };
        (v.is_finite() || matches!(self, Expr::Inf)).then_some(v)
    }

    /// Free symbols (`e` excluded: it is Euler's number). Walks the tree without recursion.
    pub fn symbols(&self, out: &mut std::collections::BTreeSet<String>) {
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            if let Expr::Sym(s) = e {
                if s != "e" {
                    out.insert(s.clone());
                }
            }
            e.push_children(&mut stack);
        }
    }
}
