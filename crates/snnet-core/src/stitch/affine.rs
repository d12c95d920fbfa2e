//! The official stitching layer: an affine map over channels between two anchors.

use burn::{module::Module, tensor::backend::Backend};

use super::{LeastSquaresFit, Stitch, StitchLinear};
use crate::{features::Features, layout::FeatureKind, space::LayerSlot, Kernels};

/// `y = W x + b` over channels: a Linear on tokens, a 1×1 convolution on maps (applied channels-last),
/// with the map→tokens reshape of the official CNN→ViT stitch when the end anchor takes tokens;
/// SN-Netv2's LoRA update when the slot asks for one ([`LayerSlot::lora_rank`]).
///
/// The map is named `transform` as in the official checkpoints (`….transform.weight`).
#[derive(Module, Debug)]
pub struct StitchingLayer<B: Backend> {
    /// The map.
    pub transform: StitchLinear<B>,
    /// Feature kind produced for the end anchor.
    #[module(skip)]
    pub out_kind: FeatureKind,
}

impl<B: Kernels> StitchingLayer<B> {
    /// A randomly initialised layer (PyTorch `nn.Linear`'s default init), without LoRA factors.
    pub fn new(in_channels: usize, out_channels: usize, out_kind: FeatureKind, device: &B::Device) -> Self {
        Self { transform: StitchLinear::new(in_channels, out_channels, 0, device), out_kind }
    }

    /// Sets the map from `W` (row-major `[out, in]`, PyTorch orientation) and `b`.
    pub fn set_affine(&mut self, weight: &[f32], bias: &[f32]) {
        self.transform.set_affine(weight, bias);
    }
}

impl<B: Kernels> Stitch<B> for StitchingLayer<B> {
    /// A fresh layer with the slot's widths and LoRA rank (the space checked the rank fits).
    fn for_slot(slot: &LayerSlot, device: &B::Device) -> crate::Result<Self> {
        Ok(Self { transform: StitchLinear::new(slot.in_channels, slot.out_channels, slot.lora_rank, device), out_kind: slot.out_kind })
    }

    /// Applies the map.
    fn forward(&self, x: Features<B>) -> Features<B> {
        match x {
            Features::Tokens(t) => Features::Tokens(self.transform.forward(t)),
            Features::Map(m) => {
                let y = self.transform.forward(m.permute([0, 2, 3, 1]));
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

    fn merged(self) -> Self {
        Self { transform: self.transform.merged(), out_kind: self.out_kind }
    }
}
