"""Side-by-side table of snnet (Rust) vs PyTorch benchmark results, as markdown.

Reads two JSON-lines files: the PyTorch one from tools/bench_torch.py --json and the snnet one
from `snnet bench --json` (one object per line with at least cfg_id, batch, latency_ms, device,
dtype; workload defaults to "forward" when absent).  Rows are matched on
(workload, device, dtype, batch, cfg_id) and printed as a markdown table with snnet ms,
PyTorch ms and the ratio snnet / PyTorch (> 1: snnet slower).  For CUDA f32, when the PyTorch
file holds rows with TF32 off and on, both are shown, each with its own ratio column.
Rows without a partner (or without a latency, e.g. an error row) are listed under the table,
never dropped silently; a short per-group geometric mean of the ratios follows.  Writes nothing
unless --markdown OUT is given (then the same text goes to OUT too).

Run from the repository root:

    python3 tools/bench_compare.py snnet_cpu.jsonl torch_cpu.jsonl
    python3 tools/bench_compare.py snnet_cuda.jsonl torch_cuda.jsonl --markdown bench.md
    python3 tools/bench_compare.py snnet.jsonl torch.jsonl --map-device wgpu=cuda

Rounds: rows may carry a "round" field (tools/bench_side_by_side.sh runs snnet and PyTorch
alternately, workload by workload, for several rounds, so both sides see the same load). Rows of
one key are then merged: each side's ms is its median over the rounds, and the ratio is the median
of the per-round ratios (snnet and PyTorch of the same round), with their range in its own column.
On a shared machine that paired ratio is what to quote.

Normalisation: device "cuda:0" -> "cuda"; dtype float32/fp32 -> f32, bfloat16 -> bf16,
float16/fp16/half -> f16.  PyTorch rows measured with --autocast get dtype "<dtype>+autocast"
so they never stand in for a model cast to that dtype.  Duplicate keys keep the last row
(a note goes to stderr).  Only the standard library is used.
"""
import argparse
import json
import math
import sys

DTYPE_ALIASES = {
    "f32": "f32", "float32": "f32", "fp32": "f32", "float": "f32",
    "bf16": "bf16", "bfloat16": "bf16",
    "f16": "f16", "float16": "f16", "fp16": "f16", "half": "f16",
}
ANCHOR_NAMES = ("Ti", "S", "B")


def norm_device(dev, mapping):
    d = str(dev).strip().lower()
    d = mapping.get(d, d)
    if ":" in d:
        d = d.split(":", 1)[0]
    return mapping.get(d, d)


def norm_dtype(dt):
    d = str(dt).strip().lower()
    return DTYPE_ALIASES.get(d, d)


def read_jsonl(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                print("%s:%d: not JSON, skipped (%s)" % (path, n, e), file=sys.stderr)
                continue
            if isinstance(obj, dict):
                rows.append(obj)
    return rows


def key_of(row, mapping, torch_side):
    dtype = norm_dtype(row.get("dtype", "f32"))
    if torch_side and row.get("autocast"):
        dtype += "+autocast"
    return (str(row.get("workload") or "forward"), norm_device(row.get("device", "?"), mapping),
            dtype, int(row["batch"]), int(row["cfg_id"]))


def latency(row):
    v = row.get("latency_ms")
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def fmt_ms(v):
    if v is None:
        return "—"
    return "%.1f" % v if v >= 100 else ("%.2f" % v if v >= 1 else "%.3f" % v)


def fmt_ratio(r):
    return "—" if r is None else "%.2f" % r


def median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def index(rows, mapping, torch_side, label):
    """key -> row (for PyTorch: key + (tf32,) -> row); rows that cannot be keyed are returned.

    Rows of one key from different rounds merge into one row: latency_ms becomes the median over
    the rounds and "rounds" maps each round to its latency."""
    out, bad = {}, []
    for row in rows:
        try:
            k = key_of(row, mapping, torch_side)
        except (KeyError, TypeError, ValueError):
            bad.append(row)
            continue
        if torch_side:
            k = k + (bool(row.get("tf32", False)),)
        rnd = row.get("round")
        if rnd is not None and latency(row) is not None:
            merged = out.get(k)
            if merged is None or "rounds" not in merged:
                merged = dict(row, rounds={})
            if rnd in merged["rounds"]:
                print("%s: duplicate %r in round %s, keeping the last row" % (label, k, rnd),
                      file=sys.stderr)
            merged["rounds"][rnd] = latency(row)
            merged["latency_ms"] = median(merged["rounds"].values())
            out[k] = merged
            continue
        if k in out:
            print("%s: duplicate %r, keeping the last row" % (label, k), file=sys.stderr)
        out[k] = row
    return out, bad


def paired(srow, trow):
    """Per-round ratios snnet/PyTorch over the rounds both rows have (empty without rounds)."""
    if not srow or not trow or "rounds" not in srow or "rounds" not in trow:
        return []
    common = sorted(set(srow["rounds"]) & set(trow["rounds"]))
    return [srow["rounds"][r] / trow["rounds"][r] for r in common]


def ratio_of(srow, trow, s_ms, t_ms):
    """snnet/PyTorch: the median of the paired per-round ratios when there are rounds."""
    rs = paired(srow, trow)
    if rs:
        return median(rs)
    return s_ms / t_ms if s_ms is not None and t_ms is not None else None


def fmt_range(srow, trow):
    rs = paired(srow, trow)
    return "%.2f–%.2f (%d)" % (min(rs), max(rs), len(rs)) if rs else "—"


def route_name(cfg_id, *rows):
    for r in rows:
        if r and r.get("route"):
            return "%d (%s)" % (cfg_id, r["route"])
    if 0 <= cfg_id < len(ANCHOR_NAMES):
        return "%d (%s)" % (cfg_id, ANCHOR_NAMES[cfg_id])
    return str(cfg_id)


def describe(rows, fields):
    vals = {}
    for r in rows:
        for f in fields:
            if r.get(f) is not None:
                vals.setdefault(f, set()).add(str(r[f]))
    return ", ".join("%s %s" % (f, "/".join(sorted(v))) for f, v in vals.items()) or "-"


def build(snnet_rows, torch_rows, mapping):
    s_idx, s_bad = index(snnet_rows, mapping, False, "snnet")
    t_idx, t_bad = index(torch_rows, mapping, True, "pytorch")
    tf32_on_keys = {k[:5] for k in t_idx if k[5]}
    show_tf32 = any(k[1] == "cuda" and k[2] == "f32" for k in tf32_on_keys)

    lines = []
    lines.append("snnet: " + describe(snnet_rows, ("impl", "version", "backend", "device", "gpu",
                                                     "threads")))
    lines.append("")
    lines.append("PyTorch: " + describe(torch_rows, ("version", "timm", "device", "gpu", "threads",
                                                       "fused_attn")))
    lines.append("")
    with_rounds = any("rounds" in r for r in list(s_idx.values()) + list(t_idx.values()))
    head = ["workload", "device", "dtype", "batch", "route", "snnet ms", "PyTorch ms",
            "snnet/PyTorch"]
    if with_rounds:
        head += ["per-round range (rounds)"]
    if show_tf32:
        head += ["PyTorch TF32 ms", "snnet/PyTorch TF32"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" if i < 5 else "---:" for i in range(len(head))) + "|")

    matched_t = set()
    unmatched_s, no_latency = [], []
    ratios = {}  # (workload, device, dtype) -> [ratio vs the TF32-off / default row]
    for k in sorted(s_idx):
        srow = s_idx[k]
        t_off, t_on = t_idx.get(k + (False,)), t_idx.get(k + (True,))
        if t_off is None and t_on is None:
            unmatched_s.append(srow)
            continue
        for tk, tr in ((k + (False,), t_off), (k + (True,), t_on)):
            if tr is not None:
                matched_t.add(tk)
        s_ms = latency(srow)
        off_ms, on_ms = latency(t_off) if t_off else None, latency(t_on) if t_on else None
        for side, r, v in ((False, srow, s_ms), (True, t_off, off_ms), (True, t_on, on_ms)):
            if r is not None and v is None:
                no_latency.append((side, r))
        if not show_tf32 and t_off is None:  # only a TF32-on row (not CUDA f32): main column
            off_ms, t_off = on_ms, t_on
        workload, device, dtype, batch, cfg_id = k
        r_off, r_on = ratio_of(srow, t_off, s_ms, off_ms), ratio_of(srow, t_on, s_ms, on_ms)
        cells = [workload, device, dtype, str(batch), route_name(cfg_id, t_off, t_on, srow),
                 fmt_ms(s_ms), fmt_ms(off_ms), fmt_ratio(r_off)]
        if with_rounds:
            cells += [fmt_range(srow, t_off)]
        if show_tf32:
            cells += [fmt_ms(on_ms), fmt_ratio(r_on)]
        lines.append("| " + " | ".join(cells) + " |")
        if r_off is not None:
            ratios.setdefault((workload, device, dtype, "PyTorch"), []).append(r_off)
        if show_tf32 and r_on is not None:
            ratios.setdefault((workload, device, dtype, "PyTorch TF32"), []).append(r_on)

    if ratios:
        lines.append("")
        lines.append("Geometric mean of snnet/PyTorch over the matched routes and batches:")
        lines.append("")
        lines.append("| workload | device | dtype | vs | rows | geomean snnet/PyTorch |")
        lines.append("|---|---|---|---|---:|---:|")
        for g in sorted(ratios):
            rs = ratios[g]
            gm = math.exp(sum(math.log(r) for r in rs) / len(rs))
            lines.append("| %s | %s | %s | %s | %d | %.2f |" % (g + (len(rs), gm)))

    unmatched_t = [t_idx[k] for k in sorted(t_idx) if k not in matched_t]

    def row_list(title, rows, torch_side):
        if not rows:
            return
        lines.append("")
        lines.append("%s (%d):" % (title, len(rows)))
        lines.append("")
        for r in rows:
            if torch_side is None:  # (side, row) pairs
                side, r = r
                torch_side_r = side
            else:
                torch_side_r = torch_side
            try:
                k = key_of(r, mapping, torch_side_r)
                desc = "workload %s, device %s, dtype %s, batch %d, cfg_id %d" % k
                desc = ("PyTorch: " if torch_side_r else "snnet: ") + desc
                if torch_side_r:
                    desc += ", tf32 %s" % bool(r.get("tf32", False))
            except (KeyError, TypeError, ValueError):
                desc = "unkeyable"
            extra = ", latency_ms %s" % fmt_ms(latency(r))
            if r.get("error"):
                extra += ", error: %s" % r["error"]
            lines.append("- " + desc + extra)

    row_list("snnet rows with no PyTorch row", unmatched_s, False)
    row_list("PyTorch rows with no snnet row", unmatched_t, True)
    row_list("Matched rows without a latency (errors)", no_latency, None)
    row_list("snnet rows missing cfg_id/batch (ignored)", s_bad, False)
    row_list("PyTorch rows missing cfg_id/batch (ignored)", t_bad, True)
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snnet", help="JSON lines from `snnet bench --json`")
    ap.add_argument("pytorch", help="JSON lines from tools/bench_torch.py --json")
    ap.add_argument("--markdown", metavar="OUT", help="also write the table to OUT")
    ap.add_argument("--map-device", action="append", default=[], metavar="FROM=TO",
                    help="rename a device before matching (e.g. wgpu=cuda, ndarray=cpu)")
    args = ap.parse_args()
    mapping = {}
    for m in args.map_device:
        a, sep, b = m.partition("=")
        if not sep:
            ap.error("--map-device wants FROM=TO, got %r" % m)
        mapping[a.strip().lower()] = b.strip().lower()

    text = build(read_jsonl(args.snnet), read_jsonl(args.pytorch), mapping)
    sys.stdout.write(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
