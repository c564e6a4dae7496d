//! Errors of the network plugin.

use std::path::PathBuf;

use crate::types::NotReady;

/// Result alias of this crate.
pub type Result<T, E = NetworkError> = std::result::Result<T, E>;

/// Everything that can go wrong while wiring pods to the network.
///
/// Suggested gRPC mapping (done in cri-server): `InvalidArgument` → InvalidArgument,
/// `NotReady` → FailedPrecondition/Unavailable, `AddressesExhausted` → ResourceExhausted,
/// everything else → Internal.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The request (or configuration) is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The `[network]` configuration is invalid.
    #[error("invalid network configuration: {0}")]
    Config(String),
    /// The network is not ready (e.g. no CNI configuration).
    #[error("network not ready: {0}")]
    NotReady(NotReady),
    /// The pod range cannot change while pods hold addresses of it.
    #[error("{0}")]
    RangeInUse(String),
    /// No free address left in a pod range.
    #[error("no free address left in {0}")]
    AddressesExhausted(String),
    /// A netlink request failed.
    #[error("netlink: {op}: {message}")]
    Netlink { op: String, message: String, errno: Option<i32> },
    /// nftables failed.
    #[error("nftables: {0}")]
    Nft(String),
    /// A CNI plugin failed.
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    Cni { plugin: String, command: String, code: Option<u64>, message: String },
    /// A file operation failed.
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something else (a thread died, a lease file is corrupt, ...).
    #[error("{0}")]
    Internal(String),
    /// Several steps of an operation failed (e.g. teardown).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Multiple(Vec<NetworkError>),
}

impl NetworkError {
    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NetworkError::Io { context, path: path.into(), source }
    }

    pub(crate) fn netlink(op: impl Into<String>, err: rtnetlink::Error) -> Self {
        let errno = match &err {
            rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
            _ => None,
        };
        NetworkError::Netlink { op: op.into(), message: err.to_string(), errno }
    }

    /// How the CRI edge should report this error. The node's network being unusable
    /// (NetworkReady false with its reason) is FailedPrecondition: not the request's fault.
    pub fn kind(&self) -> common::ErrorKind {
        use common::ErrorKind;
        match self {
            NetworkError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            NetworkError::NotReady(_) | NetworkError::Config(_) | NetworkError::RangeInUse(_) => {
                ErrorKind::FailedPrecondition
            }
            NetworkError::AddressesExhausted(_) => ErrorKind::ResourceExhausted,
            _ => ErrorKind::Internal,
        }
    }

    /// The errno of a failed netlink request, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetworkError::Netlink { errno, .. } => *errno,
            NetworkError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

common::impl_kinded!(NetworkError);
