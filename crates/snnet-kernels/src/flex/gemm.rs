//! GEMMs of the `gemm` crate (the one burn-flex uses) straight over contiguous f32 buffers, for
//! the CPU backend's [`Kernels`](crate::Kernels) overrides (the tensor plumbing is in the parent
//! module):
//!
//! - [`affine`]: burn-flex's matmul makes each output three times (a zeroed `Vec<u8>`, then a copy
//!   into an aligned allocation, then the GEMM's write) and a Linear's bias is one more pass over
//!   it. Here the output starts as the bias rows and the GEMM accumulates into it. Its gradients
//!   ([`input_grad`], [`weight_grad`], [`bias_grad`]) read the transposes in place as strides.
//! - [`attention_forward`], [`self_attention_backward`]: the attention from the qkv projection to the
//!   merged heads, two GEMMs per image and head over strided blocks of qkv with our softmax
//!   between; the backward four more such GEMMs. burn's formulation makes burn-flex copy the
//!   strided views and, in the backward, the gradients of every layout step.
//! - [`patch_tokens`]: a vision transformer's patch convolution as one GEMM per image into the
//!   token rows.

use super::cpu;

/// Below this many multiply-adds a GEMM runs on the calling thread (burn-flex's threshold).
const PARALLEL_MACS: usize = 192 * 192 * 192;

/// `x · weight + bias` (`[rows, k] · [k, n] + [n]`, row-major): the output starts as the bias
/// rows and the GEMM accumulates into it. The caller checks the lengths.
pub(super) fn affine(x: &[f32], weight: &[f32], bias: Option<&[f32]>, [rows, k, n]: [usize; 3]) -> Vec<f32> {
    assert!(
        x.len() == rows * k && weight.len() == k * n && bias.is_none_or(|b| b.len() == n),
        "affine: operands are not [{rows}, {k}] · [{k}, {n}]"
    );
    let mut out = start_rows(rows, n, bias);
    // SAFETY: `x` holds `rows × k`, `weight` `k × n` and `out` `rows × n` contiguous row-major
    // f32 (checked above).
    unsafe { accumulate_product(rows, n, k, out.as_mut_ptr(), n, bias.is_some(), x.as_ptr(), [k, 1], weight.as_ptr(), [n, 1]) };
    out
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

/// The Linear's input gradient `∂y · Wᵀ` `[rows, k]` from `grad` `[rows, n]` and `weight` `[k, n]`.
pub(super) fn input_grad(grad: &[f32], weight: &[f32], [rows, k, n]: [usize; 3]) -> Vec<f32> {
    assert!(grad.len() == rows * n && weight.len() == k * n, "input_grad: operands are not [{rows}, {n}] · [{k}, {n}]ᵀ");
    let mut dx = vec![0.0f32; rows * k];
    // SAFETY: `grad` is `rows × n` row-major, `weight` `k × n` row-major read as its transpose
    // `[n, k]` (strides `[1, n]`), `dx` `rows × k`.
    unsafe { accumulate_product(rows, k, n, dx.as_mut_ptr(), k, false, grad.as_ptr(), [n, 1], weight.as_ptr(), [1, n]) };
    dx
}

/// The Linear's weight gradient `xᵀ · ∂y` `[k, n]` from `grad` `[rows, n]` and `x` `[rows, k]`.
pub(super) fn weight_grad(grad: &[f32], x: &[f32], [rows, k, n]: [usize; 3]) -> Vec<f32> {
    assert!(grad.len() == rows * n && x.len() == rows * k, "weight_grad: operands are not [{rows}, {k}]ᵀ · [{rows}, {n}]");
    let mut dw = vec![0.0f32; k * n];
    // SAFETY: `x` is `rows × k` row-major read as its transpose `[k, rows]` (strides `[1, k]`),
    // `grad` `rows × n`, `dw` `k × n`.
    unsafe { accumulate_product(k, n, rows, dw.as_mut_ptr(), n, false, x.as_ptr(), [1, k], grad.as_ptr(), [n, 1]) };
    dw
}

/// The Linear's bias gradient: the rows of `grad` (`n` wide) summed.
pub(super) fn bias_grad(grad: &[f32], n: usize) -> Vec<f32> {
    let mut db = vec![0.0f32; n];
    for row in grad.chunks_exact(n) {
        db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
    }
    db
}

/// The sizes of an attention: `batch` images of `tokens` tokens, `heads` heads of `head_dim`.
#[derive(Debug, Clone, Copy)]
pub(super) struct AttentionShape {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
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

/// The attention on `qkv`'s buffer `[b, n, 3c]`: the merged heads `[b, n, c]` and the attention
/// probabilities `[b, heads, n, n]` (which the backward needs). `None` when the buffer does not
/// hold `b·n·3c` elements.
pub(super) fn attention_forward(qkv: &[f32], s: AttentionShape) -> Option<(Vec<f32>, Vec<f32>)> {
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
    Some((out, probs))
}

/// The attention's input gradient `∂qkv` `[b, n, 3c]` from the merged heads' gradient `g`
/// `[b, n, c]`, the input `qkv` and the probabilities `probs` of [`attention_forward`]: per (image,
/// head), `∂v = Pᵀ·∂o`, `∂P = ∂o·vᵀ`, `∂S = P ⊙ (∂P − rowsum(∂P ⊙ P))·d^-½`, `∂q = ∂S·k`,
/// `∂k = ∂Sᵀ·q`, written straight into `∂qkv`. `None` when a buffer's length does not fit `s`.
pub(super) fn self_attention_backward(g: &[f32], qkv: &[f32], probs: &[f32], s: AttentionShape) -> Option<Vec<f32>> {
    let (n, d, c) = (s.tokens, s.head_dim, s.width());
    if qkv.len() != s.batch * n * 3 * c || g.len() != s.batch * n * c || probs.len() != s.batch * s.heads * n * n {
        return None;
    }
    let mut dqkv = vec![0.0f32; qkv.len()];
    let dqkv_ptr = SharedMut(dqkv.as_mut_ptr());
    // One `n × n` scratch block per (image, head) for ∂P, then ∂S.
    let mut scratch = vec![0.0f32; probs.len()];
    // Twice the forward's work: four GEMMs of the same size.
    for_each_head(&mut scratch, n * n, 2 * s.macs_per_head(), |i, dp| {
        let (image, head) = (i / s.heads, i % s.heads);
        let base = image * n * 3 * c + head * d;
        let q = &qkv[base..];
        let (k, v) = (&q[c..], &q[2 * c..]);
        let go = &g[image * n * c + head * d..];
        let p = &probs[i * n * n..(i + 1) * n * n];
        // SAFETY: q, k, v (row stride 3c) and ∂o (row stride c) are `n × d` blocks inside
        // their buffers (lengths checked above); `p` and `dp` are `n × n`; this call alone
        // writes the (image, head) blocks of ∂q, ∂k, ∂v in `dqkv`.
        unsafe {
            accumulate_product(n, d, n, dqkv_ptr.at(base + 2 * c), 3 * c, false, p.as_ptr(), [1, n], go.as_ptr(), [c, 1]);
            accumulate_product(n, n, d, dp.as_mut_ptr(), n, false, go.as_ptr(), [c, 1], v.as_ptr(), [1, 3 * c]);
            softmax_backward_rows(dp, p, n, s.scale());
            accumulate_product(n, d, n, dqkv_ptr.at(base), 3 * c, false, dp.as_ptr(), [n, 1], k.as_ptr(), [3 * c, 1]);
            accumulate_product(n, d, n, dqkv_ptr.at(base + c), 3 * c, false, dp.as_ptr(), [1, n], q.as_ptr(), [3 * c, 1]);
        }
    });
    Some(dqkv)
}

/// `dp` (∂P, rows of `row`) becomes the gradient of the unscaled logits `q·kᵀ`:
/// `P ⊙ (∂P − rowsum(∂P ⊙ P)) · scale`.
fn softmax_backward_rows(dp: &mut [f32], p: &[f32], row: usize, scale: f32) {
    for (dp, p) in dp.chunks_exact_mut(row).zip(p.chunks_exact(row)) {
        let dot: f32 = dp.iter().zip(p).map(|(a, b)| a * b).sum();
        dp.iter_mut().zip(p).for_each(|(g, &p)| *g = p * (*g - dot) * scale);
    }
}

/// Runs `f(i, block)` for every `block_len`-element block `i` of `blocks` (one per image and
/// head), on up to [`crate::cpu_threads`] threads when the work (`macs` multiply-adds per block) is
/// worth a thread.
fn for_each_head(blocks: &mut [f32], block_len: usize, macs: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let count = blocks.len() / block_len;
    let threads = crate::cpu_threads().min(count).min((count * macs / PARALLEL_MACS).max(1));
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

/// The sizes of a patch embedding: `batch` images of `channels × height × width`, `embed`
/// channels out, square patches of `patch` tiling the image.
#[derive(Debug, Clone, Copy)]
pub(super) struct PatchShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub embed: usize,
    pub patch: usize,
}

/// A vision transformer's token sequence `[b, 1 + n, e]` straight from its images `[b, c, h, w]`:
/// the non-overlapping `patch × patch` convolution (`weight` `[e, c, patch, patch]`, `bias` `[e]`)
/// as one GEMM per image writing into rows that already hold the position embedding `pos`
/// `[1 + n, e]` (plus the bias), after the class token `cls` `[e]` — timm's
/// `cat(cls, proj(x).flatten(2).T) + pos`. The caller checks that the shapes fit.
pub(super) fn patch_tokens(images: &[f32], weight: &[f32], bias: Option<&[f32]>, cls: &[f32], pos: &[f32], s: PatchShape) -> Vec<f32> {
    let PatchShape { batch: b, channels: c, height: h, width: w, embed: e, patch } = s;
    let (gh, gw) = (h / patch, w / patch);
    let n = gh * gw;
    let k = c * patch * patch;
    assert!(
        h % patch == 0
            && w % patch == 0
            && images.len() == b * c * h * w
            && weight.len() == e * k
            && cls.len() == e
            && pos.len() == (n + 1) * e,
        "patch_tokens: operands do not fit {s:?}"
    );
    // Patches as rows `[b·n, c·patch·patch]`, each in the weight's (channel, y, x) order.
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
    tokens
}
