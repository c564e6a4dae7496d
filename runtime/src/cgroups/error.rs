//! The error type of [`crate::cgroups`].

use std::io;
use std::path::PathBuf;

use crate::error::ErrorKind;

/// What went wrong in a cgroup operation.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The cgroupfs-form path is not acceptable (empty, root, `..`, …).
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// A resource value cannot be applied (out of range, malformed).
    #[error("invalid cgroup resource: {0}")]
    InvalidResource(String),
    /// No cgroup hierarchy is mounted (or none we can use).
    #[error("no cgroup hierarchy is mounted")]
    NoHierarchy,
    /// The cgroup does not exist in any hierarchy.
    #[error("cgroup {0} does not exist")]
    NotFound(String),
    /// Processes survived every attempt to kill them.
    #[error("cgroup {path}: {remaining} process(es) still alive after kill")]
    Busy { path: String, remaining: usize },
    /// A file operation on the cgroup filesystem failed.
    #[error("cgroup {op} {file}: {source}")]
    Io {
        op: &'static str,
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The registry of cgroups skiff created could not be read or written.
    #[error("cgroup registry {file}: {reason}")]
    Registry { file: PathBuf, reason: String },
}

impl CgroupError {
    /// For a refused write: the cgroup file (the resource) and why the kernel refused it, in
    /// words a client understands.
    pub fn refused_resource(&self) -> Option<(String, &'static str)> {
        let CgroupError::Io { op: "write", file, source } = self else { return None };
        let name = file.file_name()?.to_string_lossy().into_owned();
        let why = match source.raw_os_error()? {
            libc::EINVAL | libc::ERANGE | libc::EOVERFLOW => "the kernel refused the value (out of range or malformed)",
            libc::EBUSY if name.starts_with("memory.") => {
                "the limit is below what the container uses now (or the cgroup is busy)"
            }
            libc::EBUSY => "the resource is in use and cannot be changed now",
            _ => return None,
        };
        Some((name, why))
    }

    /// The OS error number of a failed file operation.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            CgroupError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub(crate) fn io(op: &'static str, file: impl Into<PathBuf>, source: io::Error) -> Self {
        CgroupError::Io { op, file: file.into(), source }
    }

    /// How the CRI edge should report this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CgroupError::InvalidPath { .. } | CgroupError::InvalidResource(_) => ErrorKind::InvalidArgument,
            CgroupError::NotFound(_) => ErrorKind::NotFound,
            // The kernel refused a value (out of range, malformed) or cannot apply it now (a
            // memory limit below the usage, a cpuset in use): the request's fault, not ours.
            CgroupError::Io { op: "write", source, .. } => match source.raw_os_error() {
                Some(libc::EINVAL) | Some(libc::ERANGE) | Some(libc::EOVERFLOW) => ErrorKind::InvalidArgument,
                Some(libc::EBUSY) => ErrorKind::FailedPrecondition,
                _ => ErrorKind::Internal,
            },
            _ => ErrorKind::Internal,
        }
    }
}
