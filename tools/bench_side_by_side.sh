#!/usr/bin/env bash
# snnet and PyTorch on the same workloads, in one run, on this machine's CPU; prints snnet/PyTorch.
#
#   bash tools/bench_side_by_side.sh [ROUTES] [BATCHES] [THREADS]
#   bash tools/bench_side_by_side.sh 0,1,2,10,24,40,56,70 1,8 2      # the defaults
#
# Needs: a release build of the CLI (built here if missing) and `pip install -r tools/requirements.txt`.
# Both sides run the DeiT-Ti/S/B SN-Net (random weights, 224x224) with the same thread count; the
# two runs follow each other, so compare ratios, not absolute times, on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUTES=${1:-0,1,2,10,24,40,56,70}
BATCHES=${2:-1,8}
THREADS=${3:-$(nproc)}
OUT=${OUT:-target/bench-side-by-side}
mkdir -p "$OUT"
cargo build --release -q -p snnet-cli
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
target/release/snnet --anchors deit_tiny_patch16_224,deit_small_patch16_224,deit_base_patch16_224 \
    bench --routes "$ROUTES" --batch "$BATCHES" --min-seconds 1 --json >"$OUT/snnet.jsonl"
python3 tools/bench_torch.py --device cpu --batch "$BATCHES" --routes "$ROUTES" --threads "$THREADS" --json >"$OUT/torch.jsonl"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 tools/bench_compare.py "$OUT/snnet.jsonl" "$OUT/torch.jsonl" --map-device flex=cpu --markdown "$OUT/table.md"
