//! Shared helpers: fixtures, small families, layouts built from depths.

use std::path::PathBuf;

use burn::backend::Flex;
use serde_json::Value;
use snnet::{AnchorLayout, AnchorSpec, Architecture, Description, FeatureKind, StageLayout, VitConfig};

pub type B = Flex;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub fn load_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// A small ViT: 32×32 input, patch 8 (17 tokens), depth 4, 10 classes.
pub fn mini_vit(dim: usize, heads: usize, in_chans: usize) -> VitConfig {
    VitConfig {
        img_size: 32,
        patch_size: 8,
        in_chans,
        embed_dim: dim,
        depth: 4,
        num_heads: heads,
        mlp_ratio: 4.0,
        qkv_bias: true,
        num_classes: 10,
        layer_norm_eps: 1e-6,
        drop_path_rate: 0.0,
        init_values: None,
        no_embed_class: false,
    }
}

/// Three small ViTs of growing width.
pub fn mini_family() -> Description {
    let anchors =
        [(32, 2), (48, 3), (64, 4)].into_iter().map(|(d, h)| AnchorSpec::Explicit(Architecture::Vit(mini_vit(d, h, 3)))).collect();
    Description { anchors, space: Default::default(), behaviour: Default::default() }
}

/// A layout from per-stage (depth, channels, rows, kind); the grid is derived from rows.
pub fn layout(name: &str, stages: &[(usize, usize, usize, FeatureKind)]) -> AnchorLayout {
    AnchorLayout {
        name: name.into(),
        input: [3, 224, 224],
        num_classes: 1000,
        stages: stages
            .iter()
            .map(|&(depth, channels, rows, kind)| {
                let side = (rows as f64).sqrt() as usize;
                StageLayout { depth, channels, rows_per_image: rows, grid: [side, side], kind }
            })
            .collect(),
    }
}

pub fn uniform_images(n: usize, c: usize, side: usize, seed: u64) -> burn::tensor::Tensor<B, 4> {
    use burn::tensor::{Distribution, Tensor};
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, seed);
    Tensor::random([n, c, side, side], Distribution::Normal(0.0, 1.0), &device)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn to_vec<const D: usize>(t: burn::tensor::Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// A fixture tensor as a 4-D tensor (images).
pub fn tensor4(t: &snnet::weights::NamedTensor) -> burn::tensor::Tensor<B, 4> {
    let s = &t.shape;
    burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(t.data.clone(), [s[0], s[1], s[2], s[3]]), &Default::default())
}

/// Largest |a - b| over the largest |b|.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}
