//! Generates Envoy's ext_authz server, read and written in place by
//! `src/grpc` (scopegate's own protocol is the `scopegate-protocol` crate).
//! protoc comes from `protoc-bin-vendored`, so no system package is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    // Envoy's ext_authz service: only the server, with the request read in
    // place (src/grpc/envoy_request.rs), the response written as bytes
    // (src/grpc/envoy_response.rs).
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::grpc::envoy_request::EnvoyCodec")
        .extern_path(
            ".envoy.service.auth.v3.CheckRequest",
            "crate::grpc::envoy_request::EnvoyCheck",
        )
        .extern_path(
            ".envoy.service.auth.v3.CheckResponse",
            "crate::grpc::envoy_response::EnvoyAnswer",
        )
        .compile_protos(
            &[PathBuf::from("proto/envoy/external_auth.proto")],
            &[PathBuf::from("proto")],
        )?;
    println!("cargo:rerun-if-changed=proto/envoy");
    Ok(())
}
