//! Fashion-MNIST from its IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-…`), gzipped or not, as Debian's `dataset-fashion-mnist` installs them
//! (`/usr/share/datasets/fashion-mnist`) or as the original release ships them.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use super::{DataError, Dataset, Sample};

/// The ten class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Mean and standard deviation of the training pixels (in `[0, 1]`), used to normalise.
const MEAN: f32 = 0.2860;
const STD: f32 = 0.3530;

/// Which part of the dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The 60,000 training images.
    Train,
    /// The 10,000 test images.
    Test,
}

/// Fashion-MNIST images (28×28, one channel) held in memory as bytes.
#[derive(Clone, Debug)]
pub struct FashionMnist {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    rows: usize,
    cols: usize,
}

impl FashionMnist {
    /// Loads a split from `dir`, which holds the IDX files (each either plain or `.gz`).
    pub fn load(dir: &Path, split: Split) -> Result<Self, DataError> {
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let images = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        Self::from_files(&images, &labels)
    }

    /// Loads an images file and a labels file (IDX, plain or gzipped).
    pub fn from_files(images: &Path, labels: &Path) -> Result<Self, DataError> {
        let (dims, pixels) = read_idx(images, 3)?;
        let (label_dims, labels_raw) = read_idx(labels, 1)?;
        if dims[0] != label_dims[0] {
            return Err(DataError::Mismatch(format!(
                "{} holds {} images but {} holds {} labels",
                images.display(),
                dims[0],
                labels.display(),
                label_dims[0]
            )));
        }
        if let Some(i) = labels_raw.iter().position(|&l| l >= 10) {
            return Err(DataError::Idx {
                path: labels.into(),
                reason: format!("label {} of sample {i} is not a class 0..9", labels_raw[i]),
            });
        }
        Ok(Self { pixels, labels: labels_raw, rows: dims[1], cols: dims[2] })
    }

    /// Keeps the first `n` samples (all if fewer).
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.labels.len());
        self.labels.truncate(n);
        self.pixels.truncate(n * self.rows * self.cols);
    }

    /// Labels of every sample.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
}

impl Dataset for FashionMnist {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn shape(&self) -> [usize; 3] {
        [1, self.rows, self.cols]
    }

    fn num_classes(&self) -> usize {
        10
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let label = *self.labels.get(index).ok_or(DataError::OutOfRange { index, len: self.labels.len() })?;
        let size = self.rows * self.cols;
        let image = self.pixels[index * size..(index + 1) * size].iter().map(|&p| normalise(p)).collect();
        Ok(Sample { image, label: label as usize })
    }
}

/// A pixel byte scaled to `[0, 1]` and normalised by the training set's mean and deviation.
pub(crate) fn normalise(pixel: u8) -> f32 {
    (pixel as f32 / 255.0 - MEAN) / STD
}

/// `dir/name` or `dir/name.gz`, whichever exists.
fn find(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(DataError::Io {
        path: dir.join(name),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("neither {name} nor {name}.gz in this folder")),
    })
}

/// Reads an IDX file of unsigned bytes with `rank` dimensions: the dimensions and the data.
fn read_idx(path: &Path, rank: usize) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let raw = snnet_core::read_regular_file(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Idx { path: path.into(), reason: format!("corrupt gzip stream: {e}") })?;
        out
    } else {
        raw
    };
    let bad = |reason: String| DataError::Idx { path: path.into(), reason };
    if bytes.len() < 4 + 4 * rank {
        return Err(bad(format!("{} bytes is shorter than the {}-byte header", bytes.len(), 4 + 4 * rank)));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] as usize != rank {
        return Err(bad(format!(
            "magic {:02x} {:02x} {:02x} {:02x}, expected 00 00 08 {rank:02x} (unsigned bytes, {rank} dimensions)",
            bytes[0], bytes[1], bytes[2], bytes[3]
        )));
    }
    let dims: Vec<usize> =
        (0..rank).map(|i| u32::from_be_bytes([bytes[4 + 4 * i], bytes[5 + 4 * i], bytes[6 + 4 * i], bytes[7 + 4 * i]]) as usize).collect();
    let expected = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let data = &bytes[4 + 4 * rank..];
    if data.len() != expected {
        return Err(bad(format!("header says {dims:?} = {expected} bytes of data, the file holds {}", data.len())));
    }
    Ok((dims, data.to_vec()))
}
