//! Linux containers for skiff: namespaces, cgroups (v1 and v2), rootfs and mounts, OCI spec
//! generation, seccomp, capabilities, and the per-container monitor binary.

pub mod caps;
pub mod cgroups;
pub mod error;
pub mod mounts;
pub mod namespaces;
pub mod pod;
pub mod podfiles;
pub mod seccomp;
pub mod spec;
pub mod user;
pub mod monitor;
pub mod util;

pub use error::{Error, ErrorKind};
