//! The one error type of the stitching engine.

use thiserror::Error;

/// Everything that can go wrong in `snnet-core`. Each variant names its culprit.
#[derive(Debug, Error)]
pub enum Error {
    /// A route id outside `0..num_routes`.
    #[error("unknown route id {id}: this network has {num_routes} routes (ids 0..={max})", max = .num_routes.saturating_sub(1))]
    UnknownRoute {
        /// The id that was asked for.
        id: usize,
        /// How many routes the network has.
        num_routes: usize,
    },
    /// A route of the space that the route pack the network was loaded from does not hold.
    #[error("route {id} is not in this route pack, which holds routes {available:?}")]
    RouteNotInPack {
        /// The id that was asked for.
        id: usize,
        /// The routes the pack holds.
        available: Vec<usize>,
    },
    /// Stitch-space settings that the official strategies cannot use.
    #[error("invalid stitch-space setting `{setting}`: {reason}")]
    InvalidSettings {
        /// The setting at fault (e.g. `kernel_size`).
        setting: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A stitch space with more routes than the limit allows (counted before any is built).
    #[error(
        "the stitch space has {} routes, over the limit of {limit}; raise it with the environment variable {} if you mean it",
        crate::limits::count_text(*.count), crate::limits::MAX_ROUTES_VAR
    )]
    TooManyRoutes {
        /// The routes the settings ask for (`u64::MAX`: more than can be counted).
        count: u64,
        /// The limit in force.
        limit: u64,
    },
    /// An environment variable that should hold a limit but does not hold a whole number.
    #[error("environment variable {variable}={value:?} is not a whole number")]
    InvalidLimit {
        /// The variable.
        variable: String,
        /// Its value.
        value: String,
    },
    /// Anchors that cannot be stitched with the chosen settings.
    #[error("anchors cannot be stitched: {0}")]
    IncompatibleAnchors(String),
    /// A tensor of the wrong shape.
    #[error("shape mismatch for {what}: expected {expected:?}, got {actual:?}")]
    Shape {
        /// What the tensor is (an input, a weight key, …).
        what: String,
        /// The shape that was expected.
        expected: Vec<usize>,
        /// The shape that was given.
        actual: Vec<usize>,
    },
    /// NaN or infinite values where finite numbers are required.
    #[error("non-finite values (NaN or ±inf) in {0}")]
    NonFinite(String),
    /// Calibration data that cannot produce a least-squares solution.
    #[error("least-squares initialisation failed: {0}")]
    LeastSquares(String),
    /// A weight file that cannot be read or does not match the network.
    #[error("weight file {path}: {reason}")]
    WeightFile {
        /// The file (or `<memory>`).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An input file (tensors to run a network on) that cannot be read or holds unusable values.
    #[error("input file {path}: {reason}")]
    InputFile {
        /// The file.
        path: String,
        /// What is wrong with it, naming the tensor.
        reason: String,
    },
    /// A weight file written for another network.
    #[error("weight file {path} describes a different network: {difference}")]
    DescriptionMismatch {
        /// The file.
        path: String,
        /// The first difference found, e.g. `anchors[1].embed_dim: file 384, network 192`.
        difference: String,
    },
    /// Selection found no route satisfying the constraints.
    #[error("no route satisfies the budget: {0}")]
    NoRouteWithinBudget(String),
    /// A metric was missing or malformed for selection.
    #[error("metric error: {0}")]
    Metric(String),
    /// A route controller that cannot be built, or an observation it refuses.
    #[error(transparent)]
    Controller(#[from] crate::controller::ControllerError),
    /// Input/output failure.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result alias for `snnet-core`.
pub type Result<T> = std::result::Result<T, Error>;
