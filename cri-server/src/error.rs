//! The gRPC edge: library errors become `tonic::Status` here and only here.

use tonic::Status;

/// The answer of an RPC skiff does not implement (yet): UNIMPLEMENTED naming the RPC.
pub fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by skiff"))
}
