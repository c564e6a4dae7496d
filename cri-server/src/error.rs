//! The gRPC edge: library errors become `tonic::Status` here and only here.

use runtime::ErrorKind;
use tonic::Status;

/// The answer of an RPC skiff does not implement (yet): UNIMPLEMENTED naming the RPC.
pub fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by skiff"))
}

/// A runtime-crate error kind and message as a gRPC status.
pub fn from_kind(kind: ErrorKind, message: impl std::fmt::Display) -> Status {
    let message = message.to_string();
    match kind {
        ErrorKind::InvalidArgument => Status::invalid_argument(message),
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::FailedPrecondition => Status::failed_precondition(message),
        ErrorKind::Internal => Status::internal(message),
    }
}

/// Maps library errors that tell their kind.
pub trait StatusExt<T> {
    /// Converts the error, prefixing its message with what was being done.
    fn status(self, doing: &str) -> Result<T, Status>;
}

macro_rules! kinded {
    ($($t:ty),*) => {$(
        impl<T> StatusExt<T> for Result<T, $t> {
            fn status(self, doing: &str) -> Result<T, Status> {
                self.map_err(|e| from_kind(e.kind(), format!("{doing}: {e}")))
            }
        }
    )*};
}
kinded!(
    runtime::Error,
    runtime::cgroups::CgroupError,
    runtime::namespaces::NamespaceError,
    runtime::podfiles::PodFilesError
);

impl<T> StatusExt<T> for Result<T, crate::store::StoreError> {
    fn status(self, doing: &str) -> Result<T, Status> {
        self.map_err(|e| Status::internal(format!("{doing}: {e}")))
    }
}

/// A join error of a blocking task as a status.
pub fn join_error(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("internal task failed: {e}"))
}
