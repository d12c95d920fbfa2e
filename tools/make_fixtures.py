"""Write tests/fixtures/import/: weight-import and numerical-parity fixtures (timm / official SN-Net).

Run from the repository root (CPU only, a few seconds):

    pip install -r tools/requirements.txt
    python3 tools/make_fixtures.py                        # writes tests/fixtures/import/
    python3 tools/make_fixtures.py --out DIR              # elsewhere
    python3 tools/make_fixtures.py --full-size /tmp/fullsize   # full-size DeiT-S files (not committed)

The mini family: three timm 0.6.13 ``VisionTransformer`` anchors built by
``snnet_torch.make_vit`` (img 32, patch 8, 3 channels, 10 classes, depth 4, mlp_ratio 4,
qkv_bias, LayerNorm eps 1e-6, class token) of widths 16/24/32 with 2/3/4 heads, every parameter
replaced by seeded random values (see ``randomize_vit``), eval mode.  Anchor 0 is stored in
float32, anchor 1 in float16, anchor 2 in bfloat16; the rounding to the stored dtype is part of
the weights: every reference below uses the stored weights cast back to float32.

Files (see tests/fixtures/import/README.md, which this script also writes):

* ``mini_vit.json``                         - the snnet description of the SN-Net.
* ``vit0.safetensors``, ``vit0.pth`` (bare state dict), ``vit0_legacy.pth`` (pre-1.6 format)
* ``vit1.safetensors`` (f16), ``vit1.pth`` (``{"model": sd}``, f16)
* ``vit2.safetensors`` (bf16), ``vit2.pth`` (``{"model": sd, "epoch": 7}``, bf16)
* ``vit_reference.safetensors``             - probe ``images`` [4,3,32,32], ``logits.{0,1,2}``.
* ``snnet_official.pth``                    - official DeiT training-script checkpoint layout.
* ``snnet_official.safetensors``            - its ``"model"`` state dict.
* ``snnet_routes.safetensors``              - ``images`` and ``logits.{cfg_id}`` of every route.
* ``calibration.safetensors``               - 16 calibration images + the official float32 LS init.
* ``calibration_f64.safetensors``           - the same LS init solved in float64.

Deterministic: one thread, fixed seeds, a ``torch.Generator`` per purpose.  All files except
``vit0_legacy.pth`` are byte-identical between runs (the legacy format names storages by their
memory address).  Versions are asserted (torch 2.0.1, timm 0.6.13, numpy 1.26.4,
safetensors 0.8.0).
"""
import argparse
import copy
import json
import os
import struct
import sys
from collections import OrderedDict

import numpy
import safetensors
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snnet_torch as sn  # noqa: E402

assert torch.__version__.startswith("2.0.1"), torch.__version__
assert timm.__version__ == "0.6.13", timm.__version__
assert numpy.__version__ == "1.26.4", numpy.__version__
assert safetensors.__version__ == "0.8.0", safetensors.__version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "import")

KERNEL_SIZE, STRIDE, NEAREST = 2, 1, True
WIDTHS, HEADS = (16, 24, 32), (2, 3, 4)
STORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SEED_ANCHOR = (1000, 1001, 1002)  # per-anchor weight generators
SEED_STITCH = 2000
SEED_PROBE = 3000                 # probe images [4,3,32,32]
SEED_CALIB = 4000                 # calibration images [16,3,32,32]
SEED_TRAIN = 5000                 # the dummy optimisation step
N_PROBE, N_CALIB = 4, 16

# Per-kind weight std = gain / sqrt(fan_in); chosen so the residual stream, attention logits and
# the class logits are O(1) (stds 0.04..0.18 for these widths).
GAINS = {
    "patch_embed.proj": 1.0,
    "attn.qkv": 1.0,
    "attn.proj": 0.7,
    "mlp.fc1": 1.0,
    "mlp.fc2": 0.7,
    "head": 1.5,
}
BIAS_STD = 0.1


def anchor_cfg(i):
    return {
        "arch": "vit", "img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": WIDTHS[i],
        "depth": 4, "num_heads": HEADS[i], "num_classes": 10,
    }


def full_cfg(a):
    return dict(a, mlp_ratio=4.0, qkv_bias=True)


def randomize_vit(vit, gen):
    """Replace every parameter of a timm ViT with seeded random values (none zero, none one)."""
    with torch.no_grad():
        for name, p in vit.named_parameters():
            def randn(std):
                return torch.randn(p.shape, generator=gen) * std

            if name in ("cls_token", "pos_embed"):
                p.copy_(randn(0.1))
            elif name.startswith("norm") or ".norm" in name:
                p.copy_(1.0 + randn(0.1) if name.endswith("weight") else randn(0.1))
            elif name.endswith("bias"):
                p.copy_(randn(BIAS_STD))
            else:
                kind = next(k for k in GAINS if name.startswith(k) or ("." + k) in name)
                fan_in = p[0].numel()
                p.copy_(randn(GAINS[kind] / fan_in ** 0.5))


def state_dict_as(model, dtype):
    return OrderedDict((k, v.detach().to(dtype).contiguous().clone()) for k, v in model.state_dict().items())


def build_anchors():
    """Random anchors with their weights rounded to the stored dtype; returns (models, stored sds)."""
    models, stored = [], []
    for i in range(3):
        vit = sn.make_vit(full_cfg(anchor_cfg(i)))
        gen = torch.Generator().manual_seed(SEED_ANCHOR[i])
        randomize_vit(vit, gen)
        sd = state_dict_as(vit, STORE_DTYPES[i])
        vit.load_state_dict(OrderedDict((k, v.float()) for k, v in sd.items()))
        models.append(vit.eval())
        stored.append(sd)
    return models, stored


def official_args():
    """A realistic subset of the official stitching_deit main.py / config arguments."""
    return argparse.Namespace(
        config="config/deit_stitching.json", model="snnet",
        anchors=["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"],
        batch_size=128, epochs=50, input_size=224, data_path="/home/datasets/imagenet",
        data_set="IMNET", exp_name="stitch_deit_ti_s_b", num_workers=10, pin_mem=True,
        drop=0.0, drop_path=0.1, model_ema=False,
        opt="adamw", opt_eps=1e-8, opt_betas=None, clip_grad=None, momentum=0.9, weight_decay=0.05,
        sched="cosine", lr=1e-4, lr_noise=None, lr_noise_pct=0.67, lr_noise_std=1.0,
        warmup_lr=1e-7, min_lr=1e-6, decay_epochs=30, warmup_epochs=5, cooldown_epochs=10,
        patience_epochs=10, decay_rate=0.1,
        color_jitter=0.4, aa="rand-m9-mstd0.5-inc1", smoothing=0.1, train_interpolation="bicubic",
        repeated_aug=True, reprob=0.25, remode="pixel", recount=1, resplit=False,
        mixup=0.8, cutmix=1.0, cutmix_minmax=None, mixup_prob=1.0, mixup_switch_prob=0.5,
        mixup_mode="batch",
        teacher_model="regnety_160", teacher_path="", distillation_type="hard",
        distillation_alpha=0.5, distillation_tau=1.0,
        fulltune=False, ls_init=True, nearest_stitching=NEAREST, stitch_stride=STRIDE,
        stitch_kernel_size=KERNEL_SIZE, stitch_init_bs=100,
        output_dir="outputs/stitch_deit_ti_s_b", device="cuda", seed=0, resume="", start_epoch=0,
        eval=False, dist_eval=True, world_size=8, dist_url="env://", rank=0, gpu=0,
        distributed=True, dist_backend="nccl",
    )


def training_state(model, args):
    """optimizer / lr_scheduler / scaler state dicts as the official loop leaves them at epoch 2.

    Works on a deep copy (the saved "model" is the untouched one).  ``fulltune false`` as in the
    official option: only parameters whose name contains ``stitch_layers`` or ``cls`` train, so
    the optimizer state stays small.  One real AdamW step on the summed cross-entropy of every
    route (so every trainable parameter has exp_avg / exp_avg_sq), then lr_scheduler.step(epoch)
    for epochs 0..2.
    """
    from timm.optim import create_optimizer
    from timm.scheduler import create_scheduler

    train = copy.deepcopy(model)
    for name, p in train.named_parameters():
        p.requires_grad_(args.fulltune or "stitch_layers" in name or "cls" in name)
    optimizer = create_optimizer(args, train)
    lr_scheduler, _ = create_scheduler(args, optimizer)
    gen = torch.Generator().manual_seed(SEED_TRAIN)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (2,), generator=gen)
    train.train()
    loss = sum(nn.functional.cross_entropy(train.select(c["cfg_id"])(x), y) for c in train.configs)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for epoch in range(3):
        lr_scheduler.step(epoch)
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
              "growth_interval": 2000, "_growth_tracker": 0}
    return optimizer.state_dict(), lr_scheduler.state_dict(), scaler


def build_snnet(anchors):
    model = sn.SNNetDeiT(anchors, KERNEL_SIZE, STRIDE, NEAREST)
    gen = torch.Generator().manual_seed(SEED_STITCH)
    with torch.no_grad():
        for pair in model.stitch_layers:
            for layer in pair:
                w = layer.transform.weight
                w.copy_(torch.randn(w.shape, generator=gen) / w.shape[1] ** 0.5)
                layer.transform.bias.copy_(torch.randn(layer.transform.bias.shape, generator=gen) * 0.1)
    return model.eval()


def stitch_key(pair, layer, what):
    return "stitch_layers.%d.%d.transform.%s" % (pair, layer, what)


def save_st(tensors, path, metadata=None):
    """safetensors.torch.save_file, then the header's ``__metadata__`` keys sorted.

    safetensors writes ``__metadata__`` in hash-map order (different on every run); the header
    is re-serialised in the same compact form with sorted metadata and padded with spaces to
    its original length, so the data offsets and the file size do not change.
    """
    save_file(tensors, path, metadata=metadata)
    if not metadata:
        return
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n), object_pairs_hook=OrderedDict)
        header["__metadata__"] = OrderedDict(sorted(header["__metadata__"].items()))
        header.move_to_end("__metadata__", last=False)
        text = json.dumps(header, separators=(",", ":")).encode()
        assert len(text) <= n, (len(text), n)
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def meta(d):
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in d.items()}


def write_mini(out):
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    info = {}

    desc = {"anchors": [anchor_cfg(i) for i in range(3)],
            "space": {"kernel_size": KERNEL_SIZE, "stride": STRIDE, "nearest_stitching": NEAREST}}
    with open(os.path.join(out, "mini_vit.json"), "w") as f:
        f.write(json.dumps(desc, indent=2) + "\n")

    anchors, stored = build_anchors()

    # ---- anchor files -------------------------------------------------------------------------
    save_st(stored[0], os.path.join(out, "vit0.safetensors"))
    torch.save(stored[0], os.path.join(out, "vit0.pth"))
    torch.save(stored[0], os.path.join(out, "vit0_legacy.pth"), _use_new_zipfile_serialization=False)
    save_st(stored[1], os.path.join(out, "vit1.safetensors"))
    torch.save({"model": stored[1]}, os.path.join(out, "vit1.pth"))
    save_st(stored[2], os.path.join(out, "vit2.safetensors"))
    torch.save({"model": stored[2], "epoch": 7}, os.path.join(out, "vit2.pth"))

    probe = torch.randn(N_PROBE, 3, 32, 32, generator=torch.Generator().manual_seed(SEED_PROBE))
    with torch.no_grad():
        anchor_logits = [a(probe) for a in anchors]
    ref = {"images": probe.contiguous()}
    for i, lg in enumerate(anchor_logits):
        ref["logits.%d" % i] = lg.contiguous()
    save_st(ref, os.path.join(out, "vit_reference.safetensors"),
              metadata=meta({"stored_dtypes": ["float32", "float16", "bfloat16"],
                             "note": "timm forward in eval mode, float32, stored weights upcast"}))
    info["anchor_logits"] = anchor_logits

    # ---- SN-Net checkpoint and every route ----------------------------------------------------
    model = build_snnet(anchors)
    model_sd = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    args = official_args()
    optimizer_sd, sched_sd, scaler_sd = training_state(model, args)
    torch.save({"model": model_sd, "optimizer": optimizer_sd, "lr_scheduler": sched_sd,
                "epoch": 2, "scaler": scaler_sd, "args": args},
               os.path.join(out, "snnet_official.pth"))
    save_st(model_sd, os.path.join(out, "snnet_official.safetensors"))

    routes = {"images": probe.contiguous()}
    with torch.no_grad():
        for cfg in model.configs:
            routes["logits.%d" % cfg["cfg_id"]] = model.select(cfg["cfg_id"])(probe).contiguous()
    space_meta = {"num_routes": str(len(model.configs)), "kernel_size": str(KERNEL_SIZE),
                  "stride": str(STRIDE), "nearest_stitching": json.dumps(NEAREST),
                  "configs": json.dumps(model.configs, separators=(",", ":")),
                  "note": "SNNetDeiT forward; stitched routes skip the final LayerNorm"}
    save_st(routes, os.path.join(out, "snnet_routes.safetensors"), metadata=space_meta)
    info["routes"] = routes
    info["configs"] = model.configs

    # ---- calibration batch and the official LS init -------------------------------------------
    calib = torch.randn(N_CALIB, 3, 32, 32, generator=torch.Generator().manual_seed(SEED_CALIB))
    groups = sn.ls_init_positions(model.configs)
    calib_meta = {"positions": json.dumps({str(l): [list(p) for p in ps] for l, ps in groups.items()}),
                  "pairs": json.dumps(["%d-%d" % p for p in model.pairs]),
                  "rows": str(N_CALIB * 17), "anchors_mode": "eval"}
    for dtype, name in ((torch.float32, "calibration.safetensors"),
                        (torch.float64, "calibration_f64.safetensors")):
        sol = sn.ls_init_solutions(model, calib, dtype)
        tensors = {"images": calib.contiguous()}
        for (pair, layer), (w, b) in sol.items():
            tensors[stitch_key(pair, layer, "weight")] = w.contiguous()
            tensors[stitch_key(pair, layer, "bias")] = b.contiguous()
        save_st(tensors, os.path.join(out, name),
                  metadata=meta(dict(calib_meta, pinv_dtype=str(dtype).replace("torch.", ""))))
    info["cond"] = conditioning(model, calib)
    return info


def conditioning(model, calib):
    """Largest condition number of [X, 1] over the front features used by the LS init."""
    worst = 0.0
    with torch.no_grad():
        for front, _ in model.pairs:
            feats = sn.extract_block_features(model.anchors[front], calib)
            for j in range(model.depth):
                x = feats[j].reshape(-1, feats[j].shape[-1]).double()
                xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
                s = torch.linalg.svdvals(xa)
                worst = max(worst, float(s[0] / s[-1]))
    return worst


# ---- verification ------------------------------------------------------------------------------
def verify_mini(out, info):
    p = lambda n: os.path.join(out, n)  # noqa: E731
    anchors_again = []
    for i, (st, pth, wrap) in enumerate((("vit0.safetensors", "vit0.pth", None),
                                        ("vit1.safetensors", "vit1.pth", "model"),
                                        ("vit2.safetensors", "vit2.pth", "model"))):
        a = load_file(p(st))
        b = torch.load(p(pth))
        b = b[wrap] if wrap else b
        assert list(a) != [] and set(a) == set(b)
        for k in a:
            assert a[k].dtype == STORE_DTYPES[i] and torch.equal(a[k], b[k]), k
        if i == 0:
            c = torch.load(p("vit0_legacy.pth"))
            assert all(torch.equal(a[k], c[k]) for k in a)
        vit = sn.make_vit(full_cfg(anchor_cfg(i)))
        vit.load_state_dict({k: v.float() for k, v in a.items()})
        anchors_again.append(vit.eval())
    assert torch.load(p("vit2.pth"))["epoch"] == 7
    ref = load_file(p("vit_reference.safetensors"))
    with torch.no_grad():
        for i, vit in enumerate(anchors_again):
            assert torch.equal(vit(ref["images"]), ref["logits.%d" % i])

    ckpt = torch.load(p("snnet_official.pth"))
    assert sorted(ckpt) == ["args", "epoch", "lr_scheduler", "model", "optimizer", "scaler"]
    msd = load_file(p("snnet_official.safetensors"))
    assert set(msd) == set(ckpt["model"]) and all(torch.equal(msd[k], ckpt["model"][k]) for k in msd)
    assert len(ckpt["optimizer"]["state"]) > 0
    assert all("exp_avg_sq" in s for s in ckpt["optimizer"]["state"].values())
    # every anchor in the SN-Net checkpoint equals the f32 upcast of its anchor file
    for i in range(3):
        a = load_file(p("vit%d.safetensors" % i))
        assert all(torch.equal(msd["anchors.%d.%s" % (i, k)], v.float()) for k, v in a.items())

    # recompute routes from the safetensors checkpoint
    fresh = sn.SNNetDeiT([sn.make_vit(full_cfg(anchor_cfg(i))) for i in range(3)],
                         KERNEL_SIZE, STRIDE, NEAREST)
    fresh.load_state_dict(msd)
    fresh.eval()
    routes = load_file(p("snnet_routes.safetensors"))
    n = len(fresh.configs)
    assert len([k for k in routes if k.startswith("logits.")]) == n
    with torch.no_grad():
        for cfg_id in range(n):
            assert torch.equal(fresh.select(cfg_id)(routes["images"]), routes["logits.%d" % cfg_id]), cfg_id

    c32, c64 = load_file(p("calibration.safetensors")), load_file(p("calibration_f64.safetensors"))
    sol = sn.ls_init_solutions(fresh, c32["images"])
    for (pair, layer), (w, b) in sol.items():
        assert torch.equal(w, c32[stitch_key(pair, layer, "weight")])
        assert torch.equal(b, c32[stitch_key(pair, layer, "bias")])
    diff = max(float((c32[k].double() - c64[k]).abs().max() / c64[k].abs().max())
               for k in c32 if k != "images")
    return diff


def report(out, info, ls_rel_diff):
    routes = info["routes"]
    logits = torch.stack([routes[k] for k in routes if k.startswith("logits.")])
    al = info["anchor_logits"]
    print("routes: %d (kernel %d, stride %d, nearest %s)" % (len(info["configs"]), KERNEL_SIZE,
                                                             STRIDE, NEAREST))
    print("max |logit| over routes: %.3f; anchor logits std: %s" % (
        float(logits.abs().max()), ", ".join("%.3f" % float(a.std()) for a in al)))
    for i in range(3):
        for j in range(i + 1, 3):
            print("anchors %d vs %d: max |diff| %.3f" % (i, j, float((al[i] - al[j]).abs().max())))
    print("LS init: cond([X,1]) max %.1f; f32 vs f64 max rel diff %.2e" % (info["cond"], ls_rel_diff))
    total = 0
    for name in sorted(os.listdir(out)):
        size = os.path.getsize(os.path.join(out, name))
        total += size
        print("%10d  %s" % (size, name))
    print("%10d  total" % total)


# ---- full size -----------------------------------------------------------------------------------
def write_full_size(out):
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    gen = torch.Generator().manual_seed(6000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    sd = state_dict_as(model, torch.float32)
    torch.save({"model": sd}, os.path.join(out, "deit_small.pth"))
    save_st(sd, os.path.join(out, "deit_small.safetensors"))
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(6001))
    with torch.no_grad():
        logits = model(images)
    save_st({"images": images, "logits": logits.contiguous()}, os.path.join(out, "reference.safetensors"),
              metadata={"model": "deit_small_patch16_224", "note": "timm 0.6.13 init (seed 0), "
                        "biases N(0, 0.05) (seed 6000), eval mode, float32"})
    # verify
    again = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    again.load_state_dict(load_file(os.path.join(out, "deit_small.safetensors")))
    pth = torch.load(os.path.join(out, "deit_small.pth"))["model"]
    assert all(torch.equal(pth[k], v) for k, v in sd.items())
    with torch.no_grad():
        assert torch.equal(again(images), logits)
    print("full size: max |logit| %.3f, logit std %.3f" % (float(logits.abs().max()), float(logits.std())))
    for name in sorted(os.listdir(out)):
        print("%10d  %s" % (os.path.getsize(os.path.join(out, name)), name))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT, help="output folder of the mini fixtures")
    ap.add_argument("--full-size", metavar="DIR", help="write full-size DeiT-S files to DIR instead")
    args = ap.parse_args()
    if args.full_size:
        write_full_size(args.full_size)
        return
    info = write_mini(args.out)
    ls_rel_diff = verify_mini(args.out, info)
    write_readme(args.out, info, ls_rel_diff)
    report(args.out, info, ls_rel_diff)


README = """\
# Weight-import and parity fixtures (PyTorch 2.0.1 / timm 0.6.13)

Made by `python3 tools/make_fixtures.py` (from the repository root; deterministic, CPU, one
thread; the script reloads every file and checks it before printing a summary).  Do not edit by
hand: change the script and rerun it.  Everything is random (seeded), nothing is pretrained.

## The mini SN-Net (`mini_vit.json`)
Three timm `VisionTransformer` anchors (`tools/snnet_torch.py::make_vit`): img 32, patch 8,
3 channels, 10 classes, depth 4, mlp_ratio 4, qkv_bias, LayerNorm eps 1e-6, class token, widths
{WIDTHS} with 2/3/4 heads.  Space: kernel_size 2, stride 1, nearest stitching: {NUM_ROUTES} routes
(cfg 0..2 the anchors, 3..12 pair 0-1, 13..22 pair 1-2); 3 stitching layers per pair, layer 0
shared by 4 positions, layers 1 and 2 by 3 each.  Random weights (`randomize_vit`): weights
N(0, gain/sqrt(fan_in)) (gain 1 for patch_embed/qkv/fc1, 0.7 for attn.proj/fc2, 1.5 for head),
all biases N(0, 0.1), LayerNorm weights 1+N(0, 0.1) and biases N(0, 0.1), cls_token and pos_embed
N(0, 0.1).  Anchor i is stored in float32 / float16 / bfloat16 (i = 0 / 1 / 2) and that rounding
is part of the weights: every reference uses the stored values cast back to float32, and the
SN-Net checkpoint holds exactly those float32 values.  All logits are computed in eval mode,
float32, on CPU.

## Files
| file | size (bytes) | contents |
|---|---:|---|
{TABLE}

### Details
- timm anchor keys: `cls_token`, `pos_embed`, `patch_embed.proj.{weight,bias}`,
  `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}`, `norm.*`, `head.*`
  (`collections.OrderedDict` in the .pth files).
- `snnet_official.pth` is laid out as the official `stitching_deit/main.py` saves it:
  `{"model", "optimizer", "lr_scheduler", "epoch": 2, "scaler", "args"}`.  `"model"`:
  `anchors.{a}.<timm key>` and `stitch_layers.{pair}.{layer}.transform.{weight [out,in], bias}`
  (pair 0 = "0-1", 1 = "1-2"); stitching layers random, W ~ N(0, 1/sqrt(in)), b ~ N(0, 0.1).
  `"optimizer"`: torch 2.0.1 AdamW state dict from timm `create_optimizer` (two param groups,
  weight decay 0.05 / 0 for 1-D params and biases) after one real step (state per parameter:
  `step` 0-dim float32 tensor, `exp_avg`, `exp_avg_sq`); with the official `fulltune false`
  option only `stitch_layers.*` and `anchors.*.cls_token` are trainable, which keeps the file
  small.  `"lr_scheduler"`: timm `CosineLRScheduler` state dict (via `create_scheduler`)
  after `step(0..2)`.  `"scaler"`: a `GradScaler` state dict.  `"args"`: an
  `argparse.Namespace` with a realistic subset of the official arguments (pickled
  `argparse.Namespace` global).
- `snnet_routes.safetensors`: `images` [4,3,32,32] (the same probe images as
  `vit_reference.safetensors`) and `logits.{cfg_id}` [4,10] for every route, from
  `snnet_torch.SNNetDeiT` (anchors: full timm forward with the final norm; stitched routes: no
  final norm, spec 2.5).  `__metadata__`: num_routes, kernel_size, stride, nearest_stitching,
  configs (JSON list of {cfg_id, comb_id, stitch_cfgs, stitch_layers}).
- `calibration.safetensors`: `images` [16,3,32,32] and, per stitching layer,
  `stitch_layers.{pair}.{layer}.transform.weight` [out,in] / `.bias` [out]: the official LS init
  (spec 1.4 / 2.4; `snnet_torch.ls_init_solutions`): features of both anchors in eval mode
  (index -1 = embedding output), `ps_inv(front[j], end[k-1])` with `torch.linalg.pinv` in
  float32 (default tolerance) over all 16x17 token rows, mean of W and of b over the layer's
  positions.  `calibration_f64.safetensors`: the same keys, the same float32 features, solved
  with float64 pinv (weights/biases float64, images float32).  Metadata: positions per layer,
  pairs, rows, pinv_dtype.  Max relative difference f32 vs f64: {LS_DIFF}; cond([X,1]) <= {COND}.
- All files are byte-identical between runs except `vit0_legacy.pth` (the pre-1.6 format names
  storages by memory address; its tensors are identical).

## Full-size files (not committed)
`python3 tools/make_fixtures.py --full-size DIR` writes timm `deit_small_patch16_224`
(pretrained=False, timm init after `torch.manual_seed(0)`, then every bias N(0, 0.05)) as
`DIR/deit_small.pth` (`{"model": sd}`) and `DIR/deit_small.safetensors`, and
`DIR/reference.safetensors` with `images` [2,3,224,224] and `logits` [2,1000] (eval, float32).
"""

FILE_NOTES = {
    "mini_vit.json": "snnet description: 3 anchors + space {kernel_size 2, stride 1, nearest}",
    "vit0.safetensors": "anchor 0 (width 16), float32, timm keys",
    "vit0.pth": "anchor 0, float32, bare state dict (torch.save zip format)",
    "vit0_legacy.pth": "anchor 0, float32, bare state dict, `_use_new_zipfile_serialization=False`",
    "vit1.safetensors": "anchor 1 (width 24), float16",
    "vit1.pth": "anchor 1, float16, `{\"model\": sd}`",
    "vit2.safetensors": "anchor 2 (width 32), bfloat16",
    "vit2.pth": "anchor 2, bfloat16, `{\"model\": sd, \"epoch\": 7}`",
    "vit_reference.safetensors": "`images` [4,3,32,32], `logits.{0,1,2}` [4,10]: timm forward",
    "snnet_official.pth": "official-layout SN-Net training checkpoint (f32)",
    "snnet_official.safetensors": "its `\"model\"` state dict, float32",
    "snnet_routes.safetensors": "`images` [4,3,32,32], `logits.{cfg_id}` [4,10] of every route",
    "calibration.safetensors": "`images` [16,3,32,32] + official float32 LS init of every stitching layer",
    "calibration_f64.safetensors": "the same LS init solved with float64 pinv",
}


def write_readme(out, info, ls_rel_diff):
    written = set(os.listdir(out)) - {"README.md"}
    assert written == set(FILE_NOTES), sorted(written ^ set(FILE_NOTES))
    rows = []
    for name, note in FILE_NOTES.items():
        rows.append("| `%s` | %d | %s |" % (name, os.path.getsize(os.path.join(out, name)), note))
    text = (README.replace("{NUM_ROUTES}", str(len(info["configs"]))).replace("{WIDTHS}", "/".join(map(str, WIDTHS)))
            .replace("{TABLE}", "\n".join(rows))
            .replace("{LS_DIFF}", "%.1e" % ls_rel_diff)
            .replace("{COND}", "%.0f" % info["cond"]))
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
