//! The gRPC edge: the only place that knows generated types. Each service
//! decodes, calls the domain, encodes; errors become `Status` in `status.rs`.

mod authorize;
mod convert;
mod manage;
mod status;

pub use authorize::AuthorizeService;
pub use manage::ManageKeyService;

/// Generated code for `proto/scopegate/v1`.
pub mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("scopegate.v1");

    /// Descriptor set served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("scopegate_descriptor");
}

/// Serving gate: the services answer UNAVAILABLE until the store is loaded.
#[derive(Default)]
pub struct Readiness(std::sync::atomic::AtomicBool);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    fn check(&self) -> Result<(), tonic::Status> {
        if self.0.load(std::sync::atomic::Ordering::Acquire) {
            Ok(())
        } else {
            Err(tonic::Status::unavailable(
                "scopegate is still loading keys",
            ))
        }
    }
}
