//! Limits on what an anchor's description may ask for, checked by every family's `validate` (so
//! by [`Description`](crate::Description) before it computes a layout, a cost or a tensor).
//!
//! Two kinds:
//!
//! - **Bounds on single fields**, far above any published model, that keep every size computed
//!   from the fields within range (no overflow, no loop over billions of blocks): widths
//!   [`MAX_WIDTH`], ratios [`MAX_RATIO`], input side [`MAX_IMG_SIZE`], classes [`MAX_CLASSES`],
//!   blocks [`MAX_BLOCKS`], stages [`MAX_STAGES`]. They are fixed.
//! - **Budgets on the whole anchor**, the memory and work it asks for: positions per image at any
//!   stage, parameters (with the index tables an anchor precomputes), and multiply-accumulates per
//!   image. A network that really needs more raises them with an environment variable
//!   ([`MAX_POSITIONS_VAR`], [`MAX_PARAMS_VAR`], [`MAX_FLOPS_VAR`]). The parameter budget also
//!   bounds a whole network (every anchor and stitching layer) before [`Description::build`]
//!   allocates it.
//!
//! The route count of a space has its own limit, [`snnet_core::limits`].
//!
//! [`Description::build`]: crate::Description::build

use snnet_core::{limits::limit_from_env, AnchorLayout, PartCost};

use crate::error::{Error, Result};

/// Widest channel count anywhere in an anchor: 262,144 (2^18). Applies to `embed_dim` and every
/// stage's width, MLP hidden widths, `channels`, `stem_width`, `in_chans`, `num_heads`, `key_dim`.
pub const MAX_WIDTH: usize = 1 << 18;

/// Largest integer ratio (LeViT's `attn_ratio`, `mlp_ratio`): 256.
pub const MAX_RATIO: usize = 256;

/// Largest input side, `img_size`: 16,384 pixels.
pub const MAX_IMG_SIZE: usize = 1 << 14;

/// Most classes of a head, `num_classes`: 16,777,216 (2^24).
pub const MAX_CLASSES: usize = 1 << 24;

/// Most blocks in one anchor, over all its stages: 4,096 (DeiT-B has 12, Swin-B 24, ResNet-50 16).
pub const MAX_BLOCKS: usize = 1 << 12;

/// Most stages of one anchor: 16.
pub const MAX_STAGES: usize = 16;

/// Default of [`max_positions`]: 65,536 positions (tokens or map cells) per image at any stage —
/// a ViT at patch 16 and a LeViT up to 4,096 px, a Swin (patch 4) and a ResNet up to 1,024 px.
pub const DEFAULT_MAX_POSITIONS: u64 = 1 << 16;

/// Environment variable that replaces [`DEFAULT_MAX_POSITIONS`].
pub const MAX_POSITIONS_VAR: &str = "SNNET_MAX_POSITIONS";

/// Default of [`max_params`]: 4,294,967,296 (2^32) parameters and index-table entries, 16 GiB in
/// f32 (DeiT-B has 86 million parameters).
pub const DEFAULT_MAX_PARAMS: u64 = 1 << 32;

/// Environment variable that replaces [`DEFAULT_MAX_PARAMS`].
pub const MAX_PARAMS_VAR: &str = "SNNET_MAX_PARAMS";

/// Default of [`max_flops`]: 2^44 ≈ 17.6 × 10^12 multiply-accumulates per image and anchor
/// (DeiT-B: 17.6 × 10^9).
pub const DEFAULT_MAX_FLOPS: u64 = 1 << 44;

/// Environment variable that replaces [`DEFAULT_MAX_FLOPS`].
pub const MAX_FLOPS_VAR: &str = "SNNET_MAX_FLOPS";

/// The positions-per-image budget in force: [`MAX_POSITIONS_VAR`], else [`DEFAULT_MAX_POSITIONS`].
pub fn max_positions() -> Result<u64> {
    Ok(limit_from_env(MAX_POSITIONS_VAR, DEFAULT_MAX_POSITIONS)?)
}

/// The parameter budget in force: [`MAX_PARAMS_VAR`], else [`DEFAULT_MAX_PARAMS`].
pub fn max_params() -> Result<u64> {
    Ok(limit_from_env(MAX_PARAMS_VAR, DEFAULT_MAX_PARAMS)?)
}

/// The multiply-accumulate budget in force: [`MAX_FLOPS_VAR`], else [`DEFAULT_MAX_FLOPS`].
pub fn max_flops() -> Result<u64> {
    Ok(limit_from_env(MAX_FLOPS_VAR, DEFAULT_MAX_FLOPS)?)
}

/// The first field over its bound is an [`Error::InvalidConfig`] naming the value and the bound.
pub(crate) fn require_at_most(fields: &[(&str, usize, usize)]) -> Result<()> {
    match fields.iter().find(|(_, value, max)| value > max) {
        Some((field, value, max)) => crate::config::invalid(field, format!("{value} is over the limit of {max}")),
        None => Ok(()),
    }
}

/// A list field (`depths`, `embed_dim`, …) whose entries are each bounded by `max`.
pub(crate) fn require_each_at_most(field: &str, values: &[usize], max: usize) -> Result<()> {
    match values.iter().enumerate().find(|(_, v)| **v > max) {
        Some((i, v)) => crate::config::invalid(field, format!("entry {i} ({v}) is over the limit of {max}")),
        None => Ok(()),
    }
}

/// The blocks of all stages, bounded by [`MAX_BLOCKS`] (and the stages by [`MAX_STAGES`]).
pub(crate) fn require_blocks(field: &str, depths: &[usize]) -> Result<()> {
    if depths.len() > MAX_STAGES {
        return crate::config::invalid(field, format!("{} stages is over the limit of {MAX_STAGES}", depths.len()));
    }
    let total = depths.iter().fold(0usize, |a, &d| a.saturating_add(d));
    if total > MAX_BLOCKS {
        return crate::config::invalid(field, format!("{total} blocks in all is over the limit of {MAX_BLOCKS}"));
    }
    Ok(())
}

/// The budgets of a whole anchor whose fields are within bounds: positions per image of every
/// stage of `layout`, parameters plus `index_entries` (the index tables and masks it precomputes),
/// multiply-accumulates per image of `costs`.
pub(crate) fn require_budgets(layout: &AnchorLayout, total: PartCost, index_entries: u128) -> Result<()> {
    let max = max_positions()?;
    if let Some((s, stage)) = layout.stages.iter().enumerate().find(|(_, st)| st.rows_per_image as u64 > max) {
        return Err(Error::OverLimit {
            what: format!("stage {s} has {} positions (tokens or map cells) per image", stage.rows_per_image),
            limit: max,
            variable: MAX_POSITIONS_VAR,
        });
    }
    let values = (total.params as u128).saturating_add(index_entries);
    require_params(values, "parameters and index-table entries")?;
    let max = max_flops()?;
    if total.flops > max {
        return Err(Error::OverLimit {
            what: format!("{} multiply-accumulates per image", snnet_core::limits::count_text(total.flops)),
            limit: max,
            variable: MAX_FLOPS_VAR,
        });
    }
    Ok(())
}

/// `values` (parameters, and what else is counted with them) within [`max_params`].
pub(crate) fn require_params(values: u128, what: &str) -> Result<()> {
    let max = max_params()?;
    if values > max as u128 {
        let shown = snnet_core::limits::count_text(u64::try_from(values).unwrap_or(u64::MAX));
        return Err(Error::OverLimit { what: format!("{shown} {what}"), limit: max, variable: MAX_PARAMS_VAR });
    }
    Ok(())
}
