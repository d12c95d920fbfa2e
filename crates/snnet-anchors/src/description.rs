//! The SN-Net description file: which anchors, and how the space is enumerated.
//!
//! ```json
//! {
//!   "anchors": ["deit_tiny_patch16_224", "deit_small_patch16_224",
//!               {"arch": "vit", "img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 64,
//!                "depth": 12, "num_heads": 4, "mlp_ratio": 4.0, "qkv_bias": true, "num_classes": 10}],
//!   "space": {"kernel_size": 2, "stride": 1, "nearest_stitching": true},
//!   "behaviour": {"final_norm_on_stitched": false}
//! }
//! ```

use std::path::Path;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use snnet_core::{cost::route_cost, AnchorCosts, AnchorLayout, Behaviour, RouteCost, SpaceSettings, StitchSpace, StitchedNet};

use crate::{
    error::{Error, Result},
    family::AnyAnchor,
    vit::VitConfig,
};

/// Preset names and their architectures.
pub const PRESETS: [&str; 3] = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"];

/// An explicit architecture, tagged by `arch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum Architecture {
    /// A ViT (timm `VisionTransformer` arguments).
    Vit(VitConfig),
}

/// One anchor: a preset name or an explicit architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AnchorSpec {
    /// A preset, e.g. `deit_small_patch16_224`.
    Preset(String),
    /// Explicit fields.
    Explicit(Architecture),
}

impl AnchorSpec {
    /// The architecture, resolving presets.
    pub fn architecture(&self) -> Result<Architecture> {
        match self {
            AnchorSpec::Explicit(a) => Ok(a.clone()),
            AnchorSpec::Preset(name) => match name.as_str() {
                "deit_tiny_patch16_224" => Ok(Architecture::Vit(VitConfig::deit_tiny_patch16_224())),
                "deit_small_patch16_224" => Ok(Architecture::Vit(VitConfig::deit_small_patch16_224())),
                "deit_base_patch16_224" => Ok(Architecture::Vit(VitConfig::deit_base_patch16_224())),
                _ => Err(Error::UnknownPreset { name: name.clone(), known: PRESETS.join(", ") }),
            },
        }
    }

    /// A short name for tables and layouts.
    pub fn name(&self) -> String {
        match self {
            AnchorSpec::Preset(n) => n.clone(),
            AnchorSpec::Explicit(Architecture::Vit(c)) => {
                format!("vit(dim={}, depth={}, heads={}, img={}, patch={})", c.embed_dim, c.depth, c.num_heads, c.img_size, c.patch_size)
            }
        }
    }

    /// The anchor's layout, without building it.
    pub fn layout(&self) -> Result<AnchorLayout> {
        match self.architecture()? {
            Architecture::Vit(c) => {
                c.validate()?;
                Ok(c.layout(&self.name()))
            }
        }
    }

    /// Per-part costs at the native resolution, without building the anchor.
    pub fn costs(&self) -> Result<AnchorCosts> {
        match self.architecture()? {
            Architecture::Vit(c) => Ok(c.costs()),
        }
    }

    /// Builds the anchor with random weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<AnyAnchor<B>> {
        match self.architecture()? {
            Architecture::Vit(c) => Ok(AnyAnchor::Vit(c.init(&self.name(), device)?)),
        }
    }
}

/// A whole SN-Net: anchors in order, space settings, behaviour switches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    /// Anchors, front (smallest) first.
    pub anchors: Vec<AnchorSpec>,
    /// Enumeration settings (official DeiT defaults when absent).
    #[serde(default)]
    pub space: SpaceSettings,
    /// Official behaviour or corrections.
    #[serde(default)]
    pub behaviour: Behaviour,
}

impl Description {
    /// Anchors given by name (presets), official DeiT space settings.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Self {
        Self {
            anchors: names.iter().map(|n| AnchorSpec::Preset(n.as_ref().to_string())).collect(),
            space: SpaceSettings::default(),
            behaviour: Behaviour::default(),
        }
    }

    /// Parses a description from JSON text.
    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        let d: Self = serde_json::from_str(text).map_err(|e| Error::Description { path: source.into(), reason: e.to_string() })?;
        if d.anchors.is_empty() {
            return Err(Error::Description { path: source.into(), reason: "`anchors` is empty".into() });
        }
        Ok(d)
    }

    /// Reads a description file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Description { path: shown.clone(), reason: e.to_string() })?;
        Self::from_json(&text, &shown)
    }

    /// Layouts of every anchor, without building them.
    pub fn layouts(&self) -> Result<Vec<AnchorLayout>> {
        self.anchors.iter().map(AnchorSpec::layout).collect()
    }

    /// The stitch space and the cost of every route, without building any tensor.
    pub fn space_with_costs(&self) -> Result<(StitchSpace, Vec<RouteCost>)> {
        let layouts = self.layouts()?;
        let costs = self.anchors.iter().map(AnchorSpec::costs).collect::<Result<Vec<_>>>()?;
        let space = StitchSpace::build(&layouts, &self.space)?;
        let routes =
            space.routes.iter().map(|r| route_cost(r, &layouts, &costs, &space.layers, self.behaviour.final_norm_on_stitched)).collect();
        Ok((space, routes))
    }

    /// Builds the stitched network with random weights.
    pub fn build<B: Backend>(&self, device: &B::Device) -> Result<StitchedNet<B, AnyAnchor<B>>> {
        let anchors = self.anchors.iter().map(|a| a.init::<B>(device)).collect::<Result<Vec<_>>>()?;
        Ok(StitchedNet::new(anchors, &self.space, self.behaviour.clone(), device)?)
    }

    /// JSON text of the description (stored in weight files as `snnet.description`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a description serialises")
    }
}
