//! SPDY/3.1 as the Kubernetes streaming protocols use it (no maintained Rust crate exists):
//! framing ([`frame`]), header-block compression with the SPDY/3 dictionary ([`zlib`]), and an
//! async connection with streams and flow control ([`conn`]). Both roles are implemented: the
//! server for skiffd, the client for tests.

pub mod conn;
pub mod frame;
pub mod zlib;

pub use conn::{Connection, Role, Stream, StreamReader, StreamWriter};
pub use frame::{header, Frame, Headers};

/// Why a SPDY connection failed.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    #[error("SPDY header compression: {0}")]
    Compression(String),
    #[error("SPDY connection closed")]
    Closed,
}

/// The HTTP `Upgrade` token of SPDY/3.1.
pub const UPGRADE: &str = "SPDY/3.1";
