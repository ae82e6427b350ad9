#!/usr/bin/env python3
"""Math-Verify on the pairs of `cargo bench -p icpo-verify` (MATH train solutions vs their own
answers, and every other one vs the next problem's answer), single-threaded.

.venv/bin/pip install math-verify && .venv/bin/python scripts/bench_math_verify.py [N]
Prints JSON: cases, seconds, cases_per_s, and how many were judged correct."""
import json
import os
import sys
import time

from math_verify import parse, verify

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
here = os.path.dirname(os.path.abspath(__file__))
rows = []
with open(os.path.join(here, "../../shared/data/train/math_train.jsonl")) as f:
    for line in f:
        r = json.loads(line)
        if isinstance(r.get("answer"), str):
            rows.append(r)
        if len(rows) > n:
            break
pairs = [(rows[i if i % 2 == 0 else i + 1]["answer"], rows[i]["solution"]) for i in range(n)]
t = time.perf_counter()
correct = 0
for gold, pred in pairs:
    # Gold answers are bare: wrap them as Math-Verify's docs do for gold strings.
    correct += bool(verify(parse(f"${gold}$"), parse(pred), timeout_seconds=None))
secs = time.perf_counter() - t
print(json.dumps({"bench": "math_verify", "cases": n, "seconds": secs, "cases_per_s": n / secs, "correct": correct}))
