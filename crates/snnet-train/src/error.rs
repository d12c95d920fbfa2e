//! The error type of training runs: the engine's and the data's errors, plus bad run settings and
//! checkpoints that cannot be used.

use thiserror::Error;

use crate::data::DataError;

/// What can stop a training run. Each variant names its culprit.
#[derive(Debug, Error)]
pub enum TrainError {
    /// From the stitching engine (routes, shapes, weight files).
    #[error(transparent)]
    Core(#[from] snnet_core::Error),
    /// From a dataset as a whole (a missing or corrupt file; single bad samples are skipped).
    #[error(transparent)]
    Data(#[from] DataError),
    /// A run setting that cannot work.
    #[error("invalid training setting `{setting}`: {reason}")]
    Setting {
        /// The setting (e.g. `batch_size`).
        setting: String,
        /// Why.
        reason: String,
    },
    /// A checkpoint that cannot be written or resumed from.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file or folder.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A data-parallel run stopped because of one of its peers (named in `reason`).
    #[error("data-parallel run of {peers} peers: {reason}")]
    Peers {
        /// Peers of the run.
        peers: usize,
        /// Which peer failed or did not arrive, where, and why.
        reason: String,
    },
    /// The loss became NaN or infinite.
    #[error("the loss became {loss} at step {step} (route {route}); lower the learning rate or enable gradient clipping")]
    Diverged {
        /// The global step.
        step: usize,
        /// The route trained at that step.
        route: usize,
        /// The value.
        loss: f64,
    },
}

/// Result alias for training runs.
pub type TrainResult<T> = std::result::Result<T, TrainError>;
