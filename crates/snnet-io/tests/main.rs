//! The integration tests of snnet-io, in one binary: fixture values, error messages, robustness.

mod suite {
    mod common;
    mod errors;
    mod fixtures_values;
    mod robustness;
}
