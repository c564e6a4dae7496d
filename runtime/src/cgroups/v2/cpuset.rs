//! v2 `cpuset`: cpus and mems (same file names as v1; an empty value means "inherit").

pub use crate::cgroups::v1::cpuset::apply;
