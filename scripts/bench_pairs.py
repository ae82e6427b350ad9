#!/usr/bin/env python3
"""Side-by-side benchmarks in interleaved pairs: icpo-rs against TRL or transformers.

.venv/bin/python scripts/bench_pairs.py --pairs 5 [--trl-args="--bf16 --gradient-checkpointing"]
    [--ours-args="--compute-dtype bfloat16"]   (the = keeps argparse from reading --bf16 as a flag)
.venv/bin/python scripts/bench_pairs.py --bench rollout --pairs 6

This machine's speed drifts by ±30% over minutes, so one run of each side says little: each pair
runs the reference and then ours on the same workload, back to back, and the ratio is taken
within the pair.
- `--bench grpo` (default): TRL's GRPOTrainer (scripts/bench_trl_grpo.py) against
  `grpo_step_bench`, median step time of each.
- `--bench rollout`: transformers' `generate` (scripts/bench_hf_generate.py) against
  `rollout_bench` on the anchor of docs/benchmarks.md (8 prompts x 8 samples, 24-token prompts,
  64 new tokens, EOS ignored), best of `--repeats` tokens/s of each.
The script prints one line per pair and a last line of JSON with every pair and the median ratio.
Build first: cargo build --release --example grpo_step_bench --example rollout_bench
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
ap.add_argument("--bench", choices=["grpo", "rollout"], default="grpo")
ap.add_argument("--pairs", type=int, default=5)
ap.add_argument("--model", default=str(ROOT / "target/bench-qwen3"))
ap.add_argument("--steps", type=int, default=5, help="grpo: steps per run")
ap.add_argument("--repeats", type=int, default=10, help="rollout: timed runs per side")
ap.add_argument("--trl-args", default="", help="extra flags for the reference, e.g. --bf16")
ap.add_argument("--ours-args", default="", help="extra flags for ours, e.g. --streams 1")
a = ap.parse_args()

workload = ["--model", a.model, "--prompts", "8", "--samples", "8", "--prompt-len", "24",
            "--new-tokens", "64", "--threads", "2", "--seed", "0"]
if a.bench == "grpo":
    workload += ["--steps", str(a.steps)]
    ref_script, ours_bin = "scripts/bench_trl_grpo.py", "grpo_step_bench"
    ours_extra = []
else:
    workload += ["--repeats", str(a.repeats)]
    ref_script, ours_bin = "scripts/bench_hf_generate.py", "rollout_bench"
    ours_extra = ["--temperature", "1.0", "--ignore-eos"]
ref = [sys.executable, str(ROOT / ref_script), *workload, *shlex.split(a.trl_args)]
ours = [str(ROOT / "target/release/examples" / ours_bin), *workload, *ours_extra,
        *shlex.split(a.ours_args)]


def last_json(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"{shlex.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


pairs = []
for i in range(a.pairs):
    r, o = last_json(ref), last_json(ours)
    if a.bench == "grpo":
        t, s = statistics.median(r["step_seconds"]), statistics.median(o["step_seconds"])
        pairs.append({"trl_s": round(t, 3), "icpo_s": round(s, 3), "ratio": round(t / s, 2)})
        print(f"pair {i + 1}: TRL {t:.3f} s, icpo-rs {s:.3f} s, {t / s:.2f}x", flush=True)
    else:
        t, s = r["tokens_per_s"], o["tokens_per_s"]
        pairs.append({"transformers_tok_s": round(t), "icpo_tok_s": round(s),
                      "ratio": round(s / t, 2)})
        print(f"pair {i + 1}: transformers {t:,.0f} tok/s, icpo-rs {s:,.0f} tok/s, {s / t:.2f}x",
              flush=True)
print(json.dumps({"bench": f"{a.bench}_pairs", "ref_args": a.trl_args, "ours_args": a.ours_args,
                  "pairs": pairs, "median_ratio": statistics.median(p["ratio"] for p in pairs)}))
