//! Tensor operations shared by anchors and stitching layers.

use burn::{nn::Linear, tensor::Tensor};

use crate::Kernels;

/// `linear` applied to the last dimension of `x` `[…, in]` as one 2-D matrix product over all rows
/// (`[rows, in] × [in, out]`, the backend's [`Kernels::affine`]), then reshaped back to `[…, out]`.
///
/// burn's `Linear::forward` on a 3-D input broadcasts the weight into a batched product: on the
/// CPU backend that is one small GEMM per image (and, under autodiff, a per-image weight gradient
/// summed afterwards), about 3× slower than one large GEMM for ViT-sized token batches.
pub fn linear_rows<B: Kernels, const D: usize>(linear: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    over_rows(x, |rows| B::affine(rows, linear.weight.val(), linear.bias.as_ref().map(|b| b.val())))
}

/// `map` applied to `x` `[…, in]` viewed as rows `[rows, in]`, its result `[rows, out]` reshaped
/// back to `[…, out]`: how a per-token (or per-pixel, channels-last) map runs as 2-D products.
pub fn over_rows<B: Kernels, const D: usize>(x: Tensor<B, D>, map: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>) -> Tensor<B, D> {
    let dims = x.dims();
    let rows: usize = dims[..D - 1].iter().product();
    let y = map(x.reshape([rows, dims[D - 1]]));
    let mut out = dims;
    out[D - 1] = y.dims()[1];
    y.reshape(out)
}

#[cfg(test)]
mod tests {
    use burn::{
        backend::{Autodiff, NdArray},
        nn::LinearConfig,
        tensor::{Distribution, ElementConversion},
    };

    use super::*;

    fn assert_same<B: Kernels>(linear: &Linear<B>, x: Tensor<B, 3>) {
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
        let linear = LinearConfig::new(6, 5).init::<NdArray>(&device);
        let bias = linear.bias.as_ref().expect("a bias").val();
        assert!(bias.abs().min().into_scalar() > 0.0, "the bias must matter");
        assert_same(&linear, Tensor::<NdArray, 3>::random([3, 4, 6], Distribution::Normal(0.0, 1.0), &device));
        // Token batches as a ViT has them.
        let wide = LinearConfig::new(64, 256).init::<NdArray>(&device);
        assert_same(&wide, Tensor::<NdArray, 3>::random([8, 300, 64], Distribution::Normal(0.0, 1.0), &device));
        let no_bias = LinearConfig::new(6, 5).with_bias(false).init::<NdArray>(&device);
        assert_same(&no_bias, Tensor::<NdArray, 3>::random([2, 3, 6], Distribution::Normal(0.0, 1.0), &device));
    }

    #[test]
    fn linear_rows_under_autodiff_gives_the_linear_gradients() {
        type A = Autodiff<NdArray>;
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
