//! LaTeX / plain answer text → [`Expr`]: a recursive-descent parser over the tokens of
//! [`crate::lex`], with a nesting limit, a bound on operator chains and (in the tokenizer) a token
//! budget, so hostile input fails fast instead of hanging or overflowing the stack.

use crate::expr::Expr;
use crate::lex::{number, tokenize, Tok, FUNCS, GREEK, MAX_DEPTH};

/// Most nodes that operator chains may wrap around an earlier result (`a/b/c`, `n!!!`): these
/// nest the tree without nesting the parser, and every later walk over the tree recurses once
/// per level, so an unbounded chain would overflow the stack (of rayon's 2 MiB threads first).
const MAX_CHAIN_WRAPS: usize = 256;
struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
    /// Nodes wrapped around earlier results by operator chains (see [`MAX_CHAIN_WRAPS`]).
    wraps: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// Counts one node wrapped around an earlier result; `None` past the budget.
    fn wrap(&mut self) -> Option<()> {
        self.wraps += 1;
        (self.wraps <= MAX_CHAIN_WRAPS).then_some(())
    }

    /// Items separated by `;` (outer) and `,` (inner), until a closing token.
    fn list(&mut self) -> Option<Expr> {
        self.enter()?;
        let mut groups: Vec<Vec<Expr>> = vec![Vec::new()];
        let mut semis = false;
        loop {
            match self.peek() {
                None | Some(Tok::Op(')' | ']' | '}')) | Some(Tok::SetClose) => break,
                // After an item `|` closes (`\{x | …`); where an item starts it opens `|x|`.
                Some(Tok::Op('|')) if groups.last().is_some_and(|g| !g.is_empty()) => break,
                Some(Tok::Op(',')) => {
                    self.pos += 1;
                }
                Some(Tok::Op(';')) => {
                    self.pos += 1;
                    semis = true;
                    groups.push(Vec::new());
                }
                _ => {
                    let item = self.relation()?;
                    groups.last_mut()?.push(item);
                }
            }
        }
        self.depth -= 1;
        groups.retain(|g| !g.is_empty());
        let mut items: Vec<Expr> = if semis {
            groups
                .into_iter()
                .map(|mut g| if g.len() == 1 { g.remove(0) } else { Expr::Tuple(g) })
                .collect()
        } else {
            groups.into_iter().flatten().collect()
        };
        match items.len() {
            0 => None,
            1 => items.pop(),
            _ => Some(Expr::List(items)),
        }
    }

    fn relation(&mut self) -> Option<Expr> {
        let first = self.union()?;
        if matches!(self.peek(), Some(Tok::Cmd(c)) if c == "in") {
            self.pos += 1;
            let set = self.union()?;
            return Some(Expr::In(Box::new(first), Box::new(set)));
        }
        let mut parts = vec![first];
        let mut ops = Vec::new();
        while let Some(Tok::Rel(op)) = self.peek().cloned() {
            self.pos += 1;
            ops.push(op);
            parts.push(self.union()?);
        }
        Some(if ops.is_empty() { parts.remove(0) } else { Expr::Rel(parts, ops) })
    }

    fn union(&mut self) -> Option<Expr> {
        let mut parts = vec![self.add()?];
        while matches!(self.peek(), Some(Tok::Cmd(c)) if c == "cup") {
            self.pos += 1;
            parts.push(self.add()?);
        }
        Some(if parts.len() == 1 { parts.remove(0) } else { Expr::Union(parts) })
    }

    fn add(&mut self) -> Option<Expr> {
        self.enter()?;
        let mut terms = vec![self.mul()?];
        loop {
            match self.peek() {
                Some(Tok::Op('+')) => {
                    self.pos += 1;
                    terms.push(self.mul()?);
                }
                Some(Tok::Op('-')) => {
                    self.pos += 1;
                    terms.push(Expr::Neg(Box::new(self.mul()?)));
                }
                Some(Tok::Cmd(c)) if c == "pm" || c == "mp" => {
                    let minus_first = c == "mp";
                    self.pos += 1;
                    let rhs = self.mul()?;
                    let lhs = if terms.len() == 1 {
                        terms.remove(0)
                    } else {
                        Expr::Add(std::mem::take(&mut terms))
                    };
                    let rhs = if minus_first { Expr::Neg(Box::new(rhs)) } else { rhs };
                    terms = vec![Expr::PlusMinus(Box::new(lhs), Box::new(rhs))];
                }
                _ => break,
            }
        }
        self.depth -= 1;
        Some(if terms.len() == 1 { terms.remove(0) } else { Expr::Add(terms) })
    }

    fn starts_primary(&self) -> bool {
        match self.peek() {
            Some(Tok::Num(_) | Tok::Ident(_) | Tok::Matrix(..) | Tok::Text(_)) => true,
            Some(Tok::Op('(')) => true,
            Some(Tok::Cmd(c)) => {
                !matches!(c.as_str(), "cup" | "in" | "pm" | "mp" | "cap" | "setminus")
            }
            _ => false,
        }
    }

    /// Products are flat (`a·b·c` is one `Mul` of three), so long chains stay shallow; each
    /// `/` wraps what came before and counts against [`MAX_CHAIN_WRAPS`].
    fn mul(&mut self) -> Option<Expr> {
        fn product(mut factors: Vec<Expr>) -> Expr {
            if factors.len() == 1 {
                factors.remove(0)
            } else {
                Expr::Mul(factors)
            }
        }
        self.enter()?;
        let mut factors = vec![self.unary()?];
        loop {
            match self.peek() {
                Some(Tok::Op('*')) => {
                    self.pos += 1;
                    factors.push(self.unary()?);
                }
                Some(Tok::Op('/')) => {
                    self.pos += 1;
                    let rhs = self.unary()?;
                    self.wrap()?;
                    let lhs = product(std::mem::take(&mut factors));
                    factors.push(Expr::Div(Box::new(lhs), Box::new(rhs)));
                }
                _ if self.starts_primary() => factors.push(self.pow()?),
                _ => break,
            }
        }
        self.depth -= 1;
        Some(product(factors))
    }

    fn unary(&mut self) -> Option<Expr> {
        self.enter()?;
        let r = if matches!(self.peek(), Some(Tok::Cmd(c)) if c == "pm" || c == "mp") {
            // A leading `±5`: both signs.
            self.pos += 1;
            Expr::PlusMinus(Box::new(Expr::int(0)), Box::new(self.unary()?))
        } else if self.eat(&Tok::Op('-')) {
            Expr::Neg(Box::new(self.unary()?))
        } else if self.eat(&Tok::Op('+')) {
            self.unary()?
        } else {
            self.pow()?
        };
        self.depth -= 1;
        Some(r)
    }

    /// A braced group or a single token, as an argument of `\frac`, `\sqrt`, `^`.
    fn arg(&mut self) -> Option<Expr> {
        if self.eat(&Tok::Op('{')) {
            let e = self.list()?;
            self.eat(&Tok::Op('}')).then_some(e)
        } else if let Some(Tok::Num(n)) = self.peek().cloned() {
            // `\frac94`: one digit per argument.
            self.pos += 1;
            let mut chars = n.chars();
            let first = chars.next()?;
            let rest: String = chars.collect();
            if !rest.is_empty() {
                self.toks.insert(self.pos, Tok::Num(rest));
            }
            number(&first.to_string())
        } else if self.eat(&Tok::Op('-')) {
            Some(Expr::Neg(Box::new(self.arg()?)))
        } else {
            self.postfix()
        }
    }

    fn pow(&mut self) -> Option<Expr> {
        let base = self.postfix()?;
        if self.eat(&Tok::Op('^')) {
            let exp = self.arg()?;
            return Some(Expr::Pow(Box::new(base), Box::new(exp)));
        }
        Some(base)
    }

    fn postfix(&mut self) -> Option<Expr> {
        let mut e = self.primary()?;
        while self.eat(&Tok::Op('!')) {
            self.wrap()?;
            e = Expr::Factorial(Box::new(e));
        }
        Some(e)
    }

    fn primary(&mut self) -> Option<Expr> {
        self.enter()?;
        let e = match self.next()? {
            Tok::Num(n) => number(&n)?,
            Tok::Ident(s) => {
                // Subscript after a token: `x_1` already joined; `x_{...}` after a command.
                if self.eat(&Tok::Op('_')) {
                    let sub = self.arg()?;
                    Expr::Sym(format!("{s}_{sub:?}"))
                } else {
                    Expr::Sym(s)
                }
            }
            Tok::Text(t) => Expr::Text(t),
            Tok::Matrix(rows, depth) => {
                let depth = depth.max(self.depth + 1);
                let parsed = rows
                    .iter()
                    .map(|r| {
                        r.iter()
                            .map(|cell| parse_at(cell, depth, self.wraps))
                            .collect::<Option<Vec<_>>>()
                    })
                    .collect::<Option<Vec<_>>>()?;
                Expr::Matrix(parsed)
            }
            Tok::Op('(') => {
                let inner = self.list()?;
                match self.next()? {
                    Tok::Op(')') => match inner {
                        Expr::List(items) => Expr::Tuple(items),
                        other => other,
                    },
                    Tok::Op(']') => interval(inner, false, true)?,
                    _ => return None,
                }
            }
            Tok::Op('[') => {
                let inner = self.list()?;
                match self.next()? {
                    Tok::Op(']') => match inner {
                        Expr::List(_) => interval(inner, true, true)?,
                        other => other,
                    },
                    Tok::Op(')') => interval(inner, true, false)?,
                    _ => return None,
                }
            }
            Tok::Op('{') => {
                let inner = self.list()?;
                self.eat(&Tok::Op('}')).then_some(())?;
                inner
            }
            Tok::SetOpen => {
                if self.eat(&Tok::SetClose) {
                    Expr::Set(Vec::new())
                } else {
                    let inner = self.list()?;
                    self.eat(&Tok::SetClose).then_some(())?;
                    match inner {
                        Expr::List(items) => Expr::Set(items),
                        other => Expr::Set(vec![other]),
                    }
                }
            }
            Tok::Op('|') => {
                let inner = self.add()?;
                self.eat(&Tok::Op('|')).then_some(())?;
                Expr::Abs(Box::new(inner))
            }
            Tok::Cmd(c) => self.command(&c)?,
            _ => return None,
        };
        self.depth -= 1;
        Some(e)
    }

    fn command(&mut self, c: &str) -> Option<Expr> {
        Some(match c {
            "frac" | "cfrac" => {
                let a = self.arg()?;
                let b = self.arg()?;
                Expr::Div(Box::new(a), Box::new(b))
            }
            "sqrt" => {
                if self.eat(&Tok::Op('[')) {
                    let n = self.add()?;
                    self.eat(&Tok::Op(']')).then_some(())?;
                    let x = self.arg()?;
                    Expr::Func("root".into(), vec![n, x])
                } else {
                    Expr::Func("sqrt".into(), vec![self.arg()?])
                }
            }
            "pi" => Expr::Pi,
            "infty" => Expr::Inf,
            "emptyset" => Expr::Set(Vec::new()),
            "boxed" | "fbox" | "mathbb" | "mathcal" | "overline" | "vec" | "hat" | "bar" => {
                self.arg()?
            }
            f if FUNCS.contains(&f) => {
                // `\tan^2(y)`, `\log_2 8`, `\sin x`.
                let mut base = None;
                if f == "log" && self.eat(&Tok::Op('_')) {
                    base = Some(self.arg()?);
                }
                let power = if self.eat(&Tok::Op('^')) { Some(self.arg()?) } else { None };
                let x = if self.peek() == Some(&Tok::Op('(')) || self.peek() == Some(&Tok::Op('{'))
                {
                    self.primary()?
                } else {
                    self.pow()?
                };
                let args = match (f, base) {
                    ("log", Some(b)) => vec![b, x],
                    _ => vec![x],
                };
                let applied = Expr::Func(f.to_string(), args);
                match power {
                    Some(p) => Expr::Pow(Box::new(applied), Box::new(p)),
                    None => applied,
                }
            }
            _ => return None,
        })
    }
}

fn interval(inner: Expr, lo_closed: bool, hi_closed: bool) -> Option<Expr> {
    match inner {
        Expr::List(mut items) if items.len() == 2 => {
            let hi = items.pop()?;
            let lo = items.pop()?;
            Some(Expr::Interval(Box::new(lo), Box::new(hi), lo_closed, hi_closed))
        }
        _ => None,
    }
}

/// Parses normalised answer text; `None` when it is not a well-formed answer.
pub fn parse_str(s: &str) -> Option<Expr> {
    // A whole answer that is one word (`odd`, `Tuesday`) is text, not a product of letters.
    let t = s.trim();
    if t.len() >= 3
        && t.chars().all(|c| c.is_ascii_alphabetic())
        && !FUNCS.contains(&t)
        && !GREEK.contains(&t)
    {
        return Some(Expr::Text(t.to_string()));
    }
    parse_at(s, 0, 0)
}

/// [`parse_str`] inside an answer (a matrix cell): starts at its nesting `depth` with the
/// chain `wraps` already on the path, so the tree's depth stays bounded across cells.
fn parse_at(s: &str, depth: usize, wraps: usize) -> Option<Expr> {
    let toks = tokenize(s, depth)?;
    let mut p = Parser { toks, pos: 0, depth, wraps };
    let e = p.list()?;
    (p.pos == p.toks.len()).then_some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        for s in [
            "\\frac{10}{9}",
            "-\\frac{10}{9}",
            "\\sqrt3",
            "\\frac94\\pi",
            "1 \\pm \\sqrt{19}",
            "\\{-1\\} \\cup [0,7)",
            "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}",
            "\\tan^2(y)+1",
            "(0;0;0),(0;-2;0)",
            "p=5,q=2;p=7,q=2",
            "x_{1}=10^{\\frac{-5+\\sqrt{13}}{6}}",
            "1\\leq|z|\\leq \\frac{3}{2}",
            "5!",
        ] {
            assert!(parse_str(s).is_some(), "{s}");
        }
        assert_eq!(
            parse_str("(1,2]"),
            Some(Expr::Interval(Box::new(Expr::int(1)), Box::new(Expr::int(2)), false, true))
        );
    }

    #[test]
    fn hostile_inputs_fail_fast() {
        assert!(parse_str(&"(".repeat(100_000)).is_none());
        assert!(parse_str(&"{".repeat(10_000)).is_none());
        let _ = parse_str("10^{10^{10^{10}}}");
    }
}
