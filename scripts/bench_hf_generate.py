#!/usr/bin/env python3
"""transformers' generate on the rollout_bench workload, for a side-by-side number.

.venv/bin/python scripts/bench_hf_generate.py --model target/bench-qwen3 --prompts 8 --samples 8 \
    --prompt-len 24 --new-tokens 64 --threads 2 --seed 0
Prints a JSON line with tokens_per_s (best of --repeats after one warm-up)."""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--prompts", type=int, default=8)
ap.add_argument("--samples", type=int, default=8)
ap.add_argument("--prompt-len", type=int, default=24)
ap.add_argument("--new-tokens", type=int, default=64)
ap.add_argument("--temperature", type=float, default=1.0)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--stop-at-eos", action="store_true",
                help="stop each sample at the checkpoint's EOS (generation_config.json) instead of "
                     "generating exactly --new-tokens; counts tokens up to and including EOS")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
ids = torch.randint(0, model.config.vocab_size, (a.prompts, a.prompt_len))
best = float("inf")
for rep in range(a.repeats + 1):
    t = time.perf_counter()
    with torch.no_grad():
        lengths = {} if a.stop_at_eos else {"min_new_tokens": a.new_tokens}
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=a.temperature,
                             top_p=1.0, top_k=0, max_new_tokens=a.new_tokens,
                             num_return_sequences=a.samples, pad_token_id=0, **lengths)
    secs = time.perf_counter() - t
    if rep > 0:
        best = min(best, secs)
gen = out[:, a.prompt_len:]
if a.stop_at_eos:
    eos = model.generation_config.eos_token_id
    eos = torch.tensor(eos if isinstance(eos, list) else [eos])
    hit = torch.isin(gen, eos)
    # Up to and including the first EOS; rows without one run to the end.
    first = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.full((gen.shape[0],), gen.shape[1]))
    new = int(first.sum())
else:
    new = gen.shape[1] * gen.shape[0]
print(json.dumps({"bench": "hf_generate", "generated_tokens": new, "seconds": best, "tokens_per_s": new / best}))
