//! The CRI v1 API for the rest of skiff.
//!
//! Re-exports the generated types and tonic services of the `k8s-cri` crate so that the other
//! crates depend on one path (`proto::cri`) and the choice of binding crate stays in one place.

/// CRI v1 messages, `runtime_service_server`, `image_service_server` and the clients.
pub use k8s_cri::v1 as cri;

/// The CRI API version skiff serves, as reported by `Version`.
pub const CRI_API_VERSION: &str = "v1";
