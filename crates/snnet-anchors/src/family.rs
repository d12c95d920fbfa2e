//! The family registry: every model family, registered once.
//!
//! A family is one file (`vit.rs`, `swin.rs`, …) holding its anchor module, its architecture type
//! and that type's [`Family`] implementation — the `arch` tag, the presets, the official stitch
//! space and behaviour — plus one line in the [`families!`] list at the end of this file. From
//! that list come [`AnyAnchor`] (one type for anchors of every family, so mixed families share one
//! `StitchedNet`), [`Architecture`] (an explicit anchor of a description, tagged by `arch`), the
//! preset table and the `arch` names. Checkpoint remapping ([`Anchor::adapt_checkpoint`]) and cost
//! quirks (`AnchorCosts`) are the family's own too, in its `Anchor` implementation and its
//! architecture's `costs`.

use burn::{
    module::Module,
    tensor::{backend::Backend, Tensor},
};
use serde::{Deserialize, Serialize};
use snnet_core::{weights::TensorMap, Anchor, AnchorCosts, AnchorLayout, Behaviour, Features, Kernels, SpaceSettings};

use crate::{
    error::{Error, Result},
    levit::{Levit, LevitConfig},
    resnet::{ResNet, ResNetConfig},
    swin::{Swin, SwinConfig},
    vit::{Vit, VitConfig},
};

/// What a family's architecture type tells the registry.
pub trait Family: Sized + 'static {
    /// The `arch` tag of an explicit anchor of this family in a description.
    const ARCH: &'static str;
    /// The family's presets: timm's model names and their architectures.
    const PRESETS: &'static [(&'static str, fn() -> Self)];

    /// A short name for tables and layouts.
    fn short_name(&self) -> String;

    /// The official stitch space when an anchor of this family leads the network (`None`: the
    /// family imposes none there).
    fn leading_space(&self) -> Option<SpaceSettings> {
        None
    }

    /// The official stitch space wherever an anchor of this family appears (`None`: none); among
    /// several, the one stitching the fewest stages applies.
    fn space_anywhere(&self) -> Option<SpaceSettings> {
        None
    }

    /// Whether a stitched route ending in an anchor of this family runs its final norm (the
    /// official code's behaviour for the family).
    fn final_norm_on_stitched(&self) -> bool {
        false
    }
}

/// Registers the families: `Variant(AnchorModule, ArchitectureType)`, each with its doc line.
/// Generates [`AnyAnchor`] (and its [`Anchor`] implementation), [`Architecture`], their
/// delegations to the family's own types, [`ARCHITECTURES`] and the preset table.
macro_rules! families {
    ($($(#[doc = $doc:expr])* $variant:ident($anchor:ident, $config:ident)),+ $(,)?) => {
        /// An anchor of any registered family.
        #[derive(Module, Debug)]
        pub enum AnyAnchor<B: Backend> {
            $($(#[doc = $doc])* $variant($anchor<B>),)+
        }

        /// An explicit architecture of any registered family, tagged by `arch` (the family's
        /// [`Family::ARCH`]).
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "arch", rename_all = "lowercase")]
        pub enum Architecture {
            $($(#[doc = $doc])* $variant($config),)+
        }

        /// The values of an explicit anchor's `arch` field.
        pub const ARCHITECTURES: &[&str] = &[$(<$config as Family>::ARCH),+];

        /// Every preset name (timm's model names) with its architecture, family by family.
        pub fn presets() -> impl Iterator<Item = (&'static str, Architecture)> {
            std::iter::empty()$(.chain(<$config as Family>::PRESETS.iter().map(|(name, make)| (*name, Architecture::$variant(make())))))+
        }

        impl Architecture {
            /// An explicit architecture of family `arch` from its JSON fields; `None` for an
            /// unknown `arch`. The error starts with the path of the field at fault.
            pub fn from_fields(arch: &str, fields: serde_json::Value) -> Option<std::result::Result<Self, String>> {
                $(if arch == <$config as Family>::ARCH {
                    return Some(serde_path_to_error::deserialize(fields).map(Architecture::$variant).map_err(|e| e.to_string()));
                })+
                None
            }

            /// Builds the anchor with random weights.
            pub fn init<B: Backend>(&self, name: &str, device: &B::Device) -> Result<AnyAnchor<B>> {
                Ok(match self {
                    $(Architecture::$variant(c) => AnyAnchor::$variant(c.init(name, device)?),)+
                })
            }

            /// A short name for tables and layouts.
            pub fn short_name(&self) -> String {
                match self {
                    $(Architecture::$variant(c) => c.short_name(),)+
                }
            }

            /// Checks the architecture's fields (and [`limits`](crate::limits)).
            pub fn validate(&self) -> Result<()> {
                match self {
                    $(Architecture::$variant(c) => c.validate(),)+
                }
            }

            /// The layout, named `name`.
            pub fn layout(&self, name: &str) -> AnchorLayout {
                match self {
                    $(Architecture::$variant(c) => c.layout(name),)+
                }
            }

            /// Per-part costs at the native resolution.
            pub fn costs(&self) -> AnchorCosts {
                match self {
                    $(Architecture::$variant(c) => c.costs(),)+
                }
            }

            /// [`Family::leading_space`] of the architecture's family.
            fn leading_space(&self) -> Option<SpaceSettings> {
                match self {
                    $(Architecture::$variant(c) => c.leading_space(),)+
                }
            }

            /// [`Family::space_anywhere`] of the architecture's family.
            fn space_anywhere(&self) -> Option<SpaceSettings> {
                match self {
                    $(Architecture::$variant(c) => c.space_anywhere(),)+
                }
            }

            /// [`Family::final_norm_on_stitched`] of the architecture's family.
            fn final_norm_on_stitched(&self) -> bool {
                match self {
                    $(Architecture::$variant(c) => c.final_norm_on_stitched(),)+
                }
            }
        }

        impl<B: Kernels> AnyAnchor<B> {
            /// Sets the stochastic depth rate of the anchor's blocks (timm's linear rule over the
            /// blocks); a rate outside `[0, 1)` is an error.
            pub fn set_drop_path_rate(&mut self, rate: f64) -> Result<()> {
                match self {
                    $(AnyAnchor::$variant(m) => m.set_drop_path_rate(rate),)+
                }
            }
        }

        impl<B: Kernels> Anchor<B> for AnyAnchor<B> {
            fn layout(&self) -> &AnchorLayout {
                match self {
                    $(AnyAnchor::$variant(m) => m.layout(),)+
                }
            }

            fn costs(&self) -> AnchorCosts {
                match self {
                    $(AnyAnchor::$variant(m) => m.costs(),)+
                }
            }

            fn embed(&self, images: Tensor<B, 4>) -> Features<B> {
                match self {
                    $(AnyAnchor::$variant(m) => m.embed(images),)+
                }
            }

            fn block(&self, x: Features<B>, index: usize) -> Features<B> {
                match self {
                    $(AnyAnchor::$variant(m) => m.block(x, index),)+
                }
            }

            fn transition(&self, x: Features<B>, into_stage: usize) -> Features<B> {
                match self {
                    $(AnyAnchor::$variant(m) => m.transition(x, into_stage),)+
                }
            }

            fn head(&self, x: Features<B>, final_norm: bool) -> Tensor<B, 2> {
                match self {
                    $(AnyAnchor::$variant(m) => m.head(x, final_norm),)+
                }
            }

            fn adapt_checkpoint(&self, tensors: TensorMap) -> TensorMap {
                match self {
                    $(AnyAnchor::$variant(m) => m.adapt_checkpoint(tensors),)+
                }
            }

            fn isolate_noise(&mut self) {
                match self {
                    $(AnyAnchor::$variant(m) => m.isolate_noise(),)+
                }
            }

            fn reseed(&self, seed: u64) {
                match self {
                    $(AnyAnchor::$variant(m) => m.reseed(seed),)+
                }
            }
        }
    };
}

impl Architecture {
    /// The architecture of a preset name.
    pub fn preset(name: &str) -> Result<Self> {
        presets()
            .find(|(preset, _)| *preset == name)
            .map(|(_, architecture)| architecture)
            .ok_or_else(|| Error::UnknownPreset { name: name.to_string(), known: preset_names().join(", ") })
    }
}

/// Every preset name (timm's model names), family by family.
pub fn preset_names() -> Vec<&'static str> {
    presets().map(|(name, _)| name).collect()
}

/// The official space settings and behaviour for a network of these anchors: the leading
/// anchor's family's space where it imposes one (ResNet, LeViT), else the space of a family that
/// imposes one wherever it appears (Swin; the fewest stitched stages among several), else stitching
/// across all blocks (DeiT's). A stitched route ends with the end anchor's final norm when any
/// family asks for it (Swin, as the official Swin `forward_from` applies it).
pub fn family_defaults(architectures: &[Architecture]) -> (SpaceSettings, Behaviour) {
    let behaviour = Behaviour { final_norm_on_stitched: architectures.iter().any(|a| a.final_norm_on_stitched()) };
    let stitched_stages = |s: &SpaceSettings| s.stitched_stages.as_ref().map_or(usize::MAX, Vec::len);
    let space = architectures
        .first()
        .and_then(|a| a.leading_space())
        .or_else(|| architectures.iter().filter_map(|a| a.space_anywhere()).min_by_key(stitched_stages))
        .unwrap_or_default();
    (space, behaviour)
}

families! {
    /// Vision Transformer / DeiT.
    Vit(Vit, VitConfig),
    /// Swin Transformer.
    Swin(Swin, SwinConfig),
    /// ResNet.
    ResNet(ResNet, ResNetConfig),
    /// LeViT.
    Levit(Levit, LevitConfig),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_resolves_and_its_arch_tag_is_the_familys() {
        let names = preset_names();
        assert_eq!(names.len(), 19);
        for (name, architecture) in presets() {
            assert_eq!(Architecture::preset(name).unwrap(), architecture, "{name}");
            architecture.validate().unwrap();
            // The serde tag written for the architecture is the one `from_fields` reads.
            let mut fields = serde_json::to_value(&architecture).unwrap();
            let arch = fields.as_object_mut().unwrap().remove("arch").unwrap();
            let arch = arch.as_str().unwrap();
            assert!(ARCHITECTURES.contains(&arch), "{name}: {arch}");
            assert_eq!(Architecture::from_fields(arch, fields).unwrap().unwrap(), architecture, "{name}");
        }
        assert!(Architecture::from_fields("convnext", serde_json::json!({})).is_none());
        let unknown = Architecture::preset("vit_huge").unwrap_err().to_string();
        assert!(unknown.contains("deit_tiny_patch16_224") && unknown.contains("levit_256"), "{unknown}");
    }

    #[test]
    fn the_official_spaces_come_from_the_families() {
        let preset = |name: &str| Architecture::preset(name).unwrap();
        let all_blocks = SpaceSettings::default();
        let swin = SpaceSettings::stage_wise(vec![0, 1, 2], snnet_core::PairedVariant::Forward);
        let resnet = SpaceSettings::stage_wise(vec![1, 2], snnet_core::PairedVariant::ForwardNoEntry);
        let cases = [
            (vec!["deit_tiny_patch16_224", "deit_small_patch16_224"], &all_blocks, false),
            (vec!["swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224"], &swin, true),
            (vec!["resnet18", "resnet50"], &resnet, false),
            (vec!["resnet18", "swin_tiny_patch4_window7_224"], &resnet, true),
        ];
        for (names, space, final_norm) in cases {
            let architectures: Vec<_> = names.iter().map(|n| preset(n)).collect();
            let (got, behaviour) = family_defaults(&architectures);
            assert_eq!(&got, space, "{names:?}");
            assert_eq!(behaviour.final_norm_on_stitched, final_norm, "{names:?}");
        }
        let (levit, _) = family_defaults(&[preset("levit_192"), preset("levit_256")]);
        assert_eq!(levit, SpaceSettings::stage_wise(vec![0, 1], snnet_core::PairedVariant::Forward));
    }
}
