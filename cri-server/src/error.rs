//! The gRPC edge: library errors become `tonic::Status` here and only here.

use common::{ErrorKind, Kinded};
use tonic::{Code, Status};

/// The answer of an RPC skiff does not implement (yet): UNIMPLEMENTED naming the RPC.
pub fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by skiff"))
}

/// The gRPC code of an error kind: the one place where library errors meet gRPC codes.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::OutOfRange => Code::OutOfRange,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Internal => Code::Internal,
    }
}

/// An error kind and message as a gRPC status.
pub fn from_kind(kind: ErrorKind, message: impl std::fmt::Display) -> Status {
    Status::new(code(kind), message.to_string())
}

/// A library error as a gRPC status, its message prefixed with what was being done; when the
/// error names what the client asked for (a cgroup value the kernel refused), that comes first.
pub fn status_of(doing: &str, e: &(impl Kinded + std::fmt::Display)) -> Status {
    match e.detail() {
        Some(detail) => from_kind(e.kind(), format!("{doing}: {detail} ({e})")),
        None => from_kind(e.kind(), format!("{doing}: {e}")),
    }
}

/// Maps library errors that tell their kind.
pub trait StatusExt<T> {
    /// Converts the error, prefixing its message with what was being done.
    fn status(self, doing: &str) -> Result<T, Status>;
}

impl<T, E: Kinded + std::fmt::Display> StatusExt<T> for Result<T, E> {
    fn status(self, doing: &str) -> Result<T, Status> {
        self.map_err(|e| status_of(doing, &e))
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
        let s = status_of("apply", &write_error("/sys/fs/cgroup/memory/x/memory.limit_in_bytes", libc::EBUSY));
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert!(s.message().contains("memory.limit_in_bytes: the limit is below"), "{}", s.message());
        let s = status_of("apply", &write_error("/sys/fs/cgroup/cpu/x/cpu.cfs_period_us", libc::EINVAL));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("cpu.cfs_period_us"), "{}", s.message());
        let s = status_of("apply", &write_error("/sys/fs/cgroup/cpu/x/cpu.shares", libc::EIO));
        assert_eq!(s.code(), tonic::Code::Internal);
    }
}
