//! What every skiff crate shares: durable file writes ([`fs`]), the new mount API
//! ([`mountapi`], the one module allowed `unsafe`) and the one error-kind
//! convention ([`ErrorKind`], [`Kinded`]) that the gRPC edge (cri-server) maps to status codes
//! in one place.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod fs;
pub mod journal;
pub mod mountapi;

/// How an error should be reported to a CRI client. Every library error type says its kind
/// ([`Kinded`]); cri-server turns kinds into `tonic::Code`s in one function. `Internal` is for
/// what the caller could not have avoided, and only that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or names something that cannot exist (gRPC InvalidArgument).
    InvalidArgument,
    /// Something the request names does not exist (gRPC NotFound).
    NotFound,
    /// Something the request would create exists already (gRPC AlreadyExists).
    AlreadyExists,
    /// The system is not in a state where the request can be served (gRPC FailedPrecondition).
    FailedPrecondition,
    /// A limit was reached: addresses, sizes, counts (gRPC ResourceExhausted).
    ResourceExhausted,
    /// A value is outside the range the operation accepts (gRPC OutOfRange).
    OutOfRange,
    /// A remote party refused our credentials (gRPC Unauthenticated).
    Unauthenticated,
    /// A remote party (registry, plugin) could not be reached or stalled (gRPC Unavailable).
    Unavailable,
    /// Content did not match what was promised: digest, size, malformed data (gRPC DataLoss).
    DataLoss,
    /// An operation ran out of time (gRPC DeadlineExceeded).
    DeadlineExceeded,
    /// Anything else (gRPC Internal).
    Internal,
}

/// A failed file-system operation: what was being done, on which path, and the OS error. The
/// one `Io` variant payload of the runtime's error enums (`#[error(transparent)] Io(IoError)`).
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}", path = .path.display())]
pub struct IoError {
    /// The operation (`"create"`, `"lstat"`, ...).
    pub op: &'static str,
    /// The path it was done on.
    pub path: std::path::PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// See the type doc.
    pub fn new(op: &'static str, path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        IoError { op, path: path.into(), source }
    }
}

/// An error that knows its [`ErrorKind`].
pub trait Kinded {
    /// How the CRI edge should report this error.
    fn kind(&self) -> ErrorKind;

    /// What the client asked for that was refused, in its words (`memory.limit_in_bytes: the
    /// limit is below what the container uses now`), when the error knows; the edge puts it
    /// first in the message.
    fn detail(&self) -> Option<String> {
        None
    }
}

/// For tests with a prerequisite (root, `/bin/busybox`, v1 cgroups): `true` when `ok`; when
/// not, a test run under `CI` (where everything is installed and tests run as root) fails, and
/// elsewhere the test is skipped visibly (`SKIPPED: needs …` on stderr) so that a test never
/// passes without testing unnoticed.
pub fn prerequisite(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "this test needs {what} (missing under CI)");
    eprintln!("SKIPPED: needs {what}");
    false
}

/// Implements [`Kinded`] for error types that have an inherent `kind(&self) -> ErrorKind`.
#[macro_export]
macro_rules! impl_kinded {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::Kinded for $t {
            fn kind(&self) -> $crate::ErrorKind {
                <$t>::kind(self)
            }
        }
    )*};
}
