#!/usr/bin/env python3
"""Independent golden values for the loss kernels: ICPO.md §4-5 transcribed in PyTorch.

Run: .venv/bin/python crates/icpo-loss/tests/golden/make_golden.py
Writes golden.safetensors beside this file (inputs and expected outputs, float64), one case per
prefix `c{k}_`, and golden_configs.json (case k's settings); the test loss_golden.rs reads them. Written from the spec's text, not from the Rust.
"""
import json
import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def agg(values, mask, mode):
    if mode == "token-mean":
        return (values * mask).sum() / mask.sum().clamp(min=1)
    lens = mask.sum(-1)
    sums = (values * mask).sum(-1)
    per_seq = sums / lens.clamp(min=1) if mode == "seq-mean-token-mean" else sums / values.shape[1]
    keep = (lens > 0).to(values.dtype)
    return (per_seq * keep).sum() / keep.sum().clamp(min=1)


def loss(logp, old, ref, adv, mask, ief, cfg):
    a = adv[:, None]
    ief = ief[:, None].bool()
    # On-policy: r = exp(clamp(logp - old, -20, 20)); L = max(-A r, -A clip(r)); dual clip for A < 0.
    r = torch.exp(torch.clamp(logp - old, -20, 20))
    l1 = -a * r
    l2 = -a * torch.clamp(r, 1 - cfg["eps_low"], 1 + cfg["eps_high"])
    l = torch.max(l1, l2)
    if cfg["dual"]:
        l = torch.where(a < 0, torch.min(l, -cfg["c"] * a), l)
    # IEF: p = exp(clamp(logp, -20, 20)); L = -A p / (p + lambda).
    p = torch.exp(torch.clamp(logp, -20, 20))
    l = torch.where(ief, -a * p / (p + cfg["lam"]), l)
    pg = agg(l, mask, cfg["mode"])
    x = ref - logp
    kl = {"k1": -x, "k2": 0.5 * x * x, "k3": torch.exp(x) - x - 1}[cfg["kl"]].clamp(-10, 10)
    return pg + cfg["beta"] * agg(kl, mask, cfg["mode"])


def grpo(rewards, groups, eps=1e-6, norm=True):
    out = torch.zeros_like(rewards)
    for g in groups.unique():
        idx = groups == g
        r = rewards[idx]
        if len(r) < 2 or bool((r == r[0]).all()):
            continue
        out[idx] = (r - r.mean()) / (r.std(unbiased=True) + eps) if norm else r - r.mean()
    return out


def main():
    g = torch.Generator().manual_seed(0)
    out, configs = {}, []
    modes = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
    for k in range(6):
        b, t = 5, 7
        logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
        old = logp + torch.randn(b, t, generator=g, dtype=torch.float64) * (0.3 if k < 4 else 25)
        ref = logp + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.5
        lens = torch.randint(0, t + 1, (b,), generator=g)
        lens[0] = t
        mask = (torch.arange(t)[None] < lens[:, None]).to(torch.float64)
        ief = torch.zeros(b, dtype=torch.float64)
        ief[b - 1] = 1.0
        rewards = torch.randint(0, 2, (b,), generator=g).to(torch.float64)
        groups = torch.tensor([0, 0, 0, 1, 1])
        adv = grpo(rewards, groups)
        cfg = dict(eps_low=0.2, eps_high=0.28 if k % 2 else 0.2, c=3.0, dual=k != 3,
                   lam=[0.1, 0.01, 1e-4, 0.1, 0.1, 0.5][k], kl=["k1", "k2", "k3"][k % 3],
                   beta=[0.001, 0.1, 0.0, 0.05, 0.001, 1.0][k], mode=modes[k % 3])
        lp = logp.clone().requires_grad_(True)
        value = loss(lp, old, ref, adv, mask, ief, cfg)
        value.backward()
        pre = f"c{k}_"
        out.update({pre + "logp": logp, pre + "old_logp": old, pre + "ref_logp": ref, pre + "mask": mask,
                    pre + "is_ief": ief, pre + "rewards": rewards, pre + "groups": groups.to(torch.float64),
                    pre + "advantages": adv, pre + "loss": value.detach().reshape(1), pre + "grad": lp.grad})
        configs.append(cfg)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(HERE, "golden.safetensors"))
    with open(os.path.join(HERE, "golden_configs.json"), "w") as f:
        json.dump(configs, f, indent=1)


if __name__ == "__main__":
    main()
