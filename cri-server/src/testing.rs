//! In-memory fakes of the [`crate::backends`] traits and of the network plugin, and
//! [`Context::for_tests`], for unit tests of the services that run without root and without
//! the kernel pieces (namespaces, mounts, cgroupfs, monitor processes), as containerd's
//! `newTestCRIService`. Only files under the test's directory are written.
//!
//! - [`FakeImages`]: images added with [`FakeImages::add`] (each with a one-layer directory
//!   holding `etc/passwd` and `etc/group`), pullable ones with [`FakeImages::publish`];
//!   rootfs holds as the real store keeps them (a removed image stays usable by its
//!   containers); "mounts" are a set of targets.
//! - [`FakeCgroups`]: cgroups as a map recording the resources set, kills and joins; the stats
//!   a test gives with [`FakeCgroups::set_stats`].
//! - [`FakeSandboxes`]: a pod's directory and cgroup; its "pinned namespaces" are empty files
//!   (gone after [`FakeSandboxes::reboot`]); can be made to fail.
//! - [`FakeMonitors`]: "runs" a container from `spawn` until the test makes it exit
//!   ([`FakeMonitors::exit`]) or a signal ends it (SIGKILL always, others unless
//!   [`FakeMonitors::ignore_signals`]); pushes exits to the watchers as a monitor does.
//! - [`FakeNetwork`]: addresses from 10.88.0.0/24, recording setups and teardowns.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use imagesvc::{Auth, Digest, FsInfo, FsUsage, Image, ImageError, ImageRecord, ImageVolume, RootfsMount};
use netplugin::{NetworkError, NetworkPlugin, NotReady, PodNetworkRequest, PodNetworkStatus};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::LinuxResources;
use runtime::cgroups::{CgroupError, CgroupMode, CgroupStats};
use runtime::monitor::{self, ExecOutput, ExitRecord, InfraStarted, MonitorError, Started};
use runtime::pod::{PodFilePaths, PodNamespacePaths, PodResources, PodSetupRequest};

use crate::backends::{Cgroups, Images, MonitorClient, Monitors, Sandboxes};
use crate::config::Config;
use crate::context::Context;
use crate::store::Table;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_nanos() -> i64 {
    crate::store::now_nanos()
}

/// The fakes behind a [`Context::for_tests`], for the test to drive and inspect.
#[derive(Clone)]
pub struct Fakes {
    pub images: Arc<FakeImages>,
    pub cgroups: Arc<FakeCgroups>,
    pub sandboxes: Arc<FakeSandboxes>,
    pub monitors: Arc<FakeMonitors>,
    pub network: Arc<FakeNetwork>,
}

impl Context {
    /// A context on `dir` (root `dir/root`, state `dir/state`) with fakes for images, cgroups,
    /// pod setup, monitors and network.
    pub fn for_tests(dir: &Path) -> (Context, Fakes) {
        let cgroups = Arc::new(FakeCgroups::default());
        let fakes = Fakes {
            images: Arc::new(FakeImages::new(&dir.join("root"))),
            sandboxes: Arc::new(FakeSandboxes { cgroups: cgroups.clone(), ..Default::default() }),
            cgroups,
            monitors: Arc::new(FakeMonitors::default()),
            network: Arc::new(FakeNetwork::default()),
        };
        (Self::for_tests_with(dir, &fakes), fakes)
    }

    /// A context on `dir` with these fakes: after [`Context::for_tests`] on the same `dir`, a
    /// restarted skiffd (its records on disk; the monitors, cgroups and pods "on the host"
    /// still there), for `crate::recovery::recover`.
    pub fn for_tests_with(dir: &Path, fakes: &Fakes) -> Context {
        let config = Config {
            root: dir.join("root"),
            state: dir.join("state"),
            listen: dir.join("state/skiff.sock"),
            ..Config::default()
        };
        let opened = crate::store::open(&config.root).expect("record dirs");
        let (pod_store, container_store) = (opened.pods, opened.containers);
        let monitor_path = dir.join("no-skiff-monitor");
        Context {
            config: Arc::new(config),
            pods: Table::default(),
            containers: Table::default(),
            pod_store,
            container_store,
            cgroups: fakes.cgroups.clone(),
            images: fakes.images.clone(),
            network: fakes.network.clone(),
            sandboxes: fakes.sandboxes.clone(),
            monitors: fakes.monitors.clone(),
            monitor_path: monitor_path.clone(),
            oom_score_adj_min: -1000,
            events: Default::default(),
            streaming: crate::streaming::Streaming::new(monitor_path, Duration::from_secs(60)),
            user_files: Default::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Images

#[derive(Default)]
struct ImagesState {
    images: BTreeMap<Digest, (ImageRecord, Arc<ImageConfiguration>)>,
    /// Pullable: reference → config.
    registry: BTreeMap<String, serde_json::Value>,
    /// Container → the image its rootfs came from, and the images of its volumes.
    holds: BTreeMap<String, (Digest, Vec<Digest>)>,
    mounted: BTreeSet<PathBuf>,
    pulls: usize,
}

/// See the module doc.
pub struct FakeImages {
    root: PathBuf,
    state: Mutex<ImagesState>,
}

impl FakeImages {
    fn new(root: &Path) -> Self {
        Self { root: root.to_owned(), state: Mutex::default() }
    }

    fn find<'a>(st: &'a ImagesState, s: &str) -> Option<&'a (ImageRecord, Arc<ImageConfiguration>)> {
        let s = s.trim();
        if let Ok(d) = Digest::parse(s) {
            return st.images.get(&d);
        }
        if let Ok(d) = Digest::parse(&format!("sha256:{s}")) {
            if let Some(i) = st.images.get(&d) {
                return Some(i);
            }
        }
        let tag = imagesvc::Reference::parse(s).ok()?.repo_tag()?;
        st.images.values().find(|(r, _)| r.repo_tags.contains(&tag) || r.repo_digests.iter().any(|d| d == s))
    }

    /// The layer directory of an image: `ROOT/fake-layers/<hex>` with `etc/passwd` (root, and
    /// `app` 1000:1000) and `etc/group`.
    fn layer_dir(&self, id: &Digest) -> PathBuf {
        self.root.join("fake-layers").join(id.as_str().trim_start_matches("sha256:"))
    }

    /// A container's release, all at once (the hold and the layer).
    fn release(&self, container_id: &str) -> Result<(), ImageError> {
        lock(&self.state).holds.remove(container_id);
        let dir = self.root.join("containers").join(container_id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(ImageError::Io { context: "remove container layer".into(), path: dir, source: e })
            }
            _ => Ok(()),
        }
    }

    fn insert(&self, st: &mut ImagesState, reference: &str, config: serde_json::Value) -> ImageRecord {
        let tag =
            imagesvc::Reference::parse(reference).ok().and_then(|r| r.repo_tag()).unwrap_or_else(|| reference.into());
        let bytes = serde_json::to_vec(&config).expect("image config");
        let id = Digest::of(&bytes);
        let layer = self.layer_dir(&id);
        std::fs::create_dir_all(layer.join("etc")).expect("fake layer");
        std::fs::write(layer.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
            .expect("fake passwd");
        std::fs::write(layer.join("etc/group"), "root:x:0:\napp:x:1000:\n").expect("fake group");
        let image_config: ImageConfiguration = serde_json::from_value(config).expect("valid image config");
        let user = image_config.config().as_ref().and_then(|c| c.user().clone()).unwrap_or_default();
        let uid = user.split(':').next().and_then(|u| u.parse().ok());
        let name = tag.rsplit_once(':').map(|(n, _)| n).unwrap_or(&tag).to_owned();
        let record = ImageRecord {
            id: id.clone(),
            repo_tags: vec![tag],
            repo_digests: vec![format!("{name}@{}", Digest::of(id.as_str().as_bytes()))],
            size: 1000 + bytes.len() as u64,
            manifest_digest: Digest::of(id.as_str().as_bytes()),
            layers: vec![Digest::of(b"layer")],
            diff_ids: vec![Digest::of(b"diff")],
            chain_ids: vec![id.clone()],
            extra_blobs: Default::default(),
            uid,
            username: if uid.is_none() { user.split(':').next().unwrap_or("").to_owned() } else { String::new() },
            pinned: false,
            pulled_at: 1,
        };
        // A tag moves to the new image.
        for (r, _) in st.images.values_mut() {
            r.repo_tags.retain(|t| !record.repo_tags.contains(t));
        }
        st.images.insert(id, (record.clone(), Arc::new(image_config)));
        record
    }

    /// Adds a pulled image (`config`: an OCI image config, `{"config": {"Cmd": [...]}}`).
    pub fn add(&self, reference: &str, config: serde_json::Value) -> ImageRecord {
        let mut st = lock(&self.state);
        self.insert(&mut st, reference, with_defaults(config))
    }

    /// Makes an image pullable.
    pub fn publish(&self, reference: &str, config: serde_json::Value) {
        lock(&self.state).registry.insert(reference.to_owned(), with_defaults(config));
    }

    /// The containers holding a rootfs.
    pub fn holders(&self) -> Vec<String> {
        lock(&self.state).holds.keys().cloned().collect()
    }

    /// The rootfs targets mounted now.
    pub fn mounted(&self) -> Vec<PathBuf> {
        lock(&self.state).mounted.iter().cloned().collect()
    }

    /// How many pulls reached the "registry".
    pub fn pulls(&self) -> usize {
        lock(&self.state).pulls
    }
}

fn with_defaults(mut config: serde_json::Value) -> serde_json::Value {
    let obj = config.as_object_mut().expect("an image config is a JSON object");
    obj.entry("architecture").or_insert("amd64".into());
    obj.entry("os").or_insert("linux".into());
    obj.entry("rootfs").or_insert(serde_json::json!({"type": "layers", "diff_ids": []}));
    config
}

#[tonic::async_trait]
impl Images for FakeImages {
    async fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(lock(&self.state).images.values().map(|(r, _)| r.clone()).collect())
    }

    async fn status(&self, ref_or_id: &str) -> Result<Option<ImageRecord>, ImageError> {
        if let Some((r, _)) = Self::find(&lock(&self.state), ref_or_id) {
            return Ok(Some(r.clone()));
        }
        if ref_or_id.is_empty() {
            return Err(ImageError::InvalidArgument("empty image reference".into()));
        }
        let hex = ref_or_id.strip_prefix("sha256:").unwrap_or(ref_or_id);
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            imagesvc::Reference::parse(ref_or_id)?;
        }
        Ok(None)
    }

    async fn resolve(&self, ref_or_id: &str) -> Result<Option<Image>, ImageError> {
        let Some(record) = self.status(ref_or_id).await? else { return Ok(None) };
        let st = lock(&self.state);
        let config = st.images.get(&record.id).map(|(_, c)| c.clone()).unwrap_or_default();
        Ok(Some(Image { record, config }))
    }

    async fn pull(&self, reference: &str, _auth: Option<Auth>) -> Result<ImageRecord, ImageError> {
        imagesvc::Reference::parse(reference)?;
        let mut st = lock(&self.state);
        st.pulls += 1;
        let Some(config) = st.registry.get(reference).cloned() else {
            return Err(ImageError::RegistryNotFound {
                reference: reference.into(),
                what: "manifest".into(),
                details: "not in the fake registry".into(),
            });
        };
        Ok(self.insert(&mut st, reference, config))
    }

    async fn remove(&self, ref_or_id: &str) -> Result<bool, ImageError> {
        let found = Self::find(&lock(&self.state), ref_or_id).map(|(r, _)| r.id.clone());
        let Some(id) = found else {
            self.status(ref_or_id).await?;
            return Ok(false);
        };
        lock(&self.state).images.remove(&id);
        Ok(true)
    }

    async fn fs_info(&self) -> Result<FsInfo, ImageError> {
        let usage = |p: PathBuf| FsUsage { mountpoint: p, used_bytes: 4096, inodes_used: 1 };
        Ok(FsInfo {
            timestamp: now_nanos(),
            image: usage(self.root.join("snapshots")),
            container: usage(self.root.join("containers")),
        })
    }

    async fn prepare_rootfs(&self, image_ref_or_id: &str, container_id: &str) -> Result<RootfsMount, ImageError> {
        let mut st = lock(&self.state);
        let dir = self.root.join("containers").join(container_id);
        let image_id = match st.holds.get(container_id) {
            // Prepared before: the hold keeps the layers even if the image was removed.
            Some((id, _)) => id.clone(),
            None => Self::find(&st, image_ref_or_id)
                .map(|(r, _)| r.id.clone())
                .ok_or_else(|| ImageError::ImageNotFound(image_ref_or_id.to_owned()))?,
        };
        for sub in ["upper", "work"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| ImageError::Io {
                context: "create container dir".into(),
                path: dir.clone(),
                source: e,
            })?;
        }
        st.holds.entry(container_id.to_owned()).or_insert((image_id.clone(), Vec::new()));
        Ok(RootfsMount {
            lowerdirs: vec![self.layer_dir(&image_id)],
            upperdir: dir.join("upper"),
            workdir: dir.join("work"),
            volatile: false,
        })
    }

    fn layer_dirs(&self, image: &Image) -> Vec<PathBuf> {
        vec![self.layer_dir(&image.record.id)]
    }

    fn retire_rootfs(&self, container_id: &str) -> Result<Option<PathBuf>, ImageError> {
        self.release(container_id).map(|()| None)
    }

    async fn forget_rootfs(&self, _container_id: &str) -> Result<(), ImageError> {
        Ok(())
    }

    async fn release_rootfs(&self, container_id: &str) -> Result<(), ImageError> {
        self.release(container_id)
    }

    async fn hold_image_volumes(&self, container_id: &str, images: &[String]) -> Result<Vec<ImageVolume>, ImageError> {
        let mut st = lock(&self.state);
        let mut out = Vec::new();
        for name in images {
            let id = Self::find(&st, name).map(|(r, _)| r.id.clone()).ok_or_else(|| {
                ImageError::ImageNotFound(format!("{name} (image volumes need the image pulled first)"))
            })?;
            out.push(ImageVolume { image_id: id.clone(), layers: vec![self.layer_dir(&id)] });
        }
        let Some(hold) = st.holds.get_mut(container_id) else {
            return Err(ImageError::InvalidArgument(format!("container {container_id} has no prepared rootfs")));
        };
        hold.1.extend(out.iter().map(|v| v.image_id.clone()));
        Ok(out)
    }

    async fn rootfs_holders(&self) -> Vec<String> {
        self.holders()
    }

    fn mount_rootfs(&self, _layout: &RootfsMount, target: &Path) -> Result<(), ImageError> {
        lock(&self.state).mounted.insert(target.to_owned());
        Ok(())
    }

    fn unmount_rootfs(&self, target: &Path) -> Result<(), ImageError> {
        lock(&self.state).mounted.remove(target);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Cgroups

/// One fake cgroup.
#[derive(Debug, Clone, Default)]
pub struct FakeCgroup {
    /// What `create_with` was given.
    pub created_with: Option<LinuxResources>,
    /// Every `apply`, in order.
    pub applied: Vec<LinuxResources>,
    /// What `stats` answers.
    pub stats: CgroupStats,
    pub procs: Vec<i32>,
}

#[derive(Default)]
struct CgroupsState {
    cgroups: BTreeMap<String, FakeCgroup>,
    killed: Vec<String>,
    /// Stats set before the cgroup exists (a container's, before its start).
    pending_stats: HashMap<String, CgroupStats>,
    /// The next `create_with` or `apply` fails with this errno, as a kernel refusing a value.
    fail_write: Option<i32>,
    /// Made by someone else (the kubelet): they exist, but skiff did not create them.
    foreign: BTreeSet<String>,
}

/// See the module doc.
#[derive(Default)]
pub struct FakeCgroups {
    state: Mutex<CgroupsState>,
}

fn key(path: &str) -> String {
    format!("/{}", path.trim_matches('/'))
}

impl FakeCgroups {
    /// A copy of a cgroup, if it exists.
    pub fn get(&self, path: &str) -> Option<FakeCgroup> {
        lock(&self.state).cgroups.get(&key(path)).cloned()
    }

    /// The cgroups that exist.
    pub fn paths(&self) -> Vec<String> {
        lock(&self.state).cgroups.keys().cloned().collect()
    }

    /// The cgroups `kill_all` or `signal_all` was called on, in order.
    pub fn killed(&self) -> Vec<String> {
        lock(&self.state).killed.clone()
    }

    /// A cgroup the kubelet made: it exists, and `created_by_skiff` is false for it.
    pub fn add_foreign(&self, path: &str) {
        let mut st = lock(&self.state);
        st.foreign.insert(key(path));
        st.cgroups.entry(key(path)).or_default();
    }

    /// The next `create_with` or `apply` fails as a cgroup file write refused with `errno`.
    pub fn fail_next_write(&self, errno: i32) {
        lock(&self.state).fail_write = Some(errno);
    }

    fn injected(st: &mut CgroupsState, path: &str) -> Result<(), CgroupError> {
        match st.fail_write.take() {
            Some(errno) => Err(CgroupError::Io {
                op: "write",
                file: PathBuf::from(format!("/sys/fs/cgroup{}/memory.max", key(path))),
                source: io::Error::from_raw_os_error(errno),
            }),
            None => Ok(()),
        }
    }

    /// What `stats` answers for `path` (also once it is created later).
    pub fn set_stats(&self, path: &str, stats: CgroupStats) {
        let mut st = lock(&self.state);
        match st.cgroups.get_mut(&key(path)) {
            Some(cg) => cg.stats = stats,
            None => {
                st.pending_stats.insert(key(path), stats);
            }
        }
    }
}

impl Cgroups for FakeCgroups {
    fn mode(&self) -> CgroupMode {
        CgroupMode::Unified
    }
    fn exists(&self, path: &str) -> Result<bool, CgroupError> {
        Ok(lock(&self.state).cgroups.contains_key(&key(path)))
    }
    fn created_by_skiff(&self, path: &str) -> Result<bool, CgroupError> {
        let st = lock(&self.state);
        Ok(st.cgroups.contains_key(&key(path)) && !st.foreign.contains(&key(path)))
    }
    fn create_with(&self, path: &str, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        runtime::cgroups::normalize(path)?;
        let mut st = lock(&self.state);
        if resources.is_some() {
            Self::injected(&mut st, path)?;
        }
        let stats = st.pending_stats.remove(&key(path)).unwrap_or_default();
        let cg = st.cgroups.entry(key(path)).or_insert_with(|| FakeCgroup { stats, ..Default::default() });
        if resources.is_some() {
            cg.created_with = resources.cloned();
        }
        Ok(())
    }
    fn apply(&self, path: &str, r: &LinuxResources) -> Result<(), CgroupError> {
        let mut st = lock(&self.state);
        Self::injected(&mut st, path)?;
        let cg = st.cgroups.get_mut(&key(path)).ok_or_else(|| CgroupError::NotFound(path.to_owned()))?;
        cg.applied.push(r.clone());
        Ok(())
    }
    fn stats(&self, path: &str) -> Result<CgroupStats, CgroupError> {
        let st = lock(&self.state);
        st.cgroups.get(&key(path)).map(|c| c.stats.clone()).ok_or_else(|| CgroupError::NotFound(path.to_owned()))
    }
    fn procs(&self, path: &str) -> Result<Vec<i32>, CgroupError> {
        let st = lock(&self.state);
        st.cgroups.get(&key(path)).map(|c| c.procs.clone()).ok_or_else(|| CgroupError::NotFound(path.to_owned()))
    }
    fn kill_all(&self, path: &str) -> Result<(), CgroupError> {
        lock(&self.state).killed.push(key(path));
        Ok(())
    }
    fn signal_all(&self, path: &str) -> Result<(), CgroupError> {
        lock(&self.state).killed.push(key(path));
        Ok(())
    }
    fn remove(&self, path: &str) -> Result<(), CgroupError> {
        lock(&self.state).cgroups.remove(&key(path));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Pod setup

/// See the module doc.
#[derive(Default)]
pub struct FakeSandboxes {
    cgroups: Arc<FakeCgroups>,
    /// Set up and not torn down: pod ID → its cgroup.
    live: Mutex<BTreeMap<String, String>>,
    fail_setup: Mutex<bool>,
}

impl FakeSandboxes {
    /// The pods set up and not torn down.
    pub fn live(&self) -> Vec<String> {
        lock(&self.live).keys().cloned().collect()
    }

    /// A reboot: every pod's pinned namespaces are gone.
    pub fn reboot(&self, state_dir: &Path) {
        for id in self.live() {
            let _ = std::fs::remove_dir_all(state_dir.join("pods").join(id).join("ns"));
        }
    }

    /// Makes the next setups fail (as a failed namespace pinning would).
    pub fn fail_setup(&self, fail: bool) {
        *lock(&self.fail_setup) = fail;
    }
}

impl Sandboxes for FakeSandboxes {
    fn setup_pod(&self, req: &PodSetupRequest<'_>) -> Result<PodResources, runtime::Error> {
        if *lock(&self.fail_setup) {
            return Err(CgroupError::Busy { path: "fake".into(), remaining: 1 }.into());
        }
        let cgroup_parent = runtime::pod::cgroup_parent(req.cgroup_parent, req.pod_id, req.default_cgroup_parent)?;
        let dir = req.state_dir.join("pods").join(req.pod_id);
        std::fs::create_dir_all(dir.join("ns")).map_err(|e| CgroupError::Io {
            op: "fake",
            file: dir.clone(),
            source: e,
        })?;
        self.cgroups.create_with(&cgroup_parent, None)?;
        lock(&self.live).insert(req.pod_id.to_owned(), cgroup_parent.clone());
        // A pinned namespace is a file that exists (see `is_pinned`).
        let ns = |t: &str, host: bool| {
            let p = dir.join("ns").join(t);
            (!host && std::fs::write(&p, "").is_ok()).then_some(p)
        };
        Ok(PodResources {
            dir: dir.clone(),
            namespaces: PodNamespacePaths {
                net: ns("net", req.host_network),
                ipc: ns("ipc", req.host_ipc),
                uts: ns("uts", req.host_network),
                // The fakes make no user namespaces (pods asking for one are refused before
                // pod setup unless the host's probe works; unit tests do not ask).
                user: None,
            },
            files: PodFilePaths {
                resolv_conf: Some(dir.join("resolv.conf")),
                hosts: Some(dir.join("hosts")),
                hostname: Some(dir.join("hostname")),
                shm: Some(if req.host_ipc { PathBuf::from("/dev/shm") } else { dir.join("shm") }),
            },
            cgroup_parent,
            hostname: if req.hostname.is_empty() { req.pod_id.chars().take(12).collect() } else { req.hostname.into() },
        })
    }

    fn teardown_pod(&self, state_dir: &Path, pod_id: &str, cgroup_parent: &str) -> Result<(), runtime::Error> {
        let dir = state_dir.join("pods").join(pod_id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(CgroupError::Io { op: "fake", file: dir, source: e }.into());
            }
        }
        self.cgroups.remove(cgroup_parent)?;
        lock(&self.live).remove(pod_id);
        Ok(())
    }

    fn is_pinned(&self, ns_path: &Path) -> bool {
        ns_path.exists()
    }
}

// ---------------------------------------------------------------------------------------------
// Monitors

/// A container "run" by [`FakeMonitors`].
#[derive(Debug, Clone)]
pub struct FakeProcess {
    pub pid: i32,
    pub monitor_pid: i32,
    pub started_at: i64,
    pub exit: Option<ExitRecord>,
    /// Signals received, in order.
    pub signals: Vec<i32>,
    pub log_reopens: usize,
    /// ExecSync commands, in order.
    pub execs: Vec<Vec<String>>,
}

#[derive(Default)]
struct MonitorsState {
    containers: HashMap<String, FakeProcess>,
    /// Pod PID namespace holders: pid → alive.
    infra: HashMap<i32, bool>,
    /// The cgroup each holder was told to join.
    infra_cgroup: HashMap<i32, Option<String>>,
    next_pid: i32,
    ignore_signals: HashSet<String>,
    fail_start: Option<String>,
    /// Calls to these containers' monitors fail so.
    failing: HashMap<String, fn() -> MonitorError>,
}

#[derive(Default)]
struct MonitorsInner {
    state: Mutex<MonitorsState>,
    changed: Condvar,
    /// Bumped on every exit, for the pushed-exit waiters.
    exits: Mutex<Option<tokio::sync::watch::Sender<u64>>>,
}

/// See the module doc.
#[derive(Default, Clone)]
pub struct FakeMonitors {
    inner: Arc<MonitorsInner>,
}

/// The fake monitor of a gated start: starts (as [`FakeMonitors::spawn`]) when opened.
struct FakeGate {
    monitors: FakeMonitors,
    dir: PathBuf,
}

impl crate::backends::GatedStart for FakeGate {
    fn cgroup_ready(&mut self) {}
    fn release(&mut self) {}
    fn wait(self: Box<Self>) -> Result<Started, MonitorError> {
        self.monitors.spawn(&self.dir)
    }
}

/// Fake pids lie above the kernel's largest `pid_max` (2^22): never a real process.
const FAKE_PID_BASE: i32 = 1 << 23;

/// A container's ID from its directory or a file in it.
fn id_of(path: &Path, is_file: bool) -> String {
    let dir = if is_file { path.parent().unwrap_or(path) } else { path };
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

impl MonitorsInner {
    fn exits(&self) -> tokio::sync::watch::Receiver<u64> {
        lock(&self.exits).get_or_insert_with(|| tokio::sync::watch::channel(0).0).subscribe()
    }

    fn record_exit(&self, st: &mut MonitorsState, id: &str, code: i32, signal: Option<i32>) -> bool {
        let Some(p) = st.containers.get_mut(id) else { return false };
        if p.exit.is_some() {
            return false;
        }
        p.exit = Some(ExitRecord {
            version: monitor::EXIT_RECORD_VERSION,
            container_id: id.to_owned(),
            exit_code: code,
            signal,
            oom_killed: false,
            started_at: Some(p.started_at),
            finished_at: now_nanos(),
            reason: None,
            message: None,
        });
        self.changed.notify_all();
        if let Some(tx) = lock(&self.exits).as_ref() {
            tx.send_modify(|n| *n += 1);
        }
        true
    }
}

impl FakeMonitors {
    /// Ends a running container with `code`, as its process exiting would; false when it is
    /// not running.
    pub fn exit(&self, id: &str, code: i32) -> bool {
        let mut st = lock(&self.inner.state);
        self.inner.record_exit(&mut st, id, code, None)
    }

    /// The container ignores every signal but SIGKILL.
    pub fn ignore_signals(&self, id: &str) {
        lock(&self.inner.state).ignore_signals.insert(id.to_owned());
    }

    /// The next start fails with this message (a StartError of the container process).
    pub fn fail_next_start(&self, message: &str) {
        lock(&self.inner.state).fail_start = Some(message.to_owned());
    }

    /// Every call to the container's monitor (signal, reopen log, wait) fails with `error()`.
    pub fn fail_calls(&self, id: &str, error: fn() -> MonitorError) {
        lock(&self.inner.state).failing.insert(id.to_owned(), error);
    }

    /// A copy of what the monitor of a container saw, if it was started.
    pub fn process(&self, id: &str) -> Option<FakeProcess> {
        lock(&self.inner.state).containers.get(id).cloned()
    }

    /// The pods' PID namespace holders still alive.
    pub fn live_infra(&self) -> usize {
        lock(&self.inner.state).infra.values().filter(|a| **a).count()
    }

    /// The cgroups the PID namespace holders were started in, in no order.
    pub fn infra_cgroups(&self) -> Vec<Option<String>> {
        lock(&self.inner.state).infra_cgroup.values().cloned().collect()
    }

    fn next_pid(st: &mut MonitorsState) -> i32 {
        st.next_pid += 1;
        FAKE_PID_BASE + st.next_pid
    }
}

struct FakeClient {
    inner: Arc<MonitorsInner>,
    id: String,
}

impl MonitorClient for FakeClient {
    fn status(&mut self) -> Result<monitor::Status, MonitorError> {
        let st = lock(&self.inner.state);
        let p = st.containers.get(&self.id).ok_or(MonitorError::MonitorGone)?;
        Ok(monitor::Status {
            pid: p.pid,
            state: if p.exit.is_some() { monitor::ContainerState::Exited } else { monitor::ContainerState::Running },
            started_at: p.started_at,
            exit: p.exit.clone(),
        })
    }

    fn signal(&mut self, sig: i32) -> Result<(), MonitorError> {
        let mut st = lock(&self.inner.state);
        if let Some(e) = st.failing.get(&self.id) {
            return Err(e());
        }
        let ignores = st.ignore_signals.contains(&self.id);
        let p = st.containers.get_mut(&self.id).ok_or(MonitorError::MonitorGone)?;
        p.signals.push(sig);
        if p.exit.is_none() && (sig == libc::SIGKILL || !ignores) {
            self.inner.record_exit(&mut st, &self.id, 128 + sig, Some(sig));
        }
        Ok(())
    }

    fn reopen_log(&mut self) -> Result<(), MonitorError> {
        let mut st = lock(&self.inner.state);
        if let Some(e) = st.failing.get(&self.id) {
            return Err(e());
        }
        let p = st.containers.get_mut(&self.id).ok_or(MonitorError::MonitorGone)?;
        p.log_reopens += 1;
        Ok(())
    }

    fn wait_exit(&mut self, timeout: Option<Duration>) -> Result<ExitRecord, MonitorError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = lock(&self.inner.state);
        loop {
            match st.containers.get(&self.id) {
                None => return Err(MonitorError::MonitorGone),
                Some(FakeProcess { exit: Some(e), .. }) => return Ok(e.clone()),
                Some(_) => {}
            }
            let wait = match deadline {
                Some(d) => d.checked_duration_since(Instant::now()).ok_or(MonitorError::Timeout)?,
                None => Duration::from_secs(3600),
            };
            st = self.inner.changed.wait_timeout(st, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Monitors for FakeMonitors {
    fn spawn(&self, container_dir: &Path) -> Result<Started, MonitorError> {
        // StartContainer wrote what the real monitor reads.
        monitor::MonitorConfig::load(container_dir)?;
        let mut st = lock(&self.inner.state);
        if let Some(m) = st.fail_start.take() {
            return Err(MonitorError::StartError(m));
        }
        let (pid, monitor_pid) = (Self::next_pid(&mut st), Self::next_pid(&mut st));
        let p = FakeProcess {
            pid,
            monitor_pid,
            started_at: now_nanos(),
            exit: None,
            signals: Vec::new(),
            log_reopens: 0,
            execs: Vec::new(),
        };
        // As the real monitor, which writes its pid before the gate opens: recovery adopts an
        // interrupted start's container through it.
        std::fs::write(container_dir.join(monitor::PID_FILE), monitor_pid.to_string())
            .map_err(|e| MonitorError::StartError(format!("write the pid file: {e}")))?;
        st.containers.insert(id_of(container_dir, false), p);
        Ok(Started { pid, monitor_pid })
    }

    fn spawn_gated(&self, container_dir: &Path) -> Result<Box<dyn crate::backends::GatedStart>, MonitorError> {
        Ok(Box::new(FakeGate { monitors: self.clone(), dir: container_dir.to_owned() }))
    }

    fn spawn_infra(
        &self,
        _pod_dir: &Path,
        cgroup: Option<&str>,
        _hierarchies: Option<&runtime::cgroups::Hierarchies>,
    ) -> Result<InfraStarted, MonitorError> {
        let mut st = lock(&self.inner.state);
        let pid = Self::next_pid(&mut st);
        st.infra.insert(pid, true);
        st.infra_cgroup.insert(pid, cgroup.map(str::to_owned));
        Ok(InfraStarted { pid })
    }

    fn connect(&self, socket: &Path) -> Result<Box<dyn MonitorClient>, MonitorError> {
        let id = id_of(socket, true);
        match lock(&self.inner.state).containers.get(&id) {
            // The monitor exits once it has written the exit record.
            Some(p) if p.exit.is_none() => Ok(Box::new(FakeClient { inner: self.inner.clone(), id })),
            _ => Err(MonitorError::MonitorGone),
        }
    }

    fn read_exit_record(&self, path: &Path) -> Option<ExitRecord> {
        lock(&self.inner.state).containers.get(&id_of(path, true)).and_then(|p| p.exit.clone())
    }

    fn process_alive(&self, pid: i32) -> bool {
        let st = lock(&self.inner.state);
        st.infra.get(&pid).copied().unwrap_or(false)
            || st.containers.values().any(|p| p.monitor_pid == pid && p.exit.is_none())
    }

    fn process_start_time(&self, pid: i32) -> Option<u64> {
        self.process_alive(pid).then_some(pid as u64)
    }

    fn kill_infra(&self, pid: i32, start_time: Option<u64>) {
        let mut st = lock(&self.inner.state);
        if start_time == Some(pid as u64) {
            if let Some(alive) = st.infra.get_mut(&pid) {
                *alive = false;
            }
        }
    }

    /// `echo ARGS` prints them; `false` exits 1; `sleep` with a timeout times out; any other
    /// command is not found (a StartError).
    fn exec_sync(
        &self,
        container_dir: &Path,
        cmd: &[String],
        timeout: Option<Duration>,
        max_output: usize,
    ) -> Result<ExecOutput, MonitorError> {
        let mut st = lock(&self.inner.state);
        let p = st.containers.get_mut(&id_of(container_dir, false)).ok_or(MonitorError::MonitorGone)?;
        p.execs.push(cmd.to_vec());
        match cmd.first().map(String::as_str) {
            Some("echo") => {
                let mut stdout = format!("{}\n", cmd[1..].join(" ")).into_bytes();
                let stdout_truncated = stdout.len() > max_output;
                stdout.truncate(max_output);
                Ok(ExecOutput { stdout, stdout_truncated, ..Default::default() })
            }
            Some("false") => Ok(ExecOutput { exit_code: 1, ..Default::default() }),
            Some("sleep") if timeout.is_some() => Err(MonitorError::Timeout),
            _ => Err(MonitorError::StartError(format!("exec: {:?}: executable file not found in $PATH", cmd[0]))),
        }
    }

    fn wait_pushed_exit<'a>(&'a self, socket: &'a Path) -> BoxFuture<'a, io::Result<()>> {
        let id = id_of(socket, true);
        Box::pin(async move {
            let mut rx = self.inner.exits();
            loop {
                match lock(&self.inner.state).containers.get(&id) {
                    None => return Err(io::Error::new(io::ErrorKind::NotFound, "no monitor")),
                    Some(p) if p.exit.is_some() => return Ok(()),
                    Some(_) => {}
                }
                rx.changed().await.map_err(io::Error::other)?;
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Network

#[derive(Default)]
struct NetworkState {
    ips: BTreeMap<String, IpAddr>,
    setups: usize,
    teardowns: usize,
    fail_setup: bool,
}

/// See the module doc.
#[derive(Default)]
pub struct FakeNetwork {
    state: Mutex<NetworkState>,
}

impl FakeNetwork {
    /// Pods holding an address.
    pub fn attached(&self) -> Vec<String> {
        lock(&self.state).ips.keys().cloned().collect()
    }

    /// (setups, teardowns) so far.
    pub fn calls(&self) -> (usize, usize) {
        let st = lock(&self.state);
        (st.setups, st.teardowns)
    }

    /// Makes the next setups fail with "no free address".
    pub fn fail_setup(&self, fail: bool) {
        lock(&self.state).fail_setup = fail;
    }
}

impl NetworkPlugin for FakeNetwork {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn setup<'a>(&'a self, req: &'a PodNetworkRequest) -> BoxFuture<'a, netplugin::Result<PodNetworkStatus>> {
        Box::pin(async move {
            let mut st = lock(&self.state);
            st.setups += 1;
            if st.fail_setup {
                return Err(NetworkError::AddressesExhausted("10.88.0.0/24".into()));
            }
            let n = st.ips.len() as u8 + 2;
            let ip = *st.ips.entry(req.id.clone()).or_insert(IpAddr::V4(Ipv4Addr::new(10, 88, 0, n)));
            Ok(PodNetworkStatus { ips: vec![ip], interface: "eth0".into() })
        })
    }

    fn teardown<'a>(&'a self, req: &'a PodNetworkRequest) -> BoxFuture<'a, netplugin::Result<()>> {
        Box::pin(async move {
            let mut st = lock(&self.state);
            st.teardowns += 1;
            st.ips.remove(&req.id);
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<(), NotReady>> {
        Box::pin(async { Ok(()) })
    }

    fn recover<'a>(&'a self, _live: &'a HashSet<String>) -> BoxFuture<'a, netplugin::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn pod_ips<'a>(&'a self, pod_id: &'a str) -> BoxFuture<'a, netplugin::Result<Vec<IpAddr>>> {
        Box::pin(async move { Ok(lock(&self.state).ips.get(pod_id).copied().into_iter().collect()) })
    }
}
