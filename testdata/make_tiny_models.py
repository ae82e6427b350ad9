#!/usr/bin/env python3
"""Makes the tiny random checkpoints and the reference outputs the Rust tests compare against.

Run with the project's virtual environment (scripts/setup-libtorch installs it):
    .venv/bin/python testdata/make_tiny_models.py
    .venv/bin/python testdata/make_tiny_models.py --bench-model target/bench-qwen3   (benchmarks' model)
    .venv/bin/python testdata/make_tiny_models.py --long-tail-model target/longtail-qwen3
                                                   (the same, stopping at EOS after ~64 tokens on average)
Everything it writes lands beside it in testdata/ and is committed; rerunning it is deterministic.

Per model directory (tiny-qwen2, tiny-qwen3, tiny-llama):
  config.json, model.safetensors (tiny-llama: sharded with model.safetensors.index.json),
  tokenizer.json, tokenizer_config.json, generation_config.json: a checkpoint transformers loads;
  golden.safetensors: logits transformers computes (f32):
    single_ids [T], single_logits [T, V]                   plain forward of one sequence
    batch_ids [B, T], batch_mask [B, T], batch_logits [B, T, V]
                                                           left-padded batch, positions = cumsum(mask) - 1
                                                           (as transformers' generate does)
    resp_prompt_ids [B, P], resp_prompt_mask, resp_ids [B, R], resp_mask, resp_logprobs [B, R],
    resp_entropy [B, R]                                    per-token log-probs of responses after prompts
tokenizer_golden.json: encodings and a rendered Qwen3 chat template, from the Python libraries.
"""
import json
import os
import shutil

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, Regex, normalizers
from transformers import (AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen3Config, AutoTokenizer, GenerationConfig)
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2/Qwen3's pre-tokenizer split pattern.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CORPUS = [
    "Let's think step by step and output the final answer within \\boxed{}.",
    "What is $3 + 4 \\cdot 5$? The answer is \\boxed{23}.",
    "Find all real x such that x^2 - 5x + 6 = 0. So x = 2 or x = 3.",
    "The sum of the interior angles of a hexagon is 720 degrees.",
    "Compute \\frac{3}{4} + \\frac{1}{8} = \\frac{7}{8}, hence the result.",
    "A train travels 60 miles per hour for 2.5 hours; it covers 150 miles.",
    "Therefore, the probability is \\boxed{\\dfrac{1}{6}}.",
] * 20


def make_tokenizer(out_dir):
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=381, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_special_tokens(SPECIALS)
    with open(os.path.join(HERE, "qwen3_chat_template.jinja")) as f:
        template = f.read()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=template)
    fast.save_pretrained(out_dir)
    return fast


def golden_logits(model, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    single = torch.randint(0, vocab, (7,), generator=g)
    out["single_ids"] = single
    with torch.no_grad():
        out["single_logits"] = model(single[None]).logits[0].float()
    lens = [7, 4, 1]
    ids = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for b, n in enumerate(lens):
        ids[b, 7 - n:] = torch.randint(0, vocab, (n,), generator=g)
        mask[b, 7 - n:] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out["batch_logits"] = model(ids, attention_mask=mask, position_ids=pos).logits.float()
    out["batch_ids"], out["batch_mask"] = ids, mask
    # Responses after prompts: prompts left padded, responses right padded; one empty response.
    plens, rlens = [5, 3, 2], [4, 2, 0]
    p_ids = torch.zeros(3, 5, dtype=torch.long); p_mask = torch.zeros(3, 5, dtype=torch.long)
    r_ids = torch.zeros(3, 4, dtype=torch.long); r_mask = torch.zeros(3, 4, dtype=torch.long)
    lp = torch.zeros(3, 4); ent = torch.zeros(3, 4)
    for b in range(3):
        p = torch.randint(0, vocab, (plens[b],), generator=g)
        r = torch.randint(0, vocab, (rlens[b],), generator=g)
        p_ids[b, 5 - plens[b]:] = p; p_mask[b, 5 - plens[b]:] = 1
        r_ids[b, :rlens[b]] = r; r_mask[b, :rlens[b]] = 1
        if rlens[b] == 0:
            continue
        # Reference: the unpadded sequence alone, log_softmax of the positions before each token.
        seq = torch.cat([p, r])[None]
        with torch.no_grad():
            logits = model(seq).logits[0].float()
        logp = torch.log_softmax(logits[plens[b] - 1:-1], dim=-1)
        lp[b, :rlens[b]] = logp.gather(-1, r[:, None])[:, 0]
        ent[b, :rlens[b]] = -(logp.exp() * logp).sum(-1)
    out.update(resp_prompt_ids=p_ids, resp_prompt_mask=p_mask, resp_ids=r_ids, resp_mask=r_mask,
               resp_logprobs=lp, resp_entropy=ent)
    return {k: v.contiguous() for k, v in out.items()}


def make_model(name, config, seed, shard=None, legacy_config=False):
    out_dir = os.path.join(HERE, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    # Random init has tiny std; widen it so logits differ in more than the last decimals.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(out_dir, safe_serialization=True, **kwargs)
    tok = make_tokenizer(out_dir)
    end, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    GenerationConfig(eos_token_id=[im_end, end], pad_token_id=end).save_pretrained(out_dir)
    if legacy_config:
        # Older checkpoints (as most on the Hub today): rope_theta at the top level, torch_dtype.
        path = os.path.join(out_dir, "config.json")
        with open(path) as f:
            cfg = json.load(f)
        rope = cfg.pop("rope_parameters", None) or {}
        cfg["rope_theta"] = rope.get("rope_theta", 10000.0)
        cfg["torch_dtype"] = cfg.pop("dtype", "float32")
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        # ... and the chat template inside tokenizer_config.json rather than chat_template.jinja.
        tpath = os.path.join(out_dir, "tokenizer_config.json")
        with open(tpath) as f:
            tcfg = json.load(f)
        with open(os.path.join(out_dir, "chat_template.jinja")) as f:
            tcfg["chat_template"] = f.read()
        os.remove(os.path.join(out_dir, "chat_template.jinja"))
        with open(tpath, "w") as f:
            json.dump(tcfg, f, indent=2)
    # The reference logits come from the checkpoint as transformers reloads it.
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    save_file(golden_logits(reloaded, config.vocab_size, seed + 1), os.path.join(out_dir, "golden.safetensors"))


def tokenizer_golden():
    tok = AutoTokenizer.from_pretrained(os.path.join(HERE, "tiny-qwen3"))
    texts = ["What is $3 + 4 \\cdot 5$?", "  two  spaces\nand lines\n\n", "héllo wörld 123456",
             "<|im_start|>user\nhi<|im_end|>", ""]
    conv = [
        [{"role": "user", "content": "What is 1+1?"}],
        [{"role": "system", "content": "You are a careful solver."},
         {"role": "user", "content": "Solve x+2=5."}],
        [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "<think>\nr\n</think>\n\nA1"},
         {"role": "user", "content": "Q2"}],
    ]
    out = {"encodings": [{"text": t, "ids": tok(t, add_special_tokens=True)["input_ids"]} for t in texts],
           "chat": []}
    for msgs in conv:
        for agp in (True, False):
            out["chat"].append({"messages": msgs, "add_generation_prompt": agp,
                                "text": tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp)})
    with open(os.path.join(HERE, "tokenizer_golden.json"), "w") as f:
        json.dump(out, f, indent=None, ensure_ascii=False)


def make_bench_model(out_dir):
    """The random Qwen3 policy of the benchmarks (vocab 512, hidden 256, 4 layers, 4 heads / 2 KV
    heads, head_dim 64): not committed, written where asked."""
    cfg = Qwen3Config(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True,
                      rope_theta=1000000.0, max_position_embeddings=4096, eos_token_id=1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    GenerationConfig(eos_token_id=1, pad_token_id=0).save_pretrained(out_dir)


def make_long_tail_model(out_dir, mean_len=64.0):
    """The bench model's architecture with untied head, made to stop at EOS (id 1) with a constant
    hazard of about 1/mean_len per token: geometric lengths, most short, a few past 8x the mean
    (the long-tailed workload of the rollout benchmark). How: every token embedding gets a large
    constant in dimension 0, so the final normed hidden state holds a near-constant h0 there
    (the random layers' weights are small); the head's column 0 is zero but for EOS, whose
    entry lifts its logit by about b = log(p (V - 1) / (1 - p)) over the near-uniform others."""
    cfg = Qwen3Config(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=False,
                      rope_theta=1000000.0, max_position_embeddings=4096, eos_token_id=1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    p = 1.0 / mean_len
    b = float(torch.log(torch.tensor(p * (cfg.vocab_size - 1) / (1 - p))))
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        # h0 measured on random sequences, then the EOS entry set to give logit b.
        ids = torch.randint(0, cfg.vocab_size, (8, 64))
        h = model.model(ids).last_hidden_state
        h0 = float(h[..., 0].mean())
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[1, 0] = b / h0
    model.save_pretrained(out_dir, safe_serialization=True)
    GenerationConfig(eos_token_id=1, pad_token_id=0).save_pretrained(out_dir)


def main():
    import sys
    if len(sys.argv) == 3 and sys.argv[1] == "--bench-model":
        make_bench_model(sys.argv[2])
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--long-tail-model":
        make_long_tail_model(sys.argv[2])
        return
    vocab = 384  # 381 BPE tokens + 3 specials
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, rms_norm_eps=1e-6, max_position_embeddings=256)
    make_model("tiny-qwen2", Qwen2Config(num_key_value_heads=2, tie_word_embeddings=False,
                                         rope_theta=10000.0, **common), seed=1, legacy_config=True)
    make_model("tiny-qwen3", Qwen3Config(num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                                         rope_theta=1000000.0, **common), seed=2)
    make_model("tiny-llama", LlamaConfig(num_key_value_heads=1, tie_word_embeddings=False,
                                         rope_theta=500000.0,
                                         rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                       "original_max_position_embeddings": 16},
                                         **common), seed=3, shard="60KB")
    tokenizer_golden()


if __name__ == "__main__":
    main()
