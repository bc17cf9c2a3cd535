#!/usr/bin/env bash
# Compositor throughput: Rust (criterion, benches/compositor.rs) against PyTorch eager
# (tools/bench_compositor_torch.py), same sizes and thread count; prints ms per batch,
# queries/s and the ratio torch time / our time (> 1: we are faster).
#
#   tools/bench_compositor.sh                 # 2 threads
#   THREADS=1 tools/bench_compositor.sh
#   TORCH_PY=/path/to/python tools/bench_compositor.sh
#   ABSORBED=1 tools/bench_compositor.sh      # also the folded-attention prototype (forward only)
#   MALLOC_TUNED=0 tools/bench_compositor.sh  # keep glibc's default malloc trimming
#
# TORCH_PY defaults to the first of these that imports torch:
#   /root/.cache/detailfusion-peer/bin/python        (PyTorch 2.x, MKL)
#   /root/.cache/detailfusion-peer-light/bin/python  (torch 1.13 from Debian: reference BLAS, slow)
# Each side's run also reports how many cores other processes kept busy meanwhile (from
# /proc/stat and /usr/bin/time): the machine should be idle, rerun when that is not ~0.
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for both runs. Unless MALLOC_TUNED=0, both run
# with GLIBC_TUNABLES that keep glibc from handing freed memory back to the kernel after every
# step (candle allocates a fresh buffer per op; without them page faults cost up to ~4x in
# fwd_bwd).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${THREADS:-2}"
if [[ -z "${TORCH_PY:-}" ]]; then
  for py in /root/.cache/detailfusion-peer/bin/python /root/.cache/detailfusion-peer-light/bin/python python3; do
    if "$py" -c "import torch" 2>/dev/null; then TORCH_PY="$py"; break; fi
  done
fi
: "${TORCH_PY:?no Python with torch found; set TORCH_PY}"
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
if [[ "${MALLOC_TUNED:-1}" != 0 ]]; then
  export GLIBC_TUNABLES="glibc.malloc.trim_threshold=1073741824:glibc.malloc.mmap_threshold=33554432:glibc.malloc.top_pad=268435456"
fi
if [[ "${ABSORBED:-0}" != 0 ]]; then export DF_BENCH_ABSORBED=1; fi
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

# Busy and total jiffies of the whole machine (user nice system irq softirq steal; + idle iowait).
cpu_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
# Runs a command and appends to $OUT/load how many cores were busy meanwhile beyond its own use.
measured() {
  local label=$1 b0 t0 b1 t1 u s e
  shift
  read -r b0 t0 < <(cpu_jiffies)
  /usr/bin/time -f "%U %S %e" -o "$OUT/time" "$@"
  read -r b1 t1 < <(cpu_jiffies)
  read -r u s e < "$OUT/time"
  awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) -v n="$(nproc)" -v u="$u" -v s="$s" -v e="$e" -v l="$label" 'BEGIN {
    busy = b / t * n; own = (u + s) / e; other = busy - own
    printf "%-6s machine busy %.2f cores, this run %.2f, other processes %.2f%s\n", l, busy, own, other,
      (other > 0.25 ? "   <-- disturbed: rerun when the machine is idle" : "") }' >> "$OUT/load"
}

echo "threads: $THREADS   cpus: $(nproc)   GLIBC_TUNABLES=${GLIBC_TUNABLES:-}   load average: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf target/criterion/compositor
cargo bench --bench compositor --no-run >/dev/null 2>&1 || cargo bench --bench compositor --no-run
RAYON_NUM_THREADS="$THREADS" measured rust cargo bench --bench compositor > "$OUT/rust.txt" 2>&1 \
  || { cat "$OUT/rust.txt"; exit 1; }
grep -E '^compositor/|time:|thrpt:' "$OUT/rust.txt" || true
echo
OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" measured torch "$TORCH_PY" tools/bench_compositor_torch.py \
  --threads "$THREADS" --json "$OUT/torch.json"
echo
cat "$OUT/load"
echo

"$TORCH_PY" - "$OUT/torch.json" <<'EOF'
import json, os, sys

torch_res = json.load(open(sys.argv[1]))
info = torch_res["info"]
print(f"torch {info['torch']} ({info['threads']} threads) vs candle; median time per batch")
print(f"| benchmark | ours ms | torch ms | ours queries/s | torch queries/s | torch/ours |")
print(f"|---|---:|---:|---:|---:|---:|")
for kind in ("forward", "fwd_bwd", "forward_absorbed"):
    for b in (1, 32, 256):
        key = f"compositor/{kind}/b{b}"
        path = os.path.join("target", "criterion", "compositor", kind, f"b{b}", "new", "estimates.json")
        if not os.path.exists(path):
            continue
        ours = json.load(open(path))["median"]["point_estimate"] / 1e9
        # the prototype is compared with torch's plain forward
        theirs = torch_res["results"].get(key.replace("_absorbed", ""), {}).get("seconds")
        fmt = lambda s, f: f.format(s) if s is not None else "-"
        ratio = theirs / ours if ours and theirs else None
        print(f"| {key} | {fmt(ours and ours * 1e3, '{:.3f}')} | {fmt(theirs and theirs * 1e3, '{:.3f}')} "
              f"| {fmt(ours and b / ours, '{:.0f}')} | {fmt(theirs and b / theirs, '{:.0f}')} | {fmt(ratio, '{:.2f}')} |")
EOF
