//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus,
//! ListPodSandbox.
//!
//! A pod is its pinned namespaces (net, ipc, uts under `STATE/pods/<id>/ns`), its files
//! (resolv.conf, hosts, hostname, a tmpfs /dev/shm) and its cgroup; no pause process runs.
//!
//! RunPodSandbox, StopPodSandbox and RemovePodSandbox run in tasks of their own (see
//! `container::detached`); a retried RunPodSandbox joins the creation under way or gets its
//! result (`store::reserve`). Stop and Remove hold the pod's transition; CreateContainer and
//! StartContainer hold it shared (InUse), so that no container is created or started in a pod
//! being stopped or removed. Status and List take copies and never wait.
//!
//! StopPodSandbox leaves the bridge's veth deletion and lease release to a background task
//! (`pod_extras::spawn_network_teardown`, no transition held); a RemovePodSandbox that comes
//! while it is under way hands it the end of the removal. RemovePodSandbox answers once the
//! containers are removed, the network is torn down (or left to that task) and the record is
//! durably `removing`; the namespace pins, shm, files and cgroup are removed after the answer
//! (`pod_extras::finish_removal`), and then the record; the name stays reserved until then
//! (see `remove_pod`).

use std::collections::HashMap;
use std::net::IpAddr;

use proto::cri::*;
use std::path::Path;

use tonic::Status;
use tracing::Instrument;

use super::container::{container_status, detached, refresh, PodEntry};
use super::events;
use super::pod_extras::{spawn_network_teardown, spawn_removal, teardown_pod_extras_front};
use super::RuntimeSvc;
use crate::error::{join_error, StatusExt};
use crate::rollback::Rollback;
use crate::store::reserve::NameGuard;
use crate::store::{now_nanos, Lookup, Mode, PodNamespaces, PodRecord, PodState, Transition};

/// How long RunPodSandbox waits for the name of a pod whose removal ends in the background.
const REMOVED_NAME_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Size of a pod's /dev/shm tmpfs (as Docker and containerd default to).
const SHM_SIZE: u64 = runtime::podfiles::DEFAULT_SHM_SIZE;

pub(crate) use crate::spec::namespace_options;

fn mode(m: i32) -> NamespaceMode {
    NamespaceMode::try_from(m).unwrap_or(NamespaceMode::Pod)
}

impl RuntimeSvc {
    /// Finds a pod by ID or unique ID prefix.
    pub(crate) fn find_pod(&self, id: &str) -> Result<Option<PodEntry>, Status> {
        super::container::find_pod(&self.ctx, id)
    }

    pub(crate) fn pod_or_not_found(&self, id: &str) -> Result<PodEntry, Status> {
        super::container::pod_or_not_found(&self.ctx, id)
    }

    pub(super) async fn run_pod_sandbox_impl(
        &self,
        req: RunPodSandboxRequest,
    ) -> Result<RunPodSandboxResponse, Status> {
        let config = req.config.ok_or_else(|| Status::invalid_argument("RunPodSandbox: config is required"))?;
        let md = config
            .metadata
            .clone()
            .ok_or_else(|| Status::invalid_argument("RunPodSandbox: config.metadata is required"))?;
        if md.name.is_empty() {
            return Err(Status::invalid_argument("RunPodSandbox: metadata.name is required"));
        }
        if !req.runtime_handler.is_empty() && req.runtime_handler != super::status::DEFAULT_HANDLER_NAME {
            return Err(Status::invalid_argument(format!(
                "RunPodSandbox: unknown runtime handler {:?} (skiff has only the default handler, \"\" or \"skiff\")",
                req.runtime_handler
            )));
        }
        let name = format!("{}_{}_{}_{}", md.name, md.namespace, md.uid, md.attempt);
        // Each attempt runs in a task of its own; a retry with the same metadata joins it or
        // gets its result (see store::reserve).
        let mut attempt = |id: String, guard: NameGuard| {
            let (svc, name, config, handler) =
                (self.handle(), name.clone(), config.clone(), req.runtime_handler.clone());
            detached(async move {
                let span = tracing::info_span!("run_pod_sandbox", pod_id = %id, pod = %name);
                svc.create_pod(&id, &name, config, handler).instrument(span).await?;
                guard.commit();
                Ok(())
            })
        };
        // A pod of that name removed a moment ago keeps the name until its background network
        // teardown ends (RemovePodSandbox answered before that): wait for it (bounded) rather
        // than refuse. Such a holder is no longer in the index.
        let deadline = std::time::Instant::now() + REMOVED_NAME_WAIT;
        loop {
            let removed_holder = std::sync::atomic::AtomicBool::new(false);
            let taken = |holder: &str| {
                let gone = matches!(self.ctx.pods.lookup(holder), Lookup::NotFound);
                removed_holder.store(gone, std::sync::atomic::Ordering::Relaxed);
                Status::already_exists(format!("pod sandbox name {name:?} is reserved by pod {holder}"))
            };
            match self.ctx.pods.names.create_once(&name, &mut attempt, taken).await {
                Err(_)
                    if removed_holder.load(std::sync::atomic::Ordering::Relaxed)
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await
                }
                r => return Ok(RunPodSandboxResponse { pod_sandbox_id: r? }),
            }
        }
    }

    async fn create_pod(
        &self,
        id: &str,
        name: &str,
        config: PodSandboxConfig,
        runtime_handler: String,
    ) -> Result<(), Status> {
        let ctx = self.ctx.clone();
        let host_ipc = mode(namespace_options(&config).ipc) == NamespaceMode::Node;
        if crate::spec::userns::pod_mappings(&namespace_options(&config)).is_some() {
            // Never run a pod that asked for a user namespace without one.
            let (root, state) = (ctx.config.root.clone(), ctx.config.state.clone());
            tokio::task::spawn_blocking(move || runtime::features::user_namespaces(&root, &state))
                .await
                .map_err(join_error)?
                .map_err(|e| {
                    Status::invalid_argument(format!(
                        "namespace_options: user namespaces are not supported on this node ({e}); Status does not announce them"
                    ))
                })?;
        }
        // Known before anything is acquired, so that recovery can remove the cgroup of a pod
        // whose creation was interrupted.
        let cgroup_parent = runtime::pod::cgroup_parent(
            config.linux.as_ref().map(|l| l.cgroup_parent.as_str()).unwrap_or(""),
            id,
            &ctx.config.runtime.default_cgroup_parent,
        )
        .status("pod cgroup parent")?;
        let mut record = PodRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            config: config.clone(),
            runtime_handler,
            state: PodState::Creating,
            created_at: now_nanos(),
            cgroup_parent,
            namespaces: PodNamespaces::default(),
            ips: Vec::new(),
            network_set_up: false,
            shm_mounted: false,
            error: None,
            removing: false,
            teardown_in_flight: false,
        };
        let mut rb = Rollback::new();
        let result = async {
            // Unsynced: the READY record below is the durable one (see save_unsynced).
            ctx.pod_store.save_async_unsynced(id, &record).await.status("persist the pod")?;
            {
                let ctx = ctx.clone();
                let id = id.to_owned();
                rb.push_blocking("pod record", move || ctx.pod_store.remove(&id).map_err(|e| e.to_string()));
            }

            // Namespaces (new net/ipc/uts unless the pod shares the node's), resolv.conf,
            // hosts, hostname, the /dev/shm tmpfs and the pod cgroup; runtime::pod undoes its
            // own steps when one fails.
            let resources = {
                let (ctx, id, config) = (ctx.clone(), id.to_owned(), config.clone());
                tokio::task::spawn_blocking(move || {
                    crate::spec::setup_pod(
                        &*ctx.sandboxes,
                        &ctx.config.state,
                        &id,
                        &config,
                        Path::new("/etc/resolv.conf"),
                        SHM_SIZE,
                        &ctx.config.runtime.default_cgroup_parent,
                    )
                })
                .await
                .map_err(join_error)?
                .status("set up the pod")?
            };
            {
                let (ctx, id, cgroup) = (ctx.clone(), id.to_owned(), resources.cgroup_parent.clone());
                rb.push_blocking("pod namespaces, files and cgroup", move || {
                    ctx.sandboxes.teardown_pod(&ctx.config.state, &id, &cgroup).map_err(|e| e.to_string())
                });
            }
            record.cgroup_parent = resources.cgroup_parent;
            record.namespaces.net = resources.namespaces.net;
            record.namespaces.ipc = resources.namespaces.ipc;
            record.namespaces.uts = resources.namespaces.uts;
            record.namespaces.user = resources.namespaces.user;
            record.shm_mounted = !host_ipc;
            crate::failpoint::hit("pod:after_setup").await?;

            self.setup_pod_extras(&mut record, &mut rb).await?;
            crate::failpoint::hit("pod:after_network").await?;

            record.state = PodState::Ready;
            ctx.pod_store.save_async(id, &record).await.status("persist the pod")?;
            Ok::<(), Status>(())
        }
        .await;

        match result {
            Ok(()) => {
                rb.commit();
                tracing::info!(cgroup = %record.cgroup_parent, ips = ?record.ips, "pod sandbox ready");
                ctx.pods.insert(id, record);
                events::emit(&ctx, id, id, ContainerEventType::ContainerCreatedEvent);
                events::emit(&ctx, id, id, ContainerEventType::ContainerStartedEvent);
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
                    let _ = ctx.pod_store.save_async(id, &record).await;
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
    pub(crate) async fn write_pod_hosts(&self, record: &PodRecord, hostname: &str) -> Result<(), Status> {
        let hosts = self.ctx.pod_paths(&record.id).hosts();
        let ips: Vec<IpAddr> = record.ips.iter().filter_map(|s| s.parse().ok()).collect();
        let host_net = mode(namespace_options(&record.config).network) == NamespaceMode::Node;
        let hostname = hostname.to_owned();
        tokio::task::spawn_blocking(move || {
            let copy_from = host_net.then(|| std::path::Path::new("/etc/hosts"));
            runtime::podfiles::write_hosts(&hosts, &hostname, &ips, copy_from)
        })
        .await
        .map_err(join_error)?
        .status("write the pod's hosts file")
    }

    pub(super) async fn stop_pod_sandbox_impl(
        &self,
        req: StopPodSandboxRequest,
    ) -> Result<StopPodSandboxResponse, Status> {
        let svc = self.handle();
        detached(async move {
            let Some(entry) = svc.find_pod(&req.pod_sandbox_id)? else {
                // Idempotent: stopping an unknown pod is not an error.
                return Ok(StopPodSandboxResponse {});
            };
            let span = tracing::info_span!("stop_pod_sandbox", pod_id = %entry.get().id);
            async {
                let Ok(_t) = entry.begin(Transition::Stopping, Mode::Exclusive).await else { return Ok(()) };
                svc.stop_pod(&entry, true).await
            }
            .instrument(span)
            .await?;
            Ok(StopPodSandboxResponse {})
        })
        .await
    }

    /// Stops every container of the pod, releases its network and its PID namespace holder,
    /// and marks it NOTREADY. Idempotent. The caller holds the pod's transition. With
    /// `defer_network` (StopPodSandbox), what the network plugin allows is left to a background
    /// task ([`spawn_network_teardown`]: the veth and the lease), started before this returns.
    async fn stop_pod(&self, entry: &PodEntry, defer_network: bool) -> Result<(), Status> {
        let pod = entry.get();
        self.stop_pod_containers(&pod.id).await?;
        let mut p = pod.clone();
        let mut deferred = false;
        let torn = if defer_network && pod.state == PodState::NotReady {
            // Stopped before (a retried StopPodSandbox, or RemovePodSandbox after the stop):
            // that stop tore down the port mappings and the PID namespace holder before it
            // made the pod NOTREADY (only a plugin that defers leaves the network set up); the
            // rest of the network is the background teardown's, started again if it failed.
            deferred = p.network_set_up;
            Ok(())
        } else if defer_network {
            teardown_pod_extras_front(&self.ctx, &mut p).await.map(|d| deferred = d)
        } else {
            self.teardown_pod_extras(&mut p).await
        };
        let changed = p.network_set_up != pod.network_set_up || pod.state != PodState::NotReady;
        entry.update(|r| {
            // Only ever cleared here: a background teardown under way (of an earlier stop)
            // may have finished meanwhile.
            if !p.network_set_up {
                r.network_set_up = false;
            }
            if torn.is_ok() {
                r.state = PodState::NotReady;
            }
        });
        if changed {
            self.ctx.pod_store.save_entry(&pod.id, entry).await.status("persist the pod")?;
        }
        // After the record is updated: the task may finish before this returns.
        if deferred {
            spawn_network_teardown(&self.ctx, entry);
        }
        torn?;
        if pod.state != PodState::NotReady {
            tracing::info!("pod sandbox stopped");
            events::emit(&self.ctx, &pod.id, &pod.id, ContainerEventType::ContainerStoppedEvent);
        }
        Ok(())
    }

    pub(super) async fn remove_pod_sandbox_impl(
        &self,
        req: RemovePodSandboxRequest,
    ) -> Result<RemovePodSandboxResponse, Status> {
        let svc = self.handle();
        detached(async move {
            let Some(entry) = svc.find_pod(&req.pod_sandbox_id)? else {
                return Ok(RemovePodSandboxResponse {});
            };
            let span = tracing::info_span!("remove_pod_sandbox", pod_id = %entry.get().id);
            svc.remove_pod(&entry).instrument(span).await?;
            Ok(RemovePodSandboxResponse {})
        })
        .await
    }

    /// Stops the pod, removes its containers, namespaces, files, cgroup and record. Idempotent.
    ///
    /// The containers are removed and the network torn down (what StopPodSandbox did not leave
    /// to its background teardown) before the answer; the rest is handed to the background: the
    /// record is kept with `removing` (durable before the answer), the pod leaves the index at
    /// once (every call then finds no such pod) and its name stays reserved. A background task
    /// ([`finish_removal`](super::pod_extras::finish_removal), after the network teardown of `spawn_network_teardown` when that
    /// is still under way) unmounts the namespace pins and shm, deletes the pod's files and
    /// cgroup, then the record, and releases the name; when that fails, the pod is back,
    /// NOTREADY, with the failure in its `error`. A pod with an `error` (a teardown that failed
    /// before) is removed wholly before the answer, so that the retry reports what fails. A
    /// skiffd killed in between finishes the removal at its next start (recovery).
    async fn remove_pod(&self, entry: &PodEntry) -> Result<(), Status> {
        let Ok(_t) = entry.begin(Transition::Removing, Mode::Exclusive).await else { return Ok(()) };
        // With a background teardown under way, stop as StopPodSandbox does (which leaves the
        // network to it); otherwise the network is torn down here, before the answer (also the
        // retry of a background teardown that failed).
        let in_flight = entry.read(|r| r.teardown_in_flight);
        self.stop_pod(entry, in_flight).await?;
        let pod = entry.get();
        self.remove_pod_containers(&pod.id).await?;
        if pod.error.is_none() {
            return self.hand_off_removal(entry, &pod).await;
        }
        let ctx = self.ctx.clone();
        let id = pod.id.clone();
        let cgroup = pod.cgroup_parent.clone();
        let failures: Vec<String> = tokio::task::spawn_blocking(move || {
            ctx.sandboxes.teardown_pod(&ctx.config.state, &id, &cgroup).map_err(|e| e.to_string())
        })
        .await
        .map_err(join_error)?
        .err()
        .into_iter()
        .collect();
        if !failures.is_empty() {
            entry.update(|r| r.error = Some(format!("removal incomplete: {}", failures.join("; "))));
            let _ = self.ctx.pod_store.save_entry(&pod.id, entry).await;
            return Err(Status::internal(format!("cannot remove pod sandbox {}: {}", pod.id, failures.join("; "))));
        }
        // Out of the index before the hand-off: a background teardown that fails puts it back.
        self.ctx.pods.remove(&pod.id);
        let handed_off = entry.update(|r| {
            r.removing = r.teardown_in_flight;
            r.removing
        });
        if handed_off {
            if let Err(e) = self.ctx.pod_store.save_entry(&pod.id, entry).await {
                return Err(e).status("persist the pod's removal");
            }
            tracing::info!("pod sandbox removed; its network teardown finishes in the background");
            events::emit(&self.ctx, &pod.id, &pod.id, ContainerEventType::ContainerDeletedEvent);
            return Ok(());
        }
        let result = async {
            // A background teardown that failed meanwhile: retry it here.
            let mut p = entry.get();
            if p.network_set_up {
                self.teardown_pod_extras(&mut p).await?;
                entry.update(|r| r.network_set_up = p.network_set_up);
            }
            self.ctx.pod_store.remove_entry(&pod.id, entry).await.status("delete the pod record")
        }
        .await;
        if let Err(status) = result {
            entry.update(|r| r.error = Some(format!("removal incomplete: {}", status.message())));
            let _ = self.ctx.pod_store.save_entry(&pod.id, entry).await;
            self.ctx.pods.insert_entry(&pod.id, entry.clone());
            return Err(status);
        }
        self.ctx.pods.names.release(&pod.name, &pod.id);
        tracing::info!("pod sandbox removed");
        events::emit(&self.ctx, &pod.id, &pod.id, ContainerEventType::ContainerDeletedEvent);
        Ok(())
    }

    /// RemovePodSandbox's answer for a stopped pod without containers and without an error: the
    /// record durably `removing`, the pod out of the index, the rest left to [`finish_removal`](super::pod_extras::finish_removal)
    /// (or to the network teardown under way, which runs it when it is done).
    async fn hand_off_removal(&self, entry: &PodEntry, pod: &PodRecord) -> Result<(), Status> {
        // Out of the index first: from here on a call finds no such pod; a background task
        // that fails puts it back.
        self.ctx.pods.remove(&pod.id);
        // Under the record's lock: a network teardown that ends meanwhile either sees
        // `removing` (and finishes the removal) or has ended before (and this task does it).
        let network_task = entry.update(|r| {
            r.removing = true;
            r.teardown_in_flight
        });
        if let Err(e) = self.ctx.pod_store.save_entry(&pod.id, entry).await {
            if !network_task {
                entry.update(|r| r.removing = false);
                self.ctx.pods.insert_entry(&pod.id, entry.clone());
            }
            return Err(e).status("persist the pod's removal");
        }
        if !network_task {
            spawn_removal(&self.ctx, entry);
        }
        tracing::info!("pod sandbox removed; its teardown finishes in the background");
        events::emit(&self.ctx, &pod.id, &pod.id, ContainerEventType::ContainerDeletedEvent);
        Ok(())
    }

    pub(super) async fn pod_sandbox_status_impl(
        &self,
        req: PodSandboxStatusRequest,
    ) -> Result<PodSandboxStatusResponse, Status> {
        let entry = self.pod_or_not_found(&req.pod_sandbox_id)?;
        let pod = entry.get();
        let status = pod_status(&pod);
        // The statuses of its containers too, as the evented PLEG reads them.
        let mut containers_statuses = Vec::new();
        for (_, c) in self.ctx.containers.all() {
            if c.read(|c| c.pod_id == pod.id) {
                containers_statuses.push(container_status(&refresh(&self.ctx, &c).await));
            }
        }
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
                    "user": pod.namespaces.user,
                },
                "runtimeHandler": pod.runtime_handler,
                "error": pod.error,
                "transition": entry.transition().map(|t| format!("{t:?}")),
                "networkTeardownInBackground": pod.teardown_in_flight,
                "config": pod.config,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(PodSandboxStatusResponse { status: Some(status), info, containers_statuses, timestamp: now_nanos() })
    }

    pub(super) async fn list_pod_sandbox_impl(
        &self,
        req: ListPodSandboxRequest,
    ) -> Result<ListPodSandboxResponse, Status> {
        let filter = req.filter.unwrap_or_default();
        let mut items = Vec::new();
        for pod in self.pods_matching(&filter.id, &filter.label_selector) {
            let state = cri_state(pod.state);
            if filter.state.as_ref().is_some_and(|s| s.state != state as i32) {
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
        items.sort_by_key(|p| std::cmp::Reverse(p.created_at));
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

pub(crate) fn pod_status(pod: &PodRecord) -> PodSandboxStatus {
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
        linux: Some(LinuxPodSandboxStatus { namespaces: Some(Namespace { options: Some(ns) }) }),
        labels: pod.config.labels.clone(),
        annotations: pod.config.annotations.clone(),
        runtime_handler: pod.runtime_handler.clone(),
    }
}
