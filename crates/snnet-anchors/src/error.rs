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
    /// An anchor or network that asks for more than a limit allows (see [`crate::limits`]).
    #[error("{what}: over the limit of {limit}; raise it with the environment variable {variable} if you mean it")]
    OverLimit {
        /// What was asked for, with the number (e.g. `5000000000 parameters and index-table entries`).
        what: String,
        /// The limit in force.
        limit: u64,
        /// The environment variable that sets the limit.
        variable: &'static str,
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

impl Error {
    /// The error with `anchors[index]` in front of the field or quantity it names, for an error of
    /// one anchor of a description.
    pub fn in_anchor(self, index: usize) -> Self {
        match self {
            Error::InvalidConfig { field, reason } => Error::InvalidConfig { field: format!("anchors[{index}].{field}"), reason },
            Error::OverLimit { what, limit, variable } => Error::OverLimit { what: format!("anchors[{index}]: {what}"), limit, variable },
            other => other,
        }
    }
}

/// Result alias of the anchors crate.
pub type Result<T> = std::result::Result<T, Error>;
