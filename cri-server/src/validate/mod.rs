//! Request validation at the gRPC edge: every RPC's request is checked here, before anything is
//! looked up or acquired, so that a hostile or buggy client gets `INVALID_ARGUMENT` naming the
//! field and the limit instead of a kernel error, a stuck daemon or a store that no client can
//! list any more. One module per request family; each trait method of the services calls one
//! function of this module on its first line. The limits are listed in the README ("Limits and
//! validation").
//!
//! Checks that need the daemon's state (a PID namespace TARGET that must be a container of the
//! same pod) are here too ([`create_container`] takes the context); the rest are pure functions
//! of the request, unit-tested without root.

#![deny(clippy::arithmetic_side_effects)]

mod common;
mod container;
mod image;
mod pod;
mod resources;

pub use common::*;
pub use container::*;
pub use image::*;
pub use pod::*;
pub use resources::{check_resources, init_host_limits, merge_resources, parse_cpuset};
