//! What every skiff crate shares: durable file writes ([`fs`]) and the one error-kind
//! convention ([`ErrorKind`], [`Kinded`]) that the gRPC edge (cri-server) maps to status codes
//! in one place.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod fs;

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

/// An error that knows its [`ErrorKind`].
pub trait Kinded {
    /// How the CRI edge should report this error.
    fn kind(&self) -> ErrorKind;
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
