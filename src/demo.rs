//! The Fashion-MNIST demo family shipped in `assets/fashion-mnist/`: three small ViTs (one input
//! channel, 28×28, patch 7, depth 6, widths 32/64/128) stitched into 35 routes, their pretrained
//! weights (`anchor{i}.safetensors`, made by `cargo run --release --example train_anchors`) and the
//! dataset itself (the four IDX files, MIT licence).

use std::path::PathBuf;

use snnet_anchors::Description;

/// Short names of the three anchors, in order.
pub const ANCHOR_NAMES: [&str; 3] = ["ViT-32", "ViT-64", "ViT-128"];

/// The folder holding the demo's description, weights and data.
pub fn assets_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets").join("fashion-mnist")
}

/// The description file of the demo family.
pub fn family_file() -> PathBuf {
    assets_dir().join("family.json")
}

/// The demo family's description.
pub fn description() -> snnet_anchors::Result<Description> {
    Description::from_file(&family_file())
}

/// The pretrained weights of anchor `index` (timm key layout).
pub fn anchor_file(index: usize) -> PathBuf {
    assets_dir().join(format!("anchor{index}.safetensors"))
}

/// [`ANCHOR_NAMES`] as owned strings, for tables and plots.
pub fn anchor_names() -> Vec<String> {
    ANCHOR_NAMES.iter().map(|s| s.to_string()).collect()
}
