"""Write tests/fixtures/resnet/: ResNet and ResNet->Swin parity fixtures (timm 0.6.13, the official forward).

Run from the repository root (CPU only, a few seconds):

    pip install -r tools/requirements.txt
    python3 tools/make_cnn_fixtures.py [--out DIR]

Mini anchors at 32x32 (stem 16x16, max pool 8x8, stage grids 8/4/2/1), 10 classes, every
parameter and BatchNorm running statistic replaced by seeded random values, eval mode:

* ``r18``: timm ``ResNet(BasicBlock, [2,2,2,2])`` with channels (4,8,16,32), stem 4;
* ``r50``: timm ``ResNet(Bottleneck, [3,4,6,3])`` with channels (4,8,16,32) (outputs 16..128), stem 8;
* ``swin``: timm ``SwinTransformer`` img 32, patch 4, window 2, embed 8, depths (2,2,6,2), heads (1,2,2,4),
  whose stage grids 8/4/2/1 match the ResNet's.

(timm 0.6.13 hard-codes ResNet channels [64,128,256,512] and a 64-wide stem; the script passes its own
through timm's ``make_blocks`` and swaps the stem and classifier, so every module is timm's.)

Stage-wise stitching of stages 1 and 2 as the official ``stitching_resnet_swin`` code enumerates it
(spec §4.2): R18->R50 10 routes, R18->Swin 8 routes; 1x1-convolution stitching layers with random
weights; for R18->Swin the stitched map is flattened to row-major tokens.

Files: ``r18_r50.json``, ``r18_swin.json`` (snnet descriptions); ``r18.safetensors`` and ``r18.pth``
(bare timm state dicts, BatchNorm buffers included); ``snnet_r18_r50.pth`` (the official training
script's checkpoint layout: ``{"state_dict", "epoch", "arch", "optimizer", ...}``, split-BN ``aux_bn``
copies included) and ``snnet_r18_swin.safetensors`` (its state dict alone); ``reference.safetensors``
(probe ``images`` [2,3,32,32], ``logits.r18_r50.{cfg}``, ``logits.r18_swin.{cfg}``; ``bn_train.*``: R18's
stem BatchNorm running statistics after one training-mode forward of ``images``);
``ls_r18_r50.safetensors`` (8 calibration ``images`` and the float64 least-squares init of every
stitching layer, averaged over its positions, official keys).
"""
import argparse
import json
import os
import sys
from collections import OrderedDict

import timm
import timm.models.resnet as timm_resnet
import torch
from safetensors.torch import save_file
from timm.models.swin_transformer import SwinTransformer
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snnet_torch as sn  # noqa: E402

assert torch.__version__.startswith("2.0.1"), torch.__version__
assert timm.__version__ == "0.6.13", timm.__version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "resnet")

IMG, CLASSES = 32, 10
R18 = dict(block="basic", layers=[2, 2, 2, 2], channels=[4, 8, 16, 32], stem_width=4)
R50 = dict(block="bottleneck", layers=[3, 4, 6, 3], channels=[4, 8, 16, 32], stem_width=8)
SWIN = dict(img_size=IMG, patch_size=4, in_chans=3, num_classes=CLASSES, window_size=2, embed_dim=8,
            depths=[2, 2, 6, 2], num_heads=[1, 2, 2, 4])
STAGES = [1, 2]
SEEDS = dict(r18=8000, r50=8001, swin=8002, stitch=8100, probe=8200, calib=8300)


def make_resnet(cfg, seed):
    block = timm_resnet.BasicBlock if cfg["block"] == "basic" else timm_resnet.Bottleneck
    original = timm_resnet.make_blocks
    stem = cfg["stem_width"]
    timm_resnet.make_blocks = lambda fn, channels, reps, inplanes, **kw: original(fn, cfg["channels"], reps, stem, **kw)
    try:
        model = timm_resnet.ResNet(block, cfg["layers"], num_classes=CLASSES)
    finally:
        timm_resnet.make_blocks = original
    model.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(stem)
    model.num_features = cfg["channels"][-1] * block.expansion
    model.fc = nn.Linear(model.num_features, CLASSES)
    return sn.randomize_module(model, seed)


def make_swin(seed):
    return sn.randomize_module(SwinTransformer(drop_path_rate=0.0, **SWIN), seed)


# --- Official enumeration (ResNet-family copy: stages 1, 2; paired skips k == 0) ---------------

def depths_of(a):
    return [len(l.blocks) for l in a.layers] if isinstance(a, SwinTransformer) else [len(getattr(a, f"layer{s + 1}")) for s in range(4)]


def enumerate_routes(anchors):
    routes = [dict(comb=(i,)) for i in range(len(anchors))]
    for s in STAGES:
        d0, d1 = depths_of(anchors[0])[s], depths_of(anchors[1])[s]
        if d0 == d1:
            cfgs, layers = [(i, i + 1) for i in range(d0 - 1)], list(range(d0 - 1))
        else:
            end_map = torch.nn.functional.interpolate(torch.arange(d0)[None, None, :].float(), d1).squeeze().long().tolist()
            cfgs = [(idx, i) for idx in range(d0) for i in range(d1) if end_map[i] == idx and idx < i and i != 0]
            layers = end_map[: len(cfgs)]
        for (j, k), layer in zip(cfgs, layers):
            routes.append(dict(comb=(0, 1), stage=s, pos=(j, k), layer=layer))
    return routes


# --- Official forward_until / forward_from -------------------------------------------------------

def resnet_stem(m, x):
    return m.maxpool(m.act1(m.bn1(m.conv1(x))))


def stage_blocks(m, s):
    return m.layers[s].blocks if isinstance(m, SwinTransformer) else getattr(m, f"layer{s + 1}")


def forward_until(m, x, s, j):
    x = resnet_stem(m, x)
    for t in range(s):
        x = stage_blocks(m, t)(x)
    for b in range(j + 1):
        x = stage_blocks(m, s)[b](x)
    return x


def forward_from(m, x, s, k):
    if isinstance(m, SwinTransformer):
        for blk in m.layers[s].blocks[k:]:
            x = blk(x)
        if m.layers[s].downsample is not None:
            x = m.layers[s].downsample(x)
        for t in range(s + 1, 4):
            x = m.layers[t](x)
        return m.head(m.norm(x).mean(dim=1))
    for blk in stage_blocks(m, s)[k:]:
        x = blk(x)
    for t in range(s + 1, 4):
        x = stage_blocks(m, t)(x)
    return m.forward_head(x)


def features(m, x):
    """{stage: {b: output of block b}} (front ResNet or end ResNet/Swin), as extract_stage_features."""
    out = {}
    if isinstance(m, SwinTransformer):
        x = m.patch_embed(x)
        for s, layer in enumerate(m.layers):
            out[s] = {-1: x}
            for b, blk in enumerate(layer.blocks):
                x = blk(x)
                out[s][b] = x
            if layer.downsample is not None:
                x = layer.downsample(x)
        return out
    x = resnet_stem(m, x)
    for s in range(4):
        out[s] = {-1: x}
        for b, blk in enumerate(stage_blocks(m, s)):
            x = blk(x)
            out[s][b] = x
    return out


def rows(t):
    return (t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]) if t.dim() == 4 else t.reshape(-1, t.shape[-1])).double()


def stitch_key(s, layer, what):
    return f"stitch_layers.{STAGES.index(s)}.0.{layer}.transform.{what}"


def build_family(anchors, seed):
    routes = enumerate_routes(anchors)
    gen = torch.Generator().manual_seed(seed)
    stitch = OrderedDict()
    for r in routes[2:]:
        key = (r["stage"], r["layer"])
        if key not in stitch:
            f = features(anchors[0], torch.zeros(1, 3, IMG, IMG))
            e = features(anchors[1], torch.zeros(1, 3, IMG, IMG))
            cin = f[r["stage"]][0].shape[1]
            cout = e[r["stage"]][0].shape[-1] if isinstance(anchors[1], SwinTransformer) else e[r["stage"]][0].shape[1]
            conv = nn.Conv2d(cin, cout, 1, 1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(cout, cin, 1, 1, generator=gen) / cin ** 0.5)
                conv.bias.copy_(0.1 * torch.randn(cout, generator=gen))
            stitch[key] = conv
    return routes, stitch


def route_logits(anchors, routes, stitch, images):
    out = []
    with torch.no_grad():
        for r in routes:
            if len(r["comb"]) == 1:
                out.append(anchors[r["comb"][0]](images))
                continue
            s, (j, k) = r["stage"], r["pos"]
            x = stitch[(s, r["layer"])](forward_until(anchors[0], images, s, j))
            if isinstance(anchors[1], SwinTransformer):
                x = x.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, H*W, C]
            out.append(forward_from(anchors[1], x, s, k))
    return out


def state(anchors, stitch):
    sd = OrderedDict()
    for i, m in enumerate(anchors):
        for k, v in m.state_dict().items():
            sd[f"anchors.{i}.{k}"] = v.detach().clone().contiguous()
    for (s, layer), conv in stitch.items():
        sd[stitch_key(s, layer, "weight")] = conv.weight.detach().clone()
        sd[stitch_key(s, layer, "bias")] = conv.bias.detach().clone()
    return sd


def with_split_bn(sd):
    """Adds the ``aux_bn.0`` copies timm's ``--split-bn`` training keeps next to every BatchNorm."""
    out = OrderedDict()
    for k, v in sd.items():
        out[k] = v
        if k.endswith("running_var"):
            base = k[: -len("running_var")]
            for part in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                out[f"{base}aux_bn.0.{part}"] = sd[base + part].clone()
    return out


def ls_init(anchors, routes, images):
    with torch.no_grad():
        f, e = features(anchors[0], images), features(anchors[1], images)
    groups = OrderedDict()
    for r in routes[2:]:
        groups.setdefault((r["stage"], r["layer"]), []).append(r["pos"])
    out = OrderedDict()
    for (s, layer), positions in groups.items():
        ws, bs = [], []
        for j, k in positions:
            w, b = sn.ps_inv(rows(f[s][j]), rows(e[s][k - 1]), dtype=torch.float64)
            ws.append(w)
            bs.append(b)
        w = torch.stack(ws).mean(0).float()
        out[stitch_key(s, layer, "weight")] = w.reshape(*w.shape, 1, 1).contiguous()
        out[stitch_key(s, layer, "bias")] = torch.stack(bs).mean(0).float().contiguous()
    return out


def description(parts):
    arch = []
    for p in parts:
        if p == "swin":
            arch.append(dict(arch="swin", drop_path_rate=0.0, **SWIN))
        else:
            cfg = R18 if p == "r18" else R50
            arch.append(dict(arch="resnet", in_chans=3, img_size=IMG, num_classes=CLASSES, drop_path_rate=0.0, **cfg))
    return {"anchors": arch}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)

    r18, r50, swin = make_resnet(R18, SEEDS["r18"]), make_resnet(R50, SEEDS["r50"]), make_swin(SEEDS["swin"])
    sd18 = OrderedDict((k, v.detach().clone().contiguous()) for k, v in r18.state_dict().items())
    save_file(dict(sd18), os.path.join(args.out, "r18.safetensors"))
    torch.save(sd18, os.path.join(args.out, "r18.pth"))

    images = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(SEEDS["probe"]))
    ref = OrderedDict(images=images)
    counts = {}
    for name, anchors in (("r18_r50", [r18, r50]), ("r18_swin", [r18, swin])):
        routes, stitch = build_family(anchors, SEEDS["stitch"])
        counts[name] = len(routes)
        for cfg_id, logits in enumerate(route_logits(anchors, routes, stitch, images)):
            ref[f"logits.{name}.{cfg_id}"] = logits.contiguous()
        sd = state(anchors, stitch)
        if name == "r18_r50":
            ckpt = {"state_dict": with_split_bn(sd), "epoch": 29, "arch": "snnet", "optimizer": {"state": {}, "param_groups": []},
                    "version": 2, "metric": 77.468}
            torch.save(ckpt, os.path.join(args.out, "snnet_r18_r50.pth"))
            calib = torch.randn(8, 3, IMG, IMG, generator=torch.Generator().manual_seed(SEEDS["calib"]))
            ls = ls_init(anchors, routes, calib)
            ls["images"] = calib
            save_file(dict(ls), os.path.join(args.out, "ls_r18_r50.safetensors"))
        else:
            save_file(dict(sd), os.path.join(args.out, "snnet_r18_swin.safetensors"))
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(description(name.split("_")), f, indent=1)
            f.write("\n")

    # One training-mode forward: batch statistics normalise, running statistics move (unbiased var).
    r18.train()
    with torch.no_grad():
        r18(images)
    ref["bn_train.running_mean"] = r18.bn1.running_mean.clone()
    ref["bn_train.running_var"] = r18.bn1.running_var.clone()
    save_file(dict(ref), os.path.join(args.out, "reference.safetensors"))
    print(f"routes: {counts}; files in {args.out}")


if __name__ == "__main__":
    main()
