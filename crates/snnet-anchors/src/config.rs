//! What the families' configurations share: serde defaults (timm's), the checks every
//! architecture makes, and timm's linear stochastic-depth rule.

use snnet_core::{AnchorLayout, FeatureKind, StageLayout};

use crate::error::{Error, Result};

/// 224×224 input.
pub(crate) fn img_size_224() -> usize {
    224
}
/// Three input channels.
pub(crate) fn in_chans_3() -> usize {
    3
}
/// ImageNet's 1000 classes.
pub(crate) fn num_classes_1000() -> usize {
    1000
}
/// MLP ratio 4.
pub(crate) fn mlp_ratio_4() -> f64 {
    4.0
}
/// `true`.
pub(crate) fn yes() -> bool {
    true
}

/// An index table built once on `device` and kept by the module as a constant (not a parameter:
/// burn's `Module` for a plain tensor field neither trains nor saves it), so forwards upload nothing.
pub(crate) fn constant_index<B: burn::tensor::backend::Backend>(
    index: Vec<i64>,
    device: &B::Device,
) -> burn::tensor::Tensor<B, 1, burn::tensor::Int> {
    let n = index.len();
    burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(index, [n]), device)
}

/// An [`Error::InvalidConfig`] for `field`.
pub(crate) fn invalid<T>(field: &str, reason: String) -> Result<T> {
    Err(Error::InvalidConfig { field: field.into(), reason })
}

/// The first field whose value is 0 is an error.
pub(crate) fn require_positive(fields: &[(&str, usize)]) -> Result<()> {
    match fields.iter().find(|(_, v)| *v == 0) {
        Some((field, _)) => invalid(field, "must be at least 1".into()),
        None => Ok(()),
    }
}

/// A drop-path rate outside `[0, 1)` is an error.
pub(crate) fn require_rate(rate: f64) -> Result<()> {
    if (0.0..1.0).contains(&rate) {
        Ok(())
    } else {
        invalid("drop_path_rate", format!("{rate} is not in [0, 1)"))
    }
}

/// Drop-path probability of block `i` of `n` (timm: `torch.linspace(0, rate, n)`).
pub(crate) fn linear_drop_path(rate: f64, i: usize, n: usize) -> f64 {
    if n > 1 {
        rate * i as f64 / (n - 1) as f64
    } else {
        0.0
    }
}

/// The layout of an anchor whose stages are square grids: `(depth, channels, side)` per stage, all
/// of one feature kind (`rows_per_image` = side²).
pub(crate) fn square_layout(
    name: &str,
    input: [usize; 3],
    num_classes: usize,
    kind: FeatureKind,
    stages: impl Iterator<Item = (usize, usize, usize)>,
) -> AnchorLayout {
    AnchorLayout {
        name: name.to_string(),
        input,
        num_classes,
        stages: stages
            .map(|(depth, channels, side)| StageLayout { depth, channels, rows_per_image: side * side, grid: [side, side], kind })
            .collect(),
    }
}
