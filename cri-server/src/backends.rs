//! What the services ask of the libraries and of the host, behind small object-safe traits, so
//! that each RPC group can be unit-tested with in-memory fakes (`crate::testing`, as
//! containerd's `newTestCRIService`) without root or the real kernel pieces:
//!
//! - [`Images`]: the image store (`imagesvc::ImageStore`) and the overlay mount of a rootfs;
//! - [`Cgroups`]: the cgroup manager (`runtime::cgroups::CgroupManager`);
//! - [`Sandboxes`]: the host side of a pod (`runtime::pod`: pinned namespaces, pod files, the
//!   shm tmpfs, the pod cgroup);
//! - [`Monitors`] and [`MonitorClient`]: spawning and talking to the per-container
//!   `skiff-monitor` (`runtime::monitor`), and the pod's PID namespace holder;
//! - networking already sits behind `netplugin::NetworkPlugin`.
//!
//! The method names and signatures are those of the library calls they forward to, so that a
//! service calls `ctx.cgroups.stats(&cg)` or `ctx.images.prepare_rootfs(..)` as before. The
//! blocking methods (all but [`Images`]' async ones and [`Monitors::wait_pushed_exit`]) are
//! called from `spawn_blocking` or a dedicated thread, as the library calls were.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use imagesvc::{Auth, FsInfo, Image, ImageError, ImageRecord, ImageStore, ImageVolume, RootfsMount};
use oci_spec::runtime::LinuxResources;
use runtime::cgroups::{CgroupError, CgroupManager, CgroupMode, CgroupStats};
use runtime::monitor::{self, ExecOutput, ExitRecord, InfraStarted, MonitorError, Started};
use runtime::pod::{PodResources, PodSetupRequest};

/// The image store as the services use it (see [`imagesvc::ImageStore`] for the semantics).
#[tonic::async_trait]
pub trait Images: Send + Sync + 'static {
    async fn list(&self) -> Result<Vec<ImageRecord>, ImageError>;
    async fn status(&self, ref_or_id: &str) -> Result<Option<ImageRecord>, ImageError>;
    async fn resolve(&self, ref_or_id: &str) -> Result<Option<Image>, ImageError>;
    async fn pull(&self, reference: &str, auth: Option<Auth>) -> Result<ImageRecord, ImageError>;
    async fn remove(&self, ref_or_id: &str) -> Result<bool, ImageError>;
    async fn fs_info(&self) -> Result<FsInfo, ImageError>;
    async fn prepare_rootfs(&self, image_ref_or_id: &str, container_id: &str) -> Result<RootfsMount, ImageError>;
    async fn release_rootfs(&self, container_id: &str) -> Result<(), ImageError>;
    /// [`ImageStore::held_rootfs`]: the layout of a container's held rootfs, from memory (by
    /// default `None`: [`Images::prepare_rootfs`] then).
    async fn held_rootfs(&self, _container_id: &str) -> Option<RootfsMount> {
        None
    }
    /// [`ImageStore::begin_rootfs`]: a new container's hold counted, the rest of its writable
    /// layer left to the returned [`imagesvc::RootfsPrep`]'s blocking halves; `None` when it
    /// is prepared in full already (by default: [`Images::prepare_rootfs`]).
    async fn begin_rootfs(
        &self,
        image_ref_or_id: &str,
        container_id: &str,
    ) -> Result<Option<imagesvc::RootfsPrep>, ImageError> {
        self.prepare_rootfs(image_ref_or_id, container_id).await.map(|_| None)
    }
    /// The directories of a resolved image's layers, topmost first
    /// ([`ImageStore::layer_dirs`]).
    fn layer_dirs(&self, image: &Image) -> Vec<std::path::PathBuf>;
    /// Blocking, the first half of a container's release ([`ImageStore::retire_rootfs`]): the
    /// layer renamed away, its path returned for the caller to delete, and the hold's removal
    /// journaled; [`Images::forget_rootfs`] ends it.
    fn retire_rootfs(&self, container_id: &str) -> Result<Option<std::path::PathBuf>, ImageError>;
    /// The second half ([`ImageStore::forget_rootfs`]): the hold forgotten, snapshots no longer
    /// used deleted.
    async fn forget_rootfs(&self, container_id: &str) -> Result<(), ImageError>;
    async fn hold_image_volumes(&self, container_id: &str, images: &[String]) -> Result<Vec<ImageVolume>, ImageError>;
    async fn rootfs_holders(&self) -> Vec<String>;
    /// Mounts a prepared rootfs at `target` ([`RootfsMount::mount`]). Blocking.
    fn mount_rootfs(&self, layout: &RootfsMount, target: &Path) -> Result<(), ImageError>;
    /// Unmounts a rootfs; not mounted is fine ([`RootfsMount::unmount`]). Blocking.
    fn unmount_rootfs(&self, target: &Path) -> Result<(), ImageError>;
}

#[tonic::async_trait]
impl Images for ImageStore {
    async fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        ImageStore::list(self).await
    }
    async fn status(&self, ref_or_id: &str) -> Result<Option<ImageRecord>, ImageError> {
        ImageStore::status(self, ref_or_id).await
    }
    async fn resolve(&self, ref_or_id: &str) -> Result<Option<Image>, ImageError> {
        ImageStore::resolve(self, ref_or_id).await
    }
    async fn pull(&self, reference: &str, auth: Option<Auth>) -> Result<ImageRecord, ImageError> {
        ImageStore::pull(self, reference, auth).await
    }
    async fn remove(&self, ref_or_id: &str) -> Result<bool, ImageError> {
        ImageStore::remove(self, ref_or_id).await
    }
    async fn fs_info(&self) -> Result<FsInfo, ImageError> {
        ImageStore::fs_info(self).await
    }
    async fn prepare_rootfs(&self, image_ref_or_id: &str, container_id: &str) -> Result<RootfsMount, ImageError> {
        ImageStore::prepare_rootfs(self, image_ref_or_id, container_id).await
    }
    async fn release_rootfs(&self, container_id: &str) -> Result<(), ImageError> {
        ImageStore::release_rootfs(self, container_id).await
    }
    fn retire_rootfs(&self, container_id: &str) -> Result<Option<std::path::PathBuf>, ImageError> {
        ImageStore::retire_rootfs(self, container_id)
    }
    async fn held_rootfs(&self, container_id: &str) -> Option<RootfsMount> {
        ImageStore::held_rootfs(self, container_id).await
    }
    async fn forget_rootfs(&self, container_id: &str) -> Result<(), ImageError> {
        ImageStore::forget_rootfs(self, container_id).await
    }
    async fn begin_rootfs(
        &self,
        image_ref_or_id: &str,
        container_id: &str,
    ) -> Result<Option<imagesvc::RootfsPrep>, ImageError> {
        ImageStore::begin_rootfs(self, image_ref_or_id, container_id).await.map(Some)
    }
    fn layer_dirs(&self, image: &Image) -> Vec<std::path::PathBuf> {
        ImageStore::layer_dirs(self, image)
    }
    async fn hold_image_volumes(&self, container_id: &str, images: &[String]) -> Result<Vec<ImageVolume>, ImageError> {
        ImageStore::hold_image_volumes(self, container_id, images).await
    }
    async fn rootfs_holders(&self) -> Vec<String> {
        ImageStore::rootfs_holders(self).await
    }
    fn mount_rootfs(&self, layout: &RootfsMount, target: &Path) -> Result<(), ImageError> {
        layout.mount(target)
    }
    fn unmount_rootfs(&self, target: &Path) -> Result<(), ImageError> {
        RootfsMount::unmount(target)
    }
}

/// The cgroup manager as the services use it (see [`CgroupManager`]). Blocking.
pub trait Cgroups: Send + Sync + 'static {
    fn mode(&self) -> CgroupMode;
    fn exists(&self, path: &str) -> Result<bool, CgroupError>;
    fn created_by_skiff(&self, path: &str) -> Result<bool, CgroupError>;
    fn create_with(&self, path: &str, resources: Option<&LinuxResources>) -> Result<(), CgroupError>;
    fn apply(&self, path: &str, r: &LinuxResources) -> Result<(), CgroupError>;
    fn stats(&self, path: &str) -> Result<CgroupStats, CgroupError>;
    fn procs(&self, path: &str) -> Result<Vec<i32>, CgroupError>;
    fn kill_all(&self, path: &str) -> Result<(), CgroupError>;
    /// SIGKILL once to every process, no freezing or waiting ([`CgroupManager::signal_all`]).
    fn signal_all(&self, path: &str) -> Result<(), CgroupError>;
    fn remove(&self, path: &str) -> Result<(), CgroupError>;
    /// The host's hierarchies, handed to the monitors (`None`: they find them themselves).
    fn hierarchies(&self) -> Option<runtime::cgroups::Hierarchies> {
        None
    }
}

impl Cgroups for CgroupManager {
    fn mode(&self) -> CgroupMode {
        CgroupManager::mode(self)
    }
    fn hierarchies(&self) -> Option<runtime::cgroups::Hierarchies> {
        Some(CgroupManager::hierarchies(self).clone())
    }
    fn exists(&self, path: &str) -> Result<bool, CgroupError> {
        CgroupManager::exists(self, path)
    }
    fn created_by_skiff(&self, path: &str) -> Result<bool, CgroupError> {
        CgroupManager::created_by_skiff(self, path)
    }
    fn create_with(&self, path: &str, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        CgroupManager::create_with(self, path, resources)
    }
    fn apply(&self, path: &str, r: &LinuxResources) -> Result<(), CgroupError> {
        CgroupManager::apply(self, path, r)
    }
    fn stats(&self, path: &str) -> Result<CgroupStats, CgroupError> {
        CgroupManager::stats(self, path)
    }
    fn procs(&self, path: &str) -> Result<Vec<i32>, CgroupError> {
        CgroupManager::procs(self, path)
    }
    fn kill_all(&self, path: &str) -> Result<(), CgroupError> {
        CgroupManager::kill_all(self, path)
    }
    fn signal_all(&self, path: &str) -> Result<(), CgroupError> {
        CgroupManager::signal_all(self, path)
    }
    fn remove(&self, path: &str) -> Result<(), CgroupError> {
        CgroupManager::remove(self, path)
    }
}

/// The host side of a pod: [`runtime::pod::setup_pod`] and [`runtime::pod::teardown_pod`].
/// Blocking.
pub trait Sandboxes: Send + Sync + 'static {
    fn setup_pod(&self, req: &PodSetupRequest<'_>) -> Result<PodResources, runtime::Error>;
    fn teardown_pod(&self, state_dir: &Path, pod_id: &str, cgroup_parent: &str) -> Result<(), runtime::Error>;
    /// Whether a pinned namespace is still there (a bind mount; gone after a reboot).
    fn is_pinned(&self, ns_path: &Path) -> bool;
}

/// [`Sandboxes`] on the real host, with the daemon's cgroup manager.
pub struct HostSandboxes(pub Arc<CgroupManager>);

impl Sandboxes for HostSandboxes {
    fn setup_pod(&self, req: &PodSetupRequest<'_>) -> Result<PodResources, runtime::Error> {
        runtime::pod::setup_pod(&self.0, req)
    }
    fn teardown_pod(&self, state_dir: &Path, pod_id: &str, cgroup_parent: &str) -> Result<(), runtime::Error> {
        runtime::pod::teardown_pod(&self.0, state_dir, pod_id, cgroup_parent)
    }
    fn is_pinned(&self, ns_path: &Path) -> bool {
        runtime::podfiles::is_mountpoint(ns_path)
    }
}

/// One connection to a container's monitor ([`monitor::Client`]). Blocking.
pub trait MonitorClient: Send {
    fn status(&mut self) -> Result<monitor::Status, MonitorError>;
    fn signal(&mut self, sig: i32) -> Result<(), MonitorError>;
    fn reopen_log(&mut self) -> Result<(), MonitorError>;
    fn wait_exit(&mut self, timeout: Option<Duration>) -> Result<ExitRecord, MonitorError>;
}

impl MonitorClient for monitor::Client {
    fn status(&mut self) -> Result<monitor::Status, MonitorError> {
        monitor::Client::status(self)
    }
    fn signal(&mut self, sig: i32) -> Result<(), MonitorError> {
        monitor::Client::signal(self, sig)
    }
    fn reopen_log(&mut self) -> Result<(), MonitorError> {
        monitor::Client::reopen_log(self)
    }
    fn wait_exit(&mut self, timeout: Option<Duration>) -> Result<ExitRecord, MonitorError> {
        monitor::Client::wait_exit(self, timeout)
    }
}

/// The per-container monitors and the pods' PID namespace holders (`runtime::monitor`). All
/// blocking but [`Monitors::wait_pushed_exit`].
pub trait Monitors: Send + Sync + 'static {
    /// Starts the monitor of the container whose directory (`monitor.json`, `config.json`) is
    /// `container_dir` ([`monitor::spawn`]).
    fn spawn(&self, container_dir: &Path) -> Result<Started, MonitorError>;
    /// Starts the monitor of the container of `container_dir` gated ([`monitor::spawn_gated`]):
    /// it starts the container once the returned gate is opened; dropped, the start is off.
    fn spawn_gated(&self, container_dir: &Path) -> Result<Box<dyn GatedStart>, MonitorError>;
    /// Starts a pod's PID namespace holder ([`monitor::spawn_infra`]).
    fn spawn_infra(
        &self,
        pod_dir: &Path,
        cgroup: Option<&str>,
        hierarchies: Option<&runtime::cgroups::Hierarchies>,
    ) -> Result<InfraStarted, MonitorError>;
    /// Connects to a monitor's socket; `MonitorGone` when nobody listens.
    fn connect(&self, socket: &Path) -> Result<Box<dyn MonitorClient>, MonitorError>;
    /// The exit record at `path` (`<container dir>/exit.json`), if written.
    fn read_exit_record(&self, path: &Path) -> Option<ExitRecord>;
    /// Whether the process (a monitor or a PID namespace holder) exists.
    fn process_alive(&self, pid: i32) -> bool;
    /// The start time of a process, to recognise it later (None when gone).
    fn process_start_time(&self, pid: i32) -> Option<u64>;
    /// Kills a PID namespace holder if it is still the process started then; waits for it.
    fn kill_infra(&self, pid: i32, start_time: Option<u64>);
    /// Runs `cmd` in the running container of `container_dir` ([`monitor::exec_sync`]).
    fn exec_sync(
        &self,
        container_dir: &Path,
        cmd: &[String],
        timeout: Option<Duration>,
        max_output: usize,
    ) -> Result<ExecOutput, MonitorError>;
    /// Sends `Wait` to the monitor at `socket` and waits (asynchronously) for its answer that
    /// the container has exited; an error when the connection fails or breaks.
    fn wait_pushed_exit<'a>(&'a self, socket: &'a Path) -> BoxFuture<'a, io::Result<()>>;
}

/// A monitor waiting to start its container ([`Monitors::spawn_gated`]).
pub trait GatedStart: Send {
    /// The container's cgroup is made: its process may join it ([`monitor::Gate::cgroup_ready`]).
    /// Does not block.
    fn cgroup_ready(&mut self);
    /// Lets the container start ([`monitor::Gate::release`]). Does not block.
    fn release(&mut self);
    /// After [`GatedStart::release`], waits for the start (blocking); returns as
    /// [`Monitors::spawn`] does.
    fn wait(self: Box<Self>) -> Result<Started, MonitorError>;
}

impl GatedStart for monitor::Gate {
    fn cgroup_ready(&mut self) {
        monitor::Gate::cgroup_ready(self)
    }
    fn release(&mut self) {
        monitor::Gate::release(self)
    }
    fn wait(self: Box<Self>) -> Result<Started, MonitorError> {
        monitor::Gate::wait(*self)
    }
}

/// [`Monitors`] on the real host: the `skiff-monitor` binary at `bin`, and with `zygote`
/// its zygote ([`monitor::Zygote`]) forking the monitors of the gated starts.
pub struct HostMonitors {
    bin: PathBuf,
    containers_dir: PathBuf,
    /// None when configured off; else the zygote (None when it could not be started) and
    /// when its start last failed (retried at most every [`ZYGOTE_RETRY`]).
    zygote: Option<std::sync::Mutex<ZygoteSlot>>,
}

#[derive(Default)]
struct ZygoteSlot {
    zygote: Option<monitor::Zygote>,
    failed_at: Option<std::time::Instant>,
}

/// How long after a failed start of the zygote starts spawn their monitors before the zygote
/// is tried again.
const ZYGOTE_RETRY: Duration = Duration::from_secs(10);

impl HostMonitors {
    /// With `zygote`, the zygote is started now, for containers in `containers_dir`.
    pub fn new(bin: PathBuf, containers_dir: PathBuf, zygote: bool) -> Self {
        let zygote = zygote.then(|| {
            let z = start_zygote(&bin, &containers_dir);
            let failed_at = z.is_none().then(std::time::Instant::now);
            std::sync::Mutex::new(ZygoteSlot { zygote: z, failed_at })
        });
        Self { bin, containers_dir, zygote }
    }
}

fn start_zygote(bin: &Path, containers_dir: &Path) -> Option<monitor::Zygote> {
    match monitor::spawn_zygote(bin, containers_dir) {
        Ok(z) => Some(z),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the monitors' zygote; starts spawn their monitors");
            None
        }
    }
}

impl Monitors for HostMonitors {
    fn spawn(&self, container_dir: &Path) -> Result<Started, MonitorError> {
        monitor::spawn(&self.bin, container_dir)
    }
    fn spawn_gated(&self, container_dir: &Path) -> Result<Box<dyn GatedStart>, MonitorError> {
        if let Some(slot) = &self.zygote {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            // A zygote that was killed is replaced (its exec paid by this start, once).
            if !slot.zygote.as_mut().is_some_and(|z| z.alive()) {
                if slot.zygote.take().is_some() {
                    tracing::warn!("the monitors' zygote is gone; starting another");
                }
                if slot.failed_at.is_none_or(|t| t.elapsed() >= ZYGOTE_RETRY) {
                    slot.zygote = start_zygote(&self.bin, &self.containers_dir);
                    slot.failed_at = slot.zygote.is_none().then(std::time::Instant::now);
                }
            }
            if let Some(zy) = slot.zygote.as_ref() {
                match zy.spawn_gated(container_dir) {
                    Ok(gate) => return Ok(Box::new(gate)),
                    Err(e) => {
                        tracing::warn!(error = %e, "the monitors' zygote failed; spawning the monitor");
                        slot.zygote = None;
                    }
                }
            }
        }
        Ok(Box::new(monitor::spawn_gated(&self.bin, container_dir)?))
    }
    fn spawn_infra(
        &self,
        pod_dir: &Path,
        cgroup: Option<&str>,
        hierarchies: Option<&runtime::cgroups::Hierarchies>,
    ) -> Result<InfraStarted, MonitorError> {
        monitor::spawn_infra(&self.bin, pod_dir, cgroup, hierarchies)
    }
    fn connect(&self, socket: &Path) -> Result<Box<dyn MonitorClient>, MonitorError> {
        Ok(Box::new(monitor::Client::connect(socket)?))
    }
    fn read_exit_record(&self, path: &Path) -> Option<ExitRecord> {
        monitor::read_exit_record(path)
    }
    fn process_alive(&self, pid: i32) -> bool {
        crate::services::runtime::container::process_alive(pid)
    }
    fn process_start_time(&self, pid: i32) -> Option<u64> {
        crate::services::runtime::pod_extras::process_start_time(pid)
    }
    fn kill_infra(&self, pid: i32, start_time: Option<u64>) {
        crate::services::runtime::pod_extras::kill_infra(pid, start_time)
    }
    fn exec_sync(
        &self,
        container_dir: &Path,
        cmd: &[String],
        timeout: Option<Duration>,
        max_output: usize,
    ) -> Result<ExecOutput, MonitorError> {
        monitor::exec_sync(&self.bin, container_dir, cmd, timeout, max_output)
    }
    fn wait_pushed_exit<'a>(&'a self, socket: &'a Path) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(crate::services::runtime::container::wait_pushed_exit(socket))
    }
}
