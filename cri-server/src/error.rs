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
kinded!(runtime::Error, runtime::namespaces::NamespaceError, runtime::podfiles::PodFilesError);

impl<T> StatusExt<T> for Result<T, runtime::cgroups::CgroupError> {
    fn status(self, doing: &str) -> Result<T, Status> {
        self.map_err(|e| cgroup_status(doing, &e))
    }
}

/// A cgroup error as a status; a value the kernel refused names the resource (the cgroup file)
/// and the reason: INVALID_ARGUMENT for EINVAL/ERANGE, FAILED_PRECONDITION for EBUSY.
pub fn cgroup_status(doing: &str, e: &runtime::cgroups::CgroupError) -> Status {
    match e.refused_resource() {
        Some((resource, why)) => from_kind(e.kind(), format!("{doing}: {resource}: {why} ({e})")),
        None => from_kind(e.kind(), format!("{doing}: {e}")),
    }
}

impl<T> StatusExt<T> for Result<T, crate::store::StoreError> {
    fn status(self, doing: &str) -> Result<T, Status> {
        self.map_err(|e| Status::internal(format!("{doing}: {e}")))
    }
}

/// A join error of a blocking task as a status.
pub fn join_error(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("internal task failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::cgroups::CgroupError;

    fn write_error(file: &str, errno: i32) -> CgroupError {
        CgroupError::Io { op: "write", file: file.into(), source: std::io::Error::from_raw_os_error(errno) }
    }

    #[test]
    fn refused_cgroup_writes_name_the_resource() {
        let s = cgroup_status("apply", &write_error("/sys/fs/cgroup/memory/x/memory.limit_in_bytes", libc::EBUSY));
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert!(s.message().contains("memory.limit_in_bytes: the limit is below"), "{}", s.message());
        let s = cgroup_status("apply", &write_error("/sys/fs/cgroup/cpu/x/cpu.cfs_period_us", libc::EINVAL));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("cpu.cfs_period_us"), "{}", s.message());
        let s = cgroup_status("apply", &write_error("/sys/fs/cgroup/cpu/x/cpu.shares", libc::EIO));
        assert_eq!(s.code(), tonic::Code::Internal);
    }
}
