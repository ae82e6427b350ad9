#!/usr/bin/env python3
"""icpo_verify against Math-Verify in one Python process, on the 1,000 MATH-train pairs of
`cargo bench -p icpo-verify` (solution i against answer i for even i, answer i+1 for odd i):
Math-Verify's `verify(parse(f"${gold}$"), parse(solution))`, `icpo_verify.verify` on one
thread, and `icpo_verify.verify_batch` on 2 threads. Best of --repeats for icpo_verify.

scripts/test-python (builds and installs the wheel) && .venv/bin/pip install math-verify==0.9.0
.venv/bin/python scripts/bench_python_verify.py [--pairs 1000] [--repeats 5]
Prints JSON on the last line."""
import argparse
import json
import os
import time

import icpo_verify
from math_verify import parse, verify

ap = argparse.ArgumentParser()
ap.add_argument("--pairs", type=int, default=1000)
ap.add_argument("--repeats", type=int, default=5)
args = ap.parse_args()
here = os.path.dirname(os.path.abspath(__file__))
rows = []
with open(os.path.join(here, "../../shared/data/train/math_train.jsonl")) as f:
    for line in f:
        r = json.loads(line)
        if isinstance(r.get("answer"), str):
            rows.append(r)
        if len(rows) > args.pairs:
            break
pairs = [(rows[i if i % 2 == 0 else i + 1]["answer"], rows[i]["solution"]) for i in range(args.pairs)]
golds, preds = [g for g, _ in pairs], [p for _, p in pairs]

t = time.perf_counter()
mv = [bool(verify(parse(f"${g}$"), parse(p), timeout_seconds=None)) for g, p in pairs]
mv_s = time.perf_counter() - t


def best(f):
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return min(times), out


one_s, ours = best(lambda: [icpo_verify.verify(g, p) for g, p in pairs])
two_s, batch = best(lambda: icpo_verify.verify_batch(golds, preds, threads=2))
assert batch == ours
print(json.dumps({
    "pairs": len(pairs),
    "math_verify_per_s": len(pairs) / mv_s,
    "icpo_verify_per_s": len(pairs) / one_s,
    "icpo_verify_batch_2_threads_per_s": len(pairs) / two_s,
    "speedup_vs_math_verify": mv_s / one_s,
    "batch_2_threads_vs_1": one_s / two_s,
    "agreement_with_math_verify": sum(a == b for a, b in zip(mv, ours)) / len(pairs),
}))
