#!/usr/bin/env python3
"""Differential test corpus for the verifier, by family of answers (the verifier-parity issue):
relations, equations, matrices, several answers, text, extraction and numbers. Each family's
generator writes equivalent and non-equivalent variants of random answers, as a bare gold
against a prediction in one of several response forms (bare box, short sentence, a long worked
solution, no box at all), and Math-Verify labels every case with its default extraction
configs: `verify(parse(f"${gold}$"), parse(pred))` (the gold in math delimiters, as
make_mv_labels.py does: a bare LaTeX gold without them extracts nothing). Writes families.jsonl beside this file
({"family", "gold", "pred", "expected"}); tests/families.rs asserts the agreement per family.

.venv/bin/pip install math-verify==0.9.0 && .venv/bin/python crates/icpo-verify/tests/families/make_families.py
"""
import json
import os
import random

from math_verify import parse, verify

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(20261202)
PER_FAMILY = 330

FILLER = [
    "We first simplify the expression and collect like terms.",
    "Substituting back into the original equation confirms the computation.",
    "By symmetry, it suffices to consider the first case.",
    "Checking the boundary values shows that nothing else is possible.",
    "Multiplying both sides by the common denominator gives a polynomial equation.",
]


def respond(ans, form=None):
    """A response stating `ans` (LaTeX) in one of several forms."""
    form = form or rng.choice(["box", "sentence", "long", "dollar", "final"])
    if form == "box":
        return f"$\\boxed{{{ans}}}$"
    if form == "sentence":
        return f"Therefore, the answer is $\\boxed{{{ans}}}$."
    if form == "long":
        body = " ".join(rng.sample(FILLER, 3))
        return f"Let us work it out. {body}\n\nHence the final result is $\\boxed{{{ans}}}$."
    if form == "dollar":
        return f"{rng.choice(FILLER)} So the answer is ${ans}$."
    return f"{rng.choice(FILLER)}\nThe final answer is ${ans}$. I hope it is correct."


def v(lo, hi):
    return rng.randint(lo, hi)


LE = ["\\le", "\\leq", "\\leqslant", "<="]
GE = ["\\ge", "\\geq", "\\geqslant", ">="]
LT = ["<", "\\lt"]
GT = [">", "\\gt"]
NE = ["\\neq", "\\ne", "!="]


def relations():
    out = []
    # Not `t`, `s`, `m`, `g`, `h`, `c`, `d`: Math-Verify reads such a trailing letter as a unit
    # (tonnes, seconds, ...) and drops it (benchmarks.md).
    var = lambda: rng.choice(["x", "y", "z", "a", "k"])
    while len(out) < PER_FAMILY:
        x = var()
        a, b = sorted(rng.sample(range(-9, 12), 2))
        kind = rng.randrange(9)
        if kind == 0:  # same relation, other spelling
            ops = rng.choice([LE, GE, LT, GT, NE])
            g, p = f"{x} {rng.choice(ops)} {a}", f"{x} {rng.choice(ops)} {a}"
        elif kind == 1:  # written the other way round
            op, flip = rng.choice([(LE, GE), (GE, LE), (LT, GT), (GT, LT)])
            g, p = f"{x} {rng.choice(op)} {a}", f"{a} {rng.choice(flip)} {x}"
        elif kind == 2:  # a different bound or strictness
            op = rng.choice([LE, GE, LT, GT])
            other = rng.choice([LT, GT, LE, GE])
            g, p = f"{x} {rng.choice(op)} {a}", f"{x} {rng.choice(other)} {rng.choice([a, b])}"
        elif kind == 3:  # double inequality vs interval
            lo, hi, l, r = rng.choice([("\\le", "\\le", "[", "]"), ("<", "<", "(", ")"), ("\\le", "<", "[", ")"), ("<", "\\le", "(", "]")])
            g = f"{a} {lo} {x} {hi} {b}"
            # The matching interval, or one with another end.
            p = rng.choice([f"{l}{a}, {b}{r}", f"{l}{a},{b}{r}", f"{rng.choice('([')}{a}, {b}{rng.choice(')]')}"])
        elif kind == 4:  # interval gold vs double inequality
            l, r = rng.choice(["(", "["]), rng.choice([")", "]"])
            g = f"{l}{a}, {b}{r}"
            lo = rng.choice(["<", "\\le"])
            hi = rng.choice(["<", "\\le"])
            p = f"{a} {lo} {x} {hi} {b}"
        elif kind == 5:  # membership
            l, r = rng.choice(["(", "["]), rng.choice([")", "]"])
            g = f"{x} \\in {l}{a}, {b}{r}"
            p = rng.choice([f"{l}{a},{b}{r}", f"{x} \\in {l}{a},{b}{r}", f"{rng.choice('([')}{a}, {b}{rng.choice(')]')}"])
        elif kind == 6:  # both sides times -1
            op, flip = rng.choice([(LE, GE), (LT, GT), (GE, LE), (GT, LT)])
            g = f"{x} {rng.choice(op)} {a}"
            p = f"-{x} {rng.choice(flip)} {-a}" if rng.random() < 0.7 else f"-{x} {rng.choice(op)} {-a}"
        elif kind == 7:  # function values in a range
            f = rng.choice(["g(t)", "f(x)", "h(x)"])
            g = f"{a} < {f} < {b}"
            p = rng.choice([f"({a}, {b})", f"({a}, {b}]", f"({a}, {b + 1})", f"{a} < {f} < {b}"])
        else:  # unions of rays
            g = f"{x} < {a} \\text{{ or }} {x} > {b}"
            p = rng.choice([f"(-\\infty, {a}) \\cup ({b}, \\infty)", f"(-\\infty, {a}] \\cup ({b}, \\infty)", f"(-\\infty,{a})\\cup({b},\\infty)"])
        out.append((g, respond(p)))
    return out


def equations():
    out = []
    while len(out) < PER_FAMILY:
        n = v(2, 40)
        kind = rng.randrange(7)
        if kind == 0:  # labelled answer vs bare value
            label = rng.choice(["|PQ|", "g(x)", "S", "m:n", "x", "AB", "f(3)", "P(A)"])
            val = rng.choice([n, n + 1]) if rng.random() < 0.5 else n
            g, p = (f"{n}", f"{label} = {val}") if rng.random() < 0.5 else (f"{label} = {n}", f"{val}")
        elif kind == 1:  # a chain: the last side is the answer
            a = v(1, n)
            val = rng.choice([n, n + 2])
            g, p = f"{n}", f"t = {a}+{n - a} = {val}"
        elif kind == 2:  # approximations
            val = rng.choice([n, n + 1])
            g, p = f"{n}", f"x \\approx {val}"
        elif kind == 3:  # lines up to a factor or rearranged
            a, b = v(1, 5), v(1, 9)
            g = f"y = {a}x + {b}"
            p = rng.choice([f"y - {a}x - {b} = 0", f"{a}x - y + {b} = 0", f"2y = {2 * a}x + {2 * b}", f"y = {a}x + {b + 1}", f"y = {a + 1}x + {b}"])
        elif kind == 4:  # x + 2y - 1 = 0 forms
            a, b, c = v(1, 5), v(1, 5), v(1, 9)
            g = f"{a}x + {b}y - {c} = 0"
            p = rng.choice([f"{2 * a}x + {2 * b}y - {2 * c} = 0", f"{a}x + {b}y = {c}", f"-{a}x - {b}y + {c} = 0", f"{a}x + {b}y = {c + 1}", f"{b}x + {a}y = {c}"])
        elif kind == 5:  # conics scaled on both sides
            a, b = v(2, 9), v(2, 9)
            g = f"\\frac{{x^2}}{{{a}}} + \\frac{{y^2}}{{{b}}} = 1"
            p = rng.choice([f"{b}x^2 + {a}y^2 = {a * b}", f"\\frac{{x^2}}{{{a}}}+\\frac{{y^2}}{{{b}}}=1", f"{b}x^2 + {a}y^2 = {a * b + 1}", f"\\frac{{x^2}}{{{b}}} + \\frac{{y^2}}{{{a}}} = 1"])
        else:  # equation vs equation with the same value
            x = rng.choice(["x", "k", "n"])
            val = rng.choice([n, -n, n + 1])
            g, p = f"{x} = {n}", f"{x} = {val}"
        out.append((g, respond(p)))
    return out


def matrix(rows, env):
    body = " \\\\ ".join(" & ".join(str(c) for c in r) for r in rows)
    if env == "array":
        cols = "c" * len(rows[0])
        return f"\\left[ \\begin{{array}}{{{cols}}} {body} \\end{{array}} \\right]"
    return f"\\begin{{{env}}} {body} \\end{{{env}}}"


def matrices():
    out = []
    envs = ["pmatrix", "bmatrix", "array"]
    while len(out) < PER_FAMILY:
        r, c = rng.choice([(2, 2), (2, 1), (3, 1), (1, 3), (3, 3), (2, 3)])
        m = [[v(-9, 9) for _ in range(c)] for _ in range(r)]
        kind = rng.randrange(5)
        if kind == 0:
            p = m
        elif kind == 1:  # one entry differs
            p = [row[:] for row in m]
            i, j = rng.randrange(r), rng.randrange(c)
            p[i][j] += rng.choice([-1, 1])
        elif kind == 2:  # transposed
            p = [list(x) for x in zip(*m)]
        elif kind == 3:  # fractions vs decimals
            m = [[rng.choice(["\\frac{1}{2}", "0.5", "2", "-3"]) for _ in range(c)] for _ in range(r)]
            p = [[{"\\frac{1}{2}": "0.5", "0.5": "\\frac{1}{2}"}.get(x, x) for x in row] for row in m]
        else:  # same entries, another environment
            p = m
        g = matrix(m, rng.choice(envs))
        out.append((g, respond(matrix(p, rng.choice(envs)))))
    return out


def several():
    out = []
    while len(out) < PER_FAMILY:
        xs = sorted(rng.sample(range(-9, 15), rng.choice([2, 2, 3])))
        kind = rng.randrange(7)
        gold = ", ".join(map(str, xs))
        if kind == 0:
            ys = xs if rng.random() < 0.6 else xs[:-1] + [xs[-1] + 1]
            pred = respond(" and ".join(map(str, ys)), "dollar") if rng.random() < 0.5 else f"The solutions are ${ys[0]}$ and ${ys[1]}$" + (f" and ${ys[2]}$." if len(ys) > 2 else ".")
        elif kind == 1:
            ys = list(reversed(xs)) if rng.random() < 0.6 else xs[:-1]
            pred = respond(", ".join(map(str, ys)))
        elif kind == 2:  # several boxes
            ys = xs if rng.random() < 0.6 else [y + 1 for y in xs]
            pred = "The roots are " + " and ".join(f"$\\boxed{{{y}}}$" for y in ys) + "."
        elif kind == 3:  # or
            ys = xs if rng.random() < 0.6 else xs[1:]
            pred = respond(" \\text{ or } ".join(f"x = {y}" for y in ys), "dollar")
        elif kind == 4:  # set of tuples
            a, b = v(1, 6), v(1, 6)
            gold = f"({a},{b}), ({b},{a})"
            pred = rng.choice([f"$({b},{a})$ or $({a},{b})$", f"$\\boxed{{({a}, {b}), ({b}, {a})}}$", f"$\\boxed{{({a}, {b})}}$", f"$\\boxed{{\\{{({a},{b}),({b},{a})\\}}}}$"])
        elif kind == 5:  # function values
            a = v(1, 5)
            gold = f"h(x) = {a} \\text{{ or }} h(x) = -{a}"
            pred = respond(rng.choice([f"h(x) = {a} \\text{{ or }} h(x) = -{a}", f"\\pm {a}", f"{a}, -{a}", f"{a}"]), "dollar")
        else:  # a set
            ys = xs if rng.random() < 0.6 else xs + [xs[-1] + 3]
            gold = "\\{" + ", ".join(map(str, xs)) + "\\}"
            pred = respond("\\{" + ", ".join(map(str, rng.sample(ys, len(ys)))) + "\\}")
        out.append((gold, pred))
    return out


# Not `north` or `infinite`: Math-Verify reads a bare `north` as a product ending in the unit
# `h` and `infinite` with `inf`, so it refuses them against `\text{north}` (benchmarks.md).
WORDS = ["even", "odd", "neither", "yes", "no", "Tuesday", "south", "circle", "parabola", "finite", "increasing", "Alice", "Bob"]


def text():
    out = []
    while len(out) < PER_FAMILY:
        w = rng.choice(WORDS)
        other = rng.choice([x for x in WORDS if x != w])
        pw = w if rng.random() < 0.65 else other
        pw = rng.choice([pw, pw.capitalize(), pw.lower(), pw.upper() if len(pw) < 5 else pw])
        g = rng.choice([f"\\text{{{w}}}", w, f"\\text{{ {w} }}", f"\\mathrm{{{w}}}"])
        wrap = rng.choice(["\\text{%s}", "%s", "\\textbf{%s}", "\\mathrm{%s}", "\\text{ %s}"])
        form = rng.choice(["box", "sentence", "long"])
        if rng.random() < 0.15:
            pred = f"After checking, the function is {pw}."
        else:
            pred = respond(wrap % pw, form)
        if rng.random() < 0.1:  # letters of a multiple-choice answer
            l, pl = rng.choice("ABCDE"), rng.choice("ABCDE")
            g, pred = f"\\text{{({l})}}", respond(rng.choice([f"\\text{{({pl})}}", f"({pl})", pl]))
        out.append((g, pred))
    return out


def numbers():
    out = []
    while len(out) < PER_FAMILY:
        kind = rng.randrange(8)
        if kind == 0:  # thousands separators
            n = v(1000, 999999)
            s = f"{n:,}"
            g, p = str(n), respond(rng.choice([s, s.replace(",", "{,}"), str(n), f"{n + 1:,}"]))
        elif kind == 1:  # decimal commas
            a, b = v(0, 9), v(1, 99)
            g = f"{a}.{b:02d}"
            p = respond(rng.choice([f"{a},{b:02d}", f"{a}.{b:02d}", f"{a},{b + 1:02d}"]))
        elif kind == 2:  # ratios
            a, b = v(1, 9), v(1, 9)
            g = f"{a}:{b}"
            p = respond(rng.choice([f"{a}:{b}", f"{a} : {b}", f"\\frac{{{a}}}{{{b}}}", f"{b}:{a}", f"{2 * a}:{2 * b}"]))
        elif kind == 3:  # last sentence of a long solution, no box
            n = v(2, 500)
            val = rng.choice([n, n, n + 1])
            body = " ".join(rng.sample(FILLER, 3))
            g = str(n)
            p = f"{body} We get {v(2, 9)} groups of {v(2, 9)} along the way. Thus the total is {val}."
        elif kind == 4:  # a box inside a relation
            a, b = sorted(rng.sample(range(-5, 9), 2))
            g = f"({a},{b})"
            p = f"Hence $x \\in \\boxed{{({a},{rng.choice([b, b + 1])})}}$."
        elif kind == 5:  # boxed, then units or punctuation
            n = v(2, 900)
            unit = rng.choice(["\\text{ cm}", "\\text{ dollars}", "^\\circ", "\\%", "", "\\text{ units}^2"])
            g = str(n)
            p = rng.choice([f"The answer is $\\boxed{{{n}}}${unit and ' ' + unit}.", f"$\\boxed{{{rng.choice([n, n + 1])}{unit}}}$", f"$\\boxed{{{n}}}$, as required."])
        elif kind == 6:  # fractions and decimals
            a, b = v(1, 9), rng.choice([2, 4, 5, 8, 10])
            g = f"\\frac{{{a}}}{{{b}}}"
            p = respond(rng.choice([str(a / b), f"{a}/{b}", f"\\dfrac{{{a}}}{{{b}}}", str(round(a / b + 0.1, 3))]))
        else:  # negative numbers and signs
            n = v(1, 99)
            g = f"-{n}"
            p = respond(rng.choice([f"-{n}", f"- {n}", f"{n}", f"-{n}.0", f"−{n}"]))
        out.append((g, p))
    return out


FAMILIES = {
    "relations": relations,
    "equations": equations,
    "matrices": matrices,
    "several": several,
    "text": text,
    "numbers": numbers,
}


def main():
    rows = []
    for family, make in FAMILIES.items():
        cases = make()
        for gold, pred in cases:
            label = int(bool(verify(parse(f"${gold}$"), parse(pred), timeout_seconds=None)))
            rows.append({"family": family, "gold": gold, "pred": pred, "expected": label})
    with open(os.path.join(HERE, "families.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    for family in FAMILIES:
        fam = [r for r in rows if r["family"] == family]
        print(f"{family}: {len(fam)} cases, {sum(r['expected'] for r in fam)} equivalent")


if __name__ == "__main__":
    main()
