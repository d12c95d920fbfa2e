//! What flows between blocks: token sequences or feature maps.

use burn::tensor::{backend::Backend, Tensor};

use crate::layout::FeatureKind;

/// Intermediate features of an anchor.
#[derive(Clone, Debug)]
pub enum Features<B: Backend> {
    /// Tokens `[batch, tokens, channels]`.
    Tokens(Tensor<B, 3>),
    /// Maps `[batch, channels, height, width]`.
    Map(Tensor<B, 4>),
}

impl<B: Backend> Features<B> {
    /// Tokens or map.
    pub fn kind(&self) -> FeatureKind {
        match self {
            Features::Tokens(_) => FeatureKind::Tokens,
            Features::Map(_) => FeatureKind::Map,
        }
    }

    /// Channel width.
    pub fn channels(&self) -> usize {
        match self {
            Features::Tokens(t) => t.dims()[2],
            Features::Map(m) => m.dims()[1],
        }
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        match self {
            Features::Tokens(t) => t.dims()[0],
            Features::Map(m) => m.dims()[0],
        }
    }

    /// Rows of a `[rows, channels]` matrix in the official least-squares order:
    /// tokens are flattened batch-major; maps are permuted to channels-last first (`b, h, w`).
    pub fn into_rows(self) -> Tensor<B, 2> {
        match self {
            Features::Tokens(t) => {
                let [b, n, c] = t.dims();
                t.reshape([b * n, c])
            }
            Features::Map(m) => {
                let [b, c, h, w] = m.dims();
                m.permute([0, 2, 3, 1]).reshape([b * h * w, c])
            }
        }
    }

    /// The token tensor, or the map flattened to row-major tokens `[b, h·w, c]`.
    pub fn into_tokens(self) -> Tensor<B, 3> {
        match self {
            Features::Tokens(t) => t,
            Features::Map(m) => {
                let [b, c, h, w] = m.dims();
                m.reshape([b, c, h * w]).swap_dims(1, 2)
            }
        }
    }
}
