//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: CPU and memory (with
//! PSI where the kernel has it, and IoUsage = io PSI) from the cgroups, the writable layer's disk
//! use, and the pod's network counters.
//!
//! The lists read their containers in a few blocking jobs of [`READS_PER_JOB`] containers (at
//! most [`MAX_JOBS`] at once), each reading the exit file and the cgroup of its containers one
//! after the other, instead of three blocking-pool hops per container. The writable layer is
//! never walked on a list's path: its usage comes from `metrics::FsUsageCache`, which a
//! background task keeps fresh; a container whose layer was not walked yet has its usage left
//! out of the list (and walked in the background), never waited for.

use std::collections::HashMap;
use std::sync::Mutex;

use proto::cri::*;
use tonic::Status;

use super::container::{cleanup_after_exit, read_exit, record_exit, refresh, ContainerEntry, Exit};
use super::RuntimeSvc;
use crate::error::join_error;
use crate::store::{now_nanos, ContainerRecord, ContainerState, PodRecord, PodState};

/// The previous CPU sample of each cgroup, for `usage_nano_cores`: (time ns, usage ns).
#[derive(Default)]
pub struct CpuSamples(Mutex<HashMap<String, (i64, u64)>>);

impl CpuSamples {
    /// Records a sample and returns the rate since the previous one, in nanocores.
    fn rate(&self, key: &str, now: i64, usage: u64) -> Option<u64> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let prev = m.insert(key.to_owned(), (now, usage));
        let (t0, u0) = prev?;
        let dt = now.checked_sub(t0).filter(|d| *d > 0)? as u128;
        let du = usage.checked_sub(u0)? as u128;
        Some((du * 1_000_000_000 / dt) as u64)
    }

    fn forget(&self, keep: &dyn Fn(&str) -> bool) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| keep(k));
    }
}

pub(super) fn v(x: Option<u64>) -> Option<UInt64Value> {
    x.map(|value| UInt64Value { value })
}

/// A cgroup PSI file as the CRI's `PsiStats` (kernel totals are µs, the CRI's ns).
fn psi(p: Option<runtime::cgroups::Psi>) -> Option<PsiStats> {
    let data = |l: runtime::cgroups::PsiLine| PsiData {
        total: l.total_us.saturating_mul(1000),
        avg10: l.avg10,
        avg60: l.avg60,
        avg300: l.avg300,
    };
    p.map(|p| PsiStats { some: Some(data(p.some)), full: p.full.map(data) })
}

/// What one cgroup read gives the stats RPCs.
pub(super) struct Usage {
    pub cpu: Option<CpuUsage>,
    pub memory: Option<MemoryUsage>,
    pub io: Option<IoUsage>,
    pub pids: Option<u64>,
}

/// How many containers one blocking job reads, and at most how many jobs one list runs at once.
const READS_PER_JOB: usize = 16;
const MAX_JOBS: usize = 4;

/// What the blocking read of one container found.
enum Probe {
    /// Not running: no cgroup to read.
    Idle,
    /// It has exited since it was last looked at (recorded by the caller).
    Exited(Exit),
    /// Running: its cgroup's stats (None when the cgroup is gone).
    Running(Option<Box<runtime::cgroups::CgroupStats>>),
}

impl RuntimeSvc {
    /// A cgroup's stats, read on a blocking thread (None when the cgroup is gone).
    pub(super) async fn read_cgroup(&self, cgroup: &str) -> Option<runtime::cgroups::CgroupStats> {
        let (ctx, cg) = (self.ctx.clone(), cgroup.to_string());
        tokio::task::spawn_blocking(move || ctx.cgroups.stats(&cg).ok()).await.ok().flatten()
    }

    /// CPU, memory and I/O pressure of one cgroup as CRI usage messages.
    async fn cgroup_usage(&self, cgroup: &str, now: i64) -> Usage {
        let st = self.read_cgroup(cgroup).await;
        self.usage_of(cgroup, st, now)
    }

    fn usage_of(&self, cgroup: &str, st: Option<runtime::cgroups::CgroupStats>, now: i64) -> Usage {
        let Some(st) = st else {
            return Usage { cpu: None, memory: None, io: None, pids: None };
        };
        let cpu = st.cpu_usage_ns.map(|usage| CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: v(Some(usage)),
            usage_nano_cores: v(self.cpu_samples.rate(cgroup, now, usage)),
            psi: psi(st.cpu_psi),
        });
        let memory = Some(MemoryUsage {
            timestamp: now,
            working_set_bytes: v(st.memory_working_set_bytes),
            available_bytes: v(st.memory_available_bytes()),
            usage_bytes: v(st.memory_usage_bytes),
            rss_bytes: v(st.memory_rss_bytes),
            page_faults: v(st.page_faults),
            major_page_faults: v(st.major_page_faults),
            psi: psi(st.memory_psi),
        });
        // IoUsage carries only PSI: absent where the kernel has none (v1, CONFIG_PSI off)
        let io = st.io_psi.map(|p| IoUsage { timestamp: now, psi: psi(Some(p)) });
        Usage { cpu, memory, io, pids: st.pids_current }
    }

    /// The stats of these containers. Their exit files and cgroups are read by a few blocking
    /// jobs of [`READS_PER_JOB`] containers each (not one hop per container); an exit found on
    /// the way is recorded as `refresh` would. The writable layer's usage comes from the
    /// background-refreshed cache (never walked here).
    async fn stats_of_entries(&self, entries: Vec<ContainerEntry>) -> Result<Vec<ContainerStats>, Status> {
        let records: Vec<ContainerRecord> = entries.iter().map(|e| e.get()).collect();
        let now = now_nanos();
        let jobs = records.len().div_ceil(READS_PER_JOB).clamp(1, MAX_JOBS);
        let per_job = records.len().div_ceil(jobs).max(1);
        let mut handles = Vec::new();
        for chunk in records.chunks(per_job) {
            let (ctx, chunk) = (self.ctx.clone(), chunk.to_vec());
            handles.push(tokio::task::spawn_blocking(move || {
                chunk
                    .iter()
                    .map(|c| {
                        if c.state != ContainerState::Running {
                            return Probe::Idle;
                        }
                        match read_exit(&ctx, c) {
                            Some(exit) => Probe::Exited(exit),
                            None => Probe::Running(ctx.cgroups.stats(&c.cgroup_path).ok().map(Box::new)),
                        }
                    })
                    .collect::<Vec<Probe>>()
            }));
        }
        let mut probes = Vec::with_capacity(records.len());
        for h in handles {
            probes.extend(h.await.map_err(join_error)?);
        }
        let usage = self.fs_cache.usage_of(&self.ctx, &records);
        let mut out = Vec::with_capacity(records.len());
        for (((entry, c), probe), layer) in entries.iter().zip(records).zip(probes).zip(usage) {
            let (c, st) = match probe {
                Probe::Idle => (c, None),
                Probe::Running(st) => (c, st.map(|b| *b)),
                Probe::Exited(exit) => {
                    let (c, noticed) = record_exit(&self.ctx, entry, &c, exit);
                    if noticed {
                        let (ctx, entry) = (self.ctx.clone(), entry.clone());
                        tokio::spawn(async move { cleanup_after_exit(&ctx, &entry).await });
                    }
                    (c, None)
                }
            };
            let Usage { cpu, memory, io, .. } = self.usage_of(&c.cgroup_path, st, now);
            out.push(self.container_stats_from(&c, cpu, memory, io, layer, now));
        }
        Ok(out)
    }

    fn container_stats_from(
        &self,
        c: &ContainerRecord,
        cpu: Option<CpuUsage>,
        memory: Option<MemoryUsage>,
        io: Option<IoUsage>,
        layer: Option<(i64, u64, u64)>,
        now: i64,
    ) -> ContainerStats {
        // Unknown yet (a new container, or right after a restart, before its first walk): the
        // usage fields are left out rather than reported as 0.
        let writable_layer = Some(FilesystemUsage {
            timestamp: layer.map(|l| l.0).unwrap_or(now),
            fs_id: Some(FilesystemIdentifier {
                mountpoint: self.ctx.config.root.join("containers").display().to_string(),
            }),
            used_bytes: v(layer.map(|l| l.1)),
            inodes_used: v(layer.map(|l| l.2)),
        });
        ContainerStats {
            attributes: Some(ContainerAttributes {
                id: c.id.clone(),
                metadata: c.config.metadata.clone(),
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            }),
            cpu,
            memory,
            writable_layer,
            swap: None,
            io,
        }
    }

    pub(super) async fn container_stats_impl(
        &self,
        req: ContainerStatsRequest,
    ) -> Result<ContainerStatsResponse, Status> {
        let entry = self.container_or_not_found(&req.container_id)?;
        let c = refresh(&self.ctx, &entry).await;
        let now = now_nanos();
        let Usage { cpu, memory, io, .. } = if c.state == ContainerState::Running {
            self.cgroup_usage(&c.cgroup_path, now).await
        } else {
            Usage { cpu: None, memory: None, io: None, pids: None }
        };
        // One container: its first walk may be waited for (bounded), as the metrics do.
        let layer = self.writable_layer_usage(&c).await;
        let stats = self.container_stats_from(&c, cpu, memory, io, layer, now);
        Ok(ContainerStatsResponse { stats: Some(stats) })
    }

    pub(super) async fn list_container_stats_impl(
        &self,
        req: ListContainerStatsRequest,
    ) -> Result<ListContainerStatsResponse, Status> {
        let f = req.filter.unwrap_or_default();
        let entries = self.container_entries_matching(&f.id, &f.pod_sandbox_id, &f.label_selector);
        let stats = self.stats_of_entries(entries).await?;
        // Forget the samples of cgroups that no longer exist.
        let mut live = std::collections::HashSet::new();
        for (_, c) in self.ctx.containers.all() {
            live.insert(c.get().cgroup_path);
        }
        for (_, p) in self.ctx.pods.all() {
            live.insert(p.get().cgroup_parent);
        }
        self.cpu_samples.forget(&|k| live.contains(k));
        Ok(ListContainerStatsResponse { stats })
    }

    async fn pod_stats_of(&self, pod: &PodRecord) -> Result<PodSandboxStats, Status> {
        let now = now_nanos();
        let Usage { cpu, memory, io, pids } = if pod.state == PodState::Ready {
            self.cgroup_usage(&pod.cgroup_parent, now).await
        } else {
            Usage { cpu: None, memory: None, io: None, pids: None }
        };
        let network = match (&pod.namespaces.net, pod.state) {
            (Some(netns), PodState::Ready) => {
                let netns = netns.clone();
                let devs = tokio::task::spawn_blocking(move || runtime::namespaces::net_dev_stats(&netns))
                    .await
                    .map_err(join_error)?
                    .unwrap_or_default();
                let interfaces: Vec<NetworkInterfaceUsage> = devs
                    .into_iter()
                    .filter(|d| d.name != "lo")
                    .map(|d| NetworkInterfaceUsage {
                        name: d.name,
                        rx_bytes: v(Some(d.rx_bytes)),
                        rx_errors: v(Some(d.rx_errors)),
                        tx_bytes: v(Some(d.tx_bytes)),
                        tx_errors: v(Some(d.tx_errors)),
                    })
                    .collect();
                let default_interface = interfaces.iter().find(|i| i.name == "eth0").cloned();
                Some(NetworkUsage { timestamp: now, default_interface, interfaces })
            }
            _ => None,
        };
        let entries: Vec<ContainerEntry> = self
            .container_entries_matching("", &pod.id, &HashMap::new())
            .into_iter()
            .filter(|e| e.read(|c| c.pod_id == pod.id))
            .collect();
        let containers = self.stats_of_entries(entries).await?;
        Ok(PodSandboxStats {
            attributes: Some(PodSandboxAttributes {
                id: pod.id.clone(),
                metadata: pod.config.metadata.clone(),
                labels: pod.config.labels.clone(),
                annotations: pod.config.annotations.clone(),
            }),
            linux: Some(LinuxPodSandboxStats {
                cpu,
                memory,
                network,
                process: Some(ProcessUsage { timestamp: now, process_count: v(pids) }),
                containers,
                io,
            }),
            windows: None,
        })
    }

    pub(super) async fn pod_sandbox_stats_impl(
        &self,
        req: PodSandboxStatsRequest,
    ) -> Result<PodSandboxStatsResponse, Status> {
        let pod = self.pod_or_not_found(&req.pod_sandbox_id)?.get();
        Ok(PodSandboxStatsResponse { stats: Some(self.pod_stats_of(&pod).await?) })
    }

    pub(super) async fn list_pod_sandbox_stats_impl(
        &self,
        req: ListPodSandboxStatsRequest,
    ) -> Result<ListPodSandboxStatsResponse, Status> {
        let f = req.filter.unwrap_or_default();
        let mut stats = Vec::new();
        for pod in self.pods_matching(&f.id, &f.label_selector) {
            stats.push(self.pod_stats_of(&pod).await?);
        }
        Ok(ListPodSandboxStatsResponse { stats })
    }
}
