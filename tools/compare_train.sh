#!/usr/bin/env bash
# Training throughput of the Fashion-MNIST demo SN-Net, snnet (release, flex) against the same
# training in PyTorch (tools/train_torch.py), in one run on this machine: single routes (the three
# anchors and two stitched routes, each trained at every step) and the SN-Net recipe (a random
# route per step). Batch 128, 2 threads each, 5 warm-up steps, then the median step time.
# WORKERS=2 splits each snnet step's batch between two data-parallel peers (`snnet train --devices 2`)
# on one shared route per step, the step PyTorch's side takes.
#
#   pip install -r tools/requirements.txt   # once
#   cargo build --release -p snnet-cli
#   bash tools/compare_train.sh [STEPS]      # default 20 timed steps per workload
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-20}
WORKERS=${WORKERS:-1}
BIN=${BIN:-target/release/snnet}
DATA=assets/fashion-mnist
OUT=$(mktemp -d)
export RAYON_NUM_THREADS=2
printf "%-10s %12s %12s %8s\n" workload "snnet ms" "torch ms" ratio
for route in 0 1 2 10 24 all; do
  if [ "$route" = all ]; then rs=(); tr=(); else rs=(--routes "$route"); tr=(--route "$route"); fi
  "$BIN" --config "$DATA/family.json" train --data "$DATA" --batch 128 --devices "$WORKERS" --route-policy shared --max-steps $((STEPS + 5)) \
    --drop-path 0.1 --no-augment "${rs[@]}" --output "$OUT/w.safetensors" 2> "$OUT/snnet.err"
  ours=$(grep '"impl":"snnet"' "$OUT/snnet.err" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["step_ms_median"])')
  theirs=$(python3 tools/train_torch.py --threads 2 --batch 128 --warmup 5 --steps "$STEPS" --data "$DATA" "${tr[@]}" 2>/dev/null \
    | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["step_ms_median"])')
  python3 -c "print('%-10s %12.1f %12.1f %8.2f' % ('$route', $ours, $theirs, $ours / $theirs))"
done
