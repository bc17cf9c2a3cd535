#!/usr/bin/env python3
"""Time the configurations of `benches/encoders.rs` in PyTorch (Hugging Face transformers, eager).

Same sizes as the Rust benchmark, random weights, float32, CPU, `torch.no_grad()`:

    qformer/image_mode/b{1,32}      queries cross-attend [B, 257, 1408] image features,
                                    then L2(vision_projection(.)) -> [B, 32, 256]
    qformer/composed_query/b{1,32}  SPRC two passes (as crates/df-encoders/src/hybrid.rs), texts
                                    padded to 32 tokens (6..32 real, 26 at batch 1):
                                    pass 1 qformer(cat(queries, text_emb), query_length=32, mask, image),
                                    pass 2 qformer(cat(pass1_queries, text_emb), query_length=0, mask),
                                    L2(text_projection(h2[:, 32])) -> [B, 256]
    qformer/composed_query_nopad/b{1,32}  the same, every text 32 real tokens
    vit_g_depth{N}/b{1,8}           Blip2VisionModel at ViT-g width with N blocks, [B, 3, 224, 224]

Modules: `Blip2QFormerModel`, `Blip2TextEmbeddings`, `nn.Linear` projections and a query-token
parameter; `Blip2VisionModel`. Attention implementation `eager` unless `--attn sdpa`.
Runs with transformers 4.46 (torch 1.13 peer-light env) and 5.x (current PyPI torch).

Each configuration is warmed up, then timed `--min-runs` or more times (until `--min-time`
seconds have passed); the median time per call is reported. Writes JSON with `--json`.

    python tools/bench_encoders_torch.py --threads 2 --vit-depth 4 --json /tmp/torch.json

Use the same thread count as the Rust side (`RAYON_NUM_THREADS`); `tools/bench_encoders.sh` runs
both and prints the comparison. Unset OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE before running it.
"""

import argparse
import json
import os
import re
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import Blip2QFormerConfig, Blip2VisionConfig
from transformers.models.blip_2.modeling_blip_2 import (
    Blip2QFormerModel,
    Blip2TextEmbeddings,
    Blip2VisionModel,
)

TEXT_LEN = 32
IMAGE_TOKENS = 257
NUM_QUERIES = 32
PROJ = 256


def text(b, l, full=False):
    """The same ids/mask as `text()` in benches/encoders.rs: lengths (20 + 7i) % (L - 5) + 6
    (26 for item 0), or all L with `full`; 101 first, 0 padding."""
    ids = torch.zeros(b, l, dtype=torch.long)
    mask = torch.zeros(b, l, dtype=torch.long)
    state = 0x9E3779B97F4A7C15
    m64 = (1 << 64) - 1
    for i in range(b):
        n = l if full else (20 + 7 * i) % (l - 5) + 6
        for j in range(min(n, l)):
            state = (state * 6364136223846793005 + 1442695040888963407) & m64
            ids[i, j] = 101 if j == 0 else 1000 + (state >> 33) % 29000
            mask[i, j] = 1
    return ids, mask


class Hybrid(torch.nn.Module):
    """Q-Former + queries + projections in df-encoders' HybridEncoder modes."""

    def __init__(self, attn):
        super().__init__()
        # BERT-base, encoder_hidden_size 1408, cross-attention every 2 layers; the text FFN
        # (`intermediate`/`output`) exists only with use_qformer_text_input, as in
        # Blip2ForImageTextRetrieval.
        cfg = Blip2QFormerConfig(use_qformer_text_input=True)
        cfg._attn_implementation = attn
        self.qformer = Blip2QFormerModel(cfg)
        self.embeddings = Blip2TextEmbeddings(cfg)
        self.query_tokens = torch.nn.Parameter(torch.randn(1, NUM_QUERIES, cfg.hidden_size) * 0.02)
        self.vision_projection = torch.nn.Linear(cfg.hidden_size, PROJ)
        self.text_projection = torch.nn.Linear(cfg.hidden_size, PROJ)

    def image_features(self, image):
        q = self.query_tokens.expand(image.shape[0], -1, -1)
        h = self.qformer(query_embeds=q, encoder_hidden_states=image).last_hidden_state
        return F.normalize(self.vision_projection(h), dim=-1)

    def composed_query(self, image, ids, mask):
        b, nq = image.shape[0], self.query_tokens.shape[1]
        q = self.query_tokens.expand(b, -1, -1)
        full_mask = torch.cat([torch.ones(b, nq, dtype=mask.dtype), mask], dim=1)
        h1 = self.qformer(query_embeds=self.embeddings(input_ids=ids, query_embeds=q), query_length=nq,
                          attention_mask=full_mask, encoder_hidden_states=image).last_hidden_state
        pass1 = h1[:, :nq]
        h2 = self.qformer(query_embeds=self.embeddings(input_ids=ids, query_embeds=pass1), query_length=0,
                          attention_mask=full_mask).last_hidden_state
        return F.normalize(self.text_projection(h2[:, nq]), dim=-1), pass1


def timeit(fn, warmup, min_runs, min_time):
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count())))
    ap.add_argument("--vit-depth", type=int, default=int(os.environ.get("DF_BENCH_VIT_DEPTH", 4)))
    ap.add_argument("--attn", default="eager", choices=["eager", "sdpa"])
    ap.add_argument("--min-runs", type=int, default=10)
    ap.add_argument("--min-time", type=float, default=5.0, help="seconds of timed runs at batch 1")
    ap.add_argument("--filter", default="", help="only configurations whose name contains this")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"warning: {var} is set; unset it for a fair run", file=sys.stderr)

    info = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "attn": args.attn,
        "blas": (re.search(r"BLAS_INFO=(\w+)", torch.__config__.show()) or [None, "?"])[1],
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "?",
    }
    print(json.dumps(info), file=sys.stderr)

    results = {}

    def run(name, fn, batch):
        if args.filter not in name:
            return
        big = batch > 1
        med, times = timeit(fn, warmup=1 if big else 3, min_runs=args.min_runs,
                            min_time=0.0 if big else args.min_time)
        results[name] = {"median_ms": med * 1e3, "min_ms": min(times) * 1e3, "runs": len(times), "batch": batch}
        print(f"{name:34s} {med * 1e3:10.2f} ms  (min {min(times) * 1e3:.2f}, {len(times)} runs, "
              f"{batch / med:.2f} items/s)", file=sys.stderr)

    with torch.no_grad():
        hybrid = Hybrid(args.attn).eval()
        for b in (1, 32):
            image = torch.randn(b, IMAGE_TOKENS, 1408)
            ids, mask = text(b, TEXT_LEN)
            ids_full, mask_full = text(b, TEXT_LEN, full=True)
            assert hybrid.image_features(image).shape == (b, NUM_QUERIES, PROJ)
            assert hybrid.composed_query(image, ids, mask)[0].shape == (b, PROJ)
            run(f"qformer/image_mode/b{b}", lambda: hybrid.image_features(image), b)
            run(f"qformer/composed_query/b{b}", lambda: hybrid.composed_query(image, ids, mask), b)
            run(f"qformer/composed_query_nopad/b{b}",
                lambda: hybrid.composed_query(image, ids_full, mask_full), b)
        del hybrid

        vcfg = Blip2VisionConfig(num_hidden_layers=args.vit_depth)  # ViT-g: 1408, 16 heads, MLP 6144
        vcfg._attn_implementation = args.attn
        vit = Blip2VisionModel(vcfg).eval()
        for b in (1, 8):
            pixels = torch.randn(b, 3, vcfg.image_size, vcfg.image_size)
            assert vit(pixel_values=pixels).last_hidden_state.shape == (b, IMAGE_TOKENS, 1408)
            run(f"vit_g_depth{args.vit_depth}/b{b}", lambda: vit(pixel_values=pixels).last_hidden_state, b)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
