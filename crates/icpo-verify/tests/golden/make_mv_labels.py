#!/usr/bin/env python3
"""Math-Verify's verdicts on 1,000 realistic pairs built from ../shared (not copied here):
MATH train worked solution i against answer i (even i) or answer i+1 (odd i), rows with a
string answer only. Writes mv_labels.json beside this file (one 0/1 per pair); the test
math_verify_agreement.rs rebuilds the same pairs and compares.

.venv/bin/pip install math-verify==0.9.0 && .venv/bin/python crates/icpo-verify/tests/golden/make_mv_labels.py
"""
import json
import os

from math_verify import parse, verify

HERE = os.path.dirname(os.path.abspath(__file__))
rows = []
with open(os.path.join(HERE, "../../../../../shared/data/train/math_train.jsonl")) as f:
    for line in f:
        r = json.loads(line)
        if isinstance(r.get("answer"), str):
            rows.append(r)
        if len(rows) > 1000:
            break
labels = []
for i in range(1000):
    gold = rows[i if i % 2 == 0 else i + 1]["answer"]
    labels.append(int(bool(verify(parse(f"${gold}$"), parse(rows[i]["solution"]), timeout_seconds=None))))
with open(os.path.join(HERE, "mv_labels.json"), "w") as f:
    json.dump({"source": "math-verify " + __import__("importlib.metadata").metadata.version("math-verify"), "labels": labels}, f)
