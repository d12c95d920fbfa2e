//! The SN-Net stitching engine, generic over burn backends.
//!
//! - [`Anchor`]: what a model family implements (layout, stem, blocks, transitions, head, costs);
//! - [`StitchSpace`]: every route and stitching layer, enumerated in the official order;
//! - [`StitchedNet`]: the anchors plus stitching layers; forward through any route, least-squares
//!   initialisation, weight files;
//! - [`cost`], [`select`](mod@select): FLOPs/parameters per route, Pareto frontiers and budgets;
//! - [`controller`]: [`RouteController`], which switches routes at run time to keep a latency
//!   target while the machine's load changes;
//! - [`stochastic`], [`rng`]: seeded stochastic depth and the generator behind it, so training runs
//!   reproduce and resume exactly.

#![warn(missing_docs)]

pub mod anchor;
pub mod controller;
pub mod cost;
pub mod error;
pub mod features;
pub mod layout;
pub mod limits;
pub mod lstsq;
pub mod net;
pub mod ops;
pub mod rng;
pub mod select;
pub mod space;
pub mod stitch;
pub mod stochastic;
pub mod weights;

pub use anchor::Anchor;
pub use controller::{
    candidates_from_jsonl, Clock, ControllerError, ControllerSettings, LatencyTarget, RouteCandidate, RouteController, RouteSwitch,
    SwitchReason, SystemClock,
};
pub use cost::RouteCost;
pub use error::{Error, Result};
pub use features::Features;
pub use layout::{AnchorCosts, AnchorLayout, FeatureKind, PartCost, StageLayout};
pub use net::{Behaviour, LsProgress, LsReport, NetworkDescription, PackSummary, StatePart, StitchedNet, ROUTES_METADATA};
pub use select::{merge_metrics, pareto_frontier, parse_metric_lines, select, Budget, Goal, RouteMetrics};
/// Reads a whole file, refusing named pipes, devices and directories instead of blocking on them
/// (from `snnet-io`, which every file snnet reads goes through).
pub use snnet_io::read_regular_file;
/// The seam between layers and backends: what anchors and stitching layers run, per backend.
pub use snnet_kernels::{self as kernels, AutodiffKernels, Kernels};
pub use space::{LayerSlot, PairedVariant, Route, SpaceKind, SpaceSettings, StitchSpace};
pub use stitch::{IdentityStitch, LeastSquaresFit, Stitch, StitchLinear, StitchingLayer};
pub use stochastic::{drop_path, NoiseSeed};
