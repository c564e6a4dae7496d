//! v2 `pids`: same files as v1.

pub use crate::cgroups::v1::pids::{apply, stats};
