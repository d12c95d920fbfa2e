//! The error type of this crate.

use crate::pickle::PickleError;

/// Everything that can go wrong while reading a weight file.
///
/// Every message starts with the display name of the file (`file`) and then
/// names the culprit: the zip entry, the storage or tensor key, the pickle
/// opcode and byte offset, or the expected and actual sizes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read from disk.
    #[error("{file}: cannot read the file: {err}")]
    Io {
        /// Display name of the file.
        file: String,
        /// The underlying I/O error.
        #[source]
        err: std::io::Error,
    },
    /// The bytes are not a format this crate reads.
    #[error("{file}: not a weight file: {reason}")]
    UnknownFormat {
        /// Display name of the file.
        file: String,
        /// What was found instead.
        reason: String,
    },
    /// A safetensors file is truncated or corrupt.
    #[error("{file}: safetensors: {message}")]
    Safetensors {
        /// Display name of the file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The zip container of a `.pth` file is truncated or corrupt.
    #[error("{file}: zip archive{}: {message}", entry_suffix(.entry))]
    Zip {
        /// Display name of the file.
        file: String,
        /// The zip entry concerned, if any.
        entry: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A pickle stream is malformed.
    #[error("{file}: {part}: {err}")]
    Pickle {
        /// Display name of the file.
        file: String,
        /// Which pickle: a zip entry name such as `archive/data.pkl`, or a
        /// part of a legacy file such as `legacy object pickle`.
        part: String,
        /// Offset, opcode and reason.
        err: PickleError,
    },
    /// A tensor storage is missing or holds fewer bytes than declared.
    #[error("{file}: storage '{key}' ({location}): {message}")]
    Storage {
        /// Display name of the file.
        file: String,
        /// The storage key (the file name under `data/` in a zip archive).
        key: String,
        /// Where the storage was looked for (zip entry or legacy file offset).
        location: String,
        /// What is wrong, with expected and actual sizes.
        message: String,
    },
    /// A tensor cannot be materialised (bad shape, out-of-bounds view,
    /// unsupported dtype).
    #[error("{file}: tensor '{tensor}': {message}")]
    Tensor {
        /// Display name of the file.
        file: String,
        /// The state-dict key of the tensor.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// No state dict could be found, or it holds something that is not a tensor.
    #[error("{file}: {message}")]
    StateDict {
        /// Display name of the file.
        file: String,
        /// What is wrong, with the keys that were found.
        message: String,
    },
    /// The legacy (non-zip) torch.save container is malformed.
    #[error("{file}: legacy torch.save format: {message}")]
    Legacy {
        /// Display name of the file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

fn entry_suffix(entry: &Option<String>) -> String {
    match entry {
        Some(e) => format!(" entry '{e}'"),
        None => String::new(),
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
