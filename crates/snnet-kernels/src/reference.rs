//! The [`Kernels`] operations in burn's own operations: the defaults every backend starts from,
//! what a backend's override falls back to for operands its kernel does not take, and what the
//! tests hold the overrides to.

use burn::{
    nn::{conv::Conv2d, PaddingConfig2d},
    tensor::{activation, backend::Backend, module, ops::ConvOptions, Slice, Tensor},
};

use crate::Kernels;

/// `x · weight + bias` for `x` `[rows, in]`: burn's `linear` (what `Linear::forward` runs).
pub fn affine<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Tensor<B, 2> {
    module::linear(x, weight, bias)
}

/// The Linear's input gradient `∂y · weightᵀ`.
pub fn affine_input_grad<B: Backend>(grad: Tensor<B, 2>, weight: Tensor<B, 2>) -> Tensor<B, 2> {
    grad.matmul(weight.transpose())
}

/// The Linear's weight gradient `xᵀ · ∂y`.
pub fn affine_weight_grad<B: Backend>(grad: Tensor<B, 2>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    x.transpose().matmul(grad)
}

/// The Linear's bias gradient: `∂y` summed over its rows.
pub fn affine_bias_grad<B: Backend>(grad: Tensor<B, 2>) -> Tensor<B, 1> {
    let [_, out] = grad.dims();
    grad.sum_dim(0).reshape([out])
}

/// Exact (erf) GELU: burn's.
pub fn exact_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    activation::gelu(x)
}

/// Exact GELU's derivative at `x`, `Φ(x) + x·φ(x)` (`Φ` and `φ` the standard normal CDF and
/// density), in burn's operations on a tensor primitive of any rank: what the autodiff backend's
/// GELU node multiplies the gradient by. (burn's own GELU backward is the derivative of GELU's
/// tanh approximation, up to ~1e-3 off.)
pub fn gelu_slope<B: Backend>(x: B::FloatTensorPrimitive) -> B::FloatTensorPrimitive {
    use core::f64::consts::{PI, SQRT_2};
    let erf = B::float_erf(B::float_div_scalar(x.clone(), SQRT_2.into()));
    let cdf = B::float_div_scalar(B::float_add_scalar(erf, 1.0.into()), 2.0.into());
    let square = B::float_mul(x.clone(), x.clone());
    let density = B::float_mul_scalar(B::float_exp(B::float_mul_scalar(square, (-0.5).into())), (1.0 / (2.0 * PI).sqrt()).into());
    B::float_add(cdf, B::float_mul(x, density))
}

/// `conv` applied to `x` `[b, c, h, w]`: burn's convolution, except a 1×1 convolution with a stride
/// and no padding (ResNet's downsampling shortcut), which reads every stride-th row and column
/// and multiplies them with stride 1 — the same products. cubecl's input gradient of the strided
/// 1×1 form is wrong (relative error 1.0 on lavapipe, burn 0.21: a transposed convolution whose
/// kernel is smaller than its stride), so this keeps every GPU backend's training right.
pub fn convolve<B: Backend>(x: Tensor<B, 4>, conv: &Conv2d<B>) -> Tensor<B, 4> {
    let unpadded = matches!(conv.padding, PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0));
    if conv.kernel_size != [1, 1] || conv.stride == [1, 1] || !unpadded {
        return conv.forward(x);
    }
    let [rows, cols] = conv.stride.map(|s| Slice::new(0, None, s as isize));
    let x = x.slice([Slice::full(), Slice::full(), rows, cols]);
    let options = ConvOptions::new([1, 1], [0, 0], conv.dilation, conv.groups);
    module::conv2d(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()), options)
}

/// `softmax(x · scale)` over the last dimension: burn's.
pub fn softmax_scaled<B: Backend, const D: usize>(x: Tensor<B, D>, scale: f64) -> Tensor<B, D> {
    activation::softmax(x * scale, D - 1)
}

/// q, k and v `[b, heads, n, d]` of the fused projection `qkv` `[b, n, 3c]`, as strided views
/// (row stride `3c`), which matrix products take as they are.
fn split_heads<B: Backend>(qkv: Tensor<B, 3>, heads: usize) -> [Tensor<B, 4>; 3] {
    let [b, n, c3] = qkv.dims();
    let d = c3 / 3 / heads;
    // timm: qkv.reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).
    let all = qkv.reshape([b, n, 3 * heads, d]).swap_dims(1, 2);
    [0, 1, 2].map(|i| all.clone().narrow(1, i * heads, heads))
}

/// Multi-head self-attention in burn's operations (see [`Kernels::self_attention`]); the softmax is
/// the backend's [`Kernels::softmax_scaled`].
pub fn self_attention<B: Kernels>(qkv: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
    let [b, n, c3] = qkv.dims();
    let c = c3 / 3;
    let d = c / heads;
    let [q, k, v] = split_heads(qkv, heads);
    let attn = B::softmax_scaled(q.matmul(k.swap_dims(2, 3)), (d as f64).powf(-0.5));
    // timm: (attn @ v).transpose(1, 2).reshape(b, n, c). Computing the transpose (attn v)ᵀ = vᵀ attnᵀ
    // instead gives `[b, h, d, n]`, which is `[b, c, n]` as it lies in memory, so the merged heads
    // are its transpose.
    v.swap_dims(2, 3).matmul(attn.swap_dims(2, 3)).reshape([b, c, n]).swap_dims(1, 2)
}

/// The attention probabilities `softmax(q·kᵀ·d^-½)` `[b, heads, n, n]` of `qkv`, as
/// [`attention`] computes them.
pub fn self_attention_probs<B: Kernels>(qkv: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [q, k, _] = split_heads(qkv, heads);
    let d = q.dims()[3];
    B::softmax_scaled(q.matmul(k.swap_dims(2, 3)), (d as f64).powf(-0.5))
}

/// `∂qkv` `[b, n, 3c]` of the attention from the merged heads' gradient `grad` `[b, n, c]`, its
/// input `qkv` and probabilities `probs` `[b, heads, n, n]`: per head, `∂v = Pᵀ·∂o`, `∂P = ∂o·vᵀ`,
/// `∂S = P ⊙ (∂P − rowsum(∂P ⊙ P))·d^-½`, `∂q = ∂S·k`, `∂k = ∂Sᵀ·q`.
pub fn self_attention_backward<B: Backend>(grad: Tensor<B, 3>, qkv: Tensor<B, 3>, probs: Tensor<B, 4>, heads: usize) -> Tensor<B, 3> {
    let [b, n, c3] = qkv.dims();
    let c = c3 / 3;
    let d = c / heads;
    let [q, k, v] = split_heads(qkv, heads);
    let go = grad.reshape([b, n, heads, d]).swap_dims(1, 2);
    let dv = probs.clone().swap_dims(2, 3).matmul(go.clone());
    let dp = go.matmul(v.swap_dims(2, 3));
    let dot = (dp.clone() * probs.clone()).sum_dim(3);
    let ds = probs * (dp - dot) * (d as f64).powf(-0.5);
    let dq = ds.clone().matmul(k);
    let dk = ds.swap_dims(2, 3).matmul(q);
    // Back to `[b, n, 3c]`: q, k, v side by side, each `heads × d`.
    let merge = |t: Tensor<B, 4>| t.swap_dims(1, 2).reshape([b, n, c]);
    Tensor::cat(vec![merge(dq), merge(dk), merge(dv)], 2)
}

/// A vision transformer's tokens from its images (see [`Kernels::patch_tokens`]): burn's
/// convolution, then the class token in front and the positions added.
pub fn patch_tokens<B: Backend>(images: Tensor<B, 4>, conv: &Conv2d<B>, cls: Tensor<B, 3>, pos: Tensor<B, 3>) -> Tensor<B, 3> {
    tokens_from_maps(conv.forward(images), cls, pos)
}

/// The tokens `[b, 1 + n, e]` from the patch convolution's maps `[b, e, gh, gw]` (`n = gh·gw`):
/// the class token `cls` `[1, 1, e]` in front, the positions `pos` `[1, 1 + n, e]` added.
pub fn tokens_from_maps<B: Backend>(maps: Tensor<B, 4>, cls: Tensor<B, 3>, pos: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, e, gh, gw] = maps.dims();
    let tokens = maps.reshape([b, e, gh * gw]).swap_dims(1, 2);
    Tensor::cat(vec![cls.expand([b as i64, 1, e as i64]), tokens], 1) + pos
}
