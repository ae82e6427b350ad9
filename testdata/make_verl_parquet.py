#!/usr/bin/env python3
"""Writes testdata/verl_sample.parquet: three rows in the verl / LUFFY layout (chat `prompt`
list, `reward_model.ground_truth`, `extra_info.index`), as OpenR1-Math-46k ships, snappy
compressed. The Rust loader is tested against it.

.venv/bin/python testdata/make_verl_parquet.py"""
import os

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
rows = [
    ("What is $1+1$?", "2"),
    ("Find $x$ if $2x = 6$.", "3"),
    ("Compute $\\frac{1}{2} + \\frac{1}{4}$.", "\\frac{3}{4}"),
]
table = pa.table({
    "data_source": ["openr1"] * len(rows),
    "prompt": [[{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": q}]
               for q, _ in rows],
    "ability": ["math"] * len(rows),
    "reward_model": [{"ground_truth": a, "style": "rule"} for _, a in rows],
    "extra_info": [{"index": i, "split": "train"} for i in range(len(rows))],
})
pq.write_table(table, os.path.join(HERE, "verl_sample.parquet"), compression="snappy")
