//! skiffd, the skiff CRI daemon: configuration, the gRPC services, state stores, streaming and
//! recovery. It is thin: the work is done by the `runtime`, `imagesvc` and `netplugin` crates.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod admin;
pub mod backends;
pub mod config;
pub mod context;
pub mod error;
pub mod failpoint;
pub mod logging;
pub mod metrics;
pub mod preflight;
pub mod recovery;
pub mod rollback;
pub mod sdnotify;
pub mod server;
pub mod services;
pub mod spec;
pub mod store;
pub mod streaming;
#[cfg(test)]
pub mod testing;
pub mod validate;
