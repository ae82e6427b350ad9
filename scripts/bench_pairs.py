#!/usr/bin/env python3
"""Side-by-side GRPO step time, icpo-rs vs TRL, in interleaved pairs.

.venv/bin/python scripts/bench_pairs.py --pairs 5 [--trl-args="--bf16 --gradient-checkpointing"]
    [--ours-args="--compute-dtype bfloat16"]   (the = keeps argparse from reading --bf16 as a flag)

This machine's speed drifts by ±30% over minutes, so one run of each side says little: each pair
runs TRL's GRPOTrainer (scripts/bench_trl_grpo.py) and then `grpo_step_bench` on the same
workload, back to back, and the ratio of their median step times is taken within the pair. The
script prints one line per pair and a last line of JSON with every pair and the median ratio.
Build first: cargo build --release --example grpo_step_bench
"""
import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ap = argparse.ArgumentParser()
ap.add_argument("--pairs", type=int, default=5)
ap.add_argument("--model", default=str(ROOT / "target/bench-qwen3"))
ap.add_argument("--steps", type=int, default=5)
ap.add_argument("--trl-args", default="", help="extra flags for bench_trl_grpo.py, e.g. --bf16")
ap.add_argument("--ours-args", default="", help="extra flags for grpo_step_bench, e.g. --streams 1")
a = ap.parse_args()

workload = ["--model", a.model, "--prompts", "8", "--samples", "8", "--prompt-len", "24",
            "--new-tokens", "64", "--steps", str(a.steps), "--threads", "2", "--seed", "0"]
trl = [sys.executable, str(ROOT / "scripts/bench_trl_grpo.py"), *workload, *shlex.split(a.trl_args)]
ours = [str(ROOT / "target/release/examples/grpo_step_bench"), *workload, *shlex.split(a.ours_args)]


def median_step(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"{shlex.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    last = out.stdout.strip().splitlines()[-1]
    return statistics.median(json.loads(last)["step_seconds"])


pairs = []
for i in range(a.pairs):
    t, o = median_step(trl), median_step(ours)
    pairs.append({"trl_s": round(t, 3), "icpo_s": round(o, 3), "ratio": round(t / o, 2)})
    print(f"pair {i + 1}: TRL {t:.3f} s, icpo-rs {o:.3f} s, {t / o:.2f}x", flush=True)
print(json.dumps({"bench": "grpo_pairs", "trl_args": a.trl_args, "ours_args": a.ours_args,
                  "pairs": pairs, "median_ratio": statistics.median(p["ratio"] for p in pairs)}))
