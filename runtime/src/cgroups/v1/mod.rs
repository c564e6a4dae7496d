//! cgroup v1 controllers: one module per controller, each applying its part of the OCI
//! `LinuxResources` to the cgroup's directory in that controller's hierarchy.

pub mod cpu;
pub mod cpuacct;
pub mod cpuset;
pub mod devices;
pub mod freezer;
pub mod hugetlb;
pub mod memory;
pub mod pids;
