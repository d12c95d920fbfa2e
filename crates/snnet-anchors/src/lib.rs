//! Anchor families for SN-Net stitching, and the description file that names them.
//!
//! Each family implements [`snnet_core::Anchor`] with timm's module structure and parameter names,
//! so a timm state dict maps onto it key for key (Linear weights transposed).

#![warn(missing_docs)]

mod config;
pub mod description;
pub mod error;
pub mod family;
pub mod levit;
pub mod limits;
pub mod norm;
pub mod resnet;
pub mod swin;
pub mod vit;

/// The seam between the anchors' layers and the backends (re-exported from the engine crate).
pub use snnet_core::kernels;

pub use description::{AnchorSpec, Description, DESCRIPTION_METADATA};
pub use error::{Error, Result};
pub use family::{family_defaults, preset_names, presets, AnyAnchor, Architecture, Family, ARCHITECTURES};
pub use levit::{Levit, LevitConfig};
pub use resnet::{BlockKind, ResNet, ResNetConfig};
pub use swin::{Swin, SwinConfig};
pub use vit::{Vit, VitConfig};
