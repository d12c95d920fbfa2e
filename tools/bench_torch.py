"""Time the official SN-Net DeiT forward (and optionally cold first forward / a train step) in PyTorch.

Writes nothing; prints one result per line: a readable table, or with --json ONE JSON object
per line on stdout (progress and notes go to stderr), e.g.
    {"impl": "pytorch", "version": "2.0.1+cu117", "timm": "0.6.13", "device": "cpu", "gpu": null,
     "dtype": "f32", "tf32": false, "threads": 2, "batch": 1, "cfg_id": 24, "workload": "forward",
     "latency_ms": 32.1, "min_ms": 31.5, "repeats": 31, "route": "Ti-S@(7,7)", ...}

Run from the repository root:

    python3 tools/bench_torch.py --device cpu --json > torch_cpu.jsonl      # default sweep
    python3 tools/bench_torch.py --device cpu --batch 1 --routes 0,24 --json  # quick run
    python3 tools/bench_torch.py --device cpu --batch 1 --routes 24 --first-forward --train-step
    python3 tools/bench_torch.py --device cuda --dtype bf16 --batch 1,64,256 --json
    python3 tools/bench_torch.py --device cuda --dtype f32 --tf32 on --batch 256 --json
    python3 tools/bench_torch.py --device cuda --dtype bf16 --autocast --train-step --batch 64

Model (the official DeiT SN-Net settings, spec sections 1.2-2.5): random-weight timm
deit_{tiny,small,base}_patch16_224 (pretrained=False, 1000 classes, 224x224 input) as anchors
0, 1, 2; kernel_size 2, stride 1, nearest stitching -> 71 routes, cfg_id 0/1/2 = the anchors
(checked against tools/snnet_torch.enumerate_configs).  A route's forward is
snnet_torch.SNNetDeiT.forward, i.e. the official one: anchors run their untouched timm forward;
stitched routes run patch_embed -> cat cls -> + pos_embed -> blocks/stitching layers -> head on
the cls token (no final norm).

Workloads (each timed per batch size and per route):
* forward        eval mode under torch.inference_mode(); --warmup runs, then repeats until
                 --min-time seconds and --min-repeats runs (capped by --max-repeats), or exactly
                 --repeats runs.  latency_ms = median, min_ms = minimum.
* first_forward  (--first-forward) the very first forward of the route in a fresh model
                 (deep copy of the freshly initialised weights, moved to the device; input
                 already on the device), one run, measured before any other workload, so the
                 first row of the process also pays library/CUDA warm-up ("first_in_process").
* train_step     (--train-step) train mode, forward of the route + cross-entropy (random labels)
                 + backward + AdamW step (lr 1e-4, wd 0.05, PyTorch's default implementation),
                 zero_grad(set_to_none) per step; timed like forward.
Timing: time.perf_counter wall clock per run; on CUDA torch.cuda.synchronize() before and after
each timed run.

Precision: --dtype f32|bf16|f16 casts model and input (model.to(dtype)); with --autocast the
model stays f32 and runs under torch.autocast(device, dtype) instead (field "autocast": true).
--tf32 on|off (CUDA f32 only) sets torch.backends.cuda.matmul.allow_tf32 and
torch.backends.cudnn.allow_tf32; "off" (the default) keeps matmuls in full f32 as PyTorch does by
default (and also keeps the one patch-embedding conv out of TF32, which PyTorch would allow).
timm >= 0.9 uses F.scaled_dot_product_attention in its Attention ("fused_attn" field);
--no-fused-attn selects timm's explicit softmax(q k^T) v path (what timm 0.6.x always runs).

Works with torch 2.0.1 + timm 0.6.13 and torch 2.x + timm >= 1.0 (only torch/timm/numpy/stdlib).
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings

ANCHOR_MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")
ANCHOR_NAMES = ("Ti", "S", "B")
NUM_ROUTES = 71
DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def int_list(text):
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="f32")
    ap.add_argument("--autocast", action="store_true",
                    help="keep the model f32 and run under torch.autocast(dtype) (bf16/f16 only)")
    ap.add_argument("--tf32", choices=("on", "off"), default="off",
                    help="CUDA f32 only: allow TF32 in matmul and cuDNN (default off)")
    ap.add_argument("--batch", type=int_list, default=[1, 8], help="comma list (default 1,8)")
    ap.add_argument("--routes", type=int_list, default=[0, 1, 2, 10, 24, 40, 56, 70],
                    help="comma list of cfg_ids (default: anchors 0,1,2 + 10,24,40,56,70)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch.set_num_threads (default: all cores available)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed runs before timing (default 2 on CPU, 10 on CUDA)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="exact number of timed runs (default: adaptive, see --min-time)")
    ap.add_argument("--min-time", type=float, default=1.0,
                    help="adaptive repeats: time at least this many seconds per workload (1.0)")
    ap.add_argument("--min-repeats", type=int, default=3, help="adaptive repeats: at least (3)")
    ap.add_argument("--max-repeats", type=int, default=200, help="adaptive repeats: at most (200)")
    ap.add_argument("--first-forward", action="store_true",
                    help="also time the first forward of each route in a fresh model (cold)")
    ap.add_argument("--train-step", action="store_true",
                    help="also time a training step (forward + CE + backward + AdamW step)")
    ap.add_argument("--no-forward", action="store_true",
                    help="skip the warm forward workload (e.g. only --train-step)")
    ap.add_argument("--no-fused-attn", action="store_true",
                    help="timm >= 0.9: use the explicit attention instead of F.sdpa")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    args = ap.parse_args()
    if args.autocast and args.dtype == "f32":
        ap.error("--autocast needs --dtype bf16 or f16")
    if args.tf32 == "on" and (args.device != "cuda" or args.dtype != "f32" or args.autocast):
        ap.error("--tf32 on only applies to --device cuda --dtype f32 (without --autocast)")
    if args.warmup is None:
        args.warmup = 10 if args.device == "cuda" else 2
    return args


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def _has_attr(obj, name):
    try:  # torch 2.0's backends.cuda.matmul raises AssertionError for unknown names
        getattr(obj, name)
        return True
    except (AttributeError, AssertionError):
        return False


def set_tf32(torch, on):
    """TF32 for cuBLAS matmul and cuDNN conv: the fp32_precision API where torch has it
    (2.9+, where the allow_tf32 flags are deprecated and must not be mixed with it), else the
    legacy allow_tf32 flags."""
    prec = "tf32" if on else "ieee"
    matmul, cudnn_conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if _has_attr(matmul, "fp32_precision") and _has_attr(cudnn_conv, "fp32_precision"):
        matmul.fp32_precision = prec
        cudnn_conv.fp32_precision = prec
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            matmul.allow_tf32 = on
            torch.backends.cudnn.allow_tf32 = on


def route_label(cfg):
    comb = cfg["comb_id"]
    if len(comb) == 1:
        return ANCHOR_NAMES[comb[0]]
    hops = "-".join(ANCHOR_NAMES[a] for a in comb)
    return hops + "@" + ",".join("(%d,%d)" % tuple(s) for s in cfg["stitch_cfgs"])


class Bench:
    def __init__(self, args):
        self.args = args
        import torch

        if args.no_fused_attn:
            os.environ["TIMM_FUSED_ATTN"] = "0"  # read when timm is imported (timm >= 0.9)
        import timm

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import snnet_torch as sn

        self.torch, self.timm, self.sn = torch, timm, sn
        torch.set_num_threads(args.threads)
        if args.device == "cuda":
            if not torch.cuda.is_available():
                raise SystemExit("--device cuda but torch.cuda.is_available() is False")
            self.gpu = torch.cuda.get_device_name(0)
            set_tf32(torch, args.tf32 == "on")
        else:
            self.gpu = None
        self.device = torch.device(args.device)
        self.dtype = getattr(torch, DTYPES[args.dtype])
        # model weights / input dtype: cast unless autocast keeps them f32
        self.param_dtype = torch.float32 if args.autocast else self.dtype

        torch.manual_seed(args.seed)
        anchors = [timm.create_model(n, pretrained=False, num_classes=1000).eval()
                   for n in ANCHOR_MODELS]
        self.template = sn.SNNetDeiT(anchors, kernel_size=2, stride=1,
                                     nearest_stitching=True).eval()
        configs = self.template.configs
        if len(configs) != NUM_ROUTES:
            raise SystemExit("expected %d routes, enumeration gave %d" % (NUM_ROUTES, len(configs)))
        for i in range(3):
            if configs[i]["comb_id"] != [i] or configs[i]["stitch_cfgs"]:
                raise SystemExit("cfg_id %d is not anchor %d: %r" % (i, i, configs[i]))
        for r in args.routes:
            if not 0 <= r < NUM_ROUTES:
                raise SystemExit("route %d out of range 0..%d" % (r, NUM_ROUTES - 1))
        attn = self.template.anchors[0].blocks[0].attn
        self.fused_attn = bool(getattr(attn, "fused_attn", False))
        self.first_in_process = True
        self.model = None  # the warm eval model, built on first use

    # ---- helpers --------------------------------------------------------------------------
    def fresh_model(self):
        m = copy.deepcopy(self.template)
        return m.to(device=self.device, dtype=self.param_dtype)

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def autocast(self):
        import contextlib

        if not self.args.autocast:
            return contextlib.nullcontext()
        return self.torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def make_input(self, batch):
        g = self.torch.Generator().manual_seed(self.args.seed + batch)
        x = self.torch.randn(batch, 3, 224, 224, generator=g)
        return x.to(device=self.device, dtype=self.param_dtype)

    def run_timed(self, fn):
        """Warmup, then timed runs; returns list of seconds."""
        a = self.args
        for _ in range(a.warmup):
            fn()
        self.sync()
        times = []
        total = 0.0
        while True:
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            dt = time.perf_counter() - t0
            times.append(dt)
            total += dt
            if a.repeats is not None:
                if len(times) >= a.repeats:
                    break
            elif (len(times) >= a.max_repeats
                  or (len(times) >= a.min_repeats and total >= a.min_time)):
                break
        return times

    def record(self, workload, batch, cfg_id, times, **extra):
        a = self.args
        row = {
            "impl": "pytorch",
            "version": self.torch.__version__,
            "timm": self.timm.__version__,
            "device": a.device,
            "gpu": self.gpu,
            "dtype": a.dtype,
            "tf32": a.device == "cuda" and a.dtype == "f32" and not a.autocast and a.tf32 == "on",
            "threads": a.threads,
            "batch": batch,
            "cfg_id": cfg_id,
            "workload": workload,
            "latency_ms": None,
            "min_ms": None,
            "repeats": 0,
            "route": route_label(self.template.configs[cfg_id]),
            "autocast": a.autocast,
            "fused_attn": self.fused_attn,
        }
        if times:
            row.update(latency_ms=round(statistics.median(times) * 1e3, 4),
                       min_ms=round(min(times) * 1e3, 4), repeats=len(times))
        row.update(extra)
        return row

    def guarded(self, workload, batch, cfg_id, fn):
        """Run one measurement; an error (e.g. CUDA OOM, unsupported dtype) becomes an error row."""
        try:
            return fn()
        except (RuntimeError, NotImplementedError) as e:  # torch.cuda.OutOfMemoryError included
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log("ERROR %s batch %d route %d: %s" % (workload, batch, cfg_id, msg))
            self.model = None
            if self.device.type == "cuda":
                self.torch.cuda.empty_cache()
            return self.record(workload, batch, cfg_id, [], error=msg[:300])

    # ---- workloads ------------------------------------------------------------------------
    def first_forward(self, batch, cfg_id):
        torch = self.torch
        model = self.fresh_model().select(cfg_id)
        x = self.make_input(batch)
        self.sync()
        first = self.first_in_process
        self.first_in_process = False
        with torch.inference_mode(), self.autocast():
            t0 = time.perf_counter()
            out = model(x)
            self.sync()
            dt = time.perf_counter() - t0
        assert out.shape == (batch, 1000)
        del model, out
        return self.record("first_forward", batch, cfg_id, [dt], first_in_process=first)

    def forward(self, batch, cfg_id):
        torch = self.torch
        if self.model is None:
            self.model = self.fresh_model()
        model = self.model.select(cfg_id)
        x = self.make_input(batch)
        with torch.inference_mode(), self.autocast():
            out = model(x)
            if not bool(torch.isfinite(out).all()):
                log("WARNING forward batch %d route %d: non-finite output" % (batch, cfg_id))
            assert out.shape == (batch, 1000)
            times = self.run_timed(lambda: model(x))
        self.first_in_process = False
        return self.record("forward", batch, cfg_id, times)

    def train_step(self, batch, cfg_id):
        torch = self.torch
        self.model = None  # free the eval copy (memory on the device)
        model = self.fresh_model().select(cfg_id).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        x = self.make_input(batch)
        g = torch.Generator().manual_seed(self.args.seed)
        y = torch.randint(0, 1000, (batch,), generator=g).to(self.device)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            with self.autocast():
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss

        times = self.run_timed(step)
        self.first_in_process = False
        del model, opt
        return self.record("train_step", batch, cfg_id, times)


TABLE_COLS = (("workload", 13), ("device", 6), ("dtype", 5), ("tf32", 5), ("thr", 3),
              ("batch", 5), ("cfg_id", 6), ("route", 18), ("latency_ms", 11), ("min_ms", 11),
              ("repeats", 7))


def table_line(row):
    vals = []
    for name, width in TABLE_COLS:
        key = "threads" if name == "thr" else name
        v = row.get(key)
        if isinstance(v, float):
            v = "%.3f" % v
        elif v is None:
            v = "ERROR" if name == "latency_ms" else "-"
        vals.append(str(v).rjust(width) if name not in ("workload", "route") else
                    str(v).ljust(width))
    return "  ".join(vals)


def main():
    args = parse_args()
    bench = Bench(args)
    t_start = time.perf_counter()
    log("# torch %s, timm %s, device %s%s, dtype %s%s, threads %d, fused_attn %s; "
        "71 routes, anchors cfg_id 0/1/2 = %s"
        % (bench.torch.__version__, bench.timm.__version__, args.device,
           " (%s)" % bench.gpu if bench.gpu else "", args.dtype,
           " (autocast)" if args.autocast else "", args.threads, bench.fused_attn,
           "/".join(route_label(bench.template.configs[i]) for i in range(3))))
    if not args.json:
        print("  ".join(n.ljust(w) if n in ("workload", "route") else n.rjust(w)
                        for n, w in TABLE_COLS), flush=True)

    workloads = []
    if args.first_forward:
        workloads.append(("first_forward", bench.first_forward))
    if not args.no_forward:
        workloads.append(("forward", bench.forward))
    if args.train_step:
        workloads.append(("train_step", bench.train_step))

    for name, fn in workloads:
        for batch in args.batch:
            for cfg_id in args.routes:
                row = bench.guarded(name, batch, cfg_id, lambda: fn(batch, cfg_id))
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(table_line(row), flush=True)
        bench.model = None
    log("# total %.1f s" % (time.perf_counter() - t_start))


if __name__ == "__main__":
    main()
