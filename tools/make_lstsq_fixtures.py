"""Write tests/fixtures/lstsq_reference.safetensors: float64 references for the LS stitch init.

Run from the repository root (needs numpy and safetensors only):

    python3 tools/make_lstsq_fixtures.py

The official SN-Net least-squares init (spec section 1.4, ``ps_inv``) solves
``A = torch.linalg.pinv([X, 1]) @ Y`` in float32 with PyTorch's default cutoff: singular
values of ``Xa = [X, 1]`` below ``max(rows, cols) * eps_float32 * sigma_max`` are dropped.
Then ``W = A^T[:, :Cin]`` (``[Cout, Cin]``) and ``b = A^T[:, Cin]``.  This script computes the
same solution with NumPy in float64 (``np.linalg.pinv(Xa, rcond=max(Xa.shape) * eps_f32)``)
from the float32 inputs it stores, so the reference is exact for the stored data.

Tensors (X, Y float32; weight, bias float64):
    "<case>.x" [rows, Cin], "<case>.y" [rows, Cout], "<case>.weight" [Cout, Cin], "<case>.bias" [Cout]
    "exact_affine.true_weight", "exact_affine.true_bias" (the generating affine map)
Cases: well_conditioned (300x16 -> 12), ill_conditioned (400x24 -> 16), exact_affine (200x10 -> 7).
Metadata (string -> string): generator, cases, and per case: cond (sigma_max / sigma_min of Xa,
all singular values, float64), cond_kept (over the kept ones), rank_kept, cutoff_ratio,
kept_margin (smallest kept sigma / cutoff), dropped_margin (cutoff / largest dropped sigma).

ill_conditioned has non-zero column means (5..50), two outlier channels whose variation is
x100, a graded spectrum, one constant column (exactly collinear with the ones column, so one
singular value is ~0) and one column that is a combination of two others plus a perturbation
whose singular value is 1e-6 * sigma_max (below the cutoff).  Exactly 2 singular values are
dropped, so the answer differs from plain least squares.  Note: with 400 rows the cutoff is
400 * eps_f32 = 4.8e-5 relative, and these offsets + x100 outliers put the smallest kept
singular value near 1e-4..2e-4 relative whatever the scales, so a factor-10 margin on the kept
side is incompatible with cond_kept >= 1e4; the script asserts a factor >= 4 margin on the kept
side, >= 10 on the dropped side, and cond_kept >= 4e3 (factor 10 both sides for the other cases).
Deterministic: numpy.random.default_rng with fixed seeds.
"""
import json
import os

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "lstsq_reference.safetensors")
EPS32 = float(np.finfo(np.float32).eps)


def augment(x32):
    return np.concatenate([x32.astype(np.float64), np.ones((x32.shape[0], 1))], axis=1)


def reference(x32, y32):
    """float64 pinv solution with PyTorch's default float32 cutoff; returns W, b, stats."""
    xa = augment(x32)
    ratio = max(xa.shape) * EPS32
    a = np.linalg.pinv(xa, rcond=ratio) @ y32.astype(np.float64)  # [Cin+1, Cout]
    cin = x32.shape[1]
    weight = np.ascontiguousarray(a.T[:, :cin])
    bias = np.ascontiguousarray(a.T[:, cin])
    sv = np.linalg.svd(xa, compute_uv=False)
    rel = sv / sv[0]
    kept = rel[rel > ratio]
    dropped = rel[rel <= ratio]
    stats = {
        "cond": sv[0] / sv[-1] if sv[-1] > 0 else float("inf"),
        "cond_kept": 1.0 / kept[-1],
        "rank_kept": int(kept.size),
        "cutoff_ratio": ratio,
        "kept_margin": kept[-1] / ratio,
        "dropped_margin": (ratio / dropped[0]) if dropped.size else float("inf"),
        "n_dropped": int(dropped.size),
    }
    return weight, bias, stats


def affine_data(rng, x, cout, noise):
    cin = x.shape[1]
    w = rng.standard_normal((cout, cin)) / np.sqrt(cin)
    b = rng.uniform(-2.0, 2.0, size=cout)
    y = x.astype(np.float64) @ w.T + b
    if noise:
        y = y + noise * rng.standard_normal(y.shape)
    return w, b, y.astype(np.float32)


def well_conditioned():
    rng = np.random.default_rng(101)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    _, _, y = affine_data(rng, x, 12, 1e-2)
    return x, y, {}


def ill_conditioned():
    rng = np.random.default_rng(1234)
    rows, cin, cout = 400, 24, 16
    const_col, near_col, outliers = 11, 17, (3, 20)
    free = [i for i in range(cin) if i not in (const_col, near_col)]
    k = len(free)
    # orthonormal directions that are also orthogonal to the ones vector
    basis = np.concatenate([np.ones((rows, 1)) / np.sqrt(rows), rng.standard_normal((rows, k))], 1)
    q = np.linalg.qr(basis)[0][:, 1:]
    spectrum = np.logspace(0.0, np.log10(0.3), k)  # graded variation, 1 .. 0.3
    rot = np.linalg.qr(np.eye(k) + rng.standard_normal((k, k)))[0]
    x = np.zeros((rows, cin))
    x[:, free] = q @ np.diag(spectrum) @ rot.T * (np.sqrt(rows) * 10.0)
    x[:, list(outliers)] *= 100.0                                   # outlier channels
    x[:, free] += np.sort(rng.uniform(5.0, 50.0, size=k))[::-1]      # non-zero column means
    x[:, const_col] = 3.0                                            # collinear with ones
    x[:, near_col] = x[:, free[1]] - 0.5 * x[:, free[5]]
    sigma_max = np.linalg.svd(augment(x), compute_uv=False)[0]
    e = rng.standard_normal(rows)
    e -= q @ (q.T @ e) + e.mean()
    e /= np.linalg.norm(e)
    # perturbation giving that direction a singular value of ~1e-6 * sigma_max
    x[:, near_col] += 1e-6 * sigma_max * np.sqrt(1.0 + 1.0 + 0.25) * e
    x = x.astype(np.float32)
    _, _, y = affine_data(rng, x, cout, 1e-2)
    return x, y, {}


def exact_affine():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 10)).astype(np.float32)
    w, b, y = affine_data(rng, x, 7, 0.0)
    return x, y, {"exact_affine.true_weight": w, "exact_affine.true_bias": b}


def canonicalize_header(path):
    """Rewrite the JSON header with sorted keys (same byte length) so the file is reproducible.

    safetensors serialises its header from a hash map, so key order varies between runs.
    """
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    assert len(text) <= n, (len(text), n)
    with open(path, "wb") as f:
        f.write(blob[:8] + text + b" " * (n - len(text)) + blob[8 + n:])
    os.chmod(path, 0o644)


def main():
    tensors, meta = {}, {"generator": "tools/make_lstsq_fixtures.py"}
    cases = [("well_conditioned", well_conditioned), ("ill_conditioned", ill_conditioned),
             ("exact_affine", exact_affine)]
    for name, make in cases:
        x, y, extra = make()
        w, b, st = reference(x, y)
        rows, cin = x.shape
        assert x.dtype == np.float32 and y.dtype == np.float32 and y.shape[0] == rows
        assert w.shape == (y.shape[1], cin) and b.shape == (y.shape[1],)
        assert st["dropped_margin"] >= 10.0, (name, st)
        if name == "ill_conditioned":
            assert st["n_dropped"] == 2 and st["rank_kept"] == cin + 1 - 2, (name, st)
            assert st["kept_margin"] >= 4.0, (name, st)
            assert st["cond_kept"] >= 4e3, (name, st)
            assert float(np.abs(x.mean(axis=0)).min()) >= 2.0  # non-zero means (const col: 3)
            # the dropped directions matter: plain float64 least squares gives another answer
            plain = np.linalg.lstsq(augment(x), y.astype(np.float64), rcond=None)[0]
            assert np.abs(plain.T[:, :cin] - w).max() > 1e-2 * np.abs(w).max(), name
        else:
            assert st["n_dropped"] == 0 and st["kept_margin"] >= 10.0, (name, st)
        if name == "exact_affine":
            tw, tb = extra["exact_affine.true_weight"], extra["exact_affine.true_bias"]
            assert np.abs(w - tw).max() < 1e-5 and np.abs(b - tb).max() < 1e-5, name
        tensors.update({f"{name}.x": x, f"{name}.y": y, f"{name}.weight": w, f"{name}.bias": b})
        tensors.update(extra)
        for key in ("cond", "cond_kept", "rank_kept", "cutoff_ratio", "kept_margin", "dropped_margin"):
            meta[f"{name}.{key}"] = repr(st[key]) if isinstance(st[key], float) else str(st[key])
        print(f"{name}: rows {rows} cin {cin} cout {y.shape[1]} rank_kept {st['rank_kept']} "
              f"cond {st['cond']:.3e} cond_kept {st['cond_kept']:.3e} "
              f"kept_margin {st['kept_margin']:.2f} dropped_margin {st['dropped_margin']:.3g}")
    meta["cases"] = ",".join(n for n, _ in cases)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, OUT, metadata=meta)
    canonicalize_header(OUT)
    back = load_file(OUT)
    assert sorted(back) == sorted(tensors)
    assert all(np.array_equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype for k in back)
    with safe_open(OUT, "np") as f:
        assert f.metadata() == meta
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
