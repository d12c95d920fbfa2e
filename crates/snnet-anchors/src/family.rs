//! `AnyAnchor`: one type for every anchor family, so mixed families share one `StitchedNet`.

use burn::{
    module::Module,
    tensor::{backend::Backend, Tensor},
};
use snnet_core::{weights::TensorMap, Anchor, AnchorCosts, AnchorLayout, Features, Kernels};

use crate::{levit::Levit, resnet::ResNet, swin::Swin, vit::Vit};

/// An anchor of any supported family.
#[derive(Module, Debug)]
pub enum AnyAnchor<B: Backend> {
    /// Vision Transformer / DeiT.
    Vit(Vit<B>),
    /// Swin Transformer.
    Swin(Swin<B>),
    /// ResNet.
    ResNet(ResNet<B>),
    /// LeViT.
    Levit(Levit<B>),
}

impl<B: Kernels> AnyAnchor<B> {
    /// Sets the stochastic depth rate of the anchor's blocks (timm's linear rule over the blocks).
    pub fn set_drop_path_rate(&mut self, rate: f64) -> crate::error::Result<()> {
        match self {
            AnyAnchor::Vit(m) => m.set_drop_path_rate(rate),
            AnyAnchor::Swin(m) => m.set_drop_path_rate(rate),
            AnyAnchor::ResNet(m) => m.set_drop_path_rate(rate),
            AnyAnchor::Levit(m) => m.set_drop_path_rate(rate),
        }
    }
}

impl<B: Kernels> Anchor<B> for AnyAnchor<B> {
    fn layout(&self) -> &AnchorLayout {
        match self {
            AnyAnchor::Vit(m) => m.layout(),
            AnyAnchor::Swin(m) => m.layout(),
            AnyAnchor::ResNet(m) => m.layout(),
            AnyAnchor::Levit(m) => m.layout(),
        }
    }

    fn costs(&self) -> AnchorCosts {
        match self {
            AnyAnchor::Vit(m) => m.costs(),
            AnyAnchor::Swin(m) => m.costs(),
            AnyAnchor::ResNet(m) => m.costs(),
            AnyAnchor::Levit(m) => m.costs(),
        }
    }

    fn embed(&self, images: Tensor<B, 4>) -> Features<B> {
        match self {
            AnyAnchor::Vit(m) => m.embed(images),
            AnyAnchor::Swin(m) => m.embed(images),
            AnyAnchor::ResNet(m) => m.embed(images),
            AnyAnchor::Levit(m) => m.embed(images),
        }
    }

    fn block(&self, x: Features<B>, index: usize) -> Features<B> {
        match self {
            AnyAnchor::Vit(m) => m.block(x, index),
            AnyAnchor::Swin(m) => m.block(x, index),
            AnyAnchor::ResNet(m) => m.block(x, index),
            AnyAnchor::Levit(m) => m.block(x, index),
        }
    }

    fn transition(&self, x: Features<B>, into_stage: usize) -> Features<B> {
        match self {
            AnyAnchor::Vit(m) => m.transition(x, into_stage),
            AnyAnchor::Swin(m) => m.transition(x, into_stage),
            AnyAnchor::ResNet(m) => m.transition(x, into_stage),
            AnyAnchor::Levit(m) => m.transition(x, into_stage),
        }
    }

    fn head(&self, x: Features<B>, final_norm: bool) -> Tensor<B, 2> {
        match self {
            AnyAnchor::Vit(m) => m.head(x, final_norm),
            AnyAnchor::Swin(m) => m.head(x, final_norm),
            AnyAnchor::ResNet(m) => m.head(x, final_norm),
            AnyAnchor::Levit(m) => m.head(x, final_norm),
        }
    }

    fn adapt_checkpoint(&self, tensors: TensorMap) -> TensorMap {
        match self {
            AnyAnchor::Vit(m) => m.adapt_checkpoint(tensors),
            AnyAnchor::Swin(m) => m.adapt_checkpoint(tensors),
            AnyAnchor::ResNet(m) => m.adapt_checkpoint(tensors),
            AnyAnchor::Levit(m) => m.adapt_checkpoint(tensors),
        }
    }

    fn isolate_noise(&mut self) {
        match self {
            AnyAnchor::Vit(m) => m.isolate_noise(),
            AnyAnchor::Swin(m) => m.isolate_noise(),
            AnyAnchor::ResNet(m) => m.isolate_noise(),
            AnyAnchor::Levit(m) => m.isolate_noise(),
        }
    }

    fn reseed(&self, seed: u64) {
        match self {
            AnyAnchor::Vit(m) => m.reseed(seed),
            AnyAnchor::Swin(m) => m.reseed(seed),
            AnyAnchor::ResNet(m) => m.reseed(seed),
            AnyAnchor::Levit(m) => m.reseed(seed),
        }
    }
}
