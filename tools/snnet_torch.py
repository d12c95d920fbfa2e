"""Independent PyTorch port of the SN-Net DeiT stitching model (helper module, writes nothing).

Written from the project's spec (shared/spec/snnet-spec.md, sections 1.2(a), 1.4, 2.2-2.5, 8, 9);
it is imported by tools/make_cost_fixtures.py, tools/ls_init_official.py and
tools/make_fixtures.py and is not run on its own.  Contents:

* ``paired_stitching``     - DeiT-flavour window enumeration of (j, k) stitch positions.
* ``enumerate_configs``    - routes (stitch configs) in official order.
* ``stitch_pairs``         - the anchor pairs that own stitching layers.
* ``ls_init_positions``    - per stitching layer, the set of (j, k) positions the LS init averages.
* ``make_vit``             - a timm ``VisionTransformer`` anchor (qkv_bias, LN eps 1e-6, cls token).
* ``patch_embed_tokens``   - a ViT anchor's embedding output (patch embed + cls token + pos embed).
* ``SNNetDeiT``            - anchors + stitching layers; forward of the selected route; the
                             official ``get_model_size`` count and the exactly-used parameter count.
* ``extract_block_features`` - {-1: embedding output, i: output of block i} of a ViT anchor.
* ``ps_inv``               - the official least-squares solve (``torch.linalg.pinv`` of ``[X, 1]``).
* ``ls_init_solutions``    - the official LS init of every stitching layer of an ``SNNetDeiT``
                             (mean of ``ps_inv`` over each layer's positions), returned, not applied.
* ``analytic_flops`` / ``analytic_params`` - closed forms (fvcore conventions) for cross-checks.
* ``randomize_module``     - every parameter and BatchNorm statistic of any timm model made random
                             (the Swin, CNN and LeViT fixture scripts).
* ``convert_with_timm09``  - a state dict loaded into timm 0.9.16 through its own checkpoint filter,
                             saved in that version's layout with its logits (run in a subprocess).
"""
import json
import os
import subprocess
import sys
from functools import partial
from itertools import combinations

import torch
from safetensors.torch import load_file
from torch import nn


# --------------------------------------------------------------------------------------------
# Enumeration
# --------------------------------------------------------------------------------------------
def paired_stitching(depth, kernel_size, stride):
    """DeiT flavour: every ordered (j, k) inside a sliding window, j == k and j > k included.

    Returns (positions, layer_ids, num_layers).  A window that contributes at least one new
    position gets a fresh layer id; positions already seen keep their first id.
    """
    positions, layer_ids = [], []
    seen = set()
    next_id = 0
    start = 0
    while start < depth:
        window = list(range(start, min(start + kernel_size, depth)))
        added = False
        for j in window:
            for k in window:
                if (j, k) not in seen:
                    seen.add((j, k))
                    positions.append((j, k))
                    layer_ids.append(next_id)
                    added = True
        if added:
            next_id += 1
        start += stride
    return positions, layer_ids, next_id


def anchor_combinations(num_anchors, nearest_stitching):
    combs = []
    for r in range(1, num_anchors + 1):
        combs.extend(combinations(range(num_anchors), r))
    if nearest_stitching:
        # Official behaviour is hard-wired to three anchors (spec B5).
        if num_anchors != 3:
            raise ValueError("nearest_stitching is only defined for exactly 3 anchors")
        combs.remove((0, 2))
        combs.remove((0, 1, 2))
    return combs


def stitch_pairs(num_anchors, nearest_stitching):
    """Anchor pairs that own a list of stitching layers, in state-dict order."""
    pairs = list(combinations(range(num_anchors), 2))
    if nearest_stitching:
        if num_anchors != 3:
            raise ValueError("nearest_stitching is only defined for exactly 3 anchors")
        pairs.remove((0, 2))
    return pairs


def _chains(positions, layer_ids, n_stitches):
    """All sequences of n_stitches (pos, layer) with pos_{i+1}[0] >= pos_i[1], nested-loop order."""
    if n_stitches == 1:
        for p, l in zip(positions, layer_ids):
            yield [p], [l]
        return
    for head, tail_l in _chains(positions, layer_ids, n_stitches - 1):
        for p, l in zip(positions, layer_ids):
            if p[0] >= head[-1][1]:
                yield head + [p], tail_l + [l]


def enumerate_configs(num_anchors, depth, kernel_size, stride, nearest_stitching):
    """List of dicts {cfg_id, comb_id, stitch_cfgs, stitch_layers} in official order."""
    positions, layer_ids, _ = paired_stitching(depth, kernel_size, stride)
    configs = []
    for comb in anchor_combinations(num_anchors, nearest_stitching):
        if len(comb) == 1:
            configs.append((list(comb), [], []))
            continue
        for cfgs, layers in _chains(positions, layer_ids, len(comb) - 1):
            configs.append((list(comb), [list(p) for p in cfgs], list(layers)))
    return [
        {"cfg_id": i, "comb_id": c, "stitch_cfgs": s, "stitch_layers": l}
        for i, (c, s, l) in enumerate(configs)
    ]


def ls_init_positions(configs):
    """layer id -> sorted list of (j, k): first stitch of every stitched config using that layer.

    Built over all combinations, as the official code does, so every pair shares the sets.
    """
    groups = {}
    for cfg in configs:
        if len(cfg["comb_id"]) == 1:
            continue
        j, k = cfg["stitch_cfgs"][0]
        groups.setdefault(cfg["stitch_layers"][0], set()).add((j, k))
    return {layer: sorted(pos) for layer, pos in sorted(groups.items())}


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def make_vit(a):
    """timm VisionTransformer anchor from a dict with the fixture's anchor fields."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=a["img_size"],
        patch_size=a["patch_size"],
        in_chans=a["in_chans"],
        num_classes=a["num_classes"],
        global_pool="token",
        embed_dim=a["embed_dim"],
        depth=a["depth"],
        num_heads=a["num_heads"],
        mlp_ratio=a["mlp_ratio"],
        qkv_bias=a["qkv_bias"],
        class_token=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )


def patch_embed_tokens(vit, x):
    """Embedding output: patch embedding, cls token concat, position embedding (+ pos_drop)."""
    return vit._pos_embed(vit.patch_embed(x))


class StitchingLayer(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.transform = nn.Linear(c_in, c_out)

    def forward(self, x):
        return self.transform(x)


def _numel(module_or_params):
    if isinstance(module_or_params, nn.Module):
        return sum(p.numel() for p in module_or_params.parameters())
    return sum(p.numel() for p in module_or_params)


class SNNetDeiT(nn.Module):
    """Anchors + stitching layers; evaluates the route chosen by ``select(cfg_id)``."""

    def __init__(self, anchors, kernel_size, stride, nearest_stitching):
        super().__init__()
        self.anchors = nn.ModuleList(anchors)
        depth = anchors[0].blocks.__len__()
        self.depth = depth
        self.configs = enumerate_configs(len(anchors), depth, kernel_size, stride, nearest_stitching)
        _, _, num_layers = paired_stitching(depth, kernel_size, stride)
        self.pairs = stitch_pairs(len(anchors), nearest_stitching)
        self.pair_index = {"%d-%d" % p: i for i, p in enumerate(self.pairs)}
        self.stitch_layers = nn.ModuleList(
            nn.ModuleList(
                StitchingLayer(anchors[f].embed_dim, anchors[e].embed_dim) for _ in range(num_layers)
            )
            for f, e in self.pairs
        )
        self.cfg_id = 0

    def select(self, cfg_id):
        self.cfg_id = cfg_id
        return self

    def _layer(self, front, end, layer_id):
        return self.stitch_layers[self.pair_index["%d-%d" % (front, end)]][layer_id]

    def segments(self, cfg_id):
        """[(anchor, first_block, end_block_exclusive)] executed by a stitched route."""
        cfg = self.configs[cfg_id]
        comb, stitches = cfg["comb_id"], cfg["stitch_cfgs"]
        segs, start = [], 0
        for i, (j, k) in enumerate(stitches):
            segs.append((comb[i], start, j + 1))
            start = k
        segs.append((comb[-1], start, self.depth))
        return segs

    def used_stitch_layers(self, cfg_id):
        cfg = self.configs[cfg_id]
        comb = cfg["comb_id"]
        return [self._layer(comb[i], comb[i + 1], l) for i, l in enumerate(cfg["stitch_layers"])]

    def forward(self, x):
        cfg = self.configs[self.cfg_id]
        comb = cfg["comb_id"]
        if len(comb) == 1:
            return self.anchors[comb[0]](x)  # untouched timm forward (with final norm)
        x = patch_embed_tokens(self.anchors[comb[0]], x)
        start = 0
        for i, (j, k) in enumerate(cfg["stitch_cfgs"]):
            x = self.anchors[comb[i]].blocks[start:j + 1](x)
            start = k
            x = self._layer(comb[i], comb[i + 1], cfg["stitch_layers"][i])(x)
        last = self.anchors[comb[-1]]
        x = last.blocks[start:](x)
        return last.forward_head(x)  # no final LayerNorm on stitched routes (spec B1)

    # ---- parameter counts -------------------------------------------------------------------
    def official_model_size(self, cfg_id):
        """The official get_model_size: stitched routes omit cls_token/pos_embed, count last norm."""
        cfg = self.configs[cfg_id]
        comb = cfg["comb_id"]
        if len(comb) == 1:
            return _numel(self.anchors[comb[0]])
        total = _numel(self.anchors[comb[0]].patch_embed)
        for a, s, e in self.segments(cfg_id):
            for b in range(s, e):
                total += _numel(self.anchors[a].blocks[b])
        for layer in self.used_stitch_layers(cfg_id):
            total += _numel(layer)
        last = self.anchors[comb[-1]]
        total += _numel(last.head) + _numel(last.norm)
        return total

    def used_params(self, cfg_id):
        """Set of parameters (by id) the route's forward really uses (formula)."""
        cfg = self.configs[cfg_id]
        comb = cfg["comb_id"]
        if len(comb) == 1:
            return {id(p) for p in self.anchors[comb[0]].parameters()}
        front = self.anchors[comb[0]]
        used = {id(p) for p in front.patch_embed.parameters()}
        used |= {id(front.cls_token), id(front.pos_embed)}
        for a, s, e in self.segments(cfg_id):
            for b in range(s, e):
                used |= {id(p) for p in self.anchors[a].blocks[b].parameters()}
        for layer in self.used_stitch_layers(cfg_id):
            used |= {id(p) for p in layer.parameters()}
        used |= {id(p) for p in self.anchors[comb[-1]].head.parameters()}
        return used

    def exact_params_formula(self, cfg_id):
        ids = self.used_params(cfg_id)
        return sum(p.numel() for p in self.parameters() if id(p) in ids)


# --------------------------------------------------------------------------------------------
# Least-squares init (spec sections 1.4 and 2.4)
# --------------------------------------------------------------------------------------------
def extract_block_features(vit, x):
    """{-1: embedding output, i: output of block i} (tokens [B, N, C], cls row included)."""
    feats = {}
    x = patch_embed_tokens(vit, x)
    feats[-1] = x
    for i, blk in enumerate(vit.blocks):
        x = blk(x)
        feats[i] = x
    return feats


def ps_inv(x, y, dtype=None):
    """A = pinv([X, 1]) @ Y; returns W [Cout, Cin], b [Cout].

    ``dtype=None`` solves in the inputs' dtype (float32 for the official procedure); another
    dtype (e.g. torch.float64) casts X and Y first.  pinv uses PyTorch's default tolerance.
    """
    x2 = x.reshape(-1, x.shape[-1])
    y2 = y.reshape(-1, y.shape[-1])
    if dtype is not None:
        x2, y2 = x2.to(dtype), y2.to(dtype)
    if x2.shape[0] != y2.shape[0]:
        raise ValueError("ps_inv: row counts differ (%d vs %d)" % (x2.shape[0], y2.shape[0]))
    xa = torch.cat([x2, torch.ones(x2.shape[0], 1, dtype=x2.dtype)], dim=1)
    a = torch.linalg.pinv(xa) @ y2
    at = a.t()
    return at[:, :-1], at[:, -1]


def ls_init_solutions(model, images, dtype=None):
    """Official LS init of every stitching layer of ``model`` (an ``SNNetDeiT``), not applied.

    Features of both anchors of each pair (anchors as they are: call ``eval()`` first for the
    fixtures) under no_grad; for each layer, the mean of ``ps_inv(front[j], end[k-1])`` over its
    positions.  Returns {(pair_index, layer_id): (W [Cout, Cin], b [Cout])}.
    """
    groups = ls_init_positions(model.configs)
    out = {}
    with torch.no_grad():
        for pair_idx, (front, end) in enumerate(model.pairs):
            front_feats = extract_block_features(model.anchors[front], images)
            end_feats = extract_block_features(model.anchors[end], images)
            for layer_id, positions in groups.items():
                ws, bs = [], []
                for j, k in positions:
                    w, b = ps_inv(front_feats[j], end_feats[k - 1], dtype)
                    ws.append(w)
                    bs.append(b)
                out[(pair_idx, layer_id)] = (torch.stack(ws).mean(dim=0), torch.stack(bs).mean(dim=0))
    return out


# --------------------------------------------------------------------------------------------
# Closed forms (fvcore conventions, spec section 8) for cross-checking
# --------------------------------------------------------------------------------------------
def _geom(a):
    patches = (a["img_size"] // a["patch_size"]) ** 2
    return patches, patches + 1


def _blk_flops(a, n):
    c = a["embed_dim"]
    hidden = int(c * a["mlp_ratio"])
    # 2 LayerNorms (5 per element), qkv + proj (4C^2), fc1 + fc2 (2 C hidden), q@k^T and attn@v
    return n * (10 * c + 4 * c * c + 2 * c * hidden) + 2 * n * n * c


def _blk_params(a):
    c = a["embed_dim"]
    hidden = int(c * a["mlp_ratio"])
    return 4 * c + (3 * c * c + 3 * c) + (c * c + c) + (c * hidden + hidden) + (hidden * c + c)


def analytic_flops(anchor_cfgs, cfg, depth):
    comb, stitches = cfg["comb_id"], cfg["stitch_cfgs"]
    first, last = anchor_cfgs[comb[0]], anchor_cfgs[comb[-1]]
    patches, n = _geom(first)
    embed = patches * first["in_chans"] * first["patch_size"] ** 2 * first["embed_dim"]
    head = last["num_classes"] * last["embed_dim"]
    if len(comb) == 1:
        return embed + depth * _blk_flops(first, n) + 5 * n * first["embed_dim"] + head
    total = embed + head
    start = 0
    for i, (j, k) in enumerate(stitches):
        total += (j + 1 - start) * _blk_flops(anchor_cfgs[comb[i]], n)
        total += n * anchor_cfgs[comb[i]]["embed_dim"] * anchor_cfgs[comb[i + 1]]["embed_dim"]
        start = k
    total += (depth - start) * _blk_flops(last, n)
    return total


def analytic_params(anchor_cfgs, cfg, depth):
    """Official get_model_size closed form."""
    comb, stitches = cfg["comb_id"], cfg["stitch_cfgs"]
    first, last = anchor_cfgs[comb[0]], anchor_cfgs[comb[-1]]
    _, n = _geom(first)
    c0, cl = first["embed_dim"], last["embed_dim"]
    embed = first["in_chans"] * first["patch_size"] ** 2 * c0 + c0
    head = last["num_classes"] * cl + last["num_classes"]
    if len(comb) == 1:
        return embed + c0 + n * c0 + depth * _blk_params(first) + 2 * c0 + head
    total = embed + head + 2 * cl
    start = 0
    for i, (j, k) in enumerate(stitches):
        ci, co = anchor_cfgs[comb[i]]["embed_dim"], anchor_cfgs[comb[i + 1]]["embed_dim"]
        total += (j + 1 - start) * _blk_params(anchor_cfgs[comb[i]]) + ci * co + co
        start = k
    total += (depth - start) * _blk_params(last)
    return total


# --------------------------------------------------------------------------------------------
# Fixture helpers for the other families
# --------------------------------------------------------------------------------------------

NORMS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def randomize_module(model, seed):
    """Seeded random values for every parameter and BatchNorm running statistic; eval mode.

    Norm weights 1 + 0.1·N, biases 0.1·N, relative-position / attention-bias tables 0.5·N, other
    weights N / sqrt(fan-in); running means 0.1·N, running variances U(0.5, 1.5).
    """
    gen = torch.Generator().manual_seed(seed)
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters(recurse=False)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if id(p) in norm_params:
                p.copy_(1.0 + 0.1 * r if name.endswith("weight") else 0.1 * r)
            elif name.endswith("bias"):
                p.copy_(0.1 * r)
            elif "relative_position_bias_table" in name or "attention_biases" in name:
                p.copy_(0.5 * r)
            else:
                p.copy_(r / p[0].numel() ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return model.eval()


def convert_with_timm09(timm09, module, cls, cfg, state_dict_pth, images_path, out_path):
    """Loads ``state_dict_pth`` (a torch.save'd state dict in module order: timm's filters zip keys
    by position) into timm 0.9.16's ``timm.models.<module>.<cls>(**cfg)`` through that module's
    ``checkpoint_filter_fn``, saves its state dict to ``out_path`` and returns its logits on the
    ``images`` of ``images_path``. ``timm09`` is a directory timm 0.9.16 was pip-installed into."""
    code = f"""
import sys; sys.path.insert(0, {timm09!r})
import timm, torch
from safetensors.torch import load_file, save_file
assert timm.__version__ == '0.9.16', timm.__version__
from timm.models.{module} import {cls} as Model, checkpoint_filter_fn
m = Model(drop_path_rate=0.0, **{json.dumps(cfg)}).eval()
m.load_state_dict(checkpoint_filter_fn(torch.load({state_dict_pth!r}), m), strict=True)
with torch.no_grad():
    logits = m(load_file({images_path!r})['images'])
save_file({{k: v.contiguous() for k, v in m.state_dict().items()}}, {out_path!r})
save_file({{'logits': logits.contiguous()}}, {out_path!r} + '.logits')
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    logits = load_file(out_path + ".logits")["logits"]
    os.remove(out_path + ".logits")
    return logits

