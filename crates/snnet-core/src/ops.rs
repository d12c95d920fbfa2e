//! Tensor operations shared by anchors and stitching layers, written the way backends run fastest.

use burn::{
    nn::{conv::Conv2d, Linear, PaddingConfig2d},
    tensor::{backend::Backend, Tensor},
};

use crate::kernels::cpu;

/// `linear` applied to the last dimension of `x` `[…, in]` as one 2-D matrix product over all rows
/// (`[rows, in] × [in, out]`), then reshaped back to `[…, out]`.
///
/// burn's `Linear::forward` on a 3-D input broadcasts the weight into a batched product: on the
/// CPU backend that is one small GEMM per image (and, under autodiff, a per-image weight gradient
/// summed afterwards), about 3× slower than one large GEMM for ViT-sized token batches.
/// On burn-flex (f32, no autodiff) with the `flex` feature, the product is one GEMM over
/// burn-flex's own buffers accumulating into the bias rows (`kernels::flex::linear`); without
/// the feature, the bias is added in place ([`cpu::add_to_rows`]) rather than by a broadcast add
/// into yet another buffer.
pub fn linear_rows<B: Backend, const D: usize>(linear: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    let in_features = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    let y = linear_2d(linear, x.reshape([rows, in_features]));
    let mut out = dims;
    out[D - 1] = y.dims()[1];
    y.reshape(out)
}

/// `x · W + b` for `x` `[rows, in]`.
fn linear_2d<B: Backend>(linear: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if let Some(y) = crate::kernels::flex::linear(&x, &linear.weight.val(), linear.bias.as_ref().map(|b| b.val()).as_ref()) {
        return y;
    }
    let Some(bias) = linear.bias.as_ref().filter(|_| cpu::runs_in_place(&x)) else { return linear.forward(x) };
    let product = x.matmul(linear.weight.val());
    let bias = bias.val();
    let values = bias.to_data();
    let Ok(values) = values.as_slice::<f32>() else { return product + bias.unsqueeze() };
    match cpu::map_in_place(product, |y| cpu::add_to_rows(y, values)) {
        Ok(y) => y,
        Err(product) => product + bias.unsqueeze(),
    }
}

/// A ViT's tokens `[b, 1 + n, e]` from `images` `[b, c, h, w]` in one step on burn-flex (feature
/// `flex`): the `patch × patch`, stride-`patch` convolution `conv` as one GEMM per image into rows
/// holding the class token `cls` `[1, 1, e]` and position embedding `pos` `[1, 1 + n, e]`
/// (`kernels::flex::patch_tokens`). `None` elsewhere, or when `conv` is not such a convolution's
/// weight shape; the caller then runs the convolution and assembles the tokens itself.
pub fn patch_tokens<B: Backend>(
    conv: &Conv2d<B>,
    images: &Tensor<B, 4>,
    cls: &Tensor<B, 3>,
    pos: &Tensor<B, 3>,
    patch: usize,
) -> Option<Tensor<B, 3>> {
    let patchify =
        conv.stride == [patch, patch] && conv.dilation == [1, 1] && conv.groups == 1 && matches!(conv.padding, PaddingConfig2d::Valid);
    if !patchify {
        return None;
    }
    #[cfg(feature = "flex")]
    {
        let bias = conv.bias.as_ref().map(|b| b.val());
        crate::kernels::flex::patch_tokens(images, &conv.weight.val(), bias.as_ref(), cls, pos, patch)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (images, cls, pos);
        None
    }
}

/// Multi-head self-attention from the fused projection `qkv` `[b, n, 3c]` to the merged heads
/// `[b, n, c]` (timm's `softmax(q·kᵀ·d^-½)·v`, `heads` heads) in one step on burn-flex and under
/// autodiff on burn-flex (feature `flex`, `kernels::flex::attention`). `None` elsewhere; the caller
/// then runs burn's operations.
pub fn attention<B: Backend>(qkv: &Tensor<B, 3>, heads: usize) -> Option<Tensor<B, 3>> {
    #[cfg(feature = "flex")]
    {
        crate::kernels::flex::attention(qkv, heads)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (qkv, heads);
        None
    }
}

#[cfg(test)]
mod tests {
    use burn::{
        backend::{Autodiff, Flex},
        nn::LinearConfig,
        tensor::{Distribution, ElementConversion},
    };

    use super::*;

    fn assert_same<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) {
        let expected = linear.forward(x.clone());
        let got = linear_rows(linear, x);
        assert_eq!(got.dims(), expected.dims());
        let scale = expected.clone().abs().max().into_scalar().elem::<f64>();
        let diff = (got - expected).abs().max().into_scalar().elem::<f64>();
        assert!(diff <= 1e-6 * scale, "{diff} (largest output {scale})");
    }

    #[test]
    fn linear_rows_equals_the_broadcast_linear() {
        let device = Default::default();
        let linear = LinearConfig::new(6, 5).init::<Flex>(&device);
        let bias = linear.bias.as_ref().expect("a bias").val();
        assert!(bias.abs().min().into_scalar() > 0.0, "the bias must matter");
        assert_same(&linear, Tensor::<Flex, 3>::random([3, 4, 6], Distribution::Normal(0.0, 1.0), &device));
        // Large enough for the in-place bias to be split between threads.
        let wide = LinearConfig::new(64, 256).init::<Flex>(&device);
        assert_same(&wide, Tensor::<Flex, 3>::random([8, 300, 64], Distribution::Normal(0.0, 1.0), &device));
        let no_bias = LinearConfig::new(6, 5).with_bias(false).init::<Flex>(&device);
        assert_same(&no_bias, Tensor::<Flex, 3>::random([2, 3, 6], Distribution::Normal(0.0, 1.0), &device));
    }

    #[test]
    fn linear_rows_under_autodiff_gives_the_linear_gradients() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let linear = LinearConfig::new(6, 5).init::<A>(&device);
        let x = Tensor::<A, 3>::random([3, 4, 6], Distribution::Normal(0.0, 1.0), &device).require_grad();
        assert_same(&linear, x.clone());
        let grads = (linear_rows(&linear, x.clone()) * 0.5).sum().backward();
        let expected = (linear.forward(x.clone()) * 0.5).sum().backward();
        let bias = linear.bias.as_ref().expect("a bias").val();
        for (got, want) in [
            (bias.grad(&grads), bias.grad(&expected)),
            (x.grad(&grads).map(|g| g.flatten(0, 2)), x.grad(&expected).map(|g| g.flatten(0, 2))),
        ] {
            let (got, want) = (got.expect("a gradient"), want.expect("a gradient"));
            let diff = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-5, "{diff}");
        }
    }
}
