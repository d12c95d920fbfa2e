#!/usr/bin/env bash
# Least-squares initialisation of the DeiT-Ti/S/B SN-Net from 100 images at 224×224, random weights:
# snnet (one feature pass per anchor, f64 normal equations) next to the official approach
# (per-pair feature extraction, one torch.linalg.pinv per position), measured in one run.
#
#   pip install -r tools/requirements.txt   # once
#   bash tools/compare_ls_init.sh [IMAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
images="${1:-100}"
cargo build --release --example deit_stitch
snnet=$(./target/release/examples/deit_stitch --images "$images" --ls-only 2>/dev/null | tail -n 1)
official=$(python3 tools/ls_init_official.py --images "$images" | tail -n 1)
python3 - "$snnet" "$official" <<'PY'
import json, sys
s, o = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{'implementation':<28} {'threads':>7} {'total s':>9} {'features s':>11} {'solve s':>9}")
for r in (s, o):
    print(f"{r['impl']:<28} {r['threads']:>7} {r['seconds_total']:>9.1f} {r['seconds_features']:>11.1f} {r['seconds_solve']:>9.1f}")
print(f"ratio snnet/official (total): {s['seconds_total'] / o['seconds_total']:.2f}")
PY
