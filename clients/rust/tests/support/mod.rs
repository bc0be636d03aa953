//! Helpers for tests against a real quiver server: the CLI as processes, and the expected values
//! read straight from the source Parquet.

pub mod reshape;
pub mod server;
pub mod source;
