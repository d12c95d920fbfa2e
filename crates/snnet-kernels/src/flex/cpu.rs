//! Elementwise kernels for the CPU backend (burn-flex), in place of burn-flex's scalar ones.
//!
//! Both work on whole rows of a contiguous f32 buffer, vectorise (AVX-512 / AVX2+FMA chosen at run
//! time, plain Rust elsewhere) and split large buffers across threads ([`crate::cpu_threads`], as
//! many as burn-flex's rayon pool). The approximations are our own fits
//! (rational for erf, polynomial for exp); their errors are below f32 rounding of the results that
//! matter (see the tests).

use std::sync::OnceLock;

/// Below this many elements per thread a buffer is processed on the calling thread
/// (a spawn costs about as much as this many elements of work).
const MIN_PER_THREAD: usize = 1 << 18;

/// Runs `f` over `data` split into chunks of whole rows, on up to [`crate::cpu_threads`] threads.
fn for_row_chunks(data: &mut [f32], row: usize, f: impl Fn(&mut [f32]) + Sync) {
    let rows = data.len() / row.max(1);
    let t = crate::cpu_threads().min(data.len() / MIN_PER_THREAD).min(rows).max(1);
    if t == 1 {
        return f(data);
    }
    let per = rows.div_ceil(t) * row;
    std::thread::scope(|s| {
        let mut chunks = data.chunks_mut(per);
        let first = chunks.next();
        for chunk in chunks {
            let f = &f;
            s.spawn(move || f(chunk));
        }
        if let Some(chunk) = first {
            f(chunk);
        }
    });
}

/// Writes the transpose of `src` `[rows, cols]` into `dst` `[cols, rows]`.
fn transpose_into(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    // Blocks of 8 columns: each source row's 8 values are one contiguous read, and the 8
    // destination rows being written stay in cache.
    for c0 in (0..cols).step_by(8) {
        let c1 = (c0 + 8).min(cols);
        for (r, row) in src.chunks_exact(cols).enumerate() {
            for (c, &v) in row[c0..c1].iter().enumerate() {
                dst[(c0 + c) * rows + r] = v;
            }
        }
    }
}

/// A vision transformer's token sequence from its patch-embedding maps: `maps` `[b, c, n]` (channels first)
/// becomes `[b, 1 + n, c]` with the class token `cls` `[c]` in front and the position embedding
/// `pos` `[1 + n, c]` added — timm's `cat(cls, flatten(maps).T) + pos` in one pass.
pub fn maps_to_tokens(maps: &[f32], [b, c, n]: [usize; 3], cls: &[f32], pos: &[f32]) -> Vec<f32> {
    assert_eq!(maps.len(), b * c * n, "maps_to_tokens: maps are not [{b}, {c}, {n}]");
    assert_eq!(cls.len(), c, "maps_to_tokens: the class token is not [{c}]");
    assert_eq!(pos.len(), (n + 1) * c, "maps_to_tokens: the position embedding is not [{}, {c}]", n + 1);
    let mut tokens = vec![0.0; b * (n + 1) * c];
    for i in 0..b {
        let out = &mut tokens[i * (n + 1) * c..(i + 1) * (n + 1) * c];
        out[..c].copy_from_slice(cls);
        transpose_into(&maps[i * c * n..(i + 1) * c * n], c, n, &mut out[c..]);
        out.iter_mut().zip(pos).for_each(|(t, p)| *t += p);
    }
    tokens
}

/// `x · Φ(x) = x/2 · (1 + erf(x/√2))` in place, for every element.
pub fn gelu(data: &mut [f32]) {
    for_row_chunks(data, 1, gelu_best);
}

/// Row-wise `softmax(x · scale)` in place, over rows of `row` elements; `scale > 0`.
pub fn softmax_rows(data: &mut [f32], row: usize, scale: f32) {
    assert!(row > 0 && data.len() % row == 0, "softmax_rows: {} elements are not rows of {row}", data.len());
    assert!(scale > 0.0, "softmax_rows: the scale must be positive");
    for_row_chunks(data, row, |xs| softmax_best(xs, row, scale));
}

/// Whether the CPU has AVX-512F (checked once).
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
}

/// Whether the CPU has AVX2 and FMA (checked once).
#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
}

/// Runs `f` compiled for the best vector extension this CPU has (AVX-512, AVX2+FMA, or none):
/// `f` is inlined into a function built with those target features.
#[inline(always)]
fn with_best_simd(f: impl FnOnce()) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn avx512(f: impl FnOnce()) {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(f: impl FnOnce()) {
            f()
        }
        if has_avx512() {
            // SAFETY: the CPU has the features `avx512` is compiled for.
            return unsafe { avx512(f) };
        }
        if has_avx2_fma() {
            // SAFETY: the CPU has the features `avx2` is compiled for.
            return unsafe { avx2(f) };
        }
    }
    f()
}

fn gelu_best(xs: &mut [f32]) {
    with_best_simd(|| gelu_slice(xs))
}

fn softmax_best(xs: &mut [f32], row: usize, scale: f32) {
    with_best_simd(|| softmax_slice(xs, row, scale))
}

/// For GELU's gradient: `x` becomes `Φ(x)` (the normal CDF) and `slope` (holding a copy of `x`)
/// becomes `x·φ(x)`, so that `gelu(x) = x·Φ(x)` and `gelu'(x) = Φ(x) + x·φ(x)`.
pub fn gelu_parts(x: &mut [f32], slope: &mut [f32]) {
    assert_eq!(x.len(), slope.len(), "gelu_parts: buffers of different lengths");
    for_row_chunks(x, 1, |xs| with_best_simd(|| cdf_slice(xs)));
    for_row_chunks(slope, 1, |xs| with_best_simd(|| x_pdf_slice(xs)));
}

#[inline(always)]
fn cdf_slice(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x = normal_cdf(*x);
    }
}

#[inline(always)]
fn x_pdf_slice(xs: &mut [f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for x in xs.iter_mut() {
        let v = *x;
        *x = v * INV_SQRT_2PI * exp_nonpositive(-0.5 * v * v);
    }
}

/// `erf(x/√2)` for |x| ≤ [`ERF_CLAMP`] as `x·P(x²)/Q(x²)`: a rational fit of ours (least squares
/// with Lawson reweighting on [0, 5.5]); max error 4e-8 in exact arithmetic, 3.4e-7 evaluated in
/// f32 (libm's `erff` is within about 6e-8). Beyond the clamp, erf(x/√2) rounds to ±1 in f32.
const ERF_P: [f32; 6] = [0.797_884_5, 0.066_150_686, 0.009_266_948, 0.000_323_028_93, 0.000_012_715_498, 4.739_797_3e-8];
const ERF_Q: [f32; 6] = [1.0, 0.249_573_79, 0.028_210_951, 0.001_842_721_2, 0.000_071_601_735, 1.225_762e-6];
const ERF_CLAMP: f32 = 5.5;

/// `erf(x / √2)`.
#[inline(always)]
fn erf_over_sqrt2(x: f32) -> f32 {
    let x = if x < -ERF_CLAMP {
        -ERF_CLAMP
    } else if x > ERF_CLAMP {
        ERF_CLAMP
    } else {
        x
    };
    let t = x * x;
    let p = ((((ERF_P[5] * t + ERF_P[4]) * t + ERF_P[3]) * t + ERF_P[2]) * t + ERF_P[1]) * t + ERF_P[0];
    let q = ((((ERF_Q[5] * t + ERF_Q[4]) * t + ERF_Q[3]) * t + ERF_Q[2]) * t + ERF_Q[1]) * t + ERF_Q[0];
    x * p / q
}

/// `Φ(x) = (1 + erf(x/√2)) / 2`, with erf exactly ±1 beyond the clamp, as erff rounds there
/// (so gelu(x) = 0 for x ≪ 0).
#[inline(always)]
fn normal_cdf(v: f32) -> f32 {
    let e = if v <= -ERF_CLAMP {
        -1.0
    } else if v >= ERF_CLAMP {
        1.0
    } else {
        erf_over_sqrt2(v)
    };
    0.5 * (1.0 + e)
}

#[inline(always)]
fn gelu_slice(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x *= normal_cdf(*x);
    }
}

/// `e^x` for x ≤ 0 (inputs below -87 give e^-87 ≈ 1.6e-38): 2^k · p(r) with k = round(x/ln 2),
/// r = x - k·ln 2 (two-part ln 2), p a degree-6 polynomial fitted by us on [-ln2/2, ln2/2]
/// (relative error 3e-9 exact, 8e-8 in f32).
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375, exact in 9 bits
    const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 - LN2_HI
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding and subtracting it rounds to an integer
    const C: [f32; 5] = [0.499_999_94, 0.166_665_21, 0.041_668_386, 0.008_368_688, 0.001_381_451];
    let x = if x < -87.0 { -87.0 } else { x };
    // y = ROUND + k exactly, so k is both y - ROUND and the low bits of y (integer ops only,
    // which vectorise where a float-to-int cast does not).
    let y = x * LOG2_E + ROUND;
    let k = y - ROUND;
    let two_k = f32::from_bits(y.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = (((C[4] * r + C[3]) * r + C[2]) * r + C[1]) * r + C[0];
    let p = (p * r + 1.0) * r + 1.0;
    p * two_k
}

const LANES: usize = 16;

#[inline(always)]
fn softmax_slice(xs: &mut [f32], row: usize, scale: f32) {
    for r in xs.chunks_exact_mut(row) {
        // Row max (scale > 0, so max(x·scale) = max(x)·scale), in LANES accumulators.
        let mut acc = [f32::NEG_INFINITY; LANES];
        let mut chunks = r.chunks_exact(LANES);
        for c in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a = if v > *a { v } else { *a };
            }
        }
        let mut max = f32::NEG_INFINITY;
        for &v in acc.iter().chain(chunks.remainder()) {
            max = if v > max { v } else { max };
        }
        let shift = max * scale;
        if !shift.is_finite() {
            // Infinite or NaN entries: burn's softmax in the fallback defines the result.
            let sum: f32 = r.iter().map(|&v| (v * scale - shift).exp()).sum();
            r.iter_mut().for_each(|v| *v = (*v * scale - shift).exp() / sum);
            continue;
        }
        let mut sums = [0.0f32; LANES];
        let mut chunks = r.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (s, v) in sums.iter_mut().zip(c.iter_mut()) {
                let e = exp_nonpositive(*v * scale - shift);
                *v = e;
                *s += e;
            }
        }
        let mut sum: f32 = sums.iter().sum();
        for v in chunks.into_remainder() {
            let e = exp_nonpositive(*v * scale - shift);
            *v = e;
            sum += e;
        }
        let inv = 1.0 / sum;
        for v in r.iter_mut() {
            *v *= inv;
        }
    }
}
