#!/usr/bin/env bash
# Times the df-encoders towers (benches/encoders.rs, criterion) and the same configurations in
# PyTorch (tools/bench_encoders_torch.py) one after the other, and prints ms per batch, items/s
# and the ratio PyTorch / ours (> 1: ours is faster). Run from the repository root:
#
#   tools/bench_encoders.sh                      # everything, 2 threads each (~8 min warm)
#   FILTER=qformer tools/bench_encoders.sh       # substring of the benchmark ids
#   SKIP_RUST=1 TORCH_PY=/root/.cache/detailfusion-peer-light/bin/python tools/bench_encoders.sh
#                                                # another PyTorch against the last Rust results
#
# Environment: THREADS (default 2: RAYON_NUM_THREADS for candle, torch.set_num_threads),
# VIT_DEPTH (default 4), FILTER, TORCH_PY (default the peer venv of tools/peer-env.sh: current
# PyPI torch + transformers 5, else the --light one), SKIP_RUST=1, SKIP_TORCH=1.
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for the PyTorch run (they slow OpenBLAS).
# Results go to ${CARGO_TARGET_DIR:-target}/bench-encoders/ (torch-*.json, table.md).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-2}
VIT_DEPTH=${VIT_DEPTH:-4}
FILTER=${FILTER:-}
if [[ -z ${TORCH_PY:-} ]]; then
  for py in "$HOME/.cache/detailfusion-peer/bin/python" "$HOME/.cache/detailfusion-peer-light/bin/python"; do
    if [[ -x $py ]]; then TORCH_PY=$py; break; fi
  done
fi
target=${CARGO_TARGET_DIR:-target}
out=$target/bench-encoders
mkdir -p "$out"

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), threads $THREADS" >&2
echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

if [[ -z ${SKIP_RUST:-} ]]; then
  echo "== cargo bench --bench encoders ${FILTER:+-- $FILTER}" >&2
  RAYON_NUM_THREADS=$THREADS DF_BENCH_VIT_DEPTH=$VIT_DEPTH \
    cargo bench --bench encoders -- ${FILTER:+"$FILTER"} >&2
fi

torch_json=""
if [[ -n ${TORCH_PY:-} ]]; then
  torch_json=$out/torch-$(basename "$(dirname "$(dirname "$TORCH_PY")")").json
fi
if [[ -z ${SKIP_TORCH:-} ]]; then
  if [[ -z ${TORCH_PY:-} ]]; then
    echo "no PyTorch found: run tools/peer-env.sh (or set TORCH_PY)" >&2
    exit 1
  fi
  echo "== $TORCH_PY tools/bench_encoders_torch.py (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$TORCH_PY" tools/bench_encoders_torch.py \
    --threads "$THREADS" --vit-depth "$VIT_DEPTH" --filter "$FILTER" --json "$torch_json"
fi

python3 - "$target/criterion" "$torch_json" "$THREADS" "$out/table.md" "$FILTER" <<'EOF'
import json, os, sys

crit, torch_json, threads, table, filt = sys.argv[1:6]
torch = {}
info = {}
if torch_json and os.path.exists(torch_json):
    data = json.load(open(torch_json))
    torch, info = data["results"], data["info"]

def ours(name):
    path = os.path.join(crit, name, "new", "estimates.json")
    if not os.path.exists(path):
        return None
    return json.load(open(path))["median"]["point_estimate"] / 1e6  # ms

names = sorted(set(torch) | {
    os.path.relpath(root, crit).replace(os.sep, "/")[: -len("/new")]
    for root, _, files in os.walk(crit) if root.endswith(os.sep + "new") and "estimates.json" in files
    and ("qformer/" in root or "vit_g" in root)
}, key=lambda n: (n.split("/")[0], int(n.rsplit("/b", 1)[1]), n))

names = [n for n in names if filt in n]
lines = [
    f"threads {threads}; PyTorch {info.get('torch', '?')} + transformers {info.get('transformers', '?')}"
    f" (BLAS {info.get('blas', '?')}, attention {info.get('attn', '?')})",
    "",
    "| benchmark | ours ms/batch | PyTorch ms/batch | ours items/s | PyTorch items/s | PyTorch / ours |",
    "|---|---:|---:|---:|---:|---:|",
]
for n in names:
    b = int(n.rsplit("/b", 1)[1])
    o = ours(n)
    t = torch.get(n, {}).get("median_ms")
    fmt = lambda v: f"{v:.1f}" if v is not None else "–"
    ips = lambda v: f"{b / v * 1e3:.2f}" if v else "–"
    ratio = f"**{t / o:.2f}**" if o and t else "–"
    lines.append(f"| `{n}` | {fmt(o)} | {fmt(t)} | {ips(o)} | {ips(t)} | {ratio} |")
text = "\n".join(lines)
print(text)
open(table, "w").write(text + "\n")
EOF
