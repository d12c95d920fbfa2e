//! What can go wrong reading data; every variant names the file (and sample) at fault.

use std::path::PathBuf;

/// A dataset or sample that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A malformed IDX file (Fashion-MNIST's format).
    #[error("{path}: not a valid IDX file: {reason}")]
    Idx {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Files that do not belong together (e.g. image and label counts differ).
    #[error("{0}")]
    Mismatch(String),
    /// An image that cannot be decoded.
    #[error("{path}: cannot decode image: {reason}")]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// A dataset folder without any class or image.
    #[error("{path}: {reason}")]
    Empty {
        /// The folder.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A sample index past the end.
    #[error("sample {index} does not exist: the dataset has {len} samples")]
    OutOfRange {
        /// The index asked for.
        index: usize,
        /// The dataset's length.
        len: usize,
    },
}
