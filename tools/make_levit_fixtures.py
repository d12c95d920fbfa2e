"""Write tests/fixtures/levit/: LeViT parity fixtures (timm 0.6.13 = the original LeViT layout, the official forward).

Run from the repository root (CPU only, a few seconds):

    pip install -r tools/requirements.txt
    pip install --no-deps --target /tmp/timm09 timm==0.9.16     # current timm's layout, optional
    python3 tools/make_levit_fixtures.py [--timm09 /tmp/timm09] [--out DIR]

Two timm 0.6.13 ``LevitDistilled`` anchors (img 112: token grids 7/4/2, key_dim 8, depth (4,4,4),
10 classes), every parameter and BatchNorm running statistic replaced by seeded random values,
eval mode: ``levit0`` widths (16,24,32), heads (2,3,4); ``levit1`` widths (24,32,48), heads (3,4,6).
Stitched as the official ``stitching_levit`` code does (spec §5.2): stages 0 and 1, paired
(0,1)(1,2)(2,3) with layers 0,1,2: 8 routes; stitching Linears random.

Files: ``mini_levit.json`` (the snnet description); ``levit0.safetensors`` (anchor 0, original
layout, buffers included); ``levit0_timm09.safetensors`` (anchor 0 as timm 0.9.16 stores it, loaded
there through timm's own ``checkpoint_filter_fn``; only with ``--timm09``); ``snnet_levit.pth`` (the
official training script's checkpoint: ``{"model", "optimizer", "lr_scheduler", "epoch", "scaler",
"args"}``); ``reference.safetensors`` (probe ``images`` [2,3,112,112], ``logits.route.{cfg}`` from the
official forward_until / stitch / forward_from written out below, ``logits.timm09``);
``ls_levit.safetensors`` (4 calibration ``images`` and the float64 least-squares init, official keys).
"""
import argparse
import json
import os
import sys
from collections import OrderedDict

import timm
import torch
from safetensors.torch import save_file
from timm.models.levit import LevitDistilled
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snnet_torch as sn  # noqa: E402

assert torch.__version__.startswith("2.0.1"), torch.__version__
assert timm.__version__ == "0.6.13", timm.__version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "levit")

COMMON = dict(img_size=112, patch_size=16, in_chans=3, num_classes=10, key_dim=8, depth=[4, 4, 4])
ANCHORS = [dict(embed_dim=[16, 24, 32], num_heads=[2, 3, 4]), dict(embed_dim=[24, 32, 48], num_heads=[3, 4, 6])]
STAGES = [0, 1]
SEEDS = dict(anchors=(9000, 9001), stitch=9100, probe=9200, calib=9300)


def build(cfg, seed):
    return sn.randomize_module(LevitDistilled(drop_path_rate=0.0, **cfg), seed)


def stage_start(s):
    return sum(2 * d + 2 for d in COMMON["depth"][:s])


def forward_until(m, x, s, j):
    x = m.patch_embed(x).flatten(2).transpose(1, 2)
    return m.blocks[: stage_start(s) + 2 * (j + 1)](x)


def forward_from(m, x, s, k):
    x = m.blocks[stage_start(s) + 2 * k:](x).mean(dim=1)
    return (m.head(x) + m.head_dist(x)) / 2


def block_features(m, x):
    """{stage: {b: output of block b's MLP residual}} (the official extract_block_features)."""
    x = m.patch_embed(x).flatten(2).transpose(1, 2)
    out = {}
    for s, depth in enumerate(COMMON["depth"]):
        out[s] = {}
        for b in range(depth):
            i = stage_start(s) + 2 * b
            x = m.blocks[i + 1](m.blocks[i](x))
            out[s][b] = x
        if s + 1 < len(COMMON["depth"]):
            i = stage_start(s) + 2 * depth
            x = m.blocks[i + 1](m.blocks[i](x))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--timm09", help="a directory with timm 0.9.16 installed (pip install --target)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)

    anchors = [build(dict(COMMON, **a), seed) for a, seed in zip(ANCHORS, SEEDS["anchors"])]
    sd0 = OrderedDict((k, v.detach().clone().contiguous()) for k, v in anchors[0].state_dict().items())
    save_file(dict(sd0), os.path.join(args.out, "levit0.safetensors"))

    routes = [dict(comb=(0,)), dict(comb=(1,))]
    for s in STAGES:
        for j in range(COMMON["depth"][s] - 1):
            routes.append(dict(comb=(0, 1), stage=s, pos=(j, j + 1), layer=j))
    gen = torch.Generator().manual_seed(SEEDS["stitch"])
    stitch = OrderedDict()
    for r in routes[2:]:
        cin, cout = ANCHORS[0]["embed_dim"][r["stage"]], ANCHORS[1]["embed_dim"][r["stage"]]
        lin = nn.Linear(cin, cout)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(cout, cin, generator=gen) / cin ** 0.5)
            lin.bias.copy_(0.1 * torch.randn(cout, generator=gen))
        stitch[(r["stage"], r["layer"])] = lin

    images = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(SEEDS["probe"]))
    ref = OrderedDict(images=images)
    with torch.no_grad():
        for cfg_id, r in enumerate(routes):
            if len(r["comb"]) == 1:
                logits = anchors[r["comb"][0]](images)
            else:
                s, (j, k) = r["stage"], r["pos"]
                x = stitch[(s, r["layer"])](forward_until(anchors[0], images, s, j))
                logits = forward_from(anchors[1], x, s, k)
            ref[f"logits.route.{cfg_id}"] = logits.contiguous()

    sd = OrderedDict()
    for i, m in enumerate(anchors):
        for k, v in m.state_dict().items():
            sd[f"anchors.{i}.{k}"] = v.detach().clone().contiguous()
    for (s, layer), lin in stitch.items():
        sd[f"stitch_layers.{s}.0.{layer}.transform.weight"] = lin.weight.detach().clone()
        sd[f"stitch_layers.{s}.0.{layer}.transform.bias"] = lin.bias.detach().clone()
    ckpt = {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {"base_lrs": [1e-4]},
            "epoch": 99, "scaler": {"scale": 65536.0}, "args": {"model": "snnet"}}
    torch.save(ckpt, os.path.join(args.out, "snnet_levit.pth"))

    calib = torch.randn(4, 3, 112, 112, generator=torch.Generator().manual_seed(SEEDS["calib"]))
    with torch.no_grad():
        front, end = block_features(anchors[0], calib), block_features(anchors[1], calib)
    ls = OrderedDict(images=calib)
    for r in routes[2:]:
        s, (j, k) = r["stage"], r["pos"]
        w, b = sn.ps_inv(front[s][j], end[s][k - 1], dtype=torch.float64)
        ls[f"stitch_layers.{s}.0.{r['layer']}.transform.weight"] = w.float().contiguous()
        ls[f"stitch_layers.{s}.0.{r['layer']}.transform.bias"] = b.float().contiguous()
    save_file(dict(ls), os.path.join(args.out, "ls_levit.safetensors"))

    ref_path = os.path.join(args.out, "reference.safetensors")
    save_file(dict(ref), ref_path)
    if args.timm09:
        ordered = os.path.join(args.out, "levit0.tmp.pth")  # safetensors sorts keys; timm's filter needs module order
        torch.save(sd0, ordered)
        cfg = {k: v for k, v in dict(COMMON, **ANCHORS[0]).items() if k != "patch_size"}  # 0.9 has no patch_size
        ref["logits.timm09"] = sn.convert_with_timm09(
            args.timm09, "levit", "LevitDistilled", cfg, ordered, ref_path, os.path.join(args.out, "levit0_timm09.safetensors"))
        os.remove(ordered)
        save_file(dict(ref), ref_path)
    with open(os.path.join(args.out, "mini_levit.json"), "w") as f:
        json.dump({"anchors": [dict(arch="levit", drop_path_rate=0.0, **COMMON, **a) for a in ANCHORS]}, f, indent=1)
        f.write("\n")
    print(f"{len(routes)} routes; files in {args.out}")


if __name__ == "__main__":
    main()
