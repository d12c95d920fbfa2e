"""Time the official least-squares stitching init of a DeiT-Ti/S/B SN-Net in PyTorch.

Writes nothing; prints ONE JSON line to stdout, e.g.
    {"impl": "official (PyTorch 2.0.1+cu117)", "threads": 2, "images": 100,
     "seconds_total": ..., "seconds_features": ..., "seconds_solve": ..., "num_pinv": 68}

Run from the repository root:

    python3 tools/ls_init_official.py                 # 100 images, all cores
    python3 tools/ls_init_official.py --images 8 --threads 1   # quick run

Procedure (spec sections 1.4 and 2.4), for a side-by-side with the Rust implementation:
random-weight timm deit_{tiny,small,base}_patch16_224 (pretrained=False, eval mode), a batch
of calibration images 3x224x224 from torch.randn after torch.manual_seed(0); under
torch.no_grad(), for each anchor pair in [(0,1), (1,2)]: extract the block features of BOTH
anchors (index -1 = embedding output, i = output of block i; extracted again for every pair,
as the official code does), then for each of the 11 stitching layers and each of its
positions (j, k) solve ps_inv(front_feat[j], end_feat[k-1]) with torch.linalg.pinv in float32
and set the layer to the mean of the W's and b's.  seconds_total covers features + solves
(model construction excluded).
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snnet_torch as sn  # noqa: E402


extract_block_features = sn.extract_block_features
ps_inv = sn.ps_inv


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import timm

    torch.manual_seed(0)
    images = torch.randn(args.images, 3, 224, 224)
    anchors = [timm.create_model(n, pretrained=False).eval()
               for n in ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")]
    model = sn.SNNetDeiT(anchors, kernel_size=2, stride=1, nearest_stitching=True).eval()
    groups = sn.ls_init_positions(model.configs)  # layer -> [(j, k)]

    t_feat = t_solve = 0.0
    num_pinv = 0
    with torch.no_grad():
        t0 = time.perf_counter()
        for pair_idx, (front, end) in enumerate(model.pairs):
            ta = time.perf_counter()
            front_feats = extract_block_features(model.anchors[front], images)
            end_feats = extract_block_features(model.anchors[end], images)
            tb = time.perf_counter()
            for layer_id, positions in groups.items():
                ws, bs = [], []
                for j, k in positions:
                    w, b = ps_inv(front_feats[j], end_feats[k - 1])
                    ws.append(w)
                    bs.append(b)
                    num_pinv += 1
                lin = model.stitch_layers[pair_idx][layer_id].transform
                lin.weight.copy_(torch.stack(ws).mean(dim=0))
                lin.bias.copy_(torch.stack(bs).mean(dim=0))
            tc = time.perf_counter()
            t_feat += tb - ta
            t_solve += tc - tb
            del front_feats, end_feats
        t_total = time.perf_counter() - t0

    for p in model.stitch_layers.parameters():
        assert torch.isfinite(p).all()
    print(json.dumps({
        "impl": f"official (PyTorch {torch.__version__})",
        "threads": args.threads,
        "images": args.images,
        "seconds_total": round(t_total, 3),
        "seconds_features": round(t_feat, 3),
        "seconds_solve": round(t_solve, 3),
        "num_pinv": num_pinv,
    }))


if __name__ == "__main__":
    main()
