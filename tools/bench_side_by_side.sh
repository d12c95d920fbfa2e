#!/usr/bin/env bash
# snnet and PyTorch on the same workloads, on this machine's CPU, taking turns; prints snnet/PyTorch.
#
#   bash tools/bench_side_by_side.sh [ROUTES] [BATCHES] [THREADS]
#   bash tools/bench_side_by_side.sh 0,1,2,10,24,40,56,70 1,8 2      # the defaults
#   ROUNDS=3 OUT=target/bench-side-by-side bash tools/bench_side_by_side.sh   # (the defaults)
#   BASELINE=/tmp/snnet-before bash tools/bench_side_by_side.sh   # also an older snnet binary, in the same rounds
#
# With BASELINE (the `snnet` binary of an earlier commit), each round runs that binary too, next
# to the current one and PyTorch, so "before" and "after" are measured in one go against the same
# PyTorch runs: two tables, each side over PyTorch (table.md and baseline-table.md).
#
# Needs: a release build of the CLI (built here if missing) and `pip install -r tools/requirements.txt`.
# Both sides run the DeiT-Ti/S/B SN-Net (random weights, 224x224) with the same thread count.
# Each round runs every route once on each side, route by route, snnet and PyTorch back to back
# (which goes first alternates between rounds), so both see the same load on a shared machine;
# tools/bench_compare.py then quotes the median of the per-round ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUTES=${1:-0,1,2,10,24,40,56,70}
BATCHES=${2:-1,8}
THREADS=${3:-$(nproc)}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-target/bench-side-by-side}
BASELINE=${BASELINE:-}
mkdir -p "$OUT"
cargo build --release -q -p snnet-cli
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
ANCHORS=deit_tiny_patch16_224,deit_small_patch16_224,deit_base_patch16_224
: >"$OUT/snnet.jsonl"
: >"$OUT/torch.jsonl"
[ -z "$BASELINE" ] || : >"$OUT/baseline.jsonl"
# Tags each JSON line with its round.
tag() { sed "s/^{/{\"round\":$1,/"; }
# run_snnet BINARY ROUND ROUTE FILE
run_snnet() {
    "$1" --anchors "$ANCHORS" bench --routes "$3" --batch "$BATCHES" --min-seconds 1 --json | tag "$2" >>"$OUT/$4"
}
# The current binary and the baseline take turns too: odd rounds current first, even rounds last.
snnet_side() {
    if [ -n "$BASELINE" ] && (( $1 % 2 == 0 )); then run_snnet "$BASELINE" "$1" "$2" baseline.jsonl; fi
    run_snnet target/release/snnet "$1" "$2" snnet.jsonl
    if [ -n "$BASELINE" ] && (( $1 % 2 == 1 )); then run_snnet "$BASELINE" "$1" "$2" baseline.jsonl; fi
}
torch_side() {
    python3 tools/bench_torch.py --device cpu --batch "$BATCHES" --routes "$2" --threads "$THREADS" --json \
        | tag "$1" >>"$OUT/torch.jsonl"
}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
    for route in ${ROUTES//,/ }; do
        echo "round $round/$ROUNDS, route $route (load $(cut -d' ' -f1 /proc/loadavg))" >&2
        if (( round % 2 )); then
            snnet_side "$round" "$route"
            torch_side "$round" "$route"
        else
            torch_side "$round" "$route"
            snnet_side "$round" "$route"
        fi
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 tools/bench_compare.py "$OUT/snnet.jsonl" "$OUT/torch.jsonl" --map-device flex=cpu --markdown "$OUT/table.md"
if [ -n "$BASELINE" ]; then
    echo "baseline ($BASELINE) over PyTorch, the same rounds:"
    python3 tools/bench_compare.py "$OUT/baseline.jsonl" "$OUT/torch.jsonl" --map-device flex=cpu --markdown "$OUT/baseline-table.md"
fi
