//! Elementwise kernels that burn-flex runs slowly: exact GELU, the scaled softmax of attention and
//! the bias of token Linears. On burn-flex (f32) they run our vectorised, multi-threaded CPU kernels
//! ([`cpu`]) — GELU in training too; on every other backend, burn's own operations.

use burn::tensor::{activation, backend::Backend, DType, Tensor, TensorData};

/// Exact (erf) GELU, timm's `nn.GELU()`.
///
/// On burn-flex (f32) this runs [`cpu::gelu`] in place on the tensor's buffer: burn-flex's own GELU
/// calls `libm::erff` element by element on one thread, the largest elementwise cost of a DeiT block
/// on the CPU (docs/benchmarks.md, "CPU forward: where the time goes"). Elsewhere: burn's GELU.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if x.dtype() == DType::F32 && B::name(&x.device()) == "autodiff<flex>" {
        return gelu_from_parts(x);
    }
    match cpu::map_in_place(x, cpu::gelu) {
        Ok(y) => y,
        Err(x) => activation::gelu(x),
    }
}

/// GELU under autodiff on burn-flex, from two constants our kernel computes ([`cpu::gelu_parts`]):
/// `x·Φ(x) + (x − x̄)·xφ(x)`, where `x̄` is `x` detached. The second term is zero, so the value is
/// exact GELU, and the gradient is `Φ(x) + x·φ(x)`, exact GELU's derivative — with four cheap
/// elementwise operations recorded instead of burn-flex's scalar, single-threaded erf in both passes.
fn gelu_from_parts<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let (shape, device) = (x.shape(), x.device());
    let data = x.clone().detach().into_data();
    let Ok(values) = data.as_slice::<f32>() else { return activation::gelu(x) };
    let mut cdf = values.to_vec();
    let mut slope = cdf.clone();
    cpu::gelu_parts(&mut cdf, &mut slope);
    let cdf = Tensor::<B, D>::from_data(TensorData::new(cdf, shape.clone()), &device);
    let slope = Tensor::<B, D>::from_data(TensorData::new(slope, shape), &device);
    x.clone() * cdf + (x.clone() - x.detach()) * slope
}

/// `softmax(x · scale)` over the last dimension.
///
/// On burn-flex (f32) this runs [`cpu::softmax_rows`] in place (the scale fused into the row pass,
/// a vectorised `exp`); elsewhere burn's `softmax(x * scale)`.
pub fn softmax_scaled<B: Backend, const D: usize>(x: Tensor<B, D>, scale: f64) -> Tensor<B, D> {
    let row = x.dims()[D - 1];
    match cpu::map_in_place(x, |data| cpu::softmax_rows(data, row, scale as f32)) {
        Ok(y) => y,
        Err(x) => activation::softmax(x * scale, D - 1),
    }
}

/// Elementwise kernels used on the CPU backend (burn-flex) in place of burn-flex's scalar ones.
///
/// Both work on whole rows of a contiguous f32 buffer, vectorise (AVX-512 / AVX2+FMA chosen at run
/// time, plain Rust elsewhere) and split large buffers across threads (as many as burn-flex's rayon
/// pool: `RAYON_NUM_THREADS`, else the available parallelism). The approximations are our own fits
/// (rational for erf, polynomial for exp); their errors are below f32 rounding of the results that
/// matter (see the tests).
pub mod cpu {
    use std::sync::OnceLock;

    use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

    /// Applies `f` to the buffer of `x` in place when `x` is an f32 tensor of burn-flex (whose
    /// `into_data`/`from_data` move the buffer without copying when the tensor is not shared);
    /// returns `x` untouched otherwise.
    pub fn map_in_place<B: Backend, const D: usize>(x: Tensor<B, D>, f: impl FnOnce(&mut [f32])) -> Result<Tensor<B, D>, Tensor<B, D>> {
        if !runs_in_place(&x) {
            return Err(x);
        }
        let device = x.device();
        let mut data = x.into_data();
        match data.as_mut_slice::<f32>() {
            Ok(values) => f(values),
            Err(_) => unreachable!("an f32 tensor gives f32 data"),
        }
        Ok(Tensor::from_data(data, (&device, DType::F32)))
    }

    /// Like [`map_in_place`], for kernels that write a new buffer: `f` reads the buffer of `x` and
    /// returns the elements of a tensor of `shape` on the same device. Returns `x` untouched when it
    /// is not an f32 tensor of burn-flex.
    pub fn map_into<B: Backend, const D: usize, const E: usize>(
        x: Tensor<B, D>,
        shape: [usize; E],
        f: impl FnOnce(&[f32]) -> Vec<f32>,
    ) -> Result<Tensor<B, E>, Tensor<B, D>> {
        if !runs_in_place(&x) {
            return Err(x);
        }
        let device = x.device();
        let data = x.into_data();
        let values = match data.as_slice::<f32>() {
            Ok(values) => f(values),
            Err(_) => unreachable!("an f32 tensor gives f32 data"),
        };
        Ok(Tensor::from_data(TensorData::new(values, shape), (&device, DType::F32)))
    }

    /// Whether [`map_in_place`] and [`map_into`] run on `x`: an f32 tensor of burn-flex (not under autodiff).
    pub fn runs_in_place<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
        x.dtype() == DType::F32 && B::name(&x.device()) == "flex"
    }

    /// Threads for large buffers: `RAYON_NUM_THREADS` (what burn-flex's pool uses), else the
    /// available parallelism.
    pub fn threads() -> usize {
        static THREADS: OnceLock<usize> = OnceLock::new();
        *THREADS.get_or_init(|| {
            std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&t| t > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        })
    }

    /// Below this many elements per thread a buffer is processed on the calling thread
    /// (a spawn costs about as much as this many elements of work).
    const MIN_PER_THREAD: usize = 1 << 18;

    /// Runs `f` over `data` split into chunks of whole rows, on up to [`threads`] threads.
    fn for_row_chunks(data: &mut [f32], row: usize, f: impl Fn(&mut [f32]) + Sync) {
        let rows = data.len() / row.max(1);
        let t = threads().min(data.len() / MIN_PER_THREAD).min(rows).max(1);
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

    /// Adds `row` to every row of `data` (rows of `row.len()` elements), in place.
    pub fn add_to_rows(data: &mut [f32], row: &[f32]) {
        assert!(!row.is_empty() && data.len() % row.len() == 0, "add_to_rows: {} elements are not rows of {}", data.len(), row.len());
        for_row_chunks(data, row.len(), |rows| {
            for r in rows.chunks_exact_mut(row.len()) {
                r.iter_mut().zip(row).for_each(|(x, b)| *x += b);
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

    /// `data` `[b, rows, cols]` with its last two dimensions swapped: `[b, cols, rows]`, contiguous.
    pub fn transpose_last_two(data: &[f32], [b, rows, cols]: [usize; 3]) -> Vec<f32> {
        assert_eq!(data.len(), b * rows * cols, "transpose_last_two: data are not [{b}, {rows}, {cols}]");
        let mut out = vec![0.0; data.len()];
        if rows * cols > 0 {
            for (src, dst) in data.chunks_exact(rows * cols).zip(out.chunks_exact_mut(rows * cols)) {
                transpose_into(src, rows, cols, dst);
            }
        }
        out
    }

    /// The ViT's token sequence from its patch-embedding maps: `maps` `[b, c, n]` (channels first)
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
}

/// Kernels that read burn-flex tensors in place (feature `flex`).
///
/// burn-flex's matmul makes each output three times (a zeroed `Vec<u8>`, then a copy into an
/// aligned allocation, then the GEMM's write) and a Linear's bias is one more pass over it. Here
/// the input and weight are borrowed straight from burn-flex's buffers, the output starts as the
/// bias rows and the GEMM accumulates into it: one write before the GEMM, none after.
#[cfg(feature = "flex")]
pub mod flex {
    use std::any::Any;

    use burn::tensor::{backend::Backend, DType, Tensor, TensorData, TensorPrimitive};
    use burn_flex::FlexTensor;

    use super::cpu;

    /// Below this many multiply-adds a GEMM runs on the calling thread (burn-flex's threshold).
    const PARALLEL_MACS: usize = 192 * 192 * 192;

    /// burn-flex's tensor behind `x`, when `x` is a (not quantised) tensor of burn-flex.
    fn flex_tensor<B: Backend, const D: usize>(x: Tensor<B, D>) -> Option<FlexTensor> {
        match x.into_primitive() {
            TensorPrimitive::Float(p) => (Box::new(p) as Box<dyn Any>).downcast::<FlexTensor>().ok().map(|t| *t),
            TensorPrimitive::QFloat(_) => None,
        }
    }

    /// burn-flex's tensor behind `x` when there is one: `Some(None)` without `x`, `None` when `x`
    /// is not burn-flex's.
    fn optional_flex_tensor<B: Backend, const D: usize>(x: Option<&Tensor<B, D>>) -> Option<Option<FlexTensor>> {
        match x {
            Some(t) => flex_tensor(t.clone()).map(Some),
            None => Some(None),
        }
    }

    /// `x · weight + bias` for `x` `[rows, in]`, `weight` `[in, out]`, `bias` `[out]`, as one GEMM
    /// over burn-flex's buffers. `None` when a tensor is not a contiguous f32 tensor of burn-flex
    /// (autodiff, another backend, a strided view, another dtype) or the shapes do not chain; the
    /// caller then runs burn's own operations.
    pub fn linear<B: Backend>(x: &Tensor<B, 2>, weight: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>) -> Option<Tensor<B, 2>> {
        if !cpu::runs_in_place(x) {
            return None;
        }
        let ([rows, k], [k_w, n]) = (x.dims(), weight.dims());
        if k != k_w || bias.is_some_and(|b| b.dims() != [n]) {
            return None;
        }
        let device = x.device();
        let (x, weight, bias) = (flex_tensor(x.clone())?, flex_tensor(weight.clone())?, optional_flex_tensor(bias)?);
        // `as_slice` is `None` for another dtype or a strided layout.
        let (lhs, rhs) = (x.as_slice::<f32>()?, weight.as_slice::<f32>()?);
        let bias = match &bias {
            Some(b) => Some(b.as_slice::<f32>()?),
            None => None,
        };
        let mut out = start_rows(rows, n, bias);
        // SAFETY: `lhs` holds `rows × k`, `rhs` `k × n` and `out` `rows × n` contiguous row-major
        // f32 (checked by the shapes and `as_slice`).
        unsafe { accumulate_product(rows, n, k, out.as_mut_ptr(), n, bias.is_some(), lhs.as_ptr(), k, rhs.as_ptr(), [n, 1]) };
        Some(Tensor::from_data(TensorData::new(out, [rows, n]), (&device, DType::F32)))
    }

    /// `dst = (read_dst ? dst : 0) + lhs · rhs` for row-major `lhs` `[m, k]` (row stride
    /// `lhs_rs`) and `dst` `[m, n]` (row stride `dst_rs`); `rhs` `[k, n]` has strides
    /// `[row, column]` (`[n, 1]` row-major, `[1, k]` for the transpose of an `[n, k]` matrix).
    /// Threaded above [`PARALLEL_MACS`].
    ///
    /// # Safety
    /// The pointers must address those matrices, `dst` writable and not overlapping the others.
    #[allow(clippy::too_many_arguments)]
    unsafe fn accumulate_product(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        dst_rs: usize,
        read_dst: bool,
        lhs: *const f32,
        lhs_rs: usize,
        rhs: *const f32,
        [rhs_rs, rhs_cs]: [usize; 2],
    ) {
        if m * n == 0 || k == 0 {
            return;
        }
        let parallelism = if m * n * k >= PARALLEL_MACS { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        // SAFETY: the caller's contract.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst,
                1,
                dst_rs as isize,
                read_dst,
                lhs,
                1,
                lhs_rs as isize,
                rhs,
                rhs_cs as isize,
                rhs_rs as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism,
            )
        };
    }

    /// A ViT's token sequence straight from its images: the non-overlapping `patch × patch`
    /// convolution (`weight` `[e, c, patch, patch]`, `bias` `[e]`) as one GEMM per image writing
    /// into rows that already hold the position embedding `pos` `[1, 1 + n, e]` (plus the bias),
    /// after the class token `cls` `[1, 1, e]` — timm's `cat(cls, proj(x).flatten(2).T) + pos`.
    /// `images` `[b, c, h, w]` with `h`, `w` multiples of `patch`. `None` when a tensor is not a
    /// contiguous f32 tensor of burn-flex or the shapes do not fit; the caller then runs burn's
    /// convolution.
    pub fn patch_tokens<B: Backend>(
        images: &Tensor<B, 4>,
        weight: &Tensor<B, 4>,
        bias: Option<&Tensor<B, 1>>,
        cls: &Tensor<B, 3>,
        pos: &Tensor<B, 3>,
        patch: usize,
    ) -> Option<Tensor<B, 3>> {
        if !cpu::runs_in_place(images) || patch == 0 {
            return None;
        }
        let ([b, c, h, w], [e, c_w, ph, pw]) = (images.dims(), weight.dims());
        let (gh, gw) = (h / patch, w / patch);
        let n = gh * gw;
        let shapes_fit = c == c_w
            && [ph, pw] == [patch, patch]
            && h % patch == 0
            && w % patch == 0
            && cls.dims() == [1, 1, e]
            && pos.dims() == [1, n + 1, e]
            && bias.is_none_or(|t| t.dims() == [e]);
        if !shapes_fit {
            return None;
        }
        let device = images.device();
        let (images, weight) = (flex_tensor(images.clone())?, flex_tensor(weight.clone())?);
        let (cls, pos, bias) = (flex_tensor(cls.clone())?, flex_tensor(pos.clone())?, optional_flex_tensor(bias)?);
        let (images, weight) = (images.as_slice::<f32>()?, weight.as_slice::<f32>()?);
        let (cls, pos) = (cls.as_slice::<f32>()?, pos.as_slice::<f32>()?);
        let bias = match &bias {
            Some(t) => Some(t.as_slice::<f32>()?),
            None => None,
        };
        // Patches as rows `[b·n, c·patch·patch]`, each in the weight's (channel, y, x) order.
        let k = c * patch * patch;
        let mut patches = Vec::with_capacity(b * n * k);
        for image in images.chunks_exact(c * h * w) {
            for (gy, gx) in (0..gh).flat_map(|gy| (0..gw).map(move |gx| (gy, gx))) {
                for plane in image.chunks_exact(h * w) {
                    for y in gy * patch..(gy + 1) * patch {
                        patches.extend_from_slice(&plane[y * w + gx * patch..y * w + (gx + 1) * patch]);
                    }
                }
            }
        }
        // Each image's rows: the class token, then the patches' bias; all plus the positions.
        let mut tokens = Vec::with_capacity(b * (n + 1) * e);
        for _ in 0..b {
            tokens.extend(cls.iter().zip(&pos[..e]).map(|(c, p)| c + p));
            for row in pos[e..].chunks_exact(e) {
                match bias {
                    Some(bias) => tokens.extend(row.iter().zip(bias).map(|(p, b)| p + b)),
                    None => tokens.extend_from_slice(row),
                }
            }
        }
        for i in 0..b {
            // SAFETY: image `i`'s patches are `n × k` row-major; its token rows after the class
            // token are `n × e` (row stride `e`) inside `tokens`; the weight `[e, k]` row-major
            // is the `[k, e]` product operand with strides `[1, k]`.
            unsafe {
                accumulate_product(
                    n,
                    e,
                    k,
                    tokens.as_mut_ptr().add((i * (n + 1) + 1) * e),
                    e,
                    true,
                    patches.as_ptr().add(i * n * k),
                    k,
                    weight.as_ptr(),
                    [1, k],
                )
            };
        }
        Some(Tensor::from_data(TensorData::new(tokens, [b, n + 1, e]), (&device, DType::F32)))
    }

    #[cfg(test)]
    mod tests {
        use burn::{
            backend::{Autodiff, Flex},
            nn::LinearConfig,
            tensor::{Distribution, Tensor},
        };

        use super::linear;

        fn max_diff(a: Tensor<Flex, 2>, b: Tensor<Flex, 2>) -> f32 {
            (a - b).abs().max().into_scalar()
        }

        #[test]
        fn fused_gemm_equals_burns_linear() {
            let device = Default::default();
            // 300·128·256 multiply-adds split between threads (above `PARALLEL_MACS`); 5·6·3 do not.
            for (rows, i, o) in [(300, 128, 256), (5, 6, 3)] {
                let x = Tensor::<Flex, 2>::random([rows, i], Distribution::Normal(0.0, 1.0), &device);
                for with_bias in [true, false] {
                    let l = LinearConfig::new(i, o).with_bias(with_bias).init::<Flex>(&device);
                    let bias = l.bias.as_ref().map(|b| b.val());
                    let got = linear(&x, &l.weight.val(), bias.as_ref()).expect("flex tensors take the fused path");
                    assert_eq!(got.dims(), [rows, o]);
                    let diff = max_diff(got, l.forward(x.clone()));
                    assert!(diff < 1e-5, "{rows}x{i}x{o} bias {with_bias}: {diff}");
                }
            }
        }

        #[test]
        fn patch_tokens_equal_convolution_class_token_and_positions() {
            use burn::nn::conv::Conv2dConfig;
            let device = Default::default();
            let (b, c, e, patch, h, w) = (2, 3, 5, 4, 8, 12);
            let n = (h / patch) * (w / patch);
            let images = Tensor::<Flex, 4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            let cls = Tensor::<Flex, 3>::random([1, 1, e], Distribution::Normal(0.0, 1.0), &device);
            let pos = Tensor::<Flex, 3>::random([1, n + 1, e], Distribution::Normal(0.0, 1.0), &device);
            for with_bias in [true, false] {
                let conv = Conv2dConfig::new([c, e], [patch, patch]).with_stride([patch, patch]).with_bias(with_bias).init::<Flex>(&device);
                let maps = conv.forward(images.clone()).reshape([b, e, n]).swap_dims(1, 2);
                let expected = Tensor::cat(vec![cls.clone().expand([b as i64, 1, e as i64]), maps], 1) + pos.clone();
                let bias = conv.bias.as_ref().map(|t| t.val());
                let got = super::patch_tokens(&images, &conv.weight.val(), bias.as_ref(), &cls, &pos, patch)
                    .expect("flex tensors take the fused path");
                assert_eq!(got.dims(), [b, n + 1, e]);
                let diff: f32 = (got - expected).abs().max().into_scalar();
                assert!(diff < 1e-5, "bias {with_bias}: {diff}");
            }
            // A patch that does not tile the image, or positions for another grid, are declined.
            let conv = Conv2dConfig::new([c, e], [patch, patch]).with_stride([patch, patch]).init::<Flex>(&device);
            let bias = conv.bias.as_ref().map(|t| t.val());
            let odd = Tensor::<Flex, 4>::random([b, c, h + 1, w], Distribution::Default, &device);
            assert!(super::patch_tokens(&odd, &conv.weight.val(), bias.as_ref(), &cls, &pos, patch).is_none());
            let short = pos.clone().narrow(1, 0, n);
            assert!(super::patch_tokens(&images, &conv.weight.val(), bias.as_ref(), &cls, &short, patch).is_none());
        }

        #[test]
        fn fused_gemm_declines_what_it_cannot_read_in_place() {
            let device = Default::default();
            let l = LinearConfig::new(4, 3).init::<Flex>(&device);
            let (w, b) = (l.weight.val(), l.bias.as_ref().map(|b| b.val()));
            // A transposed view is not contiguous; mismatched widths do not chain.
            let strided = Tensor::<Flex, 2>::random([4, 6], Distribution::Default, &device).transpose();
            assert!(linear(&strided, &w, b.as_ref()).is_none());
            let narrow = Tensor::<Flex, 2>::random([6, 5], Distribution::Default, &device);
            assert!(linear(&narrow, &w, b.as_ref()).is_none());
            // Under autodiff, burn records the operations instead.
            let la = LinearConfig::new(4, 3).init::<Autodiff<Flex>>(&device);
            let xa = Tensor::<Autodiff<Flex>, 2>::random([6, 4], Distribution::Default, &device);
            assert!(linear(&xa, &la.weight.val(), la.bias.as_ref().map(|b| b.val()).as_ref()).is_none());
        }
    }

    /// `rows × n` elements, each row a copy of `bias` (zeros without one).
    fn start_rows(rows: usize, n: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let Some(bias) = bias else { return vec![0.0; rows * n] };
        let mut out = Vec::with_capacity(rows * n);
        for _ in 0..rows {
            out.extend_from_slice(bias);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use burn::{
        backend::{Autodiff, Flex},
        tensor::{activation, DType, Distribution, Tensor, TensorData},
    };

    use super::*;

    fn values() -> Vec<f32> {
        let mut v: Vec<f32> = (-16_000..=16_000).map(|i| i as f32 * 5e-4).collect();
        v.extend([-1e30, -100.0, -9.0, -5.5, 5.5, 9.0, 100.0, 1e30, 0.0, -0.0]);
        v
    }

    #[test]
    fn cpu_gelu_matches_exact_gelu() {
        let xs = values();
        let device = Default::default();
        let reference: Vec<f64> = activation::gelu(Tensor::<Flex, 1>::from_data(
            TensorData::new(xs.iter().map(|&x| x as f64).collect::<Vec<_>>(), [xs.len()]),
            (&device, DType::F64),
        ))
        .into_data()
        .to_vec()
        .unwrap();
        let mut ours = xs.clone();
        cpu::gelu(&mut ours);
        for ((&x, &r), &o) in xs.iter().zip(&reference).zip(&ours) {
            let err = (o as f64 - r).abs();
            assert!(err <= 1e-6 * (x as f64).abs().max(1.0), "gelu({x}) = {o}, expected {r}");
        }
        // The burn-flex f32 tensor path runs the same kernel.
        let t = gelu(Tensor::<Flex, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device));
        assert_eq!(t.into_data().to_vec::<f32>().unwrap(), ours);
    }

    #[test]
    fn cpu_softmax_matches_f64() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([2, 3, 197, 197], Distribution::Normal(0.0, 4.0), &device);
        let xs = x.clone().into_data().to_vec::<f32>().unwrap();
        let scale = 0.125f64;
        let ours = softmax_scaled(x, scale).into_data().to_vec::<f32>().unwrap();
        for (row, out) in xs.chunks(197).zip(ours.chunks(197)) {
            let max = row.iter().map(|&v| v as f64 * scale).fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 * scale - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (&o, &ei) in out.iter().zip(&e) {
                let r = ei / sum;
                assert!((o as f64 - r).abs() <= 1e-6 * r + 1e-9, "softmax {o} vs {r}");
            }
        }
        // Odd row lengths (no full SIMD chunk, a remainder) and a row of equal values.
        let mut short = vec![1.0f32, 2.0, 3.0, 1.0, 1.0, 1.0];
        cpu::softmax_rows(&mut short, 3, 1.0);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| (v - 3.0f64).exp()).collect();
        let s: f64 = e.iter().sum();
        for (o, r) in short[..3].iter().zip(e.iter().map(|v| v / s)) {
            assert!((*o as f64 - r).abs() < 1e-7);
        }
        assert!(short[3..].iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-7));
    }

    #[test]
    fn maps_become_tokens_with_the_class_token_and_positions() {
        let (b, c, n) = (2, 3, 11); // n not a multiple of the 8-token blocks
        let maps: Vec<f32> = (0..b * c * n).map(|i| i as f32).collect();
        let cls = [0.5, -0.25, 2.0];
        let pos: Vec<f32> = (0..(n + 1) * c).map(|i| 1000.0 * i as f32).collect();
        let tokens = cpu::maps_to_tokens(&maps, [b, c, n], &cls, &pos);
        assert_eq!(tokens.len(), b * (n + 1) * c);
        for image in 0..b {
            for t in 0..=n {
                for ch in 0..c {
                    let value = if t == 0 { cls[ch] } else { maps[(image * c + ch) * n + t - 1] };
                    assert_eq!(tokens[(image * (n + 1) + t) * c + ch], value + pos[t * c + ch], "image {image} token {t} channel {ch}");
                }
            }
        }
    }

    #[test]
    fn last_two_dimensions_transpose() {
        let (b, rows, cols) = (3, 5, 13);
        let data: Vec<f32> = (0..b * rows * cols).map(|i| i as f32).collect();
        let out = cpu::transpose_last_two(&data, [b, rows, cols]);
        for i in 0..b {
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(out[(i * cols + c) * rows + r], data[(i * rows + r) * cols + c]);
                }
            }
        }
        assert!(cpu::transpose_last_two(&[], [2, 0, 3]).is_empty());
    }

    #[test]
    fn cpu_kernels_split_across_threads() {
        // Large enough to be split: the result equals the single-chunk one.
        let n: usize = 4 * 197 * 197 * 8;
        let xs: Vec<f32> = (0..n).map(|i| ((i * 7919) % 2000) as f32 * 0.01 - 10.0).collect();
        let mut whole = xs.clone();
        cpu::gelu(&mut whole);
        let mut by_part = xs.clone();
        by_part.chunks_mut(1000).for_each(cpu::gelu);
        assert_eq!(whole, by_part);
        let mut whole = xs.clone();
        cpu::softmax_rows(&mut whole, 197, 0.5);
        let mut by_part = xs;
        by_part.chunks_mut(197).for_each(|r| cpu::softmax_rows(r, 197, 0.5));
        assert_eq!(whole, by_part);
    }

    #[test]
    fn autodiff_gelu_has_exact_values_and_gradients() {
        let device = Default::default();
        let xs: Vec<f64> = (-800..=800).map(|i| i as f64 * 0.01).chain([-30.0, 30.0]).collect();
        let x =
            Tensor::<Autodiff<Flex>, 1>::from_data(TensorData::new(xs.iter().map(|&v| v as f32).collect::<Vec<_>>(), [xs.len()]), &device)
                .require_grad();
        let y = gelu(x.clone());
        let grads = y.clone().sum().backward();
        let values = y.into_data().to_vec::<f32>().unwrap();
        let slopes = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        let reference =
            Tensor::<Autodiff<Flex>, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), (&device, DType::F64)).require_grad();
        let r = activation::gelu(reference.clone());
        let rg = r.clone().sum().backward();
        let r_values = r.into_data().to_vec::<f64>().unwrap();
        let r_slopes = reference.grad(&rg).unwrap().into_data().to_vec::<f64>().unwrap();
        for i in 0..xs.len() {
            assert!((values[i] as f64 - r_values[i]).abs() <= 1e-6 * xs[i].abs().max(1.0), "gelu({}) = {}", xs[i], values[i]);
            assert!((slopes[i] as f64 - r_slopes[i]).abs() <= 2e-6, "gelu'({}) = {}, expected {}", xs[i], slopes[i], r_slopes[i]);
        }
    }
}
