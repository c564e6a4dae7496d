//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus,
//! ListPodSandbox.
//!
//! A pod is its pinned namespaces (net, ipc, uts under `STATE/pods/<id>/ns`), its files
//! (resolv.conf, hosts, hostname, a tmpfs /dev/shm) and its cgroup; no pause process runs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use proto::cri::*;
use runtime::namespaces::NsType;
use tokio::sync::Mutex;
use tonic::Status;
use tracing::Instrument;

use super::RuntimeSvc;
use crate::error::{join_error, StatusExt};
use crate::rollback::Rollback;
use crate::store::{new_id, now_nanos, Lookup, PodNamespaces, PodRecord, PodState};

/// Size of a pod's /dev/shm tmpfs (as Docker and containerd default to).
const SHM_SIZE: u64 = 64 * 1024 * 1024;

/// The namespace modes a pod asks for (POD when unset).
pub(crate) fn namespace_options(config: &PodSandboxConfig) -> NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

fn mode(m: i32) -> NamespaceMode {
    NamespaceMode::try_from(m).unwrap_or(NamespaceMode::Pod)
}

impl RuntimeSvc {
    /// Finds a pod by ID or unique ID prefix.
    pub(crate) fn find_pod(&self, id: &str) -> Result<Option<Arc<Mutex<PodRecord>>>, Status> {
        match self.ctx.pods.lookup(id) {
            Lookup::Found(p) => Ok(Some(p)),
            Lookup::NotFound => Ok(None),
            Lookup::Ambiguous => Err(Status::invalid_argument(format!(
                "pod sandbox ID prefix {id:?} is ambiguous"
            ))),
        }
    }

    pub(crate) fn pod_or_not_found(&self, id: &str) -> Result<Arc<Mutex<PodRecord>>, Status> {
        self.find_pod(id)?
            .ok_or_else(|| Status::not_found(format!("pod sandbox {id:?} not found")))
    }

    pub(super) async fn run_pod_sandbox_impl(
        &self,
        req: RunPodSandboxRequest,
    ) -> Result<RunPodSandboxResponse, Status> {
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("RunPodSandbox: config is required"))?;
        let md = config
            .metadata
            .clone()
            .ok_or_else(|| Status::invalid_argument("RunPodSandbox: config.metadata is required"))?;
        if md.name.is_empty() {
            return Err(Status::invalid_argument("RunPodSandbox: metadata.name is required"));
        }
        if !req.runtime_handler.is_empty() {
            return Err(Status::invalid_argument(format!(
                "RunPodSandbox: unknown runtime handler {:?} (skiff has only the default handler, \"\")",
                req.runtime_handler
            )));
        }
        let name = format!("{}_{}_{}_{}", md.name, md.namespace, md.uid, md.attempt);
        let id = new_id();
        if let Err(holder) = self.ctx.pods.reserve(&name, &id) {
            return Err(Status::already_exists(format!(
                "pod sandbox name {name:?} is reserved by pod {holder}"
            )));
        }
        let span = tracing::info_span!("run_pod_sandbox", pod_id = %id, pod = %name);
        let result = self
            .create_pod(&id, &name, config, req.runtime_handler)
            .instrument(span)
            .await;
        if result.is_err() {
            self.ctx.pods.release(&name, &id);
        }
        result.map(|()| RunPodSandboxResponse { pod_sandbox_id: id })
    }

    async fn create_pod(
        &self,
        id: &str,
        name: &str,
        config: PodSandboxConfig,
        runtime_handler: String,
    ) -> Result<(), Status> {
        let ctx = self.ctx.clone();
        let paths = ctx.pod_paths(id);
        let ns = namespace_options(&config);
        let host_net = mode(ns.network) == NamespaceMode::Node;
        let host_ipc = mode(ns.ipc) == NamespaceMode::Node;
        let cgroup_parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| format!("{}/{id}", ctx.config.runtime.default_cgroup_parent));
        let hostname = runtime::podfiles::pod_hostname(&config.hostname);

        let mut record = PodRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            config: config.clone(),
            runtime_handler,
            state: PodState::Creating,
            created_at: now_nanos(),
            cgroup_parent: cgroup_parent.clone(),
            namespaces: PodNamespaces::default(),
            ips: Vec::new(),
            network_set_up: false,
            shm_mounted: false,
            error: None,
        };
        let mut rb = Rollback::new();
        let result = async {
            ctx.pod_store.save(id, &record).status("persist the pod")?;
            {
                let ctx = ctx.clone();
                let id = id.to_owned();
                rb.push_blocking("pod record", move || ctx.pod_store.remove(&id).map_err(|e| e.to_string()));
            }
            std::fs::create_dir_all(&paths.dir)
                .map_err(|e| Status::internal(format!("create {}: {e}", paths.dir.display())))?;
            {
                let paths = paths.clone();
                rb.push_blocking("pod files", move || {
                    runtime::podfiles::remove_pod_files(&paths).map_err(|e| e.to_string())
                });
            }

            // Namespaces: new net/ipc/uts unless the pod shares the node's.
            let mut types = Vec::new();
            if !host_net {
                types.push(NsType::Net);
                types.push(NsType::Uts);
            }
            if !host_ipc {
                types.push(NsType::Ipc);
            }
            let ns_dir = paths.ns_dir();
            let pinned = {
                let ns_dir = ns_dir.clone();
                let hostname = hostname.clone();
                tokio::task::spawn_blocking(move || {
                    runtime::namespaces::pin(&ns_dir, &types, Some(&hostname))
                })
                .await
                .map_err(join_error)?
                .status("create the pod's namespaces")?
            };
            rb.push_blocking("namespaces", move || {
                runtime::namespaces::unpin(&ns_dir).map_err(|e| e.to_string())
            });
            record.namespaces.net = pinned.net;
            record.namespaces.ipc = pinned.ipc;
            record.namespaces.uts = pinned.uts;

            // Files bind-mounted into the containers.
            let dns = config.dns_config.as_ref();
            runtime::podfiles::write_resolv_conf(
                &paths.resolv_conf(),
                dns,
                std::path::Path::new("/etc/resolv.conf"),
            )
            .status("write the pod's resolv.conf")?;
            runtime::podfiles::write_hostname(&paths.hostname(), &hostname)
                .status("write the pod's hostname")?;
            self.write_pod_hosts(&record, &hostname)?;
            if !host_ipc {
                let shm = paths.shm();
                let s = shm.clone();
                tokio::task::spawn_blocking(move || runtime::podfiles::mount_shm(&s, SHM_SIZE))
                    .await
                    .map_err(join_error)?
                    .status("mount the pod's /dev/shm")?;
                record.shm_mounted = true;
                rb.push_blocking("shm", move || {
                    runtime::podfiles::unmount_shm(&shm).map_err(|e| e.to_string())
                });
            }

            // The pod cgroup (parents created as needed; only what skiff created is removed).
            {
                let ctx2 = ctx.clone();
                let cg = cgroup_parent.clone();
                tokio::task::spawn_blocking(move || ctx2.cgroups.create(&cg))
                    .await
                    .map_err(join_error)?
                    .status("create the pod cgroup")?;
                let ctx2 = ctx.clone();
                let cg = cgroup_parent.clone();
                rb.push_blocking("pod cgroup", move || ctx2.cgroups.remove(&cg).map_err(|e| e.to_string()));
            }

            self.setup_pod_extras(&mut record, &mut rb).await?;

            record.state = PodState::Ready;
            ctx.pod_store.save(id, &record).status("persist the pod")?;
            Ok::<(), Status>(())
        }
        .await;

        match result {
            Ok(()) => {
                rb.commit();
                tracing::info!(cgroup = %record.cgroup_parent, ips = ?record.ips, "pod sandbox ready");
                ctx.pods.insert(id, record);
                Ok(())
            }
            Err(status) => {
                let failed = rb.run().await;
                if failed.is_empty() {
                    Err(status)
                } else {
                    // Keep the pod visible (NOTREADY, with the error) so that its leftovers
                    // are not forgotten; RemovePodSandbox retries the cleanup.
                    record.state = PodState::NotReady;
                    record.error = Some(format!("rollback incomplete: {}", failed.join("; ")));
                    let _ = ctx.pod_store.save(id, &record);
                    ctx.pods.insert(id, record);
                    Err(Status::internal(format!(
                        "{}; and the rollback failed: {}",
                        status.message(),
                        failed.join("; ")
                    )))
                }
            }
        }
    }

    /// (Re)writes the pod's /etc/hosts with its IPs (the node's file for host-network pods).
    pub(crate) fn write_pod_hosts(&self, record: &PodRecord, hostname: &str) -> Result<(), Status> {
        let paths = self.ctx.pod_paths(&record.id);
        let ips: Vec<IpAddr> = record.ips.iter().filter_map(|s| s.parse().ok()).collect();
        let host_net = mode(namespace_options(&record.config).network) == NamespaceMode::Node;
        let copy_from = host_net.then(|| std::path::Path::new("/etc/hosts"));
        runtime::podfiles::write_hosts(&paths.hosts(), hostname, &ips, copy_from)
            .status("write the pod's hosts file")
    }

    pub(super) async fn stop_pod_sandbox_impl(
        &self,
        req: StopPodSandboxRequest,
    ) -> Result<StopPodSandboxResponse, Status> {
        let Some(pod) = self.find_pod(&req.pod_sandbox_id)? else {
            // Idempotent: stopping an unknown pod is not an error.
            return Ok(StopPodSandboxResponse {});
        };
        let mut pod = pod.lock().await;
        let span = tracing::info_span!("stop_pod_sandbox", pod_id = %pod.id);
        self.stop_pod_locked(&mut pod).instrument(span).await?;
        Ok(StopPodSandboxResponse {})
    }

    /// Stops every container of the pod, releases its network and its PID namespace holder,
    /// and marks it NOTREADY. Idempotent.
    async fn stop_pod_locked(&self, pod: &mut PodRecord) -> Result<(), Status> {
        self.stop_pod_containers(&pod.id).await?;
        self.teardown_pod_extras(pod).await?;
        if pod.state != PodState::NotReady {
            pod.state = PodState::NotReady;
            self.ctx.pod_store.save(&pod.id, &*pod).status("persist the pod")?;
            tracing::info!("pod sandbox stopped");
        }
        Ok(())
    }

    pub(super) async fn remove_pod_sandbox_impl(
        &self,
        req: RemovePodSandboxRequest,
    ) -> Result<RemovePodSandboxResponse, Status> {
        let Some(entry) = self.find_pod(&req.pod_sandbox_id)? else {
            return Ok(RemovePodSandboxResponse {});
        };
        let mut pod = entry.lock().await;
        let span = tracing::info_span!("remove_pod_sandbox", pod_id = %pod.id);
        async {
            self.stop_pod_locked(&mut pod).await?;
            self.remove_pod_containers(&pod.id).await?;
            let ctx = self.ctx.clone();
            let id = pod.id.clone();
            let cgroup = pod.cgroup_parent.clone();
            let shm = pod.shm_mounted;
            let failures = tokio::task::spawn_blocking(move || {
                let paths = ctx.pod_paths(&id);
                let mut failures = Vec::new();
                if shm {
                    if let Err(e) = runtime::podfiles::unmount_shm(&paths.shm()) {
                        failures.push(format!("shm: {e}"));
                    }
                }
                if let Err(e) = runtime::namespaces::unpin(&paths.ns_dir()) {
                    failures.push(format!("namespaces: {e}"));
                }
                if let Err(e) = runtime::podfiles::remove_pod_files(&paths) {
                    failures.push(format!("files: {e}"));
                }
                if let Err(e) = ctx.cgroups.remove(&cgroup) {
                    failures.push(format!("cgroup {cgroup}: {e}"));
                }
                failures
            })
            .await
            .map_err(join_error)?;
            if !failures.is_empty() {
                pod.error = Some(format!("removal incomplete: {}", failures.join("; ")));
                let _ = self.ctx.pod_store.save(&pod.id, &*pod);
                return Err(Status::internal(format!(
                    "cannot remove pod sandbox {}: {}",
                    pod.id,
                    failures.join("; ")
                )));
            }
            self.ctx.pod_store.remove(&pod.id).status("delete the pod record")?;
            self.ctx.pods.remove(&pod.id);
            self.ctx.pods.release(&pod.name, &pod.id);
            tracing::info!("pod sandbox removed");
            Ok::<(), Status>(())
        }
        .instrument(span)
        .await?;
        Ok(RemovePodSandboxResponse {})
    }

    pub(super) async fn pod_sandbox_status_impl(
        &self,
        req: PodSandboxStatusRequest,
    ) -> Result<PodSandboxStatusResponse, Status> {
        let pod = self.pod_or_not_found(&req.pod_sandbox_id)?;
        let pod = pod.lock().await.clone();
        let status = pod_status(&pod);
        let mut info = HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "pid": pod.namespaces.infra_pid.unwrap_or(0),
                "pidNamespaceHolder": pod.namespaces.infra_pid,
                "cgroupParent": pod.cgroup_parent,
                "namespaces": {
                    "network": pod.namespaces.net,
                    "ipc": pod.namespaces.ipc,
                    "uts": pod.namespaces.uts,
                },
                "runtimeHandler": pod.runtime_handler,
                "error": pod.error,
                "config": pod.config,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses: Vec::new(),
            timestamp: now_nanos(),
        })
    }

    pub(super) async fn list_pod_sandbox_impl(
        &self,
        req: ListPodSandboxRequest,
    ) -> Result<ListPodSandboxResponse, Status> {
        let filter = req.filter.unwrap_or_default();
        let mut items = Vec::new();
        for (id, pod) in self.ctx.pods.all() {
            if !filter.id.is_empty() && !id.starts_with(&filter.id) {
                continue;
            }
            let pod = pod.lock().await;
            let state = cri_state(pod.state);
            if let Some(s) = &filter.state {
                if s.state != state as i32 {
                    continue;
                }
            }
            if !labels_match(&pod.config.labels, &filter.label_selector) {
                continue;
            }
            items.push(PodSandbox {
                id: pod.id.clone(),
                metadata: pod.config.metadata.clone(),
                state: state as i32,
                created_at: pod.created_at,
                labels: pod.config.labels.clone(),
                annotations: pod.config.annotations.clone(),
                runtime_handler: pod.runtime_handler.clone(),
            });
        }
        items.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(ListPodSandboxResponse { items })
    }
}

fn cri_state(s: PodState) -> PodSandboxState {
    match s {
        PodState::Ready => PodSandboxState::SandboxReady,
        PodState::Creating | PodState::NotReady => PodSandboxState::SandboxNotready,
    }
}

/// Every selector label is present with the same value.
pub(crate) fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_status(pod: &PodRecord) -> PodSandboxStatus {
    let ns = namespace_options(&pod.config);
    let mut ips = pod.ips.iter();
    let network = ips.next().map(|ip| PodSandboxNetworkStatus {
        ip: ip.clone(),
        additional_ips: ips.map(|ip| PodIp { ip: ip.clone() }).collect(),
    });
    PodSandboxStatus {
        id: pod.id.clone(),
        metadata: pod.config.metadata.clone(),
        state: cri_state(pod.state) as i32,
        created_at: pod.created_at,
        network: Some(network.unwrap_or_default()),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace { options: Some(ns) }),
        }),
        labels: pod.config.labels.clone(),
        annotations: pod.config.annotations.clone(),
        runtime_handler: pod.runtime_handler.clone(),
    }
}
