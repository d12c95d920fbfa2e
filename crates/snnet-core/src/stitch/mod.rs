//! The stitching-layer seam: what the network, least squares and the training step ask of a
//! stitching layer, whatever it is.
//!
//! [`StitchedNet`](crate::StitchedNet) holds one layer per slot of the stitch space
//! ([`LayerSlot`]), of any type implementing [`Stitch`]: it builds them
//! ([`Stitch::for_slot`]), runs them between the front and end anchors ([`Stitch::forward`]) and
//! hands least squares' solution to those that take one ([`Stitch::fittable`], [`Stitch::fit`]).
//! Training tells their parameters from the anchors' by the module structure (the network's
//! `stitch_layers` field), so a new layer needs no change anywhere else. Two layers come with
//! the engine: [`StitchingLayer`], the official affine map (the default), and [`IdentityStitch`],
//! the identity between anchors of equal width (the last segment of an SN-Netv2 two-way route).

use burn::module::{Module, ModuleDisplay};

use crate::{features::Features, space::LayerSlot, Kernels};

mod affine;
mod identity;
mod linear;

pub use affine::StitchingLayer;
pub use identity::IdentityStitch;
pub use linear::StitchLinear;

/// Least squares' solution for one stitching layer: `y = W x + b` with `weight` `W` `[out, in]`
/// (PyTorch's orientation, row-major) and `bias` `b` `[out]`, the mean over the positions that share
/// the layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LeastSquaresFit {
    /// `W`, `[out, in]` row-major.
    pub weight: Vec<f32>,
    /// `b`, `[out]`.
    pub bias: Vec<f32>,
    /// Input channels (`in`).
    pub in_channels: usize,
    /// Output channels (`out`).
    pub out_channels: usize,
}

/// A stitching layer: maps the front anchor's features at a cut to what the end anchor takes.
pub trait Stitch<B: Kernels>: Module<B> + ModuleDisplay {
    /// A freshly initialised layer for `slot` (its channels in and out, the feature kinds); an
    /// error names why this layer cannot serve that slot.
    fn for_slot(slot: &LayerSlot, device: &B::Device) -> crate::Result<Self>;

    /// The layer applied to the front anchor's features.
    fn forward(&self, x: Features<B>) -> Features<B>;

    /// Whether least squares initialises this layer (its features are then collected and its
    /// normal equations solved); `false`: the layer keeps its own initialisation.
    fn fittable(&self) -> bool {
        false
    }

    /// Takes least squares' solution (called only when [`Stitch::fittable`]).
    fn fit(&mut self, fit: &LeastSquaresFit) {
        let _ = fit;
    }

    /// The same map in the form inference runs: a layer trained as a low-rank update of a frozen
    /// map (SN-Netv2's LoRA) folds the update in, so it costs what the plain map costs. The
    /// default: the layer as it is.
    fn merged(self) -> Self {
        self
    }
}
