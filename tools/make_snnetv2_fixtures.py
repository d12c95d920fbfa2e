"""Write tests/fixtures/snnetv2/: reduced SN-Netv2 networks built with the official SN-Netv2 code.

The official code is imported at generation time, never copied into this repository:

    git clone https://github.com/ziplab/SN-Netv2
    pip install -r tools/requirements.txt
    python3 tools/make_snnetv2_fixtures.py --official SN-Netv2/classification
    python3 tools/make_snnetv2_fixtures.py --official SN-Netv2/classification --out DIR   # elsewhere

Run from anywhere (CPU, one thread, a few seconds).  ``--official`` is the ``classification/``
folder of SN-Netv2; the script imports its ``models_v2.py`` (``vit_models``,
``Layer_scale_init_Block``), ``snnet.py`` (``SNNetv2``, ``get_stitch_configs_bidirection``,
``StitchingLayer``/``Linear`` with LoRA, ``initialize_stitching_weights`` / ``ps_inv``) and,
through ``snnet.py``, its ``utils.py`` (only for ``get_root_logger``).  No module needs a stub
with torch 2.0.1 / timm 0.6.13: ``models_v2`` imports only timm names that 0.6.13 has
(``Mlp``, ``PatchEmbed``, ``_cfg``, ``DropPath``, ``to_2tuple``, ``trunc_normal_``,
``register_model``), and neither ``main.py`` (fused LAMB / apex, fvcore, datasets) nor
``engine.py`` is imported.  The official logger ("snnet") is set to WARNING to keep the output
short.

Two networks ("pairs"), each two DeiT-3 style anchors (``vit_models`` with
``Layer_scale_init_Block``: LayerScale ``gamma_1``/``gamma_2``, no class position, LayerNorm eps
1e-6, qkv_bias, mlp_ratio 4, img 16, patch 4 (16 patches + class token), 3 channels, 10 classes)
stitched both ways by ``SNNetv2(anchors, lora_r=2)``:

* ``s4_l8_``: anchor 0 width 8, depth 4, 2 heads; anchor 1 width 12, depth 8, 3 heads;
* ``s4_s4_``: anchor 0 width 8, depth 4, 2 heads; anchor 1 width 12, depth 4, 3 heads.

(Smaller than the DeiT-3 fixture's img 32 / patch 8 / width 32 so that the checkpoints, stored
twice, and the calibration batches stay well under 1 MB in all.)

Procedure per pair: build the anchors with the official constructor (the arguments of the
official ``deit_small_patch16_LS`` factory, sizes reduced); replace every anchor parameter by
seeded random values (``randomize_anchor``: LayerScale gammas around 0.5 so they matter);
build ``SNNetv2``; run the official ``initialize_stitching_weights`` on 16 seeded calibration
images (model in train mode, as ``main.py`` calls it; the anchors have no dropout or drop path,
so the features are deterministic; ``main.py`` runs it under CUDA autocast, here plain float32
on CPU); record every stitching layer's dense weight/bias (the official least-squares result);
set every ``lora_A``/``lora_B`` to seeded non-zero values (nothing else is changed, so the dense
weight/bias stay the least-squares values); take the state dict while the model is still in
train mode (LoRA unmerged: exactly what ``main.py`` saves after a training epoch); then
``model.eval()`` (the official ``Linear.train(False)`` merges ``W += B @ A * scaling`` in place)
and the logits of every config id through the official forward (``reset_stitch_id``).

Checks made here (the script fails on any): the official config list equals an independent
enumeration of spec section 11.2 (and so has the count its rule gives: 2 + 4 + 3 + 3 + 3 = 15 for
both pairs); every stitching layer was written by the least-squares init and agrees with a float64
solve of ours; LoRA is unmerged in the checkpoint and merged after ``eval()``; all logits are
finite; every config's eval-mode (merged) logits equal a manual computation of spec 11.3 with
the unmerged checkpoint tensors (``x W^T + b + (x A^T B^T) * alpha / r``) within 1e-5, and so
does the official train-mode (unmerged) forward of a model loaded from the .pth (its config
forced through ``flops_grouped_cfgs = [[cfg_id]]``, the attribute main.py sets); the LoRA
factors change every stitched config's logits; a fresh official model loaded from each written
checkpoint (.pth and .safetensors) reproduces every logit bit for bit.

Files (see tests/fixtures/snnetv2/README.md, which this script also writes), per prefix:

* ``<prefix>official.pth``         - ``{"model", "epoch", "scaler", "args"}`` as ``main.py``
  saves it, without ``"optimizer"`` and ``"lr_scheduler"`` (the official recipe's fused LAMB
  needs apex and CUDA; leaving them out keeps the file small).
* ``<prefix>official.safetensors`` - the same ``"model"`` state dict.
* ``<prefix>routes.safetensors``   - probe ``images`` [3,3,16,16], ``logits.{cfg_id}`` [3,10].
* ``<prefix>calibration.safetensors`` - calibration ``images`` [16,3,16,16] and the official
  least-squares ``stitch_layers.{a}.{j}.transform.weight`` / ``.bias`` of every stitching layer.
* ``<prefix>configs.json``         - the official config list and the anchors' arguments.
* ``<prefix>description.json``     - the snnet description of the network.

Deterministic: one thread, fixed seeds, a ``torch.Generator`` per purpose (and the global seed
fixed before the official constructors draw their initial values, all overwritten).  Every file
is byte-identical between runs.  Versions are asserted (torch 2.0.1, timm 0.6.13, numpy 1.26.4,
safetensors 0.8.0).
"""
import argparse
import copy
import functools
import importlib
import json
import logging
import math
import os
import sys
from collections import OrderedDict

import numpy
import safetensors
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

assert torch.__version__.startswith("2.0.1"), torch.__version__
assert timm.__version__ == "0.6.13", timm.__version__
assert numpy.__version__ == "1.26.4", numpy.__version__
assert safetensors.__version__ == "0.8.0", safetensors.__version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "snnetv2")

IMG, PATCH, CHANS, CLASSES = 16, 4, 3, 10
MLP_RATIO, LN_EPS = 4.0, 1e-6
INIT_SCALE = 1e-4  # vit_models' default LayerScale init (main.py passes none); overwritten below
LORA_R = 2         # SNNetv2(lora_r=...); the official Linear keeps lora_alpha = 1
LORA_ALPHA = 1
N_CALIB, N_PROBE = 16, 3
TOLERANCE = 1e-5   # merged (official eval) vs manual unmerged logits, absolute

# (prefix, label, [(embed_dim, depth, num_heads) per anchor], base seed)
PAIRS = [
    ("s4_l8_", "4->8", [(8, 4, 2), (12, 8, 3)], 10000),
    ("s4_s4_", "4->4", [(8, 4, 2), (12, 4, 3)], 20000),
]
# seed offsets within a pair: anchors +0/+1, calibration images +10, LoRA factors +20, probe +30
SEED_ANCHOR, SEED_CALIB, SEED_LORA, SEED_PROBE = 0, 10, 20, 30

# Per-kind weight std = gain / sqrt(fan_in), so that the residual stream and logits stay O(1).
GAINS = {
    "patch_embed.proj": 1.0,
    "attn.qkv": 1.0,
    "attn.proj": 0.7,
    "mlp.fc1": 1.0,
    "mlp.fc2": 0.7,
    "head": 1.5,
}
LORA_B_STD = 0.3   # lora_A ~ N(0, 1/sqrt(in)), lora_B ~ N(0, LORA_B_STD)


# ---- the official code -------------------------------------------------------------------------
def import_official(directory):
    """Imports the official ``models_v2`` and ``snnet`` (and ``utils``) from ``directory``."""
    directory = os.path.abspath(directory)
    for name in ("models_v2.py", "snnet.py", "utils.py"):
        if not os.path.isfile(os.path.join(directory, name)):
            sys.exit("--official %s: no %s (give the classification/ folder of a SN-Netv2 checkout)"
                     % (directory, name))
    clash = [m for m in ("models_v2", "snnet", "utils") if m in sys.modules]
    assert not clash, "already imported: %s" % clash
    sys.path.insert(0, directory)
    try:
        models_v2 = importlib.import_module("models_v2")
        snnet = importlib.import_module("snnet")
        utils = importlib.import_module("utils")
    finally:
        sys.path.remove(directory)
    for module in (models_v2, snnet, utils):
        assert os.path.dirname(os.path.abspath(module.__file__)) == directory, module.__file__
    utils.get_root_logger().setLevel(logging.WARNING)
    return models_v2, snnet


def anchor_kwargs(width, depth, heads):
    """``vit_models`` arguments: those of the official ``deit_small_patch16_LS`` factory, reduced."""
    return OrderedDict([
        ("img_size", IMG), ("patch_size", PATCH), ("in_chans", CHANS), ("num_classes", CLASSES),
        ("embed_dim", width), ("depth", depth), ("num_heads", heads), ("mlp_ratio", MLP_RATIO),
        ("qkv_bias", True), ("drop_path_rate", 0.0), ("init_scale", INIT_SCALE),
    ])


def build_anchor(models_v2, width, depth, heads):
    return models_v2.vit_models(
        norm_layer=functools.partial(nn.LayerNorm, eps=LN_EPS),
        block_layers=models_v2.Layer_scale_init_Block,
        **anchor_kwargs(width, depth, heads))


def randomize_anchor(anchor, gen):
    """Replaces every parameter with seeded random values (none zero, none one)."""
    with torch.no_grad():
        for name, p in anchor.named_parameters():
            def randn(std):
                return torch.randn(p.shape, generator=gen) * std

            if name.endswith((".gamma_1", ".gamma_2")):
                p.copy_(0.5 + randn(0.2))
            elif name in ("cls_token", "pos_embed"):
                p.copy_(randn(0.1))
            elif name.startswith("norm") or ".norm" in name:
                p.copy_(1.0 + randn(0.1) if name.endswith("weight") else randn(0.1))
            elif name.endswith("bias"):
                p.copy_(randn(0.1))
            else:
                kind = next(k for k in GAINS if name.startswith(k) or ("." + k) in name)
                p.copy_(randn(GAINS[kind] / p[0].numel() ** 0.5))


def stitching_layers(model, snnet):
    """[(list a, index j, official Linear)] of every stitching layer; checks the trailing Identity."""
    out = []
    for a, layers in enumerate(model.stitch_layers):
        assert isinstance(layers[-1], nn.Identity), "each list ends with the identity"
        for j, layer in enumerate(layers[:-1]):
            assert isinstance(layer, snnet.StitchingLayer) and isinstance(layer.transform, snnet.Linear)
            out.append((a, j, layer.transform))
    return out


def key(a, j, what):
    return "stitch_layers.%d.%d.transform.%s" % (a, j, what)


# ---- our reading of the spec, to check the official code against --------------------------------
def expected_configs(d0, d1):
    """Spec 11.2: the two-way space of anchors of depths d0 <= d1, in the official order."""
    r = d1 // d0
    nearest = [(i * d0) // d1 for i in range(d1)]  # nearest interpolation of range(d0) to d1
    sl = [([i, (i + 1) * r], i) for i in range(d0)]
    ls = [([i, nearest[i] + 1], i // r) for i in range(d1 - 1) if d0 == d1 or i % 2 == 1]
    configs = [{"comb_id": [0]}, {"comb_id": [1]}]
    depth = [d0, d1]

    def two(comb, stitch):
        (front, end), layer = stitch
        return {"comb_id": comb, "stitch_cfgs": [list(stitch[0])], "stitch_layer_ids": [layer, -1],
                "route": [[0, front], [end, depth[comb[-1]]]]}

    def three(comb, first, second):
        (f1, e1), l1 = first
        (f2, e2), l2 = second
        return {"comb_id": comb, "stitch_cfgs": [[f1, e1], [f2, e2]], "stitch_layer_ids": [l1, l2, -1],
                "route": [[0, f1], [e1, f2], [e2, depth[comb[-1]]]]}

    configs += [two([0, 1], s) for s in sl]
    configs += [two([1, 0], s) for s in ls]
    lsl = [three([1, 0, 1], a, b) for a in ls for b in sl if b[1] != d0 - 1 and b[0][0] >= a[0][1]]
    sls = [three([0, 1, 0], b, a) for b in sl for a in ls if a[0][0] >= b[0][1]]
    counts = OrderedDict([("anchors", 2), ("sl", len(sl)), ("ls", len(ls)), ("lsl", len(lsl)),
                          ("sls", len(sls))])
    return configs + lsl + sls, counts


def manual_logits(anchors, state, cfg, depths, images, lora=True):
    """Spec 11.3 by hand, the stitching layers unmerged from the checkpoint tensors.

    Uses the anchors' official modules (patch_embed, blocks, norm, head) one by one; the route,
    the stitching-layer choice and the LoRA arithmetic are ours.
    """
    comb = cfg["comb_id"]
    a0 = anchors[comb[0]]
    x = a0.patch_embed(images) + a0.pos_embed
    x = torch.cat([a0.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    if len(comb) == 1:
        segments = [(0, depths[comb[0]])]
    else:
        starts = [0] + [end for _, end in cfg["stitch_cfgs"]]
        stops = [front + 1 for front, _ in cfg["stitch_cfgs"]] + [depths[comb[-1]]]
        segments = list(zip(starts, stops))
    for s, (start, stop) in enumerate(segments):
        anchor = anchors[comb[s]]
        for i in range(start, min(stop, depths[comb[s]])):
            x = anchor.blocks[i](x)
        if s + 1 < len(segments):  # the stitching layer after this segment; the last is the identity
            a, j = comb[s], cfg["stitch_layer_ids"][s]
            y = x @ state[key(a, j, "weight")].t() + state[key(a, j, "bias")]
            if lora:
                y = y + (x @ state[key(a, j, "lora_A")].t() @ state[key(a, j, "lora_B")].t()) * (LORA_ALPHA / LORA_R)
            x = y
    end = anchors[comb[-1]]
    return end.head(end.norm(x)[:, 0])


def ls_float64(anchors, configs, images):
    """Our float64 least squares of every stitching layer (spec 11.4 / 1.4), for comparison."""
    with torch.no_grad():
        feats = [a.extract_block_features(images) for a in anchors]
    out = {}
    for cfg in configs:
        if len(cfg["comb_id"]) != 2:
            continue
        (front, end), j = cfg["stitch_cfgs"][0], cfg["stitch_layer_ids"][0]
        a, b = cfg["comb_id"]
        x = feats[a][front].reshape(-1, feats[a][front].shape[-1]).double()
        y = feats[b][end - 1].reshape(-1, feats[b][end - 1].shape[-1]).double()
        xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
        sol = torch.linalg.lstsq(xa, y).solution.t()  # [out, in + 1]
        out[(a, j)] = (sol[:, :-1], sol[:, -1])
    return out


# ---- one pair --------------------------------------------------------------------------------------
def official_args(depths, widths):
    """A small ``argparse.Namespace`` in the shape of main.py's (config deit_stitching_snnetv2_*)."""
    return argparse.Namespace(
        config="config/deit_stitching_snnetv2_reduced.json", snnet_name="snnet_v2",
        anchors=["reduced_LS_dim%d_depth%d" % (w, d) for w, d in zip(widths, depths)],
        batch_size=64, epochs=50, input_size=IMG, nb_classes=CLASSES, lr=3e-5, warmup_lr=1e-7,
        weight_decay=0.02, sched="cosine", warmup_epochs=5, smoothing=0.1, opt="fusedlamb",
        mixup=0, cutmix=1.0, anchor_drop_path=[0.0, 0.0], lora_r=LORA_R, low_rank=False,
        flops_gap=1.0, flops_sampling_k=None, train_mode=True, seed=0, start_epoch=0, resume="",
        output_dir="outputs/reduced_snnetv2", device="cuda", distributed=False,
    )


def make_pair(official, prefix, label, specs, seed, out):
    models_v2, snnet = official
    torch.manual_seed(seed)  # the official constructors draw initial values (all overwritten)
    anchors = [build_anchor(models_v2, *s) for s in specs]
    for i, anchor in enumerate(anchors):
        randomize_anchor(anchor, torch.Generator().manual_seed(seed + SEED_ANCHOR + i))
    depths = [s[1] for s in specs]
    widths = [s[0] for s in specs]
    assert depths == sorted(depths), "anchor 0 must be the shallower (the official code sorts depths)"

    model = snnet.SNNetv2(anchors, lora_r=LORA_R)
    assert model.training and model.depths == depths
    configs = [model.stitch_configs[i] for i in range(len(model.stitch_configs))]
    expected, counts = expected_configs(*depths)
    assert configs == expected, "official configs differ from spec 11.2"
    assert len(configs) == sum(counts.values())
    layers = stitching_layers(model, snnet)
    assert [len(l) - 1 for l in model.stitch_layers] == [counts["sl"], counts["ls"]]
    for a, j, t in layers:
        assert (t.r, t.lora_alpha, t.scaling, t.merged, t.merge_weights) == (LORA_R, LORA_ALPHA, LORA_ALPHA / LORA_R, False, True)
        assert tuple(t.weight.shape) == (widths[1 - a], widths[a]) and not t.weight.requires_grad

    # ---- the official least-squares init ------------------------------------------------------
    calib = torch.randn(N_CALIB, CHANS, IMG, IMG, generator=torch.Generator().manual_seed(seed + SEED_CALIB))
    before = {(a, j): t.weight.detach().clone() for a, j, t in layers}
    model.initialize_stitching_weights(calib)
    ls = OrderedDict()
    for a, j, t in layers:
        assert not torch.equal(t.weight, before[(a, j)]), "layer %d.%d not initialised" % (a, j)
        ls[key(a, j, "weight")] = t.weight.detach().clone().contiguous()
        ls[key(a, j, "bias")] = t.bias.detach().clone().contiguous()
    ref64 = ls_float64(anchors, configs, calib)
    ls_rel = max(float((ls[key(a, j, w)].double() - ref64[(a, j)][k]).abs().max() / ref64[(a, j)][k].abs().max())
                 for a, j, _ in layers for k, w in enumerate(("weight", "bias")))
    assert ls_rel < 1e-3, ls_rel

    # ---- LoRA factors: seeded, non-zero ---------------------------------------------------------
    gen = torch.Generator().manual_seed(seed + SEED_LORA)
    with torch.no_grad():
        for _, _, t in layers:
            t.lora_A.copy_(torch.randn(t.lora_A.shape, generator=gen) / t.in_features ** 0.5)
            t.lora_B.copy_(torch.randn(t.lora_B.shape, generator=gen) * LORA_B_STD)

    # ---- the checkpoint, as saved after a training epoch (train mode: unmerged) -----------------
    assert model.training and not any(t.merged for _, _, t in layers)
    state = OrderedDict((k, v.detach().clone().contiguous()) for k, v in model.state_dict().items())
    for a, j, _ in layers:
        assert torch.equal(state[key(a, j, "weight")], ls[key(a, j, "weight")])
        assert torch.equal(state[key(a, j, "bias")], ls[key(a, j, "bias")])
    assert all(v.dtype == torch.float32 for v in state.values())
    ckpt = {"model": state, "epoch": 0,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                       "growth_interval": 2000, "_growth_tracker": 0},
            "args": official_args(depths, widths)}

    # ---- official eval: merge, then every config -----------------------------------------------
    model.eval()
    assert all(t.merged for _, _, t in layers)
    merged_sd = model.state_dict()
    delta = max(float((merged_sd[key(a, j, "weight")] - state[key(a, j, "weight")]).abs().max()) for a, j, _ in layers)
    assert delta > 1e-3, "eval() should have merged B @ A * scaling into the weight"
    probe = torch.randn(N_PROBE, CHANS, IMG, IMG, generator=torch.Generator().manual_seed(seed + SEED_PROBE))
    logits = OrderedDict()
    with torch.no_grad():
        for cfg_id in range(len(configs)):
            model.reset_stitch_id(cfg_id)
            logits[cfg_id] = model(probe).contiguous()
    assert all(bool(torch.isfinite(v).all()) and tuple(v.shape) == (N_PROBE, CLASSES) for v in logits.values())
    stacked = torch.stack(list(logits.values()))
    gaps = (stacked[:, None] - stacked[None]).abs().amax(dim=(2, 3)) + torch.eye(len(configs)) * 1e9
    min_gap = float(gaps.min())
    assert min_gap > 1e-3, "two configs give the same logits"

    # ---- self-check: merged (official eval) vs our unmerged computation ------------------------
    manual_diff, lora_effect = 0.0, float("inf")
    with torch.no_grad():
        for cfg_id, cfg in enumerate(configs):
            mine = manual_logits(anchors, state, cfg, depths, probe)
            manual_diff = max(manual_diff, float((mine - logits[cfg_id]).abs().max()))
            if len(cfg["comb_id"]) > 1:
                plain = manual_logits(anchors, state, cfg, depths, probe, lora=False)
                lora_effect = min(lora_effect, float((plain - logits[cfg_id]).abs().max()))
    assert manual_diff <= TOLERANCE, manual_diff
    assert lora_effect > 1e-3, lora_effect

    # ---- write ------------------------------------------------------------------------------------
    p = lambda name: os.path.join(out, prefix + name)  # noqa: E731
    torch.save(ckpt, p("official.pth"))
    save_file(state, p("official.safetensors"))
    routes = {"images": probe.contiguous()}
    routes.update(("logits.%d" % i, v) for i, v in logits.items())
    save_file(routes, p("routes.safetensors"))
    calibration = {"images": calib.contiguous()}
    calibration.update(ls)
    save_file(calibration, p("calibration.safetensors"))
    anchor_args = [dict(anchor_kwargs(*s), norm_layer="partial(nn.LayerNorm, eps=1e-6)",
                        block_layers="Layer_scale_init_Block") for s in specs]
    configs_json = OrderedDict([
        ("pair", label),
        ("official", "SNNetv2(anchors, lora_r=%d); get_stitch_configs_bidirection(%s)" % (LORA_R, depths)),
        ("depths", depths),
        ("anchors", anchor_args),
        ("lora", OrderedDict([("r", LORA_R), ("lora_alpha", LORA_ALPHA), ("scaling", LORA_ALPHA / LORA_R)])),
        ("counts", counts),
        ("num_configs", len(configs)),
        ("num_stitches", [counts["sl"], counts["ls"]]),
        ("train_cfgs", list(model.all_cfgs)),
        ("configs", [OrderedDict([("cfg_id", i)] + list(copy.deepcopy(c).items())) for i, c in enumerate(configs)]),
    ])
    write_json(p("configs.json"), configs_json)
    description = OrderedDict([
        ("anchors", [OrderedDict([
            ("arch", "vit"), ("img_size", IMG), ("patch_size", PATCH), ("in_chans", CHANS),
            ("embed_dim", w), ("depth", d), ("num_heads", h), ("mlp_ratio", MLP_RATIO),
            ("qkv_bias", True), ("num_classes", CLASSES), ("layer_norm_eps", LN_EPS),
            ("init_values", INIT_SCALE), ("no_embed_class", True)]) for w, d, h in specs]),
        ("space", OrderedDict([("kind", "two_way"), ("lora_rank", LORA_R)])),
    ])
    write_json(p("description.json"), description)

    # ---- reload what was written into fresh official models --------------------------------------
    train_diff = 0.0
    for source in ("pth", "safetensors"):
        if source == "pth":
            loaded = torch.load(p("official.pth"))
            assert sorted(loaded) == ["args", "epoch", "model", "scaler"]
            sd = loaded["model"]
        else:
            sd = load_file(p("official.safetensors"))
        torch.manual_seed(seed)
        fresh = snnet.SNNetv2([build_anchor(models_v2, *s) for s in specs], lora_r=LORA_R)
        fresh.load_state_dict(sd)  # strict; in train mode, as main.py resumes
        if source == "pth":
            # The official unmerged forward: train mode samples its config from
            # flops_grouped_cfgs (set by main.py); one group of one config forces it.  No
            # dropout / drop path in these anchors, so train mode is deterministic.
            with torch.no_grad():
                for cfg_id in range(len(configs)):
                    fresh.flops_grouped_cfgs, fresh.flops_sampling_probs = [[cfg_id]], numpy.ones(1)
                    train_diff = max(train_diff, float((fresh(probe) - logits[cfg_id]).abs().max()))
            assert train_diff <= TOLERANCE, train_diff
        fresh.eval()
        with torch.no_grad():
            for cfg_id in range(len(configs)):
                fresh.reset_stitch_id(cfg_id)
                assert torch.equal(fresh(probe), logits[cfg_id]), (source, cfg_id)
    cal = load_file(p("calibration.safetensors"))
    assert set(cal) == {"images"} | set(ls)

    return OrderedDict([
        ("prefix", prefix), ("label", label), ("depths", depths), ("widths", widths),
        ("heads", [s[2] for s in specs]), ("counts", counts), ("num_configs", len(configs)),
        ("train_cfgs", len(model.all_cfgs)), ("num_params", sum(v.numel() for v in state.values())),
        ("manual_diff", manual_diff), ("lora_effect", lora_effect), ("merge_delta", delta),
        ("ls_rel", ls_rel), ("max_logit", float(stacked.abs().max())),
        ("ls_layers", len(layers)), ("min_gap", min_gap), ("train_diff", train_diff),
    ])


def write_json(path, obj):
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2) + "\n")


# ---- README -----------------------------------------------------------------------------------------
README = """\
# SN-Netv2 fixtures (official ziplab/SN-Netv2 code, PyTorch 2.0.1 / timm 0.6.13)

Made by `tools/make_snnetv2_fixtures.py`, which imports the official code at generation time
(nothing of it is copied here):

    git clone https://github.com/ziplab/SN-Netv2
    python3 tools/make_snnetv2_fixtures.py --official SN-Netv2/classification

Deterministic (CPU, one thread, seeded); the script checks everything it writes before this
README is written.  Do not edit by hand: change the script and rerun it.  Everything is random
(seeded), nothing is pretrained.  All tensors float32.

## The networks
Two SN-Netv2 networks, each `snnet.SNNetv2(anchors, lora_r={LORA_R})` around two official
`models_v2.vit_models(img_size={IMG}, patch_size={PATCH}, in_chans={CHANS}, num_classes={CLASSES},
embed_dim=W, depth=D, num_heads=H, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.0,
init_scale=1e-4, norm_layer=partial(nn.LayerNorm, eps=1e-6), block_layers=Layer_scale_init_Block)`
(the arguments of the official `deit_small_patch16_LS` factory with reduced sizes): DeiT-3 style,
LayerScale `blocks.{i}.gamma_1`/`gamma_2`, `pos_embed` [1, 16, W] (patches only, added before the
class token is prepended), 17 tokens.

| prefix | anchor 0 (W, D, H) | anchor 1 (W, D, H) | configs | anchors + S->L + L->S + L->S->L + S->L->S | parameters |
|---|---|---|---:|---|---:|
{PAIRS}

Random weights (`randomize_anchor`): weights N(0, gain/sqrt(fan_in)) (gain 1 for
patch_embed/qkv/fc1, 0.7 for attn.proj/fc2, 1.5 for head), biases N(0, 0.1), LayerNorm weights
1 + N(0, 0.1) and biases N(0, 0.1), `cls_token`/`pos_embed` N(0, 0.1), LayerScale gammas
0.5 + N(0, 0.2).  Stitching layers: the official least-squares init (`initialize_stitching_weights`
on the 16 calibration images, model in train mode as `main.py` calls it, float32 on CPU; the
official run uses CUDA autocast), then `lora_A` ~ N(0, 1/sqrt(in)) and `lora_B` ~ N(0, {LORA_B_STD})
(non-zero, so merged vs unmerged matters; max |B A scaling| over the layers: {MERGE_DELTA}).
Nothing else was changed after the least squares: the checkpoint's dense `weight`/`bias` equal
the calibration file's.

## Files
| file | size (bytes) | contents |
|---|---:|---|
{TABLE}

### Details
- `*official.pth`: `torch.save({"model": state_dict, "epoch": 0, "scaler": GradScaler state,
  "args": argparse.Namespace})`, the layout of the official `main.py` checkpoint without its
  `"optimizer"` and `"lr_scheduler"` (the recipe's fused LAMB needs apex + CUDA; left out).
  `"model"` is an `OrderedDict` in the official module order, saved in train mode, i.e.
  **LoRA unmerged** (what `main.py` saves after a training epoch):
  `anchors.{a}.{cls_token, pos_embed, patch_embed.proj.*, blocks.{i}.{norm1, attn.qkv, attn.proj,
  norm2, mlp.fc1, mlp.fc2}.*, blocks.{i}.gamma_1, blocks.{i}.gamma_2, norm.*, head.*}` and
  `stitch_layers.{a}.{j}.transform.{weight [out,in], bias [out], lora_A [r,in], lora_B [out,r]}`.
  `stitch_layers.0` = S->L (anchor 0 width in, anchor 1 width out), `stitch_layers.1` = L->S;
  each official list ends with an `nn.Identity` (index -1 in `stitch_layer_ids`), which has no key.
- `*official.safetensors`: the same `"model"` state dict.
- `*routes.safetensors`: probe `images` [{N_PROBE},3,{IMG},{IMG}] and `logits.{cfg_id}` [{N_PROBE},{CLASSES}] of every
  config id, through the official eval-mode forward (`model.eval()`, which merges
  `W += lora_B @ lora_A * scaling`, scaling = lora_alpha / r = 1/{LORA_R}; then `reset_stitch_id(cfg_id)`).
  Every id is included (`train_cfgs` in `configs.json` is the official training/evaluation
  list; with these depths it leaves nothing out: the official code drops only the S->L config
  with front block 11).  Stitched configs apply the end anchor's final norm.  Checked: equal to a
  manual unmerged computation (spec 11.3) within {MANUAL_DIFF} and to the official train-mode
  (unmerged) forward within {TRAIN_DIFF} (tolerance 1e-5); a fresh official
  model loaded from either checkpoint file in train mode and switched to eval reproduces them
  bit for bit.
- `*calibration.safetensors`: calibration `images` [{N_CALIB},3,{IMG},{IMG}] and the official least-squares
  `stitch_layers.{a}.{j}.transform.weight` / `.bias` of every stitching layer (`ps_inv`:
  `torch.linalg.pinv` in float32 over all {N_CALIB}x17 token rows of `[X, 1]`; `X` = the front
  anchor's block `front` output, `Y` = the end anchor's block `end - 1` output).  Max relative
  difference to a float64 least-squares solve: {LS_REL}.
- `*configs.json`: `configs` = the official `get_stitch_configs_bidirection(depths)` list with
  `cfg_id` (= list position) added: `comb_id`, `stitch_cfgs`, `stitch_layer_ids` (ending in -1),
  `route` (inclusive block ranges for `selective_forward`); the anchors' constructor arguments,
  LoRA settings, counts per kind, `num_stitches` [S->L layers, L->S layers], `train_cfgs`.
- `*description.json`: the snnet description: explicit ViT anchors (`init_values` 1e-4,
  `no_embed_class` true) and `"space": {"kind": "two_way", "lora_rank": {LORA_R}}`; no
  `behaviour` (the two-way space applies the end anchor's final norm on every route).
- All files are byte-identical between runs.
"""

FILE_NOTES = OrderedDict([
    ("official.pth", "official-layout checkpoint `{\"model\", \"epoch\", \"scaler\", \"args\"}`, LoRA unmerged"),
    ("official.safetensors", "its `\"model\"` state dict"),
    ("routes.safetensors", "probe `images`, `logits.{cfg_id}` of every config (official eval, merged)"),
    ("calibration.safetensors", "calibration `images` + official least-squares weight/bias per stitching layer"),
    ("configs.json", "official config list, anchor arguments, counts"),
    ("description.json", "snnet description (`space.kind` two_way, `lora_rank`)"),
])


def write_readme(out, infos):
    names = [i["prefix"] + n for i in infos for n in FILE_NOTES]
    written = set(os.listdir(out)) - {"README.md"}
    assert written == set(names), sorted(written ^ set(names))
    table = ["| `%s` | %d | %s |" % (n, os.path.getsize(os.path.join(out, n)), FILE_NOTES[n.split("_", 2)[2]])
             for n in names]
    pairs = ["| `%s` | %d, %d, %d | %d, %d, %d | %d | %s | %d |" % (
        i["prefix"], i["widths"][0], i["depths"][0], i["heads"][0], i["widths"][1], i["depths"][1],
        i["heads"][1], i["num_configs"], " + ".join(str(v) for v in i["counts"].values()), i["num_params"])
        for i in infos]
    subs = {
        "{TABLE}": "\n".join(table), "{PAIRS}": "\n".join(pairs), "{LORA_R}": str(LORA_R),
        "{IMG}": str(IMG), "{PATCH}": str(PATCH), "{CHANS}": str(CHANS), "{CLASSES}": str(CLASSES),
        "{N_PROBE}": str(N_PROBE), "{N_CALIB}": str(N_CALIB), "{LORA_B_STD}": str(LORA_B_STD),
        "{MERGE_DELTA}": "%.2f" % max(i["merge_delta"] for i in infos),
        "{MANUAL_DIFF}": "%.1e" % max(i["manual_diff"] for i in infos),
        "{LS_REL}": "%.1e" % max(i["ls_rel"] for i in infos),
        "{TRAIN_DIFF}": "%.1e" % max(i["train_diff"] for i in infos),
    }
    text = README
    for k, v in subs.items():
        text = text.replace(k, v)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, metavar="DIR",
                    help="the classification/ folder of a ziplab/SN-Netv2 checkout")
    ap.add_argument("--out", default=OUT, help="output folder (default tests/fixtures/snnetv2)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    official = import_official(args.official)
    os.makedirs(args.out, exist_ok=True)
    infos = [make_pair(official, prefix, label, specs, seed, args.out) for prefix, label, specs, seed in PAIRS]
    write_readme(args.out, infos)
    for i in infos:
        print("%s (%s): %d configs (%s), %d trained by the official list; %d stitching layers; %d params"
              % (i["prefix"], i["label"], i["num_configs"],
                 ", ".join("%s %d" % kv for kv in i["counts"].items()), i["train_cfgs"], i["ls_layers"],
                 i["num_params"]))
        print("    official train-mode (unmerged) vs eval (merged) max |diff| %.1e" % i["train_diff"])
        print("    merged vs manual unmerged max |diff| %.1e; min LoRA effect on a stitched config %.3f;"
              " max |B A s| %.3f; LS f32 vs f64 rel %.1e; max |logit| %.2f; min gap between configs %.3f"
              % (i["manual_diff"], i["lora_effect"], i["merge_delta"], i["ls_rel"], i["max_logit"], i["min_gap"]))
    total = 0
    for name in sorted(os.listdir(args.out)):
        size = os.path.getsize(os.path.join(args.out, name))
        total += size
        print("%10d  %s" % (size, name))
    print("%10d  total" % total)


if __name__ == "__main__":
    main()
