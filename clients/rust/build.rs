//! Generates the gRPC client from the contract in ../../proto at build time, so the crate can never
//! drift from it. protoc comes from the protoc-bin-vendored crate: no system install needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let proto = proto_root.join("quiver/v1/quiver.proto");
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    tonic_prost_build::configure()
        .build_server(false)
        // Re-exported as quiver_client::FeatureType: a type added to the contract must not break a
        // caller's match (the crate's other public enums are non_exhaustive too).
        .enum_attribute("quiver.v1.FeatureType", "#[non_exhaustive]")
        .compile_protos(&[proto], &[proto_root])?;
    Ok(())
}
