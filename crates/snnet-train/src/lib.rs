//! # snnet-train — data, preprocessing, joint training and evaluation of SN-Nets
//!
//! - [`data`]: datasets that yield preprocessed images and labels — Fashion-MNIST from its IDX files
//!   (gzipped or not) and ImageFolder trees (class sub-folders of JPEG/PNG files, as ImageNet is laid
//!   out) — with timm's evaluation preprocessing and light training augmentation. Unreadable samples
//!   are reported and skipped, never fatal. The readers need the `data` feature (on by default:
//!   gzip and image decoding); the [`Dataset`] trait and batching do not.
//! - [`sampler`]: which route each step trains (uniform by default, or SN-Netv2's FLOPs-grouped
//!   sampling; seeded, resumable).
//! - [`schedule`]: the official cosine learning-rate schedule with warmup and its stepping rules.
//! - [`rng`]: the seeded generator behind sampling, data order and drop path (from snnet-core).
//! - [`optim`]: AdamW as timm builds it (decay rules, per-parameter learning-rate scales, frozen
//!   parameters, gradient clipping), touching only parameters that received gradients.
//! - [`scalar`]: losses and gradient norms kept on the device until the loop reads them, many
//!   at once.
//! - [`step`]: one joint-training step of a route (label smoothing, distillation).
//! - [`train`](mod@train): the joint-training loop (a sampled route per step, schedule, augmentation, drop
//!   path) with [`checkpoint`]s that a killed run resumes from exactly.
//! - [`augment`]: seeded flips and shifts of training images.
//! - [`eval`]: every route on a validation set, as resumable JSON lines in the official results
//!   format.

#![warn(missing_docs)]

pub mod augment;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod eval;
pub mod optim;
pub mod peers;
pub mod sampler;
pub mod scalar;
pub mod schedule;
pub mod step;
pub mod train;

pub use augment::Augment;
pub use data::{DataError, Dataset, Prefix, Sample};
#[cfg(feature = "data")]
pub use data::{FashionMnist, ImageFolder, Preprocess, Split};
pub use error::{TrainError, TrainResult};
pub use eval::{append_result, done_routes, evaluate_routes, evaluate_routes_parallel, RouteResult};
pub use optim::{AdamW, AdamWConfig};
pub use peers::{run_orchestrator, Cluster, RoutePolicy};
pub use sampler::{FlopsGap, FlopsGroupedSampler, ListSampler, RouteSampler, UniformSampler};
pub use scalar::DeviceScalar;
pub use schedule::CosineSchedule;
pub use snnet_core::rng::{self, SplitMix64};
pub use step::{apply_gradients, fresh_leaves, replica, route_gradients, train_step, Distillation, RouteBatch, StepConfig, StepOutcome};
pub use train::{train, train_on, RunOptions, Stepping, Teacher, TrainConfig, TrainProgress, TrainReport};
