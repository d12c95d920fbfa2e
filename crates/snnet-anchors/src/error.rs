//! Errors of the anchors crate.

use thiserror::Error;

/// What can go wrong describing or building anchors.
#[derive(Debug, Error)]
pub enum Error {
    /// A preset name that does not exist.
    #[error("unknown anchor `{name}`; known presets: {known}")]
    UnknownPreset {
        /// The name given.
        name: String,
        /// The presets that exist.
        known: String,
    },
    /// An architecture field with an unusable value.
    #[error("invalid anchor configuration `{field}`: {reason}")]
    InvalidConfig {
        /// The field at fault.
        field: String,
        /// Why.
        reason: String,
    },
    /// A description file that cannot be parsed.
    #[error("description {path}: {reason}")]
    Description {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An error of the stitching engine.
    #[error(transparent)]
    Core(#[from] snnet_core::Error),
}

/// Result alias of the anchors crate.
pub type Result<T> = std::result::Result<T, Error>;
