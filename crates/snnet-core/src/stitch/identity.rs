//! The identity between anchors of equal width.

use std::marker::PhantomData;

use burn::{module::Module, tensor::backend::Backend};

use super::Stitch;
use crate::{error::Error, features::Features, layout::FeatureKind, space::LayerSlot, Kernels};

/// Passes the features through unchanged, converting maps to tokens when the end anchor takes
/// tokens; no parameters, nothing to fit. Only for slots whose channels in and out are equal.
#[derive(Module, Debug)]
pub struct IdentityStitch<B: Backend> {
    /// Feature kind produced for the end anchor.
    #[module(skip)]
    pub out_kind: FeatureKind,
    _backend: PhantomData<B>,
}

impl<B: Kernels> Stitch<B> for IdentityStitch<B> {
    fn for_slot(slot: &LayerSlot, _device: &B::Device) -> crate::Result<Self> {
        if slot.in_channels != slot.out_channels {
            return Err(Error::IncompatibleAnchors(format!(
                "an identity stitch needs equal widths; stitching layer `{}` maps {} channels to {}",
                slot.key(),
                slot.in_channels,
                slot.out_channels
            )));
        }
        Ok(Self { out_kind: slot.out_kind, _backend: PhantomData })
    }

    fn forward(&self, x: Features<B>) -> Features<B> {
        match (x, self.out_kind) {
            (Features::Map(m), FeatureKind::Tokens) => {
                let [b, c, h, w] = m.dims();
                Features::Tokens(m.reshape([b, c, h * w]).swap_dims(1, 2))
            }
            (x, _) => x,
        }
    }
}
