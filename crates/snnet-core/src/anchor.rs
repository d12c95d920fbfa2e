//! The trait a model family implements to take part in stitching.

use std::ops::Range;

use burn::{
    module::{Module, ModuleDisplay},
    tensor::Tensor,
};

use crate::{
    features::Features,
    layout::{AnchorCosts, AnchorLayout},
    weights::TensorMap,
    Kernels,
};

/// A pretrained network that can be cut between blocks.
///
/// The forward pass is split into a stem ([`embed`](Anchor::embed)), blocks numbered globally
/// across stages ([`block`](Anchor::block)), the transitions between stages (patch merging,
/// subsampling; [`transition`](Anchor::transition)) and the [`head`](Anchor::head). Nothing here
/// knows about stitching; the engine composes these parts.
pub trait Anchor<B: Kernels>: Module<B> + ModuleDisplay {
    /// The static layout (stages, widths, grids).
    fn layout(&self) -> &AnchorLayout;

    /// FLOPs and parameters of every part at the native input size, batch 1.
    fn costs(&self) -> AnchorCosts;

    /// The stem: images `[batch, channels, height, width]` to the input of block 0.
    fn embed(&self, images: Tensor<B, 4>) -> Features<B>;

    /// Runs global block `index`.
    fn block(&self, x: Features<B>, index: usize) -> Features<B>;

    /// Moves features from the last block of stage `into_stage - 1` into stage `into_stage`.
    /// Families whose blocks downsample themselves keep the default (identity).
    fn transition(&self, x: Features<B>, into_stage: usize) -> Features<B> {
        let _ = into_stage;
        x
    }

    /// The head: the output of the last block to logits `[batch, classes]`.
    ///
    /// `final_norm = false` skips the norm that precedes the classifier, as the official stitched
    /// DeiT routes do (spec §9 B1); families without such a norm ignore it.
    fn head(&self, x: Features<B>, final_norm: bool) -> Tensor<B, 2>;

    /// Rewrites a checkpoint of this anchor alone into the keys this implementation reads, for
    /// checkpoint layouts that differ from the one the module follows (current timm's Swin, say).
    /// Families with one layout keep the default (unchanged).
    fn adapt_checkpoint(&self, tensors: TensorMap) -> TensorMap {
        tensors
    }

    /// Seeds the stochastic layers (drop path) for the next training forward, so a run reproduces
    /// and resumes exactly ([`crate::stochastic`]). Families without any keep the default (nothing).
    fn reseed(&self, seed: u64) {
        let _ = seed;
    }

    /// Gives this copy of the anchor its own seed for the stochastic layers (clones share one), so a
    /// copy trained on another thread draws its own masks. Families without any keep the default.
    fn isolate_noise(&mut self) {}

    /// Runs the blocks in `range` (global indices), applying a stage transition before each block
    /// that starts a new stage, except the first block of the range (its input is already there).
    fn blocks(&self, mut x: Features<B>, range: Range<usize>) -> Features<B> {
        let start = range.start;
        for i in range {
            if i > start {
                let layout = self.layout();
                let stage = layout.stage_of(i);
                if stage != layout.stage_of(i - 1) {
                    x = self.transition(x, stage);
                }
            }
            x = self.block(x, i);
        }
        x
    }

    /// The anchor's own forward: stem, every block, final norm and head.
    fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let n = self.layout().num_blocks();
        let x = self.embed(images);
        let x = self.blocks(x, 0..n);
        self.head(x, true)
    }
}
