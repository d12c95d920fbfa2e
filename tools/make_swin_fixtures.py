"""Write tests/fixtures/swin/: Swin Transformer parity fixtures (timm 0.6.13 and the official SN-Net Swin forward).

Run from the repository root (CPU only, a few seconds):

    pip install -r tools/requirements.txt
    pip install --no-deps --target /tmp/timm09 timm==0.9.16     # current timm's layout, optional
    python3 tools/make_swin_fixtures.py [--timm09 /tmp/timm09] [--out DIR]

The mini family: three timm 0.6.13 ``SwinTransformer`` anchors (img 32, patch 2, 3 channels,
10 classes, window 2, 4 stages: grids 16/8/4/2; stage 3's grid equals the window, so its
shift is disabled), every parameter replaced by seeded random values, eval mode:

* anchor 0: embed 8, depths (2,2,2,2), heads (1,2,2,4)
* anchor 1: embed 8, depths (2,2,4,2), heads (1,2,2,4)
* anchor 2: embed 12, depths (2,2,4,2), heads (1,2,3,6)

Stage-wise stitching of stages 0-2 as the official Swin SN-Net enumerates it (spec §3.2):
2 + 2 + (3 unpaired 2->4) + (3 paired 4) = 9 stitched routes, 13 in all.  Plus one lone anchor
with the usual window 7 (img 28, patch 2, embed 8, depths (2,2), heads (2,2): grid 14 with
shift 3 and masks, then grid 7 = window, unshifted).

Files:

* ``mini_swin.json``            - the snnet description of the SN-Net.
* ``swin0.safetensors``         - anchor 0 alone, timm 0.6 / official layout (float32, buffers included).
* ``swin_w7.safetensors``       - the window-7 anchor; ``swin_w7.json`` its description.
* ``swin0_timm09.safetensors``  - anchor 0 as timm 0.9.16 stores it (loaded there through timm's own
  ``checkpoint_filter_fn``); only with ``--timm09``.
* ``snnet_swin.safetensors``    - the whole SN-Net under the official keys (``anchors.{a}.*``,
  ``stitch_layers.{stage}.{pair}.{layer}.transform.*``), stitching layers random.
* ``snnet_swin.pth``            - the same state dict as the official Swin training script saves it:
  ``{"model", "optimizer", "lr_scheduler", "max_accuracy", "scaler", "epoch", "config"}``, the config a
  pickled yacs ``CfgNode`` (yacs 0.1.8).
* ``ls_swin.safetensors``       - 8 calibration ``images`` [8,3,32,32] and the least-squares init of
  every stitching layer (spec §1.4: features of the front block j and of the end block k-1, ps_inv
  solved in float64, averaged over the layer's positions), official keys.
* ``reference.safetensors``     - probe ``images`` [2,3,32,32], ``logits.route.{cfg_id}`` of every
  route (the official forward_until / stitch / forward_from, written out below), ``images_w7``
  [2,3,28,28] and ``logits.w7``; ``logits.timm09`` from timm 0.9.16 when made.
"""
import argparse
import json
import os
import sys
from collections import OrderedDict

import timm
import torch
from safetensors.torch import save_file
from timm.models.swin_transformer import SwinTransformer
from torch import nn
from yacs.config import CfgNode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snnet_torch as sn  # noqa: E402

assert torch.__version__.startswith("2.0.1"), torch.__version__
assert timm.__version__ == "0.6.13", timm.__version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "swin")

COMMON = dict(img_size=32, patch_size=2, in_chans=3, num_classes=10, window_size=2)
ANCHORS = [
    dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4]),
    dict(embed_dim=8, depths=[2, 2, 4, 2], num_heads=[1, 2, 2, 4]),
    dict(embed_dim=12, depths=[2, 2, 4, 2], num_heads=[1, 2, 3, 6]),
]
W7 = dict(img_size=28, patch_size=2, in_chans=3, num_classes=10, window_size=7, embed_dim=8, depths=[2, 2], num_heads=[2, 2])
STITCHED_STAGES = [0, 1, 2]
SEED_ANCHOR = (7000, 7001, 7002)
SEED_W7 = 7100
SEED_STITCH = 7200
SEED_PROBE = 7300
SEED_CALIB = 7400


def build(cfg, seed):
    return sn.randomize_module(SwinTransformer(drop_path_rate=0.0, **cfg), seed)


def state_dict(model):
    return OrderedDict((k, v.detach().contiguous().clone()) for k, v in model.state_dict().items())


# --- The official Swin SN-Net enumeration (spec §1.2 b-d, §3.2) --------------------------------

def paired_forward(depth):
    """Hierarchical paired_stitching(depth, 2, 1): pairs (i, i+1), layer i."""
    return [(i, i + 1) for i in range(depth - 1)], list(range(depth - 1))


def unpaired(d, big):
    end_map = torch.nn.functional.interpolate(torch.arange(d)[None, None, :].float(), big).squeeze().long().tolist()
    cfgs = [(idx, i) for idx in range(d) for i in range(big) if end_map[i] == idx and idx < i]
    return cfgs, end_map[: len(cfgs)]  # positional zip (spec §9 B2)


def enumerate_routes(anchors):
    routes = [dict(comb=(a,)) for a in range(len(anchors))]
    for s in STITCHED_STAGES:
        for i in range(1, len(anchors)):
            d0, d1 = ANCHORS[i - 1]["depths"][s], ANCHORS[i]["depths"][s]
            cfgs, layers = paired_forward(d0) if d0 == d1 else unpaired(d0, d1)
            for (j, k), layer in zip(cfgs, layers):
                routes.append(dict(comb=(i - 1, i), stage=s, pos=(j, k), layer=layer))
    return routes


def stitch_dims(anchors, s, i):
    dim = lambda a: anchors[a].layers[s].blocks[0].norm1.normalized_shape[0]
    return dim(i - 1), dim(i)


# --- The official stitched forward (stitching_swin/models/swin_transformer.py), written out ----

def forward_until(m, x, s, j):
    x = m.pos_drop(m.patch_embed(x))
    for t in range(s):
        x = m.layers[t](x)  # blocks and the stage's patch merging
    for b in range(j + 1):
        x = m.layers[s].blocks[b](x)
    return x


def forward_from(m, x, s, k):
    for blk in m.layers[s].blocks[k:]:
        x = blk(x)
    if m.layers[s].downsample is not None:
        x = m.layers[s].downsample(x)
    for t in range(s + 1, len(m.layers)):
        x = m.layers[t](x)
    x = m.norm(x)
    return m.head(x.mean(dim=1))


def block_features(m, x):
    """{stage: {-1: stage input, b: output of block b}} (the official extract_block_features)."""
    feats = {}
    x = m.pos_drop(m.patch_embed(x))
    for s, layer in enumerate(m.layers):
        feats[s] = {-1: x}
        for b, blk in enumerate(layer.blocks):
            x = blk(x)
            feats[s][b] = x
        if layer.downsample is not None:
            x = layer.downsample(x)
    return feats


def ls_init(anchors, routes, images):
    """Least squares per stitching layer, averaged over its positions, in float64."""
    with torch.no_grad():
        feats = [block_features(m, images) for m in anchors]
    positions = OrderedDict()
    for r in routes:
        if len(r["comb"]) == 2:
            positions.setdefault((r["stage"], r["comb"][0], r["layer"]), []).append(r["pos"])
    out = OrderedDict()
    for (s, a, layer), pos in positions.items():
        ws, bs = [], []
        for j, k in pos:
            w, b = sn.ps_inv(feats[a][s][j], feats[a + 1][s][k - 1], dtype=torch.float64)
            ws.append(w)
            bs.append(b)
        key = f"stitch_layers.{STITCHED_STAGES.index(s)}.{a}.{layer}.transform"
        out[key + ".weight"] = torch.stack(ws).mean(0).float().contiguous()
        out[key + ".bias"] = torch.stack(bs).mean(0).float().contiguous()
    return out


def description(cfgs):
    return {"anchors": [dict(arch="swin", drop_path_rate=0.0, **c) for c in cfgs]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--timm09", help="a directory with timm 0.9.16 installed (pip install --target)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)

    anchors = [build(dict(COMMON, **a), seed) for a, seed in zip(ANCHORS, SEED_ANCHOR)]
    save_file(state_dict(anchors[0]), os.path.join(args.out, "swin0.safetensors"))

    routes = enumerate_routes(anchors)
    gen = torch.Generator().manual_seed(SEED_STITCH)
    stitch = {}
    for r in routes:
        if len(r["comb"]) == 1:
            continue
        key = (r["stage"], r["comb"][0], r["layer"])
        if key not in stitch:
            cin, cout = stitch_dims(anchors, r["stage"], r["comb"][1])
            lin = nn.Linear(cin, cout)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(cout, cin, generator=gen) / cin ** 0.5)
                lin.bias.copy_(0.1 * torch.randn(cout, generator=gen))
            stitch[key] = lin
    full = OrderedDict()
    for i, m in enumerate(anchors):
        for k, v in state_dict(m).items():
            full[f"anchors.{i}.{k}"] = v
    for (s, pair, layer), lin in sorted(stitch.items()):
        stage_key = STITCHED_STAGES.index(s)
        full[f"stitch_layers.{stage_key}.{pair}.{layer}.transform.weight"] = lin.weight.detach().clone()
        full[f"stitch_layers.{stage_key}.{pair}.{layer}.transform.bias"] = lin.bias.detach().clone()
    save_file(full, os.path.join(args.out, "snnet_swin.safetensors"))
    config = CfgNode({"MODEL": CfgNode({"TYPE": "snnet", "DROP_PATH_RATE": 0.2}), "TRAIN": CfgNode({"EPOCHS": 50, "BASE_LR": 1e-3})})
    ckpt = {"model": full, "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {"base_lrs": [1e-3]},
            "max_accuracy": 84.21, "scaler": {"scale": 65536.0}, "epoch": 49, "config": config}
    torch.save(ckpt, os.path.join(args.out, "snnet_swin.pth"))

    gen = torch.Generator().manual_seed(SEED_PROBE)
    images = torch.randn(2, 3, 32, 32, generator=gen)
    images_w7 = torch.randn(2, 3, 28, 28, generator=gen)
    ref = OrderedDict(images=images, images_w7=images_w7)
    with torch.no_grad():
        for cfg_id, r in enumerate(routes):
            if len(r["comb"]) == 1:
                logits = anchors[r["comb"][0]](images)
            else:
                (a, b), s, (j, k) = r["comb"], r["stage"], r["pos"]
                x = forward_until(anchors[a], images, s, j)
                x = stitch[(s, a, r["layer"])](x)
                logits = forward_from(anchors[b], x, s, k)
            ref[f"logits.route.{cfg_id}"] = logits.contiguous()
        w7 = build(W7, SEED_W7)
        save_file(state_dict(w7), os.path.join(args.out, "swin_w7.safetensors"))
        assert w7.layers[0].blocks[1].shift_size == 3 and w7.layers[1].blocks[1].shift_size == 0
        ref["logits.w7"] = w7(images_w7).contiguous()
    calib = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(SEED_CALIB))
    ls = ls_init(anchors, routes, calib)
    ls["images"] = calib
    save_file(dict(ls), os.path.join(args.out, "ls_swin.safetensors"))
    ref_path = os.path.join(args.out, "reference.safetensors")
    save_file(dict(ref), ref_path)
    if args.timm09:
        ordered = os.path.join(args.out, "swin0.tmp.pth")  # safetensors sorts keys; timm's filter needs module order
        torch.save(state_dict(anchors[0]), ordered)
        ref["logits.timm09"] = sn.convert_with_timm09(
            args.timm09, "swin_transformer", "SwinTransformer", dict(COMMON, **ANCHORS[0]), ordered, ref_path,
            os.path.join(args.out, "swin0_timm09.safetensors"))
        os.remove(ordered)
        save_file(dict(ref), ref_path)

    with open(os.path.join(args.out, "mini_swin.json"), "w") as f:
        json.dump(description([dict(COMMON, **a) for a in ANCHORS]), f, indent=1)
        f.write("\n")
    with open(os.path.join(args.out, "swin_w7.json"), "w") as f:
        json.dump(description([W7]), f, indent=1)
        f.write("\n")
    routes_json = [dict(cfg_id=i, **{k: list(v) if isinstance(v, tuple) else v for k, v in r.items()}) for i, r in enumerate(routes)]
    with open(os.path.join(args.out, "routes.json"), "w") as f:
        json.dump(routes_json, f, indent=1)
        f.write("\n")
    print(f"{len(routes)} routes; files in {args.out}")


if __name__ == "__main__":
    main()
