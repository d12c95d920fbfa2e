//! # snnet — Stitchable Neural Networks on burn
//!
//! One network built from a family of pretrained models (anchors, e.g. DeiT-Ti/S/B), joined by small
//! stitching layers, offering dozens of accuracy/speed trade-offs (routes) that switch at run time.
//! A faithful re-implementation of SN-Net (Pan, Cai & Zhuang, CVPR 2023): route ids, FLOPs and
//! parameter counts equal the official implementation's.
//!
//! ```no_run
//! use snnet::{Description, StitchedNet};
//! use burn::backend::Flex;
//!
//! snnet::backend::keep_freed_memory(); // on the CPU: reuse freed op buffers (see its docs)
//! let device = Default::default();
//! let desc = Description::from_names(&["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]);
//! let net = desc.build::<Flex>(&device).unwrap();
//! assert_eq!(net.num_routes(), 71);
//! let images = burn::tensor::Tensor::<Flex, 4>::zeros([1, 3, 224, 224], &device);
//! let logits = net.forward(images, 24).unwrap(); // DeiT-Ti → DeiT-S, stitched after block 7
//! ```

#![warn(missing_docs)]

pub mod backend;
pub mod demo;
pub mod latency;
pub mod plot;
pub mod workflow;

pub use snnet_anchors as anchors;
pub use snnet_anchors::{
    family_defaults, AnchorSpec, AnyAnchor, Architecture, BlockKind, Description, Family, Levit, LevitConfig, ResNet, ResNetConfig, Swin,
    SwinConfig, Vit, VitConfig,
};
pub use snnet_core as core;
pub use snnet_core::{
    cost, lstsq, select, space, weights, Anchor, AnchorCosts, AnchorLayout, AutodiffKernels, Behaviour, Budget, Error, FeatureKind,
    Features, Goal, IdentityStitch, Kernels, LayerSlot, LeastSquaresFit, LsProgress, LsReport, PairedVariant, PartCost, Route, RouteCost,
    RouteMetrics, SpaceSettings, StageLayout, StatePart, Stitch, StitchSpace, StitchedNet, StitchingLayer,
};
pub use snnet_train as train;
