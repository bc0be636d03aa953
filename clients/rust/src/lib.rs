//! Rust client of quiver, a feature store that serves versioned snapshots over gRPC.
//!
//! ```no_run
//! # async fn demo() -> quiver_client::Result<()> {
//! use quiver_client::{EntityId, QuiverClient};
//! let client = QuiverClient::connect("http://127.0.0.1:50051").await?; // or "unix:///run/quiver.sock"
//! let batch = client.get_features(&[EntityId::Int64(7), EntityId::Int64(42)], &["profile"]).await?;
//! println!("answered by version {}", batch.version());
//! for row in batch.rows() {
//!     let age = row.get("profile", "age").and_then(|v| v.as_i64());
//!     println!("{age:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! Plaintext by default; for a server started with `--tls-cert`/`--tls-key` (and
//! `--tls-client-ca`), connect to `https://host:port` with [`ClientOptions::tls`] set from
//! [`TlsOptions`] (mutual TLS: [`TlsOptions::with_identity_files`]).
//!
//! The server sends each entity's stored ViewRow bytes untouched; this crate decodes them by
//! feature name with the schema of the version that answered (GetSchema, cached per version).
//!
//! With the cargo feature `embedded`, [`EmbeddedReader`] reads a snapshot root on local disk
//! in-process instead (no gRPC hop), returning the same rows; [`FeatureSource`] is implemented by
//! both, and [`AnySource`] picks one from a setting.
//!
//! Public enums are `#[non_exhaustive]` (a match needs a `_` arm), and so are the structs this
//! crate hands out or builds with methods ([`Schema`], [`TlsOptions`], `ReaderStats`, ...), so a
//! new variant or field breaks no caller. Option structs with public fields and a `Default`
//! ([`ClientOptions`], `EmbeddedOptions`, `ReadTuning`) stay open to `..Default::default()`.

mod client;
mod decode;
#[cfg(feature = "embedded")]
mod embedded;
mod error;
mod schema;
mod source;
mod tls;
mod value;

/// Code generated from proto/quiver/v1/quiver.proto at build time.
pub mod proto {
    tonic::include_proto!("quiver.v1");
}

pub use client::{ClientOptions, QuiverClient};
pub use decode::{EntityFeatures, FeatureBatch, ViewValues};
#[cfg(feature = "embedded")]
pub use embedded::{EmbeddedOptions, EmbeddedReader, FORMAT_VERSION, ReadTuning, ReaderStats};
pub use error::{Error, Result, SnapshotError};
pub use schema::{FeatureSchema, FeatureType, KeyType, Schema, ViewSchema};
pub use source::{AnySource, FeatureSource};
pub use tls::{ClientIdentity, Pem, TlsOptions};
pub use value::{EntityId, Value};
