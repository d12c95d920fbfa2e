//! # snnet-train — data, preprocessing and (to come) joint training of SN-Nets
//!
//! - [`data`]: datasets that yield preprocessed images and labels — Fashion-MNIST from its IDX files
//!   (gzipped or not) and ImageFolder trees (class sub-folders of JPEG/PNG files, as ImageNet is laid
//!   out) — with timm's evaluation preprocessing and light training augmentation. Unreadable samples
//!   are reported and skipped, never fatal.
//! - [`sampler`]: which route each step trains (uniform by default, seeded, resumable).
//! - [`schedule`]: the official cosine learning-rate schedule with warmup and its stepping rules.
//! - [`rng`]: the seeded generator behind sampling and data order.

#![warn(missing_docs)]

pub mod data;
pub mod rng;
pub mod sampler;
pub mod schedule;

pub use data::{DataError, Dataset, FashionMnist, ImageFolder, Preprocess, Sample, Split};
pub use rng::SplitMix64;
pub use sampler::{RouteSampler, UniformSampler};
pub use schedule::CosineSchedule;
