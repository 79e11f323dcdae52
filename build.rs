//! Generates Envoy's ext_authz server, read and written in place by
//! `src/grpc` (scopegate's own protocol is the `scopegate-protocol` crate).
//! protoc comes from `protoc-bin-vendored`, so no system package is needed.
//! It also lays out the binary's machine code: see `link_in_order`.

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
    link_in_order();
    Ok(())
}

/// Two link-time layouts that cut idle RSS (issue #38), for the scopegate
/// binaries only:
/// - the functions that run (start-up, idle, decisions: link/text-order.txt,
///   written by scripts/text-order.sh) placed together at the start of the
///   code, so the pages the kernel maps around each fault hold code that runs
///   (~10 MiB less). Only lld reads the file (rustc's default linker on
///   x86-64 Linux); names it does not find are skipped, so a stale list costs
///   memory, never correctness;
/// - relative relocations packed (RELR): the loader reads a few KiB at start
///   instead of 0.9 MB of `.rela.dyn`. Only where the C library can load it
///   (glibc 2.36 and later), as the binary runs where it is built (or in the
///   Debian 12 image).
fn link_in_order() {
    // Relative: the linker runs where cargo runs rustc, the workspace root.
    // An absolute path would outlive a move of the checkout, since cargo
    // reuses this script's output for a workspace that moved.
    let order = "link/text-order.txt";
    println!("cargo:rerun-if-changed={order}");
    if std::env::var("TARGET").unwrap_or_default() != "x86_64-unknown-linux-gnu" {
        return;
    }
    if std::path::Path::new(order).exists() {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={order}");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    if glibc_loads_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether this machine's glibc defines the `GLIBC_ABI_DT_RELR` version
/// (2.36 and later), which a binary with packed relocations requires.
fn glibc_loads_relr() -> bool {
    [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
        "/usr/lib64/libc.so.6",
    ]
    .iter()
    .filter_map(|path| std::fs::read(path).ok())
    .any(|libc| {
        libc.windows(17)
            .any(|window| window == b"GLIBC_ABI_DT_RELR")
    })
}
