#!/usr/bin/env bash
# Training throughput of the Fashion-MNIST demo SN-Net on the CPU with data-parallel peers, in one
# go: one peer, two peers on one shared route per step, two peers on a route each (the default),
# and, given OLD=path to an snnet binary from before the peers (its `--workers 2` threads), that too.
# The SN-Net recipe (a route per step from all routes), batch 128, 5 warm-up steps then the median
# step time (forward, backward, exchange, update); ROUNDS rounds alternate the settings.
#
#   cargo build --release -p snnet-cli
#   OLD=/tmp/snnet_before bash tools/compare_peers.sh [STEPS] [ROUNDS]   # default 40 steps, 2 rounds
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-40}
ROUNDS=${2:-2}
BIN=${BIN:-target/release/snnet}
DATA=assets/fashion-mnist
OUT=$(mktemp -d)
export RAYON_NUM_THREADS=2
run() { # label binary flags...
  local label=$1 bin=$2
  shift 2
  "$bin" --config "$DATA/family.json" train --data "$DATA" --batch 128 --max-steps $((STEPS + 5)) \
    --drop-path 0.1 --no-augment --output "$OUT/w.safetensors" "$@" 2> "$OUT/err"
  grep '"impl":"snnet"' "$OUT/err" | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print('%-34s %10.1f %10.0f' % ('$label', r['step_ms_median'], r['images_per_s']))"
}
printf "%-34s %10s %10s\n" setting "ms/step" "images/s"
for _ in $(seq "$ROUNDS"); do
  run "1 peer" "$BIN" --devices 1
  run "2 peers, one shared route" "$BIN" --devices 2 --route-policy shared
  run "2 peers, a route each (default)" "$BIN" --devices 2
  if [ -n "${OLD:-}" ]; then run "before: --workers 2 threads" "$OLD" --workers 2; fi
done
