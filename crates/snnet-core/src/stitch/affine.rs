//! The official stitching layer: an affine map over channels between two anchors.

use burn::{
    module::{Module, Param},
    nn::{Linear, LinearConfig},
    tensor::{backend::Backend, Tensor, TensorData},
};

use super::{LeastSquaresFit, Stitch};
use crate::{features::Features, layout::FeatureKind, ops::linear_rows, space::LayerSlot, Kernels};

/// `y = W x + b` over channels: a Linear on tokens, a 1×1 convolution on maps (applied channels-last),
/// with the map→tokens reshape of the official CNN→ViT stitch when the end anchor takes tokens.
///
/// The parameter is named `transform` as in the official checkpoints (`….transform.weight`).
#[derive(Module, Debug)]
pub struct StitchingLayer<B: Backend> {
    /// The affine map.
    pub transform: Linear<B>,
    /// Feature kind produced for the end anchor.
    #[module(skip)]
    pub out_kind: FeatureKind,
}

impl<B: Kernels> StitchingLayer<B> {
    /// A randomly initialised layer (PyTorch `nn.Linear`'s default init).
    pub fn new(in_channels: usize, out_channels: usize, out_kind: FeatureKind, device: &B::Device) -> Self {
        Self { transform: LinearConfig::new(in_channels, out_channels).init(device), out_kind }
    }

    /// Sets the map from `W` (row-major `[out, in]`, PyTorch orientation) and `b`.
    pub fn set_affine(&mut self, weight: &[f32], bias: &[f32]) {
        let [d_in, d_out] = self.transform.weight.dims();
        let device = self.transform.weight.device();
        // burn's orientation `[in, out]`, transposed on the host into a contiguous tensor: as a
        // transposed view of `[out, in]`, the wgpu backend (with fusion) ran later forwards through
        // it wrongly (the backend suite's least-squares check).
        let w_in_out: Vec<f32> = (0..d_in * d_out).map(|i| weight[(i % d_out) * d_in + i / d_out]).collect();
        let w = Tensor::<B, 2>::from_data(TensorData::new(w_in_out, [d_in, d_out]), &device);
        let b = Tensor::<B, 1>::from_data(TensorData::new(bias.to_vec(), [d_out]), &device);
        self.transform.weight = Param::from_tensor(w);
        self.transform.bias = Some(Param::from_tensor(b));
    }
}

impl<B: Kernels> Stitch<B> for StitchingLayer<B> {
    fn for_slot(slot: &LayerSlot, device: &B::Device) -> crate::Result<Self> {
        Ok(Self::new(slot.in_channels, slot.out_channels, slot.out_kind, device))
    }

    /// Applies the map.
    fn forward(&self, x: Features<B>) -> Features<B> {
        match x {
            Features::Tokens(t) => Features::Tokens(linear_rows(&self.transform, t)),
            Features::Map(m) => {
                let y = linear_rows(&self.transform, m.permute([0, 2, 3, 1]));
                match self.out_kind {
                    FeatureKind::Map => Features::Map(y.permute([0, 3, 1, 2])),
                    FeatureKind::Tokens => {
                        let [b, h, w, c] = y.dims();
                        Features::Tokens(y.reshape([b, h * w, c]))
                    }
                }
            }
        }
    }

    fn fittable(&self) -> bool {
        true
    }

    fn fit(&mut self, fit: &LeastSquaresFit) {
        self.set_affine(&fit.weight, &fit.bias);
    }
}
