//! Static description of an anchor: its stages, blocks, widths and token grids, and its costs.
//!
//! A layout is pure data (no tensors). The stitch space, the cost model and the stitching layers
//! are all derived from layouts, so nothing in the engine needs to know a model family.

use serde::{Deserialize, Serialize};

/// The shape of the features that flow between blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeatureKind {
    /// Token sequences `[batch, tokens, channels]` (ViT, Swin, LeViT).
    Tokens,
    /// Feature maps `[batch, channels, height, width]` (CNNs).
    Map,
}

/// One stage of an anchor: consecutive blocks that share width and resolution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageLayout {
    /// Number of blocks in the stage.
    pub depth: usize,
    /// Channel width of the features inside the stage.
    pub channels: usize,
    /// Rows contributed per image by one feature tensor of this stage (tokens, or `h·w` for maps).
    /// For ViT this includes the class token (197 at 224×224 with patch 16).
    pub rows_per_image: usize,
    /// Spatial grid `[h, w]` of the stage (the patch grid for ViT, without the class token).
    pub grid: [usize; 2],
    /// Tokens or maps.
    pub kind: FeatureKind,
}

/// The static layout of an anchor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorLayout {
    /// A short human name (`deit_small_patch16_224`, `vit(dim=64, depth=6)`).
    pub name: String,
    /// Input `[channels, height, width]` the anchor was built for.
    pub input: [usize; 3],
    /// Number of classes of the head.
    pub num_classes: usize,
    /// The stages in order. Single-stage families (ViT) have one.
    pub stages: Vec<StageLayout>,
}

impl AnchorLayout {
    /// Total number of blocks over all stages.
    pub fn num_blocks(&self) -> usize {
        self.stages.iter().map(|s| s.depth).sum()
    }

    /// Index of the first block of `stage` in the global block numbering.
    pub fn stage_start(&self, stage: usize) -> usize {
        self.stages[..stage].iter().map(|s| s.depth).sum()
    }

    /// The stage that global block `block` belongs to.
    pub fn stage_of(&self, block: usize) -> usize {
        let mut end = 0;
        for (s, stage) in self.stages.iter().enumerate() {
            end += stage.depth;
            if block < end {
                return s;
            }
        }
        self.stages.len() - 1
    }
}

/// FLOPs and parameters of one part of an anchor.
///
/// FLOPs follow fvcore's convention, as the official SN-Net reports them: multiply-accumulates of
/// linear/conv/matmul (attention included, bias ignored), 5 per element for LayerNorm, 2 for BatchNorm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartCost {
    /// Multiply-accumulates at batch 1.
    pub flops: u64,
    /// Parameters the part holds (every element the part's computation reads).
    pub params: u64,
    /// Parameters the official `get_model_size` counts for this part inside a *stitched* route
    /// (equal to `params` except where the official count is off, e.g. DeiT's class token and
    /// position embedding, spec §9 B4).
    pub params_official: u64,
}

impl PartCost {
    /// A part whose official count equals its true count.
    pub fn new(flops: u64, params: u64) -> Self {
        Self { flops, params, params_official: params }
    }

    /// [`PartCost::new`] from counts computed in 128 bits, each clamped to `u64::MAX`: cost
    /// formulas of absurd configurations saturate (and are then refused by a limit) instead of
    /// overflowing.
    pub fn saturating(flops: u128, params: u128) -> Self {
        let clamp = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
        Self::new(clamp(flops), clamp(params))
    }
}

/// Sums saturate at `u64::MAX` (see [`PartCost::saturating`]).
impl std::ops::Add for PartCost {
    type Output = PartCost;
    fn add(self, o: PartCost) -> PartCost {
        PartCost {
            flops: self.flops.saturating_add(o.flops),
            params: self.params.saturating_add(o.params),
            params_official: self.params_official.saturating_add(o.params_official),
        }
    }
}

impl std::iter::Sum for PartCost {
    fn sum<I: Iterator<Item = PartCost>>(iter: I) -> PartCost {
        iter.fold(PartCost::default(), |a, b| a + b)
    }
}

/// Per-part costs of an anchor at its native input size, batch 1.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorCosts {
    /// The stem (patch embedding, class token, position embedding, CNN stem).
    pub embed: PartCost,
    /// Each block, in global order.
    pub blocks: Vec<PartCost>,
    /// The transition into each stage (index 0 is always zero): patch merging, subsampling.
    pub transitions: Vec<PartCost>,
    /// The head without its final norm (pooling, classifier).
    pub head: PartCost,
    /// The final norm applied before the head (zero where the family has none).
    pub final_norm: PartCost,
    /// The official count of a stitched route leaves out the transitions the *front* anchor runs
    /// (Swin's `get_model_size` omits its patch merging, spec §9 B3): they then add to `params_exact`
    /// only.
    #[serde(default)]
    pub official_omits_front_transitions: bool,
}

impl AnchorCosts {
    /// Cost of the whole anchor forward (every part, final norm included).
    pub fn total(&self) -> PartCost {
        self.embed + self.blocks.iter().copied().sum() + self.transitions.iter().copied().sum() + self.head + self.final_norm
    }
}
