//! Generates scopegate's gRPC code and the descriptor set that server
//! reflection serves, from the workspace's `proto/`. protoc comes from
//! `protoc-bin-vendored`, so no system package is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let proto = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = ["admin", "authorize", "manage_key"]
        .map(|name| proto.join(format!("scopegate/v1/{name}.proto")));
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("scopegate_descriptor.bin"))
        .compile_protos(
            &files,
            &[proto.clone(), protoc_bin_vendored::include_path()?],
        )?;
    println!(
        "cargo:rerun-if-changed={}",
        proto.join("scopegate").display()
    );
    Ok(())
}
