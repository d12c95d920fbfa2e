"""Time each op class of one DeiT block in PyTorch (the counterpart of examples/profile_forward.rs).

Uses the modules of a random-weight timm deit_{tiny,small,base}_patch16_224 (block 0, the patch
embedding, the final norm and head) and runs the same ops as the Rust example, with the same row
names, in eval mode under torch.inference_mode(), f32, on the CPU.  Median wall time in ms of each op
(3 warm-up runs, then at least 5 runs and --min-ms in total).

    python3 tools/profile_ops.py --threads 2 --batch 1,8 --json > torch_ops.jsonl
    # side by side with snnet (RAYON_NUM_THREADS=2 target/release/examples/profile_forward --json > snnet_ops.jsonl):
    python3 tools/profile_ops.py --threads 2 --batch 1,8 --snnet snnet_ops.jsonl
    python3 tools/profile_ops.py --torch torch_ops.jsonl --snnet snnet_ops.jsonl   # table only, no timing

Only torch, timm and the standard library are needed.
"""
import argparse
import json
import statistics
import sys
import time

MODELS = {"ti": ("Ti", "deit_tiny_patch16_224"), "s": ("S", "deit_small_patch16_224"),
          "b": ("B", "deit_base_patch16_224")}


def timeit(fn, min_ms):
    for _ in range(3):
        fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < 5 or ((time.perf_counter() - start) * 1e3 < min_ms and len(samples) < 1000):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples), len(samples)


def profile(model_key, batch, min_ms, threads):
    import timm
    import torch
    import torch.nn.functional as F

    name, timm_name = MODELS[model_key]
    torch.manual_seed(0)
    model = timm.create_model(timm_name, pretrained=False).eval()
    blk = model.blocks[0]
    attn, mlp = blk.attn, blk.mlp
    c = model.embed_dim
    heads = attn.num_heads
    n = model.patch_embed.num_patches + 1
    d = c // heads
    scale = attn.scale
    b = batch
    images = torch.randn(b, 3, 224, 224)
    x = torch.randn(b, n, c)
    rows = []

    def rec(op, fn):
        ms, reps = timeit(fn, min_ms)
        rows.append({"impl": "pytorch", "model": name, "batch": b, "threads": threads, "op": op,
                     "ms": round(ms, 4), "repeats": reps})

    def embed(img):
        t = model.patch_embed(img)  # conv + flatten + transpose
        t = torch.cat((model.cls_token.expand(t.shape[0], -1, -1), t), dim=1)
        return t + model.pos_embed

    def split(qkv):
        qkv = qkv.reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def core(qkv):  # timm 0.6.13 Attention.forward between qkv and proj
        q, k, v = split(qkv)
        a = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
        return (a @ v).transpose(1, 2).reshape(b, n, c)

    def core_sdpa(qkv):
        q, k, v = split(qkv)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)

    with torch.inference_mode():
        rec("patch_embed.conv", lambda: model.patch_embed.proj(images))
        rec("embed.total", lambda: embed(images))
        rec("norm", lambda: blk.norm1(x))
        rec("attn.qkv", lambda: attn.qkv(x))
        qkv = attn.qkv(x)
        rec("attn.split", lambda: [t.contiguous() for t in split(qkv)])
        q, k, v = split(qkv)
        rec("attn.qk", lambda: (q @ k.transpose(-2, -1)) * scale)
        s = (q @ k.transpose(-2, -1)) * scale
        rec("attn.softmax", lambda: s.softmax(dim=-1))
        p = s.softmax(dim=-1)
        rec("attn.av", lambda: p @ v)
        o4 = p @ v
        rec("attn.merge", lambda: o4.transpose(1, 2).reshape(b, n, c))
        rec("attn.core", lambda: core(qkv))
        rec("attn.core_unfused", lambda: core(qkv))
        rec("attn.fused_sdpa", lambda: core_sdpa(qkv))
        merged = core(qkv)
        rec("attn.proj", lambda: attn.proj(merged))
        rec("attn.total", lambda: attn(x))
        rec("mlp.fc1", lambda: mlp.fc1(x))
        h = mlp.fc1(x)
        rec("mlp.gelu", lambda: mlp.act(h))
        rec("mlp.fc1+gelu", lambda: mlp.act(mlp.fc1(x)))
        g = mlp.act(h)
        rec("mlp.fc2", lambda: mlp.fc2(g))
        rec("mlp.total", lambda: mlp(x))
        y = mlp(x)
        rec("residual.add", lambda: x + y)
        rec("block.total", lambda: blk(x))
        rec("head", lambda: model.head(model.norm(x[:, 0])))
        rec("forward.total", lambda: model(images))
        x2 = x.reshape(b * n, c)
        w = attn.qkv.weight.t().contiguous()
        rec("gemm.2d", lambda: x2 @ w)
    return rows


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().startswith("{")]


def table(torch_rows, snnet_rows):
    key = lambda r: (r["model"], r["batch"])
    groups = []
    for r in torch_rows + snnet_rows:
        if key(r) not in groups:
            groups.append(key(r))
    for model, batch in groups:
        t = {r["op"]: r["ms"] for r in torch_rows if key(r) == (model, batch)}
        s = {r["op"]: r["ms"] for r in snnet_rows if key(r) == (model, batch)}
        ops = [r["op"] for r in snnet_rows if key(r) == (model, batch)] or list(t)
        ops += [op for op in t if op not in ops]
        print(f"\nDeiT-{model}, batch {batch}: median ms per op")
        print(f"| op | snnet | PyTorch | ratio |\n|---|---:|---:|---:|")
        for op in ops:
            a, b = s.get(op), t.get(op)
            ratio = f"{a / b:.2f}" if a is not None and b else ""
            fa = f"{a:.3f}" if a is not None else ""
            fb = f"{b:.3f}" if b is not None else ""
            print(f"| {op} | {fa} | {fb} | {ratio} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--models", default="ti,s,b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-ms", type=float, default=300.0)
    ap.add_argument("--json", action="store_true", help="print one JSON object per op")
    ap.add_argument("--snnet", help="snnet rows (examples/profile_forward --json) to print side by side")
    ap.add_argument("--torch", help="read PyTorch rows from this file instead of timing")
    args = ap.parse_args()

    if args.torch:
        rows = load(args.torch)
    else:
        import torch
        torch.set_num_threads(args.threads)
        rows = []
        for m in args.models.split(","):
            for b in (int(v) for v in args.batch.split(",")):
                rows += profile(m.strip().lower(), b, args.min_ms, args.threads)
    if args.json and not args.torch:
        for r in rows:
            print(json.dumps(r))
        sys.stdout.flush()
    if args.snnet:
        table(rows, load(args.snnet))
    elif not args.json:
        table(rows, [])


if __name__ == "__main__":
    main()
