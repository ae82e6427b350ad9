#!/usr/bin/env python3
"""Loads a checkpoint directory with transformers and prints, as JSON, the max |Δlogit| against
a golden file's `single_ids` / `single_logits`. Used by icpo-policy's tests to show that what
icpo-policy saves is a checkpoint transformers loads."""
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ckpt, golden = sys.argv[1], sys.argv[2]
g = load_file(golden)
model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
with torch.no_grad():
    logits = model(g["single_ids"][None]).logits[0].float()
print(json.dumps({"max_abs_diff": (logits - g["single_logits"]).abs().max().item(),
                  "class": type(model).__name__}))
