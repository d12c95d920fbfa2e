//! Datasets that yield preprocessed images (`[channels, height, width]`, f32) and class labels.
//!
//! The [`Dataset`] trait and batching are always here; the readers of files (Fashion-MNIST's IDX,
//! gzipped or not; ImageFolder trees of JPEG/PNG; timm's preprocessing) come with the `data`
//! feature (on by default), which brings `flate2` and `image`.
//!
//! A sample that cannot be read is an error for that sample only: [`load_batch`] reports it and
//! goes on with the others, so one corrupt JPEG never stops an epoch.

mod error;
#[cfg(feature = "data")]
mod fashion_mnist;
#[cfg(feature = "data")]
mod image_folder;
#[cfg(feature = "data")]
mod preprocess;

pub use error::DataError;
#[cfg(feature = "data")]
pub use fashion_mnist::{FashionMnist, Split, FASHION_MNIST_CLASSES};
#[cfg(feature = "data")]
pub use image_folder::{load_image_file, ImageFolder};
#[cfg(feature = "data")]
pub use preprocess::{Preprocess, IMAGENET_MEAN, IMAGENET_STD};

/// One preprocessed image and its class.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Values in `[channels, height, width]` order, normalised.
    pub image: Vec<f32>,
    /// Class index in `0..num_classes`.
    pub label: usize,
}

/// Indexable images with labels.
pub trait Dataset: Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `[channels, height, width]` of every sample.
    fn shape(&self) -> [usize; 3];
    /// Number of classes.
    fn num_classes(&self) -> usize;
    /// Sample `index`, preprocessed.
    fn get(&self, index: usize) -> Result<Sample, DataError>;
}

/// A view of a dataset's first `len` samples (all of them if it has fewer), e.g. to evaluate on
/// part of a test set.
pub struct Prefix<'a> {
    inner: &'a dyn Dataset,
    len: usize,
}

impl<'a> Prefix<'a> {
    /// The first `len` samples of `inner`.
    pub fn new(inner: &'a dyn Dataset, len: usize) -> Self {
        Self { inner, len: len.min(inner.len()) }
    }
}

impl Dataset for Prefix<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn shape(&self) -> [usize; 3] {
        self.inner.shape()
    }

    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        if index >= self.len {
            return Err(DataError::OutOfRange { index, len: self.len });
        }
        self.inner.get(index)
    }
}

/// Images of a batch laid out `[batch, channels, height, width]`, their labels, and the samples
/// that could not be read (index and why).
#[derive(Debug, Default)]
pub struct Batch {
    /// Concatenated images of the readable samples.
    pub images: Vec<f32>,
    /// Their labels.
    pub labels: Vec<usize>,
    /// Samples skipped, with the reason.
    pub skipped: Vec<(usize, DataError)>,
}

impl Batch {
    /// Number of readable samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether no sample could be read.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Reads the samples at `indices`, skipping (and recording) those that fail.
pub fn load_batch(dataset: &dyn Dataset, indices: &[usize]) -> Batch {
    let mut batch = Batch::default();
    for &i in indices {
        match dataset.get(i) {
            Ok(sample) => {
                batch.images.extend(sample.image);
                batch.labels.push(sample.label);
            }
            Err(e) => batch.skipped.push((i, e)),
        }
    }
    batch
}
