//! scopegate's protocol, `proto/scopegate/v1`, as generated Rust: the
//! messages, the `Authorize`, `ManageKey` and `Admin` clients and servers,
//! and the descriptor set reflection serves. The sidecar and
//! `scopegate-client` both use it, so the protos are compiled once.
#![allow(clippy::all)]

tonic::include_proto!("scopegate.v1");

/// Descriptor set served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("scopegate_descriptor");
