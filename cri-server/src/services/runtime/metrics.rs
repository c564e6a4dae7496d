//! ListMetricDescriptors, ListPodSandboxMetrics and StreamPodSandboxMetrics: the
//! cAdvisor-style metrics the kubelet serves on `/metrics/cadvisor` when it takes them from the
//! runtime (KEP-2371), with the names, types and units cAdvisor uses.
//!
//! * Labels: every metric has `id` (container or pod id), `name` (container name; empty for
//!   pod-level metrics) and `image`; network metrics add `interface`, filesystem and I/O
//!   metrics `device`, `container_blkio_device_usage_total` also `major`, `minor` and
//!   `operation`, and `container_memory_failures_total` `failure_type` and `scope`.
//! * Values are the CRI's integers: `*_seconds*` metrics are whole seconds, as CRI-O does.
//! * Pod-level metrics (`PodSandboxMetrics.metrics`) are the pod cgroup's and the pod's network
//!   interfaces (read in its netns on a dedicated thread, `lo` left out); container metrics are
//!   those of running containers' cgroups plus the writable layer's usage.
//! * The writable layer's usage is never walked on the request path once known: each container's
//!   usage is cached and refreshed in the background when older than [`FS_TTL_NS`]; the first
//!   request for a container waits at most [`FS_FIRST_WAIT`] for the first walk. Cached
//!   metrics carry their collection time as `timestamp`; live ones 0, as the CRI asks.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use proto::cri::*;
use runtime::cgroups::CgroupStats;
use tonic::Status;

use super::stats::v;
use super::streams::{chunked, ListStream};
use super::RuntimeSvc;
use crate::context::Context;
use crate::error::join_error;
use crate::store::{now_nanos, ContainerRecord, ContainerState, PodRecord, PodState};

/// How old a cached writable-layer usage may be before a background walk refreshes it.
pub(crate) const FS_TTL_NS: i64 = 10_000_000_000;
/// How long the first metrics request for a container waits for its first walk.
pub(crate) const FS_FIRST_WAIT: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Labels {
    Base,
    Interface,
    Device,
    Blkio,
    Failure,
}

impl Labels {
    fn keys(self) -> Vec<String> {
        let extra: &[&str] = match self {
            Labels::Base => &[],
            Labels::Interface => &["interface"],
            Labels::Device => &["device"],
            Labels::Blkio => &["device", "major", "minor", "operation"],
            Labels::Failure => &["failure_type", "scope"],
        };
        ["id", "name", "image"].iter().chain(extra).map(|s| s.to_string()).collect()
    }
}

use Labels::*;
use MetricType::{Counter, Gauge};

/// Every metric skiff reports: name, help, labels, type.
const DESCRIPTORS: &[(&str, &str, Labels, MetricType)] = &[
    ("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", Base, Counter),
    ("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.", Base, Counter),
    ("container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds.", Base, Counter),
    ("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", Base, Counter),
    ("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", Base, Counter),
    (
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        Base,
        Counter,
    ),
    ("container_memory_cache", "Number of bytes of page cache memory.", Base, Gauge),
    ("container_memory_rss", "Size of RSS in bytes.", Base, Gauge),
    ("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", Base, Gauge),
    ("container_memory_mapped_file", "Size of memory mapped files in bytes.", Base, Gauge),
    ("container_memory_swap", "Container swap usage in bytes.", Base, Gauge),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        Base,
        Gauge,
    ),
    ("container_memory_working_set_bytes", "Current working set in bytes.", Base, Gauge),
    ("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes.", Base, Gauge),
    ("container_memory_failcnt", "Number of memory usage hits limits.", Base, Counter),
    ("container_memory_failures_total", "Cumulative count of memory allocation failures.", Failure, Counter),
    ("container_oom_events_total", "Count of out of memory events observed for the container.", Base, Counter),
    ("container_spec_cpu_period", "CPU period of the container.", Base, Gauge),
    ("container_spec_cpu_quota", "CPU quota of the container.", Base, Gauge),
    ("container_spec_cpu_shares", "CPU share of the container.", Base, Gauge),
    ("container_spec_memory_limit_bytes", "Memory limit for the container (0: unlimited).", Base, Gauge),
    ("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container (0: unlimited).", Base, Gauge),
    ("container_processes", "Number of processes running inside the container.", Base, Gauge),
    ("container_threads", "Number of threads running inside the container.", Base, Gauge),
    ("container_threads_max", "Maximum number of threads allowed inside the container (0: unlimited).", Base, Gauge),
    ("container_file_descriptors", "Number of open file descriptors for the container.", Base, Gauge),
    ("container_sockets", "Number of open sockets for the container.", Base, Gauge),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        Device,
        Gauge,
    ),
    (
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
        Device,
        Gauge,
    ),
    ("container_fs_inodes_total", "Number of available Inodes.", Device, Gauge),
    ("container_fs_inodes_free", "Number of available Inodes that are free.", Device, Gauge),
    ("container_fs_reads_bytes_total", "Cumulative count of bytes read.", Device, Counter),
    ("container_fs_reads_total", "Cumulative count of reads completed.", Device, Counter),
    ("container_fs_writes_bytes_total", "Cumulative count of bytes written.", Device, Counter),
    ("container_fs_writes_total", "Cumulative count of writes completed.", Device, Counter),
    ("container_blkio_device_usage_total", "Blkio device bytes usage.", Blkio, Counter),
    ("container_network_receive_bytes_total", "Cumulative count of bytes received.", Interface, Counter),
    ("container_network_receive_packets_total", "Cumulative count of packets received.", Interface, Counter),
    (
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        Interface,
        Counter,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        Interface,
        Counter,
    ),
    ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", Interface, Counter),
    ("container_network_transmit_packets_total", "Cumulative count of packets transmitted.", Interface, Counter),
    (
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        Interface,
        Counter,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        Interface,
        Counter,
    ),
    (
        "container_pressure_cpu_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to CPU congestion.",
        Base,
        Counter,
    ),
    (
        "container_pressure_cpu_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to CPU congestion.",
        Base,
        Counter,
    ),
    (
        "container_pressure_memory_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to memory congestion.",
        Base,
        Counter,
    ),
    (
        "container_pressure_memory_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to memory congestion.",
        Base,
        Counter,
    ),
    (
        "container_pressure_io_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to IO congestion.",
        Base,
        Counter,
    ),
    (
        "container_pressure_io_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to IO congestion.",
        Base,
        Counter,
    ),
    ("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", Base, Gauge),
    ("container_last_seen", "Last time a container was seen by the exporter.", Base, Gauge),
];

/// The metric descriptors (ListMetricDescriptors).
pub(crate) fn descriptors() -> Vec<MetricDescriptor> {
    DESCRIPTORS
        .iter()
        .map(|(name, help, labels, _)| MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: labels.keys(),
        })
        .collect()
}

fn kind(name: &str) -> MetricType {
    DESCRIPTORS.iter().find(|d| d.0 == name).map(|d| d.3).unwrap_or(Gauge)
}

/// Metrics of one object with its base label values.
struct Out {
    base: [String; 3],
    metrics: Vec<Metric>,
}

impl Out {
    fn new(id: &str, name: &str, image: &str) -> Self {
        Self { base: [id.to_string(), name.to_string(), image.to_string()], metrics: Vec::new() }
    }

    fn put(&mut self, name: &str, value: Option<u64>, extra: &[&str], timestamp: i64) {
        let Some(value) = value else { return };
        let mut label_values = self.base.to_vec();
        label_values.extend(extra.iter().map(|s| s.to_string()));
        self.metrics.push(Metric {
            name: name.to_string(),
            timestamp,
            metric_type: kind(name) as i32,
            label_values,
            value: v(Some(value)),
        });
    }

    fn live(&mut self, name: &str, value: Option<u64>) {
        self.put(name, value, &[], 0)
    }
}

fn secs(ns: Option<u64>) -> Option<u64> {
    ns.map(|n| n / 1_000_000_000)
}

/// The cgroup-based metrics (CPU, memory, pids, PSI, block I/O).
fn cgroup_metrics(o: &mut Out, s: &CgroupStats, procs: &ProcCounts) {
    o.live("container_cpu_usage_seconds_total", secs(s.cpu_usage_ns));
    o.live("container_cpu_user_seconds_total", secs(s.cpu_user_ns));
    o.live("container_cpu_system_seconds_total", secs(s.cpu_system_ns));
    o.live("container_cpu_cfs_periods_total", s.cpu_periods);
    o.live("container_cpu_cfs_throttled_periods_total", s.cpu_throttled_periods);
    o.live("container_cpu_cfs_throttled_seconds_total", secs(s.cpu_throttled_ns));
    o.live("container_memory_cache", s.memory_cache_bytes);
    o.live("container_memory_rss", s.memory_rss_bytes);
    o.live("container_memory_kernel_usage", s.memory_kernel_bytes);
    o.live("container_memory_mapped_file", s.memory_mapped_file_bytes);
    o.live("container_memory_swap", s.memory_swap_bytes);
    o.live("container_memory_usage_bytes", s.memory_usage_bytes);
    o.live("container_memory_working_set_bytes", s.memory_working_set_bytes);
    o.live("container_memory_max_usage_bytes", s.memory_max_usage_bytes);
    o.live("container_memory_failcnt", s.memory_failcnt);
    let minor = s.page_faults.map(|p| p.saturating_sub(s.major_page_faults.unwrap_or(0)));
    o.put("container_memory_failures_total", minor, &["pgfault", "container"], 0);
    o.put("container_memory_failures_total", s.major_page_faults, &["pgmajfault", "container"], 0);
    o.live("container_oom_events_total", s.oom_kills.or(Some(0)));
    o.live("container_spec_cpu_period", s.cpu_period_us);
    o.live("container_spec_cpu_quota", s.cpu_quota_us);
    o.live("container_spec_cpu_shares", s.cpu_shares);
    o.live("container_spec_memory_limit_bytes", Some(s.memory_limit_bytes.unwrap_or(0)));
    o.live("container_spec_memory_swap_limit_bytes", Some(s.memory_swap_limit_bytes.unwrap_or(0)));
    o.live("container_processes", Some(procs.processes));
    o.live("container_threads", s.pids_current.or(Some(procs.threads)));
    o.live("container_threads_max", Some(s.pids_max.unwrap_or(0)));
    o.live("container_file_descriptors", Some(procs.fds));
    o.live("container_sockets", Some(procs.sockets));
    let us_to_s = |t: u64| t / 1_000_000;
    for (psi, waiting, stalled) in [
        (s.cpu_psi, "container_pressure_cpu_waiting_seconds_total", "container_pressure_cpu_stalled_seconds_total"),
        (
            s.memory_psi,
            "container_pressure_memory_waiting_seconds_total",
            "container_pressure_memory_stalled_seconds_total",
        ),
        (s.io_psi, "container_pressure_io_waiting_seconds_total", "container_pressure_io_stalled_seconds_total"),
    ] {
        if let Some(p) = psi {
            o.live(waiting, Some(us_to_s(p.some.total_us)));
            o.live(stalled, p.full.map(|f| us_to_s(f.total_us)));
        }
    }
    for d in &s.io {
        let dev = block_device_name(d.major, d.minor);
        let (maj, min) = (d.major.to_string(), d.minor.to_string());
        o.put("container_fs_reads_bytes_total", Some(d.read_bytes), &[&dev], 0);
        o.put("container_fs_reads_total", Some(d.reads), &[&dev], 0);
        o.put("container_fs_writes_bytes_total", Some(d.write_bytes), &[&dev], 0);
        o.put("container_fs_writes_total", Some(d.writes), &[&dev], 0);
        o.put("container_blkio_device_usage_total", Some(d.read_bytes), &[&dev, &maj, &min, "Read"], 0);
        o.put("container_blkio_device_usage_total", Some(d.write_bytes), &[&dev, &maj, &min, "Write"], 0);
    }
}

/// `/dev/<name>` of a block device from sysfs, else `MAJ:MIN`.
fn block_device_name(major: u64, minor: u64) -> String {
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).unwrap_or_default();
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|n| format!("/dev/{n}"))
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

/// Process, thread, descriptor and socket counts of a cgroup's processes.
#[derive(Default)]
struct ProcCounts {
    processes: u64,
    threads: u64,
    fds: u64,
    sockets: u64,
}

fn proc_counts(pids: &[i32]) -> ProcCounts {
    let mut c = ProcCounts { processes: pids.len() as u64, ..Default::default() };
    for pid in pids {
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            c.threads += rd.count() as u64;
        }
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in rd.flatten() {
            c.fds += 1;
            if std::fs::read_link(e.path()).map(|t| t.to_string_lossy().starts_with("socket:")).unwrap_or(false) {
                c.sockets += 1;
            }
        }
    }
    c
}

/// The filesystem holding the writable layers: its device and capacity.
#[derive(Clone)]
struct FsCapacity {
    device: String,
    limit_bytes: u64,
    inodes_total: u64,
    inodes_free: u64,
}

fn fs_capacity(dir: &Path) -> Option<FsCapacity> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(FsCapacity {
        device: mount_source(dir).unwrap_or_else(|| dir.display().to_string()),
        limit_bytes: (st.blocks() as u64).saturating_mul(st.fragment_size() as u64),
        inodes_total: st.files() as u64,
        inodes_free: st.files_free() as u64,
    })
}

/// The source of the mount holding `dir` (longest mount point prefix in mountinfo).
fn mount_source(dir: &Path) -> Option<String> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(s) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(dir) {
        return Some(s.clone());
    }
    let canon = std::fs::canonicalize(dir).ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else { continue };
        let (Some(mp), Some(src)) = (f.get(4), f.get(sep + 2)) else { continue };
        let mp = mp.replace("\\040", " ");
        if canon.starts_with(&mp) && best.as_ref().is_none_or(|(n, _)| mp.len() >= *n) {
            best = Some((mp.len(), src.to_string()));
        }
    }
    let src = best?.1;
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(dir.to_path_buf(), src.clone());
    Some(src)
}

/// Writable-layer usage per container, walked off the request path: a background task walks
/// every container's layer whose value is older than [`FS_TTL_NS`] (one blocking job, one
/// layer after the other, every [`FS_REFRESH_EVERY`]). A list that finds no value yet (a
/// container of the last seconds, or any right after a restart) leaves the usage out and has
/// the walk done in the background; a single container's stats or metrics wait for it, at most
/// [`FS_FIRST_WAIT`].
#[derive(Default)]
pub struct FsUsageCache {
    /// container id → (collected at, bytes, inodes)
    values: Mutex<HashMap<String, (i64, u64, u64)>>,
    refreshing: Mutex<HashSet<String>>,
}

/// How often the background task looks for stale writable-layer values.
pub(crate) const FS_REFRESH_EVERY: Duration = Duration::from_secs(5);

fn upper_of(ctx: &Context, id: &str) -> PathBuf {
    ctx.config.root.join("containers").join(id).join("upper")
}

impl FsUsageCache {
    fn get(&self, id: &str) -> Option<(i64, u64, u64)> {
        self.values.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied()
    }

    /// Walks the layers of `items` (id, upper dir) one after the other in one blocking job,
    /// skipping those another walk has in hand; None when there was nothing to do.
    fn refresh_batch(self: &Arc<Self>, items: Vec<(String, PathBuf)>) -> Option<tokio::task::JoinHandle<()>> {
        let items: Vec<(String, PathBuf)> = {
            let mut busy = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
            items.into_iter().filter(|(id, _)| busy.insert(id.clone())).collect()
        };
        if items.is_empty() {
            return None;
        }
        let me = self.clone();
        Some(tokio::task::spawn_blocking(move || {
            for (id, upper) in items {
                let u = imagesvc::store::usage(&upper).ok();
                if let Some(u) = u {
                    me.values
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.clone(), (now_nanos(), u.used_bytes, u.inodes_used));
                }
                me.refreshing.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            }
        }))
    }

    /// The cached usage of each record's layer (None when not known yet); unknown or stale
    /// ones are walked in the background, not waited for.
    pub(crate) fn usage_of(
        self: &Arc<Self>,
        ctx: &Context,
        records: &[ContainerRecord],
    ) -> Vec<Option<(i64, u64, u64)>> {
        let now = now_nanos();
        let out: Vec<Option<(i64, u64, u64)>> = {
            let values = self.values.lock().unwrap_or_else(|p| p.into_inner());
            records.iter().map(|c| values.get(&c.id).copied()).collect()
        };
        let stale: Vec<(String, PathBuf)> = records
            .iter()
            .zip(&out)
            .filter(|(_, v)| v.is_none_or(|v| now - v.0 > FS_TTL_NS))
            .map(|(c, _)| (c.id.clone(), upper_of(ctx, &c.id)))
            .collect();
        drop(self.refresh_batch(stale));
        out
    }

    /// Starts the background task (on the current tokio runtime, if any) that keeps every
    /// container's value fresh and forgets removed containers. It ends with the cache or the
    /// context.
    pub(crate) fn spawn_refresher(self: &Arc<Self>, ctx: &Arc<Context>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (me, ctx) = (Arc::downgrade(self), Arc::downgrade(ctx));
        rt.spawn(async move {
            loop {
                let (Some(me), Some(ctx)) = (me.upgrade(), ctx.upgrade()) else { return };
                let now = now_nanos();
                let ids: Vec<String> = ctx.containers.all().into_iter().map(|(id, _)| id).collect();
                let live: HashSet<&String> = ids.iter().collect();
                me.forget(&|k| live.contains(&k.to_string()));
                let stale: Vec<(String, PathBuf)> = ids
                    .iter()
                    .filter(|id| me.get(id).is_none_or(|v| now - v.0 > FS_TTL_NS - FS_REFRESH_EVERY.as_nanos() as i64))
                    .map(|id| (id.clone(), upper_of(&ctx, id)))
                    .collect();
                let job = me.refresh_batch(stale);
                drop((me, ctx));
                if let Some(job) = job {
                    let _ = job.await;
                }
                tokio::time::sleep(FS_REFRESH_EVERY).await;
            }
        });
    }

    fn forget(&self, keep: &dyn Fn(&str) -> bool) {
        self.values.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| keep(k));
    }
}

impl RuntimeSvc {
    /// The writable layer's usage of one container: cached, refreshed in the background; the
    /// first request for a container waits at most [`FS_FIRST_WAIT`] for its first walk.
    pub(super) async fn writable_layer_usage(&self, c: &ContainerRecord) -> Option<(i64, u64, u64)> {
        let upper = upper_of(&self.ctx, &c.id);
        let now = now_nanos();
        match self.fs_cache.get(&c.id) {
            Some(cached) => {
                if now - cached.0 > FS_TTL_NS {
                    drop(self.fs_cache.refresh_batch(vec![(c.id.clone(), upper)]));
                }
                Some(cached)
            }
            None => {
                if let Some(h) = self.fs_cache.refresh_batch(vec![(c.id.clone(), upper)]) {
                    let _ = tokio::time::timeout(FS_FIRST_WAIT, h).await;
                }
                self.fs_cache.get(&c.id)
            }
        }
    }

    async fn container_metrics(
        &self,
        c: &ContainerRecord,
        fs: Option<&FsCapacity>,
    ) -> Result<ContainerMetrics, Status> {
        let name = c.config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let mut o = Out::new(&c.id, &name, &c.image);
        if c.state == ContainerState::Running {
            if let Some(s) = self.read_cgroup(&c.cgroup_path).await {
                let (ctx, cg) = (self.ctx.clone(), c.cgroup_path.clone());
                let procs =
                    tokio::task::spawn_blocking(move || proc_counts(&ctx.cgroups.procs(&cg).unwrap_or_default()))
                        .await
                        .map_err(join_error)?;
                cgroup_metrics(&mut o, &s, &procs);
            }
        }
        if let Some(fs) = fs {
            if let Some((at, bytes, _inodes)) = self.writable_layer_usage(c).await {
                o.put("container_fs_usage_bytes", Some(bytes), &[&fs.device], at);
            }
            o.put("container_fs_limit_bytes", Some(fs.limit_bytes), &[&fs.device], 0);
            o.put("container_fs_inodes_total", Some(fs.inodes_total), &[&fs.device], 0);
            o.put("container_fs_inodes_free", Some(fs.inodes_free), &[&fs.device], 0);
        }
        if c.started_at > 0 {
            o.live("container_start_time_seconds", Some((c.started_at / 1_000_000_000) as u64));
        }
        o.live("container_last_seen", Some((now_nanos() / 1_000_000_000) as u64));
        Ok(ContainerMetrics { container_id: c.id.clone(), metrics: o.metrics })
    }

    async fn pod_metrics(&self, pod: &PodRecord, fs: Option<&FsCapacity>) -> Result<PodSandboxMetrics, Status> {
        let mut o = Out::new(&pod.id, "", "");
        if pod.state == PodState::Ready {
            if let Some(s) = self.read_cgroup(&pod.cgroup_parent).await {
                let (ctx, cg) = (self.ctx.clone(), pod.cgroup_parent.clone());
                let procs =
                    tokio::task::spawn_blocking(move || proc_counts(&ctx.cgroups.procs(&cg).unwrap_or_default()))
                        .await
                        .map_err(join_error)?;
                cgroup_metrics(&mut o, &s, &procs);
            }
            if let Some(netns) = pod.namespaces.net.clone() {
                let devs = tokio::task::spawn_blocking(move || runtime::namespaces::net_dev_stats(&netns))
                    .await
                    .map_err(join_error)?
                    .unwrap_or_default();
                for d in devs.iter().filter(|d| d.name != "lo") {
                    let i = [d.name.as_str()];
                    o.put("container_network_receive_bytes_total", Some(d.rx_bytes), &i, 0);
                    o.put("container_network_receive_packets_total", Some(d.rx_packets), &i, 0);
                    o.put("container_network_receive_packets_dropped_total", Some(d.rx_dropped), &i, 0);
                    o.put("container_network_receive_errors_total", Some(d.rx_errors), &i, 0);
                    o.put("container_network_transmit_bytes_total", Some(d.tx_bytes), &i, 0);
                    o.put("container_network_transmit_packets_total", Some(d.tx_packets), &i, 0);
                    o.put("container_network_transmit_packets_dropped_total", Some(d.tx_dropped), &i, 0);
                    o.put("container_network_transmit_errors_total", Some(d.tx_errors), &i, 0);
                }
            }
        }
        o.live("container_last_seen", Some((now_nanos() / 1_000_000_000) as u64));
        let mut container_metrics = Vec::new();
        for c in self.containers_matching("", &pod.id, &HashMap::new()).await {
            if c.pod_id == pod.id {
                container_metrics.push(self.container_metrics(&c, fs).await?);
            }
        }
        Ok(PodSandboxMetrics { pod_sandbox_id: pod.id.clone(), metrics: o.metrics, container_metrics })
    }

    pub(super) async fn list_pod_sandbox_metrics_impl(&self) -> Result<ListPodSandboxMetricsResponse, Status> {
        let dir = self.ctx.config.root.join("containers");
        let fs = tokio::task::spawn_blocking(move || fs_capacity(&dir)).await.map_err(join_error)?;
        let mut pod_metrics = Vec::new();
        for (_, pod) in self.ctx.pods.all() {
            let pod = pod.get();
            pod_metrics.push(self.pod_metrics(&pod, fs.as_ref()).await?);
        }
        let live: HashSet<String> = self.ctx.containers.all().into_iter().map(|(id, _)| id).collect();
        self.fs_cache.forget(&|k| live.contains(k));
        Ok(ListPodSandboxMetricsResponse { pod_metrics })
    }

    pub(super) async fn stream_pod_sandbox_metrics_impl(
        &self,
    ) -> Result<ListStream<StreamPodSandboxMetricsResponse>, Status> {
        let list = self.list_pod_sandbox_metrics_impl().await?;
        Ok(chunked(list.pod_metrics, |pod_sandbox_metrics| StreamPodSandboxMetricsResponse { pod_sandbox_metrics }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_unique_and_labelled() {
        let d = descriptors();
        let names: HashSet<&str> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names.len(), d.len());
        assert!(d.iter().all(|d| !d.help.is_empty() && d.label_keys.len() >= 3));
    }

    #[test]
    fn metric_labels_match_their_descriptor() {
        let s = CgroupStats {
            cpu_usage_ns: Some(2_500_000_000),
            page_faults: Some(10),
            major_page_faults: Some(3),
            io: vec![runtime::cgroups::IoDeviceStats { major: 8, minor: 0, read_bytes: 1, ..Default::default() }],
            cpu_psi: Some(runtime::cgroups::Psi { some: Default::default(), full: None }),
            ..Default::default()
        };
        let mut o = Out::new("id", "name", "image");
        cgroup_metrics(&mut o, &s, &ProcCounts::default());
        let d = descriptors();
        for m in &o.metrics {
            let desc = d.iter().find(|x| x.name == m.name).unwrap();
            assert_eq!(desc.label_keys.len(), m.label_values.len(), "{}", m.name);
        }
        let cpu = o.metrics.iter().find(|m| m.name == "container_cpu_usage_seconds_total").unwrap();
        assert_eq!(cpu.value.as_ref().unwrap().value, 2);
        assert_eq!(cpu.metric_type, MetricType::Counter as i32);
        let minor = o.metrics.iter().find(|m| m.name == "container_memory_failures_total").unwrap();
        assert_eq!(minor.value.as_ref().unwrap().value, 7);
        assert!(o.metrics.iter().any(|m| m.name == "container_pressure_cpu_waiting_seconds_total"));
        assert!(!o.metrics.iter().any(|m| m.name == "container_pressure_cpu_stalled_seconds_total"));
    }
}
