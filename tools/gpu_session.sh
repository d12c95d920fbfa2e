#!/usr/bin/env bash
# One GPU session: every CUDA (and Vulkan) measurement of snnet and PyTorch, and the logits check
# against the CPU backend, in one run that builds nothing. Prints one table at the end.
#
# Prepare on the build machine (release binaries with the GPU backends, stripped, in .devbin/):
#   cargo build --release -p snnet-cli --features cuda,vulkan
#   mkdir -p .devbin && cp target/release/snnet .devbin/ && strip .devbin/snnet && gzip -f .devbin/snnet
# Run on the GPU machine from the repository root (RESULTS = folder for the results):
#   RESULTS=/tmp/snnet-gpu BUDGET_S=500 bash tools/gpu_session.sh
# Each step has its own time limit, cut so that the whole run ends within BUDGET_S seconds, and
# writes its results as soon as it ends, so a step that fails or runs long costs only itself.
set -u
OUT=${RESULTS:-/tmp/snnet-gpu}
DEADLINE=$((SECONDS + ${BUDGET_S:-500}))
BIN=${BIN:-.devbin}
ROUTES=${ROUTES:-0,1,2,24,56}
BATCHES=${BATCHES:-1,256}
ANCHORS=deit_tiny_patch16_224,deit_small_patch16_224,deit_base_patch16_224
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

step() { # name, limit in seconds, command...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS left=$((DEADLINE - SECONDS - 15))
    if [ "$left" -lt 10 ]; then echo "== $name skipped: out of time"; return; fi
    if [ "$limit" -gt "$left" ]; then limit=$left; fi
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" >"$OUT/$name.jsonl" 2>"$OUT/$name.log"
    local rc=$?
    echo "   rc=$rc in $((SECONDS - t0))s; $(wc -l <"$OUT/$name.jsonl") result lines"
    tail -n 3 "$OUT/$name.log" | sed 's/^/   | /'
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
"$BIN/snnet" --version

# 1. Logits of the CUDA backend against the CPU backend (same weights, same images).
step parity_cuda_f32 150 "$BIN/snnet" --anchors $ANCHORS --device cuda --dtype f32 parity --routes "$ROUTES"
step parity_cuda_bf16 120 "$BIN/snnet" --anchors $ANCHORS --device cuda --dtype bf16 parity --routes "$ROUTES"
# SN-Netv2: the two-way DeiT3-S/B network with rank-64 LoRA stitching layers (unmerged, as trained).
step parity_v2_cuda_f32 120 "$BIN/snnet" --anchors deit3_small_patch16_224,deit3_base_patch16_224 --two-way --lora-rank 64 \
    --device cuda --dtype f32 parity --routes 0,1,2,16,40,100

# 2. snnet on CUDA, f32 (burn runs f32 matmuls as TF32) and bf16.
for dtype in f32 bf16; do
    step "snnet_cuda_$dtype" 150 "$BIN/snnet" --anchors $ANCHORS --device cuda --dtype $dtype \
        bench --routes "$ROUTES" --batch "$BATCHES" --min-seconds 0.3 --json
done

# 3. PyTorch on CUDA: f32 with TF32 off (PyTorch's default) and on, and bf16.
step torch_cuda_f32_tf32off 120 python3 tools/bench_torch.py --device cuda --dtype f32 --tf32 off --batch "$BATCHES" --routes "$ROUTES" --min-time 0.3 --json
step torch_cuda_f32_tf32on 90 python3 tools/bench_torch.py --device cuda --dtype f32 --tf32 on --batch "$BATCHES" --routes "$ROUTES" --min-time 0.3 --json
step torch_cuda_bf16 90 python3 tools/bench_torch.py --device cuda --dtype bf16 --batch "$BATCHES" --routes "$ROUTES" --min-time 0.3 --json

# 4. Vulkan through wgpu, when the loader was carried (.gl) and unpacked by the caller.
if ldconfig -p | grep -q libvulkan; then
    step parity_vulkan_f32 120 "$BIN/snnet" --anchors $ANCHORS --device vulkan --dtype f32 parity --routes "$ROUTES"
    step snnet_vulkan_f32 150 "$BIN/snnet" --anchors $ANCHORS --device vulkan --dtype f32 \
        bench --routes "$ROUTES" --batch "$BATCHES" --min-seconds 0.3 --json
else
    echo "== vulkan skipped: no libvulkan"
fi

# 5. Training on CUDA (issue 18): the main job's network and recipe (a random route per step, batch
# 128, one peer), snnet against PyTorch on the same data, median step after 5 warm-up steps.
step train_snnet_cuda 150 bash -c '"$0" --device cuda --config assets/fashion-mnist/family.json train --data assets/fashion-mnist \
    --batch 128 --max-steps 45 --drop-path 0.1 --no-augment --output "$1/train-w.safetensors" 2>&1 | grep "\"impl\":\"snnet\""' "$BIN/snnet" "$OUT"
step train_torch_cuda 120 python3 tools/train_torch.py --device cuda --batch 128 --warmup 5 --steps 40 --data assets/fashion-mnist

# 6. The table.
cat "$OUT"/parity_*.jsonl >"$OUT/parity.jsonl" 2>/dev/null
cat "$OUT"/snnet_*.jsonl >"$OUT/snnet.jsonl" 2>/dev/null
cat "$OUT"/torch_*.jsonl >"$OUT/torch.jsonl" 2>/dev/null
python3 tools/bench_compare.py "$OUT/snnet.jsonl" "$OUT/torch.jsonl" --markdown "$OUT/table.md"
python3 - "$OUT"/parity_*.jsonl <<'EOF'
import json, os, sys
print("\n| parity vs flex | step | dtype | route | rel L2 | max abs / max logit |\n|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    step = os.path.basename(path)[: -len(".jsonl")]
    for r in (json.loads(l) for l in open(path) if l.strip()):
        print(f"| {r['device']} | {step} | {r['dtype']} | {r['cfg_id']} | {r['rel_l2']:.2e} | {r['max_abs_over_max_logit']:.2e} |")
EOF
python3 - "$OUT/train_snnet_cuda.jsonl" "$OUT/train_torch_cuda.jsonl" <<'EOF'
import json, sys
def median(path):
    try:
        return json.loads(open(path).read().strip().splitlines()[-1])["step_ms_median"]
    except Exception:
        return None
ours, theirs = median(sys.argv[1]), median(sys.argv[2])
print("\n| training step on CUDA (Fashion-MNIST demo SN-Net, batch 128) | snnet ms | PyTorch ms | ratio |\n|---|---|---|---|")
ratio = f"{ours / theirs:.2f}" if ours and theirs else "-"
print(f"| median of 40 steps | {ours} | {theirs} | {ratio} |")
EOF
