"""Training throughput of the Fashion-MNIST demo SN-Net in PyTorch (the reference side of the
snnet-vs-PyTorch training comparison).

Three timm VisionTransformer anchors (28x28x1 input, patch 7, depth 6, widths 32/64/128 with
1/2/4 heads, 10 classes, class token) stitched as SN-Net does for DeiT (kernel 2, stride 1,
nearest stitching: 35 routes).  Each step: a seeded uniformly random route, forward in train mode,
label-smoothing cross-entropy, backward, AdamW.  --warmup untimed steps, then --steps timed ones.
Prints one JSON line on stdout (progress on stderr); --output FILE also appends it.  Run from the
repository root:

    python3 tools/train_torch.py --threads 2 --steps 30
    python3 tools/train_torch.py --anchors-only              # the largest anchor (route 2) alone
    python3 tools/train_torch.py --route 24                  # one route only, every step
    python3 tools/train_torch.py --data /usr/share/datasets/fashion-mnist --output train.jsonl
"""
import argparse
import gzip
import json
import os
import random
import statistics
import struct
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snnet_torch as sn  # noqa: E402  (our port of the official stitching)

# Demo family: shared geometry, then (embed_dim, num_heads) per anchor, smallest first.
DEMO = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, depth=6, mlp_ratio=4.0,
            qkv_bias=True)
WIDTHS = ((32, 1), (64, 2), (128, 4))
NUM_ROUTES = 35
LARGEST_ANCHOR = 2  # cfg_id 2 = anchor 2 (anchors come first in the official route order)

# Fashion-MNIST training-pixel statistics, the normalisation snnet-train uses.
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="timed training steps (30)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before timing (5)")
    ap.add_argument("--batch", type=int, default=128, help="images per step (128)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    ap.add_argument("--drop-path-rate", type=float, default=0.1,
                    help="stochastic depth of every anchor (0.1)")
    ap.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate (5e-4)")
    ap.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (0.05)")
    ap.add_argument("--label-smoothing", type=float, default=0.1, help="(0.1)")
    ap.add_argument("--clip-grad", type=float, default=None,
                    help="clip the global gradient norm to this value (default: no clipping)")
    ap.add_argument("--route", type=int, default=None,
                    help="train only this route (cfg_id) at every step, with the whole SN-Net's optimiser")
    ap.add_argument("--anchors-only", action="store_true",
                    help="train the largest anchor alone (route 2) instead of random routes")
    ap.add_argument("--data", metavar="DIR", default=None,
                    help="Fashion-MNIST IDX folder (train-images-idx3-ubyte[.gz], "
                         "train-labels-idx1-ubyte[.gz]); default: random pixels")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", metavar="FILE", default=None, help="also append the JSON line here")
    args = ap.parse_args()
    if args.steps < 1 or args.batch < 1 or args.warmup < 0:
        ap.error("--steps and --batch must be >= 1, --warmup >= 0")
    return args


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def make_anchor(embed_dim, num_heads, drop_path_rate):
    """A demo anchor: the same timm VisionTransformer as snnet_torch.make_vit, plus drop path."""
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(global_pool="token", class_token=True, embed_dim=embed_dim,
                             num_heads=num_heads, drop_path_rate=drop_path_rate,
                             norm_layer=partial(nn.LayerNorm, eps=1e-6), **DEMO)


def build_snnet(drop_path_rate):
    anchors = [make_anchor(c, h, drop_path_rate) for c, h in WIDTHS]
    model = sn.SNNetDeiT(anchors, kernel_size=2, stride=1, nearest_stitching=True)
    configs = model.configs
    if len(configs) != NUM_ROUTES:
        raise SystemExit("expected %d routes, the enumeration gave %d" % (NUM_ROUTES, len(configs)))
    for i in range(len(WIDTHS)):  # cfg_id 0..2 must be the plain anchors
        if configs[i]["comb_id"] != [i] or configs[i]["stitch_cfgs"]:
            raise SystemExit("cfg_id %d is not anchor %d: %r" % (i, i, configs[i]))
    return model


def param_groups(module, weight_decay):
    """timm's rule (as snnet-train applies it): no decay on 1-D parameters, biases, cls_token
    and pos_embed (matched on the last key component, so it works inside the SN-Net too)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        last = name.rsplit(".", 1)[-1]
        if p.ndim <= 1 or last in ("bias", "cls_token", "pos_embed"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def _read_idx(path):
    """An IDX file (plain or gzipped) as (dims, raw bytes of the uint8 payload)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise SystemExit("%s: not a uint8 IDX file" % path)
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def _find(folder, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise SystemExit("no %s[.gz] in %s" % (stem, folder))


class Batches:
    """Yields (images [B,1,28,28] normalised float32, labels [B]) - random pixels and labels, or
    random samples of the Fashion-MNIST training split.  Seeded; prepared outside the timing."""

    def __init__(self, batch, seed, data_dir=None):
        self.batch = batch
        self.gen = torch.Generator().manual_seed(seed)
        self.pixels = self.labels = None
        if data_dir is not None:
            dims, pix = _read_idx(_find(data_dir, "train-images-idx3-ubyte"))
            ldims, lab = _read_idx(_find(data_dir, "train-labels-idx1-ubyte"))
            if dims[1:] != (28, 28) or ldims[0] != dims[0]:
                raise SystemExit("unexpected IDX shapes %r / %r" % (dims, ldims))
            self.pixels = torch.frombuffer(bytearray(pix), dtype=torch.uint8).view(-1, 1, 28, 28)
            self.labels = torch.frombuffer(bytearray(lab), dtype=torch.uint8).long()
            log("# Fashion-MNIST: %d training images from %s" % (dims[0], data_dir))

    def next(self):
        if self.pixels is None:
            pix = torch.randint(0, 256, (self.batch, 1, 28, 28), generator=self.gen,
                                dtype=torch.uint8)
            labels = torch.randint(0, 10, (self.batch,), generator=self.gen)
        else:
            idx = torch.randint(0, self.pixels.shape[0], (self.batch,), generator=self.gen)
            pix, labels = self.pixels[idx], self.labels[idx]
        images = (pix.float() / 255.0 - FMNIST_MEAN) / FMNIST_STD
        return images, labels


# --------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------
def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")

    import timm
    from timm.loss import LabelSmoothingCrossEntropy  # the official SN-Net training loss

    model = build_snnet(args.drop_path_rate).to(device).train()
    num_routes = len(model.configs)
    log("# torch %s, timm %s, %d threads, device %s; SN-Net with %d routes (%d parameters)"
        % (torch.__version__, timm.__version__, args.threads, args.device, num_routes,
           sum(p.numel() for p in model.parameters())))

    # The optimiser sees only what is trained: the whole SN-Net, or the largest anchor alone.
    # With zero_grad(set_to_none=True), AdamW skips every parameter the step's route did not
    # use, so a step touches only its route (as snnet-train's step does).
    trained = model.anchors[LARGEST_ANCHOR] if args.anchors_only else model
    opt = torch.optim.AdamW(param_groups(trained, args.weight_decay), lr=args.lr)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=args.label_smoothing)
    rng = random.Random(args.seed)  # route sampler
    batches = Batches(args.batch, args.seed, args.data)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(images, labels, cfg_id):
        model.select(cfg_id)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        if args.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for p in trained.parameters() if p.grad is not None], args.clip_grad)
        opt.step()
        return loss

    times, losses = [], []
    for i in range(args.warmup + args.steps):
        if args.anchors_only:
            cfg_id = LARGEST_ANCHOR
        elif args.route is not None:
            cfg_id = args.route
        else:
            cfg_id = rng.randrange(num_routes)
        images, labels = batches.next()
        images, labels = images.to(device), labels.to(device)
        sync()
        t0 = time.perf_counter()
        loss = step(images, labels, cfg_id)
        sync()
        dt = time.perf_counter() - t0
        loss = float(loss)
        if not torch.isfinite(torch.tensor(loss)):
            raise SystemExit("loss became %r at step %d (route %d)" % (loss, i, cfg_id))
        if i >= args.warmup:
            times.append(dt)
            losses.append(loss)

    row = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "steps": args.steps,
        "images_per_s": round(args.batch * len(times) / sum(times), 2),
        "step_ms_median": round(statistics.median(times) * 1e3, 3),
        # context for the comparison
        "timm": timm.__version__,
        "workload": "anchor" if args.anchors_only else ("route %d" % args.route if args.route is not None else "snnet"),
        "routes": 1 if (args.anchors_only or args.route is not None) else num_routes,
        "warmup": args.warmup,
        "device": args.device,
        "data": "fashion-mnist" if args.data else "random",
        "drop_path_rate": args.drop_path_rate,
        "clip_grad": args.clip_grad,
        "final_loss": round(losses[-1], 4),
    }
    line = json.dumps(row)
    print(line, flush=True)
    if args.output:
        with open(args.output, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
