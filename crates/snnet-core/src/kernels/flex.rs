//! Kernels that read burn-flex tensors in place (feature `flex`): GEMMs of the `gemm` crate (the
//! one burn-flex uses) straight over burn-flex's buffers.
//!
//! - [`linear`]: burn-flex's matmul makes each output three times (a zeroed `Vec<u8>`, then a copy
//!   into an aligned allocation, then the GEMM's write) and a Linear's bias is one more pass over
//!   it. Here the output starts as the bias rows and the GEMM accumulates into it.
//! - [`attention`]: the ViT attention from its qkv projection to the merged heads, two GEMMs per
//!   image and head over strided blocks of qkv, our softmax between.
//! - [`patch_tokens`]: the ViT patch convolution as one GEMM per image into the token rows.
//!
//! Under autodiff on burn-flex, the Linear and the attention are recorded as single operations
//! with GEMM backward passes (`tracked`).
use std::any::Any;

use burn::tensor::{backend::Backend, DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;

use super::cpu;

/// Below this many multiply-adds a GEMM runs on the calling thread (burn-flex's threshold).
const PARALLEL_MACS: usize = 192 * 192 * 192;

/// The backend's primitive behind `x` as `T` (burn-flex's tensor, or autodiff's tensor over
/// it), when it is one (and not quantised).
fn primitive_as<T: 'static, B: Backend, const D: usize>(x: Tensor<B, D>) -> Option<T> {
    match x.into_primitive() {
        TensorPrimitive::Float(p) => (Box::new(p) as Box<dyn Any>).downcast::<T>().ok().map(|t| *t),
        TensorPrimitive::QFloat(_) => None,
    }
}

/// burn-flex's tensor behind `x`, when `x` is a (not quantised) tensor of burn-flex.
fn flex_tensor<B: Backend, const D: usize>(x: Tensor<B, D>) -> Option<FlexTensor> {
    primitive_as(x)
}

/// The tensor of backend `B` whose primitive is `p`, when `p` is `B`'s float primitive.
fn tensor_of<B: Backend, const D: usize, P: 'static>(p: P) -> Option<Tensor<B, D>> {
    let p = (Box::new(p) as Box<dyn Any>).downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(*p)))
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
/// over burn-flex's buffers, on burn-flex and under autodiff on burn-flex (`Autodiff<Flex>`: one
/// recorded operation whose backward reads the transposes in place, see the module docs). `None`
/// when a tensor is not a contiguous f32 tensor of those backends (another backend, a strided
/// view, another dtype) or the shapes do not chain; the caller then runs burn's own operations.
pub fn linear<B: Backend>(x: &Tensor<B, 2>, weight: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>) -> Option<Tensor<B, 2>> {
    let ([rows, k], [k_w, n]) = (x.dims(), weight.dims());
    if x.dtype() != DType::F32 || k != k_w || bias.is_some_and(|b| b.dims() != [n]) {
        return None;
    }
    if !cpu::runs_in_place(x) {
        return tracked::linear(x, weight, bias);
    }
    let (x, weight, bias) = (flex_tensor(x.clone())?, flex_tensor(weight.clone())?, optional_flex_tensor(bias)?);
    tensor_of(affine(&x, &weight, bias.as_ref(), [rows, k, n])?)
}

/// `x · weight + bias` (`[rows, k] · [k, n] + [n]`) into a new burn-flex tensor: the output
/// starts as the bias rows and the GEMM accumulates into it. `None` when an operand is not a
/// contiguous f32 buffer.
fn affine(x: &FlexTensor, weight: &FlexTensor, bias: Option<&FlexTensor>, [rows, k, n]: [usize; 3]) -> Option<FlexTensor> {
    // `as_slice` is `None` for another dtype or a strided layout.
    let (lhs, rhs) = (x.as_slice::<f32>()?, weight.as_slice::<f32>()?);
    let bias = match bias {
        Some(b) => Some(b.as_slice::<f32>()?),
        None => None,
    };
    if lhs.len() != rows * k || rhs.len() != k * n || bias.is_some_and(|b| b.len() != n) {
        return None;
    }
    let mut out = start_rows(rows, n, bias);
    // SAFETY: `lhs` holds `rows × k`, `rhs` `k × n` and `out` `rows × n` contiguous row-major
    // f32 (checked above).
    unsafe { accumulate_product(rows, n, k, out.as_mut_ptr(), n, bias.is_some(), lhs.as_ptr(), [k, 1], rhs.as_ptr(), [n, 1]) };
    Some(FlexTensor::from_data(TensorData::new(out, [rows, n])))
}

mod tracked;

/// Multi-head self-attention from the fused projection, timm's
/// `softmax(q·kᵀ·d^-½)·v` with the heads merged: `qkv` `[b, n, 3c]` (q, k, v side by side, each
/// `heads` heads of `d = c / heads`) → `[b, n, c]`. Each (image, head) is two GEMMs that read q, k
/// and v in place as strided blocks of `qkv` and write the head's columns of the output, with our
/// softmax in between; under autodiff on burn-flex it is one recorded operation whose backward is
/// four more such GEMMs (see the module docs). burn's formulation (reshape, transposes, narrows,
/// batched matmuls, softmax) makes burn-flex copy the strided views and, in the backward, the
/// gradients of every layout step. `None` when `qkv` is not a contiguous f32 tensor of burn-flex
/// (or autodiff over it) or `3c` is not a multiple of `3·heads`; the caller then runs burn's
/// operations.
pub fn attention<B: Backend>(qkv: &Tensor<B, 3>, heads: usize) -> Option<Tensor<B, 3>> {
    let [batch, tokens, width] = qkv.dims();
    if qkv.dtype() != DType::F32 || heads == 0 || width % (3 * heads) != 0 || tokens == 0 {
        return None;
    }
    let shape = AttentionShape { batch, tokens, heads, head_dim: width / (3 * heads) };
    if !cpu::runs_in_place(qkv) {
        return tracked::attention(qkv, shape);
    }
    let qkv = flex_tensor(qkv.clone())?;
    let (out, _) = attention_forward(qkv.as_slice::<f32>()?, shape)?;
    tensor_of(out)
}

/// The sizes of an attention: `batch` images of `tokens` tokens, `heads` heads of `head_dim`.
#[derive(Debug, Clone, Copy)]
struct AttentionShape {
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
}

impl AttentionShape {
    /// Width of the merged heads, `c`.
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// `d^-½`, the logits' scale.
    fn scale(&self) -> f32 {
        (self.head_dim as f32).powf(-0.5)
    }

    /// Multiply-adds of one (image, head) GEMM pair.
    fn macs_per_head(&self) -> usize {
        2 * self.tokens * self.tokens * self.head_dim
    }
}

/// The forward of [`attention`] on `qkv`'s buffer: the merged heads `[b, n, c]` and the attention
/// probabilities `[b, heads, n, n]` (which the backward needs). `None` when the buffer does not
/// hold `b·n·3c` elements.
fn attention_forward(qkv: &[f32], s: AttentionShape) -> Option<(FlexTensor, FlexTensor)> {
    let (n, d, c) = (s.tokens, s.head_dim, s.width());
    if qkv.len() != s.batch * n * 3 * c {
        return None;
    }
    let mut out = vec![0.0f32; s.batch * n * c];
    let mut probs = vec![0.0f32; s.batch * s.heads * n * n];
    let out_ptr = SharedMut(out.as_mut_ptr());
    for_each_head(&mut probs, n * n, s.macs_per_head(), |i, p| {
        let (image, head) = (i / s.heads, i % s.heads);
        let q = &qkv[image * n * 3 * c + head * d..];
        let (k, v) = (&q[c..], &q[2 * c..]);
        // SAFETY: q, k, v are `n × d` blocks of `qkv` with row stride 3c (in bounds: the length was
        // checked); `p` is this head's `n × n`; the output block (image, head) is `n × d` with row
        // stride c, written by this call only.
        unsafe {
            accumulate_product(n, n, d, p.as_mut_ptr(), n, false, q.as_ptr(), [3 * c, 1], k.as_ptr(), [1, 3 * c]);
            cpu::softmax_rows(p, n, s.scale());
            accumulate_product(n, d, n, out_ptr.at(image * n * c + head * d), c, false, p.as_ptr(), [n, 1], v.as_ptr(), [3 * c, 1]);
        }
    });
    let out = FlexTensor::from_data(TensorData::new(out, [s.batch, n, c]));
    Some((out, FlexTensor::from_data(TensorData::new(probs, [s.batch, s.heads, n, n]))))
}

/// Runs `f(i, block)` for every `block_len`-element block `i` of `blocks` (one per image and
/// head), on up to [`cpu::threads`] threads when the work (`macs` multiply-adds per block) is
/// worth a thread.
fn for_each_head(blocks: &mut [f32], block_len: usize, macs: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let count = blocks.len() / block_len;
    let threads = cpu::threads().min(count).min((count * macs / PARALLEL_MACS).max(1));
    let per = count.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for (t, chunk) in blocks.chunks_mut(per * block_len).enumerate() {
            let f = &f;
            let mut work = move || chunk.chunks_mut(block_len).enumerate().for_each(|(j, block)| f(t * per + j, block));
            if threads == 1 {
                work();
            } else {
                scope.spawn(work);
            }
        }
    });
}

/// A buffer that several threads write at disjoint places (each (image, head) its own columns).
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);

// SAFETY: the callers write disjoint elements only, and the buffer outlives the threads (scoped).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The element `offset`.
    ///
    /// # Safety
    /// `offset` must be inside the buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(offset) }
    }
}

/// `dst = (read_dst ? dst : 0) + lhs · rhs` for `dst` `[m, n]` (row-major, row stride
/// `dst_rs`), `lhs` `[m, k]` and `rhs` `[k, n]` given by their strides `[row, column]`
/// (`[columns, 1]` for a row-major matrix, `[1, rows]` for the transpose of a row-major one).
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
    [lhs_rs, lhs_cs]: [usize; 2],
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
            lhs_cs as isize,
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
                [k, 1],
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

    /// Asserts that `got` is within `tolerance` of `want`, relative to `want`'s largest magnitude
    /// (at least 1).
    fn assert_close<const D: usize>(got: Tensor<Autodiff<Flex>, D>, want: Tensor<Autodiff<Flex>, D>, tolerance: f32, what: &str) {
        let scale: f32 = want.clone().abs().max().into_scalar();
        let diff: f32 = (got - want).abs().max().into_scalar();
        assert!(diff <= tolerance * scale.max(1.0), "{what}: {diff} (largest {scale})");
    }

    #[test]
    fn recorded_linear_gives_burns_values_and_gradients() {
        use burn::module::Module;
        type A = Autodiff<Flex>;
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 1.0);
        // 300·128·256 multiply-adds split between threads; 5·6·3 do not.
        for (rows, i, o) in [(300, 128, 256), (5, 6, 3)] {
            for (with_bias, frozen, x_tracked) in (0..8).map(|c| (c & 1 == 0, c & 2 != 0, c & 4 == 0)) {
                let case = format!("{rows}x{i}x{o}, bias {with_bias}, frozen {frozen}, x tracked {x_tracked}");
                let mut l = LinearConfig::new(i, o).with_bias(with_bias).init::<A>(&device);
                if frozen {
                    l = l.no_grad();
                }
                let x = Tensor::<A, 2>::random([rows, i], normal.clone(), &device);
                let x = if x_tracked { x.require_grad() } else { x };
                let (w, b) = (l.weight.val(), l.bias.as_ref().map(|b| b.val()));
                let got = linear(&x, &w, b.as_ref()).expect("autodiff over flex takes the recorded path");
                let want = l.forward(x.clone());
                assert_close(got.clone(), want.clone(), 1e-5, &format!("{case}: values"));
                if frozen && !x_tracked {
                    continue; // nothing to differentiate
                }
                // Weighted so that every entry of every gradient differs.
                let upstream = Tensor::<A, 2>::random([rows, o], normal.clone(), &device);
                let (got, want) = ((got * upstream.clone()).sum().backward(), (want * upstream).sum().backward());
                let grads = [
                    ("x", x.grad(&got), x.grad(&want)),
                    ("weight", w.grad(&got), w.grad(&want)),
                    (
                        "bias",
                        b.as_ref().and_then(|b| b.grad(&got)).map(|g| g.unsqueeze()),
                        b.as_ref().and_then(|b| b.grad(&want)).map(|g| g.unsqueeze()),
                    ),
                ];
                for (name, got, want) in grads {
                    assert_eq!(got.is_some(), want.is_some(), "{case}: whether {name} has a gradient");
                    if let (Some(got), Some(want)) = (got, want) {
                        assert_close(Tensor::from_inner(got), Tensor::from_inner(want), 1e-5, &format!("{case}: ∂{name}"));
                    }
                }
            }
        }
    }

    /// timm's attention in burn's operations: `qkv` `[b, n, 3c]` → `[b, n, c]`.
    fn attention_reference<B: burn::tensor::backend::Backend>(qkv: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
        let [b, n, c3] = qkv.dims();
        let d = c3 / 3 / heads;
        let parts = qkv.reshape([b, n, 3, heads, d]).permute([2, 0, 3, 1, 4]);
        let [q, k, v] = [0, 1, 2].map(|i| parts.clone().narrow(0, i, 1).reshape([b, heads, n, d]));
        let attn = burn::tensor::activation::softmax(q.matmul(k.swap_dims(2, 3)) * (d as f64).powf(-0.5), 3);
        attn.matmul(v).swap_dims(1, 2).reshape([b, n, heads * d])
    }

    #[test]
    fn attention_gives_timms_values_and_gradients() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 1.0);
        // The second case is enough work to be split between threads.
        for (b, n, heads, d) in [(2, 5, 3, 4), (16, 64, 4, 32)] {
            let case = format!("b {b}, n {n}, {heads} heads of {d}");
            let qkv = Tensor::<Flex, 3>::random([b, n, 3 * heads * d], normal.clone(), &device);
            let plain = super::attention(&qkv, heads).expect("flex tensors take the kernel");
            let want = attention_reference(qkv.clone(), heads);
            let diff: f32 = (plain - want).abs().max().into_scalar();
            assert!(diff < 1e-5, "{case}, no autodiff: {diff}");

            let qkv = Tensor::<A, 3>::from_inner(qkv).require_grad();
            let got = super::attention(&qkv, heads).expect("autodiff over flex takes the recorded kernel");
            let want = attention_reference(qkv.clone(), heads);
            assert_close(got.clone(), want.clone(), 2e-5, &format!("{case}: values"));
            let upstream = Tensor::<A, 3>::random([b, n, heads * d], normal.clone(), &device);
            let got = qkv.grad(&(got * upstream.clone()).sum().backward()).expect("a gradient");
            let want = qkv.grad(&(want * upstream).sum().backward()).expect("a gradient");
            assert_close(Tensor::from_inner(got), Tensor::from_inner(want), 2e-5, &format!("{case}: ∂qkv"));
        }
        // Untracked input under autodiff: values only.
        let qkv = Tensor::<A, 3>::random([2, 5, 12], normal, &device);
        assert_close(super::attention(&qkv, 2).expect("recorded kernel"), attention_reference(qkv.clone(), 2), 2e-5, "untracked");
    }

    #[test]
    fn attention_declines_what_it_cannot_read_in_place() {
        let device = Default::default();
        let qkv = Tensor::<Flex, 3>::random([2, 5, 12], Distribution::Default, &device);
        // 12 is not 3 × 5 heads of a whole width; no heads at all.
        assert!(super::attention(&qkv, 5).is_none());
        assert!(super::attention(&qkv, 0).is_none());
        // A strided view, plain and under autodiff.
        let strided = Tensor::<Flex, 3>::random([2, 12, 5], Distribution::Default, &device).swap_dims(1, 2);
        assert!(super::attention(&strided, 2).is_none());
        assert!(super::attention(&Tensor::<Autodiff<Flex>, 3>::from_inner(strided), 2).is_none());
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
        // The same under autodiff: burn then records its own operations.
        let la = LinearConfig::new(4, 3).init::<Autodiff<Flex>>(&device);
        let xa = Tensor::<Autodiff<Flex>, 2>::random([4, 6], Distribution::Default, &device).transpose();
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
