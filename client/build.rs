//! The Authorize client, generated from scopegate's own proto.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(
            &[PathBuf::from("../proto/scopegate/v1/authorize.proto")],
            &[PathBuf::from("../proto")],
        )?;
    println!("cargo:rerun-if-changed=../proto/scopegate/v1/authorize.proto");
    Ok(())
}
