"""Write tests/fixtures/costs_fvcore.json: fvcore FLOPs and parameter counts of SN-Net DeiT routes.

Run from the repository root:

    pip install -r tools/requirements.txt
    python3 tools/make_cost_fixtures.py            # self-check, then write the fixture
    python3 tools/make_cost_fixtures.py --full-selfcheck   # fvcore on all 71 DeiT-Ti/S/B routes

Uses the independent PyTorch port in tools/snnet_torch.py (timm VisionTransformer anchors,
``nn.Linear`` stitching layers, official route enumeration and stitched forward without the
final LayerNorm).  For every route of every fixture case it records

* ``flops``        - ``fvcore.nn.FlopCountAnalysis(model.eval(), torch.randn(1, C, H, W)).total()``
* ``params``       - the official ``get_model_size`` count (stitched routes omit cls_token and
                     pos_embed and count the unused final norm; spec section 2.5 / B4)
* ``params_exact`` - number of parameter elements that receive a gradient in a backward pass
                     of that route (measured), asserted equal to the formula
                     (front patch_embed + cls_token + pos_embed + executed blocks + used
                     stitching layers + last head).

Before writing, a self-check builds DeiT-Ti/S/B at 224 (1000 classes, kernel 2, stride 1,
nearest stitching) and asserts the enumeration, the closed forms and fvcore against the
spec's vectors (shared/spec/vectors/stitch_configs_deit*.json, looked up next to the
repository or via $SNNET_SPEC_DIR; skipped with a notice if absent) and the spec's
numbers for cfg 0, 24, 56.  Deterministic: torch.manual_seed(0); output has no timestamps.
"""
import argparse
import json
import logging
import os
import sys
import time
import warnings
from importlib.metadata import version

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snnet_torch as sn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "costs_fvcore.json")


def vit(img, patch, chans, dim, depth, heads, classes, mlp=4.0):
    return {
        "arch": "vit", "img_size": img, "patch_size": patch, "in_chans": chans, "embed_dim": dim,
        "depth": depth, "num_heads": heads, "mlp_ratio": mlp, "qkv_bias": True, "num_classes": classes,
    }


CASES = [
    {
        "name": "deit_tsb_k3_s2_img160_c100",
        "anchors": [vit(160, 16, 3, 192, 12, 3, 100), vit(160, 16, 3, 384, 12, 6, 100),
                    vit(160, 16, 3, 768, 12, 12, 100)],
        "space": {"kernel_size": 3, "stride": 2, "nearest_stitching": True},
    },
    {
        "name": "vit_mini_chains_k2_s1",
        "anchors": [vit(32, 8, 1, 32, 4, 2, 10), vit(32, 8, 1, 48, 4, 3, 10),
                    vit(32, 8, 1, 64, 4, 4, 10)],
        "space": {"kernel_size": 2, "stride": 1, "nearest_stitching": False},
    },
]

DEIT_224 = [vit(224, 16, 3, 192, 12, 3, 1000), vit(224, 16, 3, 384, 12, 6, 1000),
            vit(224, 16, 3, 768, 12, 12, 1000)]


def quiet():
    warnings.filterwarnings("ignore")
    for name in ("fvcore", "fvcore.nn.jit_analysis", "fvcore.nn.jit_handles"):
        logging.getLogger(name).setLevel(logging.ERROR)


def build(anchor_cfgs, space):
    torch.manual_seed(0)
    anchors = [sn.make_vit(a) for a in anchor_cfgs]
    model = sn.SNNetDeiT(anchors, space["kernel_size"], space["stride"], space["nearest_stitching"])
    return model.eval()


def fvcore_flops(model, cfg_id, x):
    from fvcore.nn import FlopCountAnalysis

    model.eval().select(cfg_id)
    fca = FlopCountAnalysis(model, x)
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    with torch.no_grad():
        return int(fca.total())


def measured_params(model, cfg_id, x):
    """Parameter elements that receive a gradient in one backward pass of the route."""
    model.select(cfg_id)
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        model(x).sum().backward()
    used = [p for p in model.parameters() if p.grad is not None]
    ids = {id(p) for p in used}
    model.zero_grad(set_to_none=True)
    return sum(p.numel() for p in used), ids


def check_route_params(model, cfg_id, x):
    n, ids = measured_params(model, cfg_id, x)
    assert ids == model.used_params(cfg_id), f"cfg {cfg_id}: grad-tracked params != formula set"
    assert n == model.exact_params_formula(cfg_id), f"cfg {cfg_id}: {n} != formula"
    return n


def find_spec_vectors():
    cands = []
    if os.environ.get("SNNET_SPEC_DIR"):
        cands.append(os.path.join(os.environ["SNNET_SPEC_DIR"], "vectors"))
    cands += [os.path.join(ROOT, "shared", "spec", "vectors"),
              os.path.join(os.path.dirname(ROOT), "shared", "spec", "vectors")]
    for c in cands:
        if os.path.isfile(os.path.join(c, "stitch_configs_deit.json")):
            return c
    return None


def self_check(full):
    t0 = time.time()
    # Enumeration primitives (spec section 10, item 3).
    for (k, s), want in {(1, 1): (12, 12), (2, 1): (34, 11), (3, 1): (54, 10), (2, 2): (24, 6),
                         (3, 2): (44, 6), (4, 2): (64, 5)}.items():
        pos, _, n = sn.paired_stitching(12, k, s)
        assert (len(pos), n) == want, (k, s, len(pos), n)
    assert len(sn.enumerate_configs(3, 12, 2, 1, False)) == 732

    model = build(DEIT_224, {"kernel_size": 2, "stride": 1, "nearest_stitching": True})
    cfgs = model.configs
    assert len(cfgs) == 71
    expect = {0: (1258411200, 5717416), 24: (2758967808, 13038760), 56: (10048040448, 49222120)}
    want_cfg = {3: ([0, 1], [[0, 0]], [0]), 5: ([0, 1], [[1, 0]], [0]), 7: ([0, 1], [[1, 2]], [1]),
                36: ([0, 1], [[11, 11]], [10]), 37: ([1, 2], [[0, 0]], [0]),
                56: ([1, 2], [[6, 7]], [6]), 70: ([1, 2], [[11, 11]], [10])}
    for i, (c, s, l) in want_cfg.items():
        assert (cfgs[i]["comb_id"], cfgs[i]["stitch_cfgs"], cfgs[i]["stitch_layers"]) == (c, s, l), i
    stitch_total = sum(p.numel() for p in model.stitch_layers.parameters())
    assert stitch_total == 4067712, stitch_total
    groups = sn.ls_init_positions(cfgs)
    assert groups[0] == [(0, 0), (0, 1), (1, 0), (1, 1)] and groups[10] == [(10, 11), (11, 10), (11, 11)]

    vec_dir = find_spec_vectors()
    vec = None
    if vec_dir:
        with open(os.path.join(vec_dir, "stitch_configs_deit.json")) as f:
            vec = json.load(f)["configs"]
        with open(os.path.join(vec_dir, "stitch_configs_deit_no_nearest.json")) as f:
            vec_nn = json.load(f)["configs"]
        mine_nn = sn.enumerate_configs(3, 12, 2, 1, False)
        for a, b in zip(mine_nn, vec_nn):
            assert (a["comb_id"], a["stitch_cfgs"], a["stitch_layers"]) == \
                   (b["comb_id"], b["stitch_cfgs"], b["stitch_layers"]), a["cfg_id"]
        assert len(vec) == 71 and len(vec_nn) == 732
    else:
        print("self-check: spec vectors not found, comparing against the spec numbers only",
              file=sys.stderr)

    for cfg in cfgs:
        i = cfg["cfg_id"]
        af, ap = sn.analytic_flops(DEIT_224, cfg, 12), sn.analytic_params(DEIT_224, cfg, 12)
        assert ap == model.official_model_size(i), i
        if vec is not None:
            v = vec[i]
            assert (cfg["comb_id"], cfg["stitch_cfgs"], cfg["stitch_layers"]) == \
                   (v["comb_id"], v["stitch_cfgs"], v["stitch_layers"]), i
            assert (af, ap) == (v["analytic_flops"], v["analytic_params"]), (i, af, ap)
            assert (af, ap) == (v["reported"]["flops"], v["reported"]["params"]), i
        if i in expect:
            assert (af, ap) == expect[i], (i, af, ap)

    torch.manual_seed(1)
    x = torch.randn(1, 3, 224, 224)
    fv_ids = range(71) if full else [0, 1, 2, 3, 4, 5, 24, 36, 37, 39, 56, 70]
    for i in fv_ids:
        fl = fvcore_flops(model, i, x)
        assert fl == sn.analytic_flops(DEIT_224, cfgs[i], 12), (i, fl)
        if i in expect:
            assert (fl, model.official_model_size(i)) == expect[i], (i, fl)
    for i in (0, 2, 3, 24, 56):
        check_route_params(model, i, x)
    print(f"self-check OK: 71 routes, enumeration/closed forms/get_model_size "
          f"{'vs spec vectors' if vec else 'vs spec numbers'}, fvcore on {len(list(fv_ids))} routes "
          f"(cfg 0/24/56 = spec), grad-tracked params on 5 routes ({time.time() - t0:.1f}s)",
          file=sys.stderr)


def run_case(case):
    t0 = time.time()
    anchors, space = case["anchors"], case["space"]
    model = build(anchors, space)
    depth = anchors[0]["depth"]
    a0 = anchors[0]
    torch.manual_seed(1)
    x = torch.randn(1, a0["in_chans"], a0["img_size"], a0["img_size"])
    routes = []
    for cfg in model.configs:
        i = cfg["cfg_id"]
        flops = fvcore_flops(model, i, x)
        assert flops == sn.analytic_flops(anchors, cfg, depth), (case["name"], i, flops)
        params = model.official_model_size(i)
        assert params == sn.analytic_params(anchors, cfg, depth), (case["name"], i)
        exact = check_route_params(model, i, x)
        routes.append(dict(cfg, flops=flops, params=params, params_exact=exact))
    print(f"{case['name']}: {len(routes)} routes ({time.time() - t0:.1f}s)", file=sys.stderr)
    return {"name": case["name"], "anchors": anchors, "space": space, "routes": routes}


def dump(doc):
    d = lambda o: json.dumps(o, separators=(", ", ": "))  # noqa: E731
    lines = ["{" + f'"generator": {d(doc["generator"])}, "versions": {d(doc["versions"])},',
             ' "cases": [']
    for ci, case in enumerate(doc["cases"]):
        lines.append(f'  {{"name": {d(case["name"])},')
        lines.append('   "anchors": [')
        lines += ["    " + d(a) + ("," if i + 1 < len(case["anchors"]) else "")
                  for i, a in enumerate(case["anchors"])]
        lines.append("   ],")
        lines.append(f'   "space": {d(case["space"])},')
        lines.append('   "routes": [')
        lines += ["    " + d(r) + ("," if i + 1 < len(case["routes"]) else "")
                  for i, r in enumerate(case["routes"])]
        lines.append("   ]}" + ("," if ci + 1 < len(doc["cases"]) else ""))
    lines.append("]}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == json.loads(json.dumps(doc))
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full-selfcheck", action="store_true", help="fvcore on all 71 DeiT routes")
    ap.add_argument("--skip-selfcheck", action="store_true")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    quiet()
    torch.set_grad_enabled(True)
    if not args.skip_selfcheck:
        self_check(args.full_selfcheck)
    doc = {
        "generator": "tools/make_cost_fixtures.py",
        "versions": {"torch": torch.__version__, "timm": version("timm"), "fvcore": version("fvcore")},
        "cases": [run_case(c) for c in CASES],
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(dump(doc))
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
