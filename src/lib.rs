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
//! snnet::backend::keep_freed_memory(); // opt-in, process-wide: glibc reuses freed op buffers (see its docs)
//! let device = Default::default();
//! let desc = Description::from_names(&["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]);
//! let net = desc.build::<Flex>(&device).unwrap();
//! assert_eq!(net.num_routes(), 71);
//! let images = burn::tensor::Tensor::<Flex, 4>::zeros([1, 3, 224, 224], &device);
//! let logits = net.forward(images, 24).unwrap(); // DeiT-Ti → DeiT-S, stitched after block 7
//! ```

//!
//! ## Features
//!
//! - `flex` (default), `cuda`, `wgpu`, `vulkan`, `metal`: the backends [`backend`] can run on.
//! - `app` (default): the application around the library, for the `snnet` binary and the examples —
//!   `workflow` (progress bars: indicatif), `plot` (plotters), `demo` (the Fashion-MNIST assets) and
//!   snnet-train's dataset readers (`data`: gzip, image decoding). With `default-features = false`
//!   and one backend feature, snnet is the library alone: the engine crates, burn, serde, thiserror,
//!   safetensors.
//!
//! No call changes process-wide state: the allocator tuning and the quiet panic hook are opt-in
//! calls for programs ([`backend::program_settings`]).

#![warn(missing_docs)]

pub mod backend;
#[cfg(feature = "app")]
pub mod demo;
pub mod latency;
#[cfg(feature = "app")]
pub mod plot;
#[cfg(feature = "app")]
pub mod workflow;

pub use snnet_anchors as anchors;
pub use snnet_anchors::{
    family_defaults, AnchorSpec, AnyAnchor, Architecture, BlockKind, Description, Family, Levit, LevitConfig, ResNet, ResNetConfig, Swin,
    SwinConfig, Vit, VitConfig, DESCRIPTION_METADATA,
};
pub use snnet_core as core;
pub use snnet_core::{
    controller, cost, lstsq, select, space, weights, Anchor, AnchorCosts, AnchorLayout, AutodiffKernels, Behaviour, Budget, Clock,
    ControllerSettings, Error, FeatureKind, Features, Goal, IdentityStitch, Kernels, LatencyTarget, LayerSlot, LeastSquaresFit, LsProgress,
    LsReport, PackSummary, PairedVariant, PartCost, Route, RouteCandidate, RouteController, RouteCost, RouteMetrics, SpaceKind,
    SpaceSettings, StageLayout, StatePart, Stitch, StitchLinear, StitchSpace, StitchedNet, StitchingLayer, SystemClock, ROUTES_METADATA,
};
pub use snnet_train as train;
