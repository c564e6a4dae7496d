//! Errors of the runtime crate.
//!
//! Every module has its own `thiserror` enum with a `kind()`; [`Error`] wraps them all, and
//! [`ErrorKind`] (the workspace's one convention, from `common`) tells the gRPC edge
//! (cri-server) which status code fits: `InvalidArgument` for
//! bad CRI input (an unknown user name, a missing mount source, a malformed resource value),
//! `NotFound`, `FailedPrecondition`, or `Internal` for everything the caller could not have
//! avoided.

pub use crate::caps::CapsError;
pub use crate::cgroups::CgroupError;
pub use crate::idmap::IdmapError;
pub use crate::mounts::MountError;
pub use crate::namespaces::NamespaceError;
pub use crate::podfiles::PodFilesError;
pub use crate::seccomp::SeccompError;
pub use crate::user::UserError;

pub use common::ErrorKind;

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
    #[error(transparent)]
    Idmap(#[from] IdmapError),
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
            Error::Idmap(e) => e.kind(),
        }
    }
}

common::impl_kinded!(CapsError, IdmapError, MountError, NamespaceError, PodFilesError, SeccompError, UserError);

impl common::Kinded for Error {
    fn kind(&self) -> ErrorKind {
        Error::kind(self)
    }
    fn detail(&self) -> Option<String> {
        match self {
            Error::Cgroup(e) => common::Kinded::detail(e),
            _ => None,
        }
    }
}

impl common::Kinded for CgroupError {
    fn kind(&self) -> ErrorKind {
        CgroupError::kind(self)
    }
    fn detail(&self) -> Option<String> {
        self.refused_resource().map(|(resource, why)| format!("{resource}: {why}"))
    }
}
