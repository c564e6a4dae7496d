//! The CRI v1 API for the rest of skiff: the types and tonic services generated from the
//! vendored `api.proto` of `k8s.io/cri-api` v0.36 (Kubernetes 1.36; `proto/runtime/v1/VERSION`
//! records its origin and checksum). These are the only CRI types in the tree.
//!
//! Every message derives serde `Serialize`/`Deserialize` with `#[serde(default)]`, so records
//! that hold CRI configs stay readable when a newer proto adds fields.

/// CRI v1 messages, `runtime_service_server`, `image_service_server` and the clients.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

/// The CRI API version skiff serves, as reported by `Version`.
pub const CRI_API_VERSION: &str = "v1";

/// The `k8s.io/cri-api` release whose `api.proto` is vendored.
pub const CRI_API_RELEASE: &str = "v0.36.0";
