"""Which kernel libtorch's scaled_dot_product_attention runs for icpo-rs's decode and training
calls on CUDA (bf16, a boolean mask, grouped KV heads through enable_gqa), named from the CUDA
kernels the profiler records, with each call's time. Prints one JSON line; says "skipped" without
CUDA. Run by scripts/gpu-check (the issue on rollouts at scale, item 5)."""
import json
import sys

try:
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile
except ImportError as e:  # the GPU image has torch; a bare machine may not
    print(json.dumps({"sdpa": "skipped", "reason": f"no torch: {e}"}))
    sys.exit(0)

if not torch.cuda.is_available():
    print(json.dumps({"sdpa": "skipped", "reason": "no CUDA device"}))
    sys.exit(0)


def backend(names):
    low = " ".join(names).lower()
    for key, label in [("flash", "flash"), ("cudnn", "cudnn"), ("fmha", "efficient"),
                       ("efficient", "efficient"), ("mem_eff", "efficient")]:
        if key in low:
            return label
    return "math (unfused: matmul + softmax kernels)"


def probe(name, q, k, v, mask, gqa):
    call = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    kernels = sorted({e.key for e in prof.key_averages() if e.device_type.name == "CUDA"})
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        call()
    end.record()
    torch.cuda.synchronize()
    return {"case": name, "backend": backend(kernels), "ms": start.elapsed_time(end) / 20,
            "kernels": kernels[:8]}


dev, bf16 = "cuda", torch.bfloat16
heads, kv_heads, d = 16, 8, 128  # Qwen3-1.7B
out = []
# Decoding: one query per row over a 2,048-token cache, 64 rows, padding masked.
b, t = 64, 2048
q = torch.randn(b, heads, 1, d, device=dev, dtype=bf16)
k = torch.randn(b, kv_heads, t, d, device=dev, dtype=bf16)
v = torch.randn_like(k)
mask = torch.ones(b, 1, 1, t, device=dev, dtype=torch.bool)
mask[:, :, :, :100] = False
out.append(probe("decode: mask + enable_gqa", q, k, v, mask, True))
out.append(probe("decode: enable_gqa, no mask", q, k, v, None, True))
rep = lambda x: x.repeat_interleave(heads // kv_heads, dim=1)
out.append(probe("decode: mask, KV heads expanded", q, rep(k), rep(v), mask, False))
# Training: a 4,096-token sequence, causal boolean mask (as the trainer builds it).
t = 4096
q = torch.randn(1, heads, t, d, device=dev, dtype=bf16)
k = torch.randn(1, kv_heads, t, d, device=dev, dtype=bf16)
v = torch.randn_like(k)
causal = torch.ones(t, t, device=dev, dtype=torch.bool).tril().view(1, 1, t, t)
out.append(probe("train: causal mask + enable_gqa", q, k, v, causal, True))
print(json.dumps({"sdpa": out, "torch": torch.__version__, "device": torch.cuda.get_device_name(0)}))
