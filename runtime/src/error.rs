//! Errors of the runtime crate.
//!
//! Every module has its own `thiserror` enum with a `kind()`; [`Error`] wraps them all, and
//! [`ErrorKind`] tells the gRPC edge (cri-server) which status code fits: `InvalidArgument` for
//! bad CRI input (an unknown user name, a missing mount source, a malformed resource value),
//! `NotFound`, `FailedPrecondition`, or `Internal` for everything the caller could not have
//! avoided.

pub use crate::caps::CapsError;
pub use crate::cgroups::CgroupError;
pub use crate::mounts::MountError;
pub use crate::namespaces::NamespaceError;
pub use crate::podfiles::PodFilesError;
pub use crate::seccomp::SeccompError;
pub use crate::user::UserError;

/// How an error should be reported to a CRI client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or refers to things that cannot exist (gRPC InvalidArgument).
    InvalidArgument,
    /// Something the request names does not exist (gRPC NotFound).
    NotFound,
    /// The system is not in a state where the request can be served (gRPC FailedPrecondition).
    FailedPrecondition,
    /// Anything else (gRPC Internal).
    Internal,
}

/// Any error of the runtime crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    PodFiles(#[from] PodFilesError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Caps(#[from] CapsError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Mount(#[from] MountError),
}

impl Error {
    /// How the CRI edge should report this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Cgroup(e) => e.kind(),
            Error::Namespace(e) => e.kind(),
            Error::PodFiles(e) => e.kind(),
            Error::User(e) => e.kind(),
            Error::Caps(e) => e.kind(),
            Error::Seccomp(e) => e.kind(),
            Error::Mount(e) => e.kind(),
        }
    }
}
