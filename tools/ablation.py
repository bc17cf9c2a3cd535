#!/usr/bin/env python3
"""Ablation table on the toy world (README "Ablations"), run by hand:

    cargo build --release --example train
    python3 tools/ablation.py --out runs/ablation [--seeds 0 1 2] [--scale 0.4] [--epoch-scale 0.5]
        [--backbone runs/toy/blip2] [--bin target/release/examples/train]

One stage-0 backbone (the BLIP-2 stand-in) is trained once (or taken from --backbone, e.g. the
blip2/ directory of a `train --preset toy` run) and shared; every variant then runs stages 1-3
with the same seeds, and the test metrics are aggregated as mean ± std over seeds into
<out>/ablation.md. --scale shrinks the training data (the toy test split is kept whole),
--epoch-scale the epochs of stages 1-3. Variants: GM only (SPRC), DI only, DI + GM with fixed 0.5/0.5 fusion,
DetailFusion, DetailFusion without stage 1, and a gamma sweep.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path("target/release/examples/train")  # --bin


def preset():
    return json.loads(subprocess.check_output([str(BIN), "--print-config"]))


def run(cfg, out, seed, log):
    out.mkdir(parents=True, exist_ok=True)
    path = out / "preset.json"
    path.write_text(json.dumps(cfg, indent=1))
    t = time.time()
    with open(out / "train.log", "w") as f:
        subprocess.run([str(BIN), "--config", str(path), "--out", str(out), "--seed", str(seed)],
                       check=True, stdout=f, stderr=subprocess.STDOUT)
    log(f"{out} done in {time.time() - t:.0f} s")
    return json.loads((out / "report.json").read_text())


def main():
    global BIN
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scale", type=float, default=0.4, help="fraction of the default toy training data")
    ap.add_argument("--epoch-scale", type=float, default=0.5, help="fraction of the default epochs of stages 1-3")
    ap.add_argument("--backbone", help="an existing stage-0 checkpoint directory to share")
    ap.add_argument("--gammas", type=float, nargs="*", default=[0.5, 2.0], help="gamma sweep (besides 1)")
    ap.add_argument("--bin", default="target/release/examples/train", help="the train example binary")
    args = ap.parse_args()
    BIN = Path(args.bin)
    out = Path(args.out)
    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)
    base = preset()
    w = base["world"]
    for k in ("train", "ipr2pr"):
        w[k] = int(w[k] * args.scale)
    for s in ("stage1", "stage2", "stage3"):
        base[s]["epochs"] = max(1, round(base[s]["epochs"] * args.epoch_scale))

    # The shared backbone: stage 0 only.
    backbone = out / "backbone"
    if args.backbone:
        base["stage0_checkpoint"] = str(Path(args.backbone).resolve())
    elif not (backbone / "blip2" / "model.safetensors").exists():
        b = json.loads(json.dumps(base))
        b["stage1"] = None
        b["stage2"]["epochs"] = 0
        b["stage3"]["epochs"] = 0
        # The world and stage-0 seeds stay fixed: `--seed` is not passed here.
        backbone.mkdir(parents=True, exist_ok=True)
        (backbone / "preset.json").write_text(json.dumps(b, indent=1))
        with open(backbone / "train.log", "w") as f:
            subprocess.run([str(BIN), "--config", str(backbone / "preset.json"), "--out", str(backbone)],
                           check=True, stdout=f, stderr=subprocess.STDOUT)
        log("backbone done")
    if not args.backbone:
        base["stage0_checkpoint"] = str(backbone / "blip2")

    def model(**kw):
        m = {"blip2": base["blip2"], "variant": "full", "gallery": "shared_di"}
        m.update(kw)
        return m

    def variant(name, **changes):
        cfg = json.loads(json.dumps(base))
        for k, v in changes.items():
            cfg[k] = v
        return name, cfg

    variants = [
        variant("GM only (SPRC)", model=model(variant="gm_only"), stage1=None),
        variant("DI only", model=model(variant="di_only")),
        variant("DI + GM, fixed 0.5/0.5", model=model(compositor={"fusion": {"kind": "fixed", "di_weight": 0.5}}),
                stage3={**base["stage3"], "epochs": 0}),
        variant("DetailFusion", model=model()),
        variant("DetailFusion w/o stage 1", model=model(), stage1=None),
    ]
    for g in args.gammas:
        variants.append(variant(f"DetailFusion, gamma {g}", model=model(), losses={**base["losses"], "gamma": g}))

    # Seeds outermost, so that a cut-short run still covers every variant; finished runs
    # (a report.json) are not redone.
    results = {name: [] for name, _ in variants}
    for seed in args.seeds:
        for name, cfg in variants:
            slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
            done = out / slug / f"seed{seed}" / "report.json"
            if done.exists():
                report = json.loads(done.read_text())
            else:
                report = run(cfg, out / slug / f"seed{seed}", seed, log)
            results[name].append(report["test"][-1][1])
            (out / "results.json").write_text(json.dumps(results, indent=1))

    keys = ["recall_at1", "recall_at5", "recall_at10", "recall_at50", "recall_subset_at1",
            "recall_subset_at2", "recall_subset_at3", "avg"]
    head = ["R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "Avg"]
    lines = ["| variant | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for name, ms in results.items():
        if not ms:
            continue
        cells = []
        for k in keys:
            v = [m[k] for m in ms]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.1f} ± {sd:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "ablation.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
