//! Linux containers for skiff: namespaces, cgroups (v1 and v2), rootfs and mounts, seccomp,
//! capabilities, and the per-container monitor binary. It knows nothing of the CRI: it takes
//! plain Rust types and OCI (`oci-spec`) types; skiffd (cri-server) translates CRI requests
//! into them (its `spec` module builds the OCI spec).
//!
//! What skiffd calls (all blocking: use `tokio::task::spawn_blocking`):
//!
//! * RunPodSandbox: [`namespaces::pin`] (net/ipc/uts on a dedicated thread, hostname, lo up),
//!   [`podfiles`] (`resolv.conf`, `hosts`, `hostname`, shm tmpfs; paths from
//!   [`podfiles::PodPaths`]), [`cgroups::CgroupManager::create`] for the pod cgroup
//!   ([`pod::cgroup_parent`] picks it). [`pod::setup_pod`] does all of it with rollback; for a
//!   pod with a user namespace it pins that first ([`namespaces::pin_in_user_namespace`]).
//! * StartContainer of such a pod: [`idmap::mount_overlay`] (the image's layers idmapped
//!   under the overlay); the monitor idmaps the pod's files and joins the user namespace.
//!   [`features::user_namespaces`] says whether all of it works on this node.
//! * CreateContainer: [`user::resolve_in_layers`] (or [`user::resolve`] on a mounted rootfs)
//!   for the user; skiffd writes the OCI spec as `config.json`;
//!   [`cgroups::CgroupManager::create_with`] with the spec's `linux.resources`.
//! * StartContainer: the monitor ([`monitor`]) runs the spec; it joins the cgroup with
//!   [`cgroups::join_self`] and resolves mount targets with [`mounts::resolve_in_root`].
//! * Stop/Remove: [`cgroups::CgroupManager::kill_all`], [`cgroups::CgroupManager::remove`]
//!   (deletes only what skiff created), [`podfiles::unmount_shm`], [`namespaces::unpin`],
//!   [`podfiles::remove_pod_files`]; or [`pod::teardown_pod`]. All idempotent.
//! * Stats / OOM: [`cgroups::CgroupManager::stats`], [`cgroups::CgroupManager::oom_kills`].
//! * UpdateContainerResources: [`cgroups::CgroupManager::apply`] with OCI `LinuxResources`.
//!
//! Errors: every module has a `thiserror` enum with `kind()`; [`Error`] wraps them and
//! [`ErrorKind`] says which gRPC code fits.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod caps;
pub mod cgroups;
pub mod error;
pub mod features;
pub mod idmap;
pub mod monitor;
pub mod mounts;
pub mod namespaces;
pub mod pod;
pub mod podfiles;
pub mod seccomp;
pub mod user;
pub mod util;

pub use error::{Error, ErrorKind};
