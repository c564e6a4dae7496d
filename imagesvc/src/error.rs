//! The error type of the image service.
//!
//! Every variant names what it is about (reference, digest, tar entry) so that the gRPC edge can
//! hand the message to the client as is. [`ImageError::kind`] tells the edge which status code
//! fits; the mapping to `tonic::Status` happens in cri-server only.

use std::io;
use std::path::PathBuf;

/// What kind of failure an [`ImageError`] is (the workspace's one convention).
pub use common::ErrorKind;

/// Errors of the image service.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    #[error("{reference}: {what} not found ({details})")]
    RegistryNotFound { reference: String, what: String, details: String },
    #[error("registry {registry} refused access to {reference}: {status}")]
    Unauthorized { reference: String, registry: String, status: String },
    #[error("pulling {reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("pulling {reference}: no bytes received for {secs}s while fetching {what}")]
    Stalled { reference: String, what: String, secs: u64 },
    #[error("{reference}: Docker image manifest schema 1 is not supported (deprecated format); push the image again with a current client")]
    Schema1 { reference: String },
    #[error("{reference}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { reference: String, media_type: String },
    #[error("{reference}: no manifest for platform {platform} in the image index")]
    NoMatchingPlatform { reference: String, platform: String },
    #[error("{reference}: invalid manifest: {reason}")]
    InvalidManifest { reference: String, reason: String },
    #[error("{reference}: invalid image config {digest}: {reason}")]
    InvalidConfig { reference: String, digest: String, reason: String },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    #[error("unpacking layer {layer}: entry {entry:?}: {reason}")]
    Unpack { layer: String, entry: String, reason: String },
    #[error("{context} ({path}): {source}")]
    Io { context: String, path: PathBuf, source: io::Error },
    #[error("image metadata: {0}")]
    Metadata(String),
    #[error("mount: {0}")]
    Mount(String),
}

impl ImageError {
    /// The gRPC-relevant category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::InvalidReference { .. } | ImageError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ImageError::ImageNotFound(_) | ImageError::RegistryNotFound { .. } => ErrorKind::NotFound,
            ImageError::Unauthorized { .. } => ErrorKind::Unauthenticated,
            ImageError::Schema1 { .. }
            | ImageError::UnsupportedMediaType { .. }
            | ImageError::NoMatchingPlatform { .. } => ErrorKind::FailedPrecondition,
            ImageError::Registry { .. } | ImageError::Stalled { .. } => ErrorKind::Unavailable,
            ImageError::InvalidManifest { .. }
            | ImageError::InvalidConfig { .. }
            | ImageError::DigestMismatch { .. }
            | ImageError::SizeMismatch { .. }
            | ImageError::Unpack { .. } => ErrorKind::DataLoss,
            ImageError::Io { .. } | ImageError::Metadata(_) | ImageError::Mount(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(context: impl Into<String>, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ImageError::Io { context: context.into(), path: path.into(), source }
    }
}

/// Result alias of the image service.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

common::impl_kinded!(ImageError);
