//! # snnet-train — data, preprocessing and (to come) joint training of SN-Nets
//!
//! - [`data`]: datasets that yield preprocessed images and labels — Fashion-MNIST from its IDX files
//!   (gzipped or not) and ImageFolder trees (class sub-folders of JPEG/PNG files, as ImageNet is laid
//!   out) — with timm's evaluation preprocessing and light training augmentation. Unreadable samples
//!   are reported and skipped, never fatal.

#![warn(missing_docs)]

pub mod data;

pub use data::{DataError, Dataset, FashionMnist, ImageFolder, Preprocess, Sample, Split};
