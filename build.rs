//! Generates the gRPC code from `proto/` and the descriptor set that server
//! reflection serves. protoc comes from `protoc-bin-vendored`, so no system
//! package is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("scopegate_descriptor.bin"))
        .compile_protos(
            &[
                PathBuf::from("proto/scopegate/v1/admin.proto"),
                PathBuf::from("proto/scopegate/v1/authorize.proto"),
                PathBuf::from("proto/scopegate/v1/manage_key.proto"),
            ],
            &[PathBuf::from("proto"), protoc_bin_vendored::include_path()?],
        )?;
    // Envoy's ext_authz request, lean (see the proto's header); only the
    // server is generated, and the response is envoy-types' own message.
    tonic_prost_build::configure()
        .build_client(false)
        .bytes(".envoy.service.auth.v3")
        .extern_path(
            ".envoy.service.auth.v3.CheckResponse",
            "::envoy_types::pb::envoy::service::auth::v3::CheckResponse",
        )
        .compile_protos(
            &[PathBuf::from("proto/envoy_lean/external_auth.proto")],
            &[PathBuf::from("proto")],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
