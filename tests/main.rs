//! The integration tests, one binary (see `integration/`).

mod integration;
