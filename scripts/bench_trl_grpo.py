#!/usr/bin/env python3
"""TRL's GRPOTrainer on the grpo_step_bench workload, for a side-by-side number.

.venv/bin/pip install trl==1.16.0
.venv/bin/python scripts/bench_trl_grpo.py --model target/bench-qwen3 --prompts 8 --samples 8 \
    --prompt-len 24 --new-tokens 64 --steps 3 --threads 2 --seed 0

Same workload as `cargo run --release --example grpo_step_bench`: random prompt ids, generation
stopping at the checkpoint's EOS id (temperature 1, no truncation), a reward that is the parity of
the completion length, β = 0, one optimiser step per batch of prompts × samples completions, f32 on
CPU. The random benchmark policy has no tokenizer, so this script gives it a word-level one whose
token `<N>` is id N: the prompt text "<17> <5> ..." tokenizes back to exactly the random ids.
TRL's default gradient checkpointing is off unless `--gradient-checkpointing` (recomputation
only slows a model this small). One untimed warm-up step comes first. Prints a last line of JSON with `step_seconds`.
"""
import argparse
import json
import random
import time

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--prompts", type=int, default=8)
ap.add_argument("--samples", type=int, default=8)
ap.add_argument("--prompt-len", type=int, default=24)
ap.add_argument("--new-tokens", type=int, default=64)
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--bf16", action="store_true", help="TRL's default mixed precision (bf16 autocast); off by default here")
ap.add_argument("--gradient-checkpointing", action="store_true",
                help="TRL's default; off by default here, which makes TRL faster on this small model")
a = ap.parse_args()
torch.set_num_threads(a.threads)

model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
vocab = model.config.vocab_size
eos = model.generation_config.eos_token_id
eos = eos[0] if isinstance(eos, list) else eos
raw = Tokenizer(models.WordLevel({f"<{i}>": i for i in range(vocab)}, unk_token="<0>"))
raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=f"<{eos}>", pad_token="<0>",
                              unk_token="<0>", padding_side="left")

rng = random.Random(a.seed)
rows = (a.steps + 1) * a.prompts
prompts = [" ".join(f"<{rng.randrange(vocab)}>" for _ in range(a.prompt_len)) for _ in range(rows)]
assert all(len(tok(p)["input_ids"]) == a.prompt_len for p in prompts)
data = Dataset.from_dict({"prompt": prompts})


def parity(completions, completion_ids, **_):
    return [float(len(ids) % 2) for ids in completion_ids]


class Clock(TrainerCallback):
    def __init__(self):
        self.seconds, self.t = [], 0.0

    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.seconds.append(time.perf_counter() - self.t)


cfg = GRPOConfig(
    output_dir="/tmp/bench_trl_grpo", use_cpu=True, bf16=a.bf16, fp16=False, seed=a.seed,
    per_device_train_batch_size=a.prompts * a.samples, gradient_accumulation_steps=1,
    num_generations=a.samples, max_completion_length=a.new_tokens, temperature=1.0, top_p=1.0,
    top_k=0, beta=0.0, gradient_checkpointing=a.gradient_checkpointing, num_iterations=1, learning_rate=1e-6, max_steps=a.steps + 1,
    logging_steps=1000, save_strategy="no", report_to="none", shuffle_dataset=False,
    dataloader_num_workers=0, disable_tqdm=True, log_completions=False,
)
clock = Clock()
trainer = GRPOTrainer(model=model, reward_funcs=parity, args=cfg, train_dataset=data,
                      processing_class=tok, callbacks=[clock])
trainer.train()
steps = clock.seconds[1:]  # the first step is the warm-up
print(json.dumps({"bench": "trl_grpo", "prompts": a.prompts, "samples": a.samples,
                  "new_tokens": a.new_tokens, "threads": a.threads, "step_seconds": steps}))
