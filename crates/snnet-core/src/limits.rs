//! Limits on what a network may ask for, checked before the work or the memory is spent. Limits a
//! real network could need to exceed are read from an environment variable, with a default.

use crate::error::{Error, Result};

/// Most routes a stitch space may have unless [`MAX_ROUTES_VAR`] says otherwise: 100,000. The
/// largest official spaces have 732 (DeiT-Ti/S/B with every pair and chain).
pub const DEFAULT_MAX_ROUTES: u64 = 100_000;

/// Environment variable that replaces [`DEFAULT_MAX_ROUTES`] (a whole number, `_` allowed).
pub const MAX_ROUTES_VAR: &str = "SNNET_MAX_ROUTES";

/// Largest `kernel_size` of the paired sliding window: 64 (the official spaces use 2). The window
/// enumerates `kernel_size²` pairs at every position.
pub const MAX_KERNEL_SIZE: usize = 64;

/// The whole number in environment variable `variable` (`_` separators allowed), or `default`
/// when it is not set.
pub fn limit_from_env(variable: &str, default: u64) -> Result<u64> {
    match std::env::var(variable) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Ok(text) => text
            .trim()
            .replace('_', "")
            .parse::<u64>()
            .map_err(|_| Error::InvalidLimit { variable: variable.to_string(), value: text.clone() }),
        Err(std::env::VarError::NotUnicode(text)) => {
            Err(Error::InvalidLimit { variable: variable.to_string(), value: text.to_string_lossy().into_owned() })
        }
    }
}

/// The route limit in force: [`MAX_ROUTES_VAR`], else [`DEFAULT_MAX_ROUTES`].
pub fn max_routes() -> Result<u64> {
    limit_from_env(MAX_ROUTES_VAR, DEFAULT_MAX_ROUTES)
}

/// A count for messages; `u64::MAX` stands for a count that saturated.
pub fn count_text(count: u64) -> String {
    if count == u64::MAX {
        format!("more than {}", u64::MAX - 1)
    } else {
        count.to_string()
    }
}
