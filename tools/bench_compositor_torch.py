#!/usr/bin/env python3
"""Time the configurations of `benches/compositor.rs` in PyTorch (eager, float32, CPU).

The same Adaptive Feature Compositor as `crates/df-compositor` (and as the twin in
tools/gen_model_fixtures.py) at the paper's sizes: P = 256, 8 heads, FFN 1024, fusion hidden
256, softmax fusion, 32 fine-grained tokens per branch; random weights and inputs
(unit-norm globals [B, 256], tokens [B, 32, 256] per branch):

    compositor/forward/b{1,32,256}   torch.no_grad() forward -> fused [B, 256], alpha [B, 2]
    compositor/fwd_bwd/b{1,32,256}   forward with trainable weights, loss = sum(fused * R)
                                     (R fixed random [B, 256]), torch.autograd.grad w.r.t. all
                                     weights (fresh gradients each step, as candle's GradStore)

Each configuration is warmed up, then timed `--min-runs` or more times (until `--min-time`
seconds have passed); the median time per call is reported. Writes JSON with `--json`.

    python tools/bench_compositor_torch.py --threads 2 --json /tmp/torch_compositor.json

Use the same thread count as the Rust side (`RAYON_NUM_THREADS`); `tools/bench_compositor.sh`
runs both and prints the comparison.
"""

import argparse
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HIDDEN = 256
HEADS = 8
FFN = 1024
FUSION_HIDDEN = 256
TOKENS = 32
BATCHES = (1, 32, 256)


class CrossAttention(torch.nn.Module):
    """A query vector `[B, P]` attends `[B, T, P]` tokens (`q_proj`, `k_proj`, `v_proj`, `out_proj`)."""

    def __init__(self, p, heads):
        super().__init__()
        self.q_proj = torch.nn.Linear(p, p)
        self.k_proj = torch.nn.Linear(p, p)
        self.v_proj = torch.nn.Linear(p, p)
        self.out_proj = torch.nn.Linear(p, p)
        self.heads = heads
        self.scale = (p // heads) ** -0.5

    def split(self, x):
        b, s, w = x.shape
        return x.reshape(b, s, self.heads, w // self.heads).transpose(1, 2)

    def forward(self, query, tokens):
        q = self.split(self.q_proj(query[:, None]))
        k = self.split(self.k_proj(tokens))
        v = self.split(self.v_proj(tokens))
        probs = torch.softmax((q @ k.transpose(-1, -2)) * self.scale, dim=-1)
        b, h, sq, d = q.shape
        return self.out_proj((probs @ v).transpose(1, 2).reshape(b, sq, h * d)[:, 0])


class ExtractionBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.opposite = CrossAttention(HIDDEN, HEADS)
        self.same = CrossAttention(HIDDEN, HEADS)
        self.norm = torch.nn.LayerNorm(HIDDEN, eps=1e-5)
        self.fc1 = torch.nn.Linear(HIDDEN, FFN)
        self.fc2 = torch.nn.Linear(FFN, HIDDEN)
        self.ffn_norm = torch.nn.LayerNorm(HIDDEN, eps=1e-5)

    def forward(self, global_, own, other):
        c = self.norm(global_ + self.opposite(global_, other) + self.same(global_, own))
        return self.ffn_norm(c + self.fc2(F.gelu(self.fc1(c))))


class Compositor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.di = ExtractionBlock()
        self.gm = ExtractionBlock()
        self.fc1 = torch.nn.Linear(2 * HIDDEN, FUSION_HIDDEN)
        self.fc2 = torch.nn.Linear(FUSION_HIDDEN, 2)

    def forward(self, q_di, t_di, q_gm, t_gm):
        c_di = self.di(q_di, t_di, t_gm)
        c_gm = self.gm(q_gm, t_gm, t_di)
        alpha = torch.softmax(self.fc2(F.gelu(self.fc1(torch.cat([c_di, c_gm], dim=1)))), dim=-1)
        return F.normalize(alpha[:, 0:1] * q_di + alpha[:, 1:2] * q_gm, dim=-1), alpha


def time_call(fn, warmup, min_runs, min_time):
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--min-runs", type=int, default=20)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per configuration")
    ap.add_argument("--filter", default="", help="only names containing this")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Compositor().eval()
    params = list(model.parameters())
    results = {}
    for b in BATCHES:
        q_di = F.normalize(torch.randn(b, HIDDEN), dim=-1)
        q_gm = F.normalize(torch.randn(b, HIDDEN), dim=-1)
        t_di = torch.randn(b, TOKENS, HIDDEN)
        t_gm = torch.randn(b, TOKENS, HIDDEN)
        r = torch.randn(b, HIDDEN)

        def forward():
            with torch.no_grad():
                return model(q_di, t_di, q_gm, t_gm)

        def fwd_bwd():
            fused, _ = model(q_di, t_di, q_gm, t_gm)
            return torch.autograd.grad((fused * r).sum(), params)

        for name, fn in (("forward", forward), ("fwd_bwd", fwd_bwd)):
            key = f"compositor/{name}/b{b}"
            if args.filter not in key:
                continue
            sec, runs = time_call(fn, args.warmup, args.min_runs, args.min_time)
            results[key] = {"batch": b, "seconds": sec, "runs": runs, "queries_per_s": b / sec}
            print(f"{key:28s} {sec * 1e3:10.3f} ms  {b / sec:12.1f} queries/s  ({runs} runs)", flush=True)
    if args.json:
        info = {"torch": torch.__version__, "threads": args.threads, "python": platform.python_version()}
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
