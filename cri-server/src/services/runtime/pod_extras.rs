//! The parts of a pod beyond namespaces, files and cgroup: its network (netplugin) and, for
//! pods with a pod-level PID namespace, the infra process holding it.

use std::sync::Arc;

use netplugin::{NetworkError, PodNetworkRequest, PortMapping};
use proto::cri::NamespaceMode;
use tonic::Status;

use super::container::{process_alive, spawn_background, PodEntry};
use super::pod::namespace_options;
use super::RuntimeSvc;
use crate::context::Context;
use crate::error::join_error;
use crate::rollback::Rollback;
use crate::store::PodRecord;

/// A netplugin error as a gRPC status.
pub(crate) fn network_status(doing: &str, e: NetworkError) -> Status {
    crate::error::status_of(doing, &e)
}

/// Whether the pod shares the node's network namespace.
pub(crate) fn host_network(pod: &PodRecord) -> bool {
    NamespaceMode::try_from(namespace_options(&pod.config).network) == Ok(NamespaceMode::Node)
}

/// The netplugin request for a pod.
pub(crate) fn network_request(ctx: &Context, pod: &PodRecord) -> Result<PodNetworkRequest, Status> {
    let md = pod.config.metadata.clone().unwrap_or_default();
    let port_mappings = pod
        .config
        .port_mappings
        .iter()
        .map(|p| PortMapping::from_cri(p.protocol, p.container_port, p.host_port, &p.host_ip))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| network_status("port mappings", e))?;
    Ok(PodNetworkRequest {
        id: pod.id.clone(),
        name: md.name,
        namespace: md.namespace,
        uid: md.uid,
        netns_path: ctx.pod_paths(&pod.id).netns(),
        port_mappings,
        hostname: pod.config.hostname.clone(),
        dns: None,
        cgroup_parent: pod.cgroup_parent.clone(),
        annotations: pod.config.annotations.clone().into_iter().collect(),
    })
}

/// The start time of a process (field 22 of /proc/<pid>/stat), to recognise it later.
pub(crate) fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Kills a pod's PID namespace holder if it is still the process we started.
pub(crate) fn kill_infra(pid: i32, start_time: Option<u64>) {
    if process_alive(pid) && process_start_time(pid) == start_time {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        for _ in 0..100 {
            if !process_alive(pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl RuntimeSvc {
    /// Sets up the pod's PID namespace holder and network; registers their undo in `rb`.
    pub(super) async fn setup_pod_extras(&self, record: &mut PodRecord, rb: &mut Rollback) -> Result<(), Status> {
        let ctx = self.ctx.clone();
        if NamespaceMode::try_from(namespace_options(&record.config).pid) == Ok(NamespaceMode::Pod) {
            // It belongs to the pod, not to skiffd: it joins the pod cgroup itself.
            let (ctx2, dir, cgroup) = (ctx.clone(), ctx.pod_paths(&record.id).dir, record.cgroup_parent.clone());
            // With the host's hierarchies, so that it need not read mountinfo.
            let infra = tokio::task::spawn_blocking(move || {
                ctx2.monitors.spawn_infra(&dir, Some(&cgroup), ctx2.cgroups.hierarchies().as_ref())
            })
            .await
            .map_err(join_error)?
            .map_err(|e| Status::internal(format!("start the pod's PID namespace holder: {e}")))?;
            let start_time = ctx.monitors.process_start_time(infra.pid);
            record.namespaces.infra_pid = Some(infra.pid);
            record.namespaces.infra_start_time = start_time;
            let ctx2 = ctx.clone();
            rb.push_blocking("pid namespace holder", move || {
                ctx2.monitors.kill_infra(infra.pid, start_time);
                Ok(())
            });
        }
        if !host_network(record) {
            let req = network_request(&ctx, record)?;
            let status = ctx.network.setup(&req).await.map_err(|e| network_status("set up the pod network", e))?;
            record.network_set_up = true;
            record.ips = status.ips.iter().map(|ip| ip.to_string()).collect();
            let net = ctx.network.clone();
            rb.push("network", move || async move { net.teardown(&req).await.map_err(|e| e.to_string()) });
            let hostname = runtime::podfiles::pod_hostname(&record.config.hostname);
            self.write_pod_hosts(record, &hostname).await?;
        }
        Ok(())
    }

    /// Releases the pod's network and stops its PID namespace holder. Idempotent.
    pub(super) async fn teardown_pod_extras(&self, pod: &mut PodRecord) -> Result<(), Status> {
        teardown_pod_extras(&self.ctx, pod).await
    }
}

/// See [`RuntimeSvc::teardown_pod_extras`]; also used by recovery. Changes `pod` (no longer
/// `network_set_up`); the caller persists it.
pub(crate) async fn teardown_pod_extras(ctx: &Arc<Context>, pod: &mut PodRecord) -> Result<(), Status> {
    if pod.network_set_up {
        let req = network_request(ctx, pod)?;
        ctx.network.teardown(&req).await.map_err(|e| network_status("tear down the pod network", e))?;
        pod.network_set_up = false;
    }
    stop_infra(ctx, pod).await
}

/// StopPodSandbox's teardown: what the network plugin must do before the answer
/// ([`netplugin::NetworkPlugin::teardown_front`]: the port mappings), then the PID namespace
/// holder. `Ok(true)` when the rest of the network teardown is left to
/// [`spawn_network_teardown`] (`pod` still `network_set_up`, keeping its lease until then).
pub(crate) async fn teardown_pod_extras_front(ctx: &Arc<Context>, pod: &mut PodRecord) -> Result<bool, Status> {
    let mut deferred = false;
    if pod.network_set_up {
        let req = network_request(ctx, pod)?;
        deferred =
            ctx.network.teardown_front(&req).await.map_err(|e| network_status("tear down the pod network", e))?;
        if !deferred {
            pod.network_set_up = false;
        }
    }
    stop_infra(ctx, pod).await?;
    Ok(deferred)
}

/// After StopPodSandbox (or RemovePodSandbox) answered: the rest of the pod's network teardown
/// (the veth, whose deletion waits for an RCU grace period, and then the lease). One at a time
/// per pod (`teardown_in_flight`, under the record's lock: a stop retried meanwhile leaves it to
/// the one under way); it takes no transition, so RemovePodSandbox does not wait for it but
/// hands it the end of the removal (`removing`, see `RuntimeSvc::remove_pod`). On success the
/// pod is no longer `network_set_up` (and, when `removing`, its record is deleted and its name
/// released); a failure is logged and kept in the pod's `error`, the pod stays `network_set_up`
/// (put back in the index when it was `removing`) and RemovePodSandbox retries the teardown
/// (a NOTREADY pod's leftovers are also released by the next start's network recovery). A
/// graceful shutdown waits for it. The failpoint `pod:background_teardown` makes it fail before
/// tearing anything down.
pub(crate) fn spawn_network_teardown(ctx: &Arc<Context>, entry: &PodEntry) {
    if !entry.update(|r| r.network_set_up && !std::mem::replace(&mut r.teardown_in_flight, true)) {
        return;
    }
    let (ctx, entry) = (ctx.clone(), entry.clone());
    spawn_background(async move {
        let pod = entry.get();
        let res = async {
            let req = network_request(&ctx, &pod).map_err(|e| e.message().to_string())?;
            crate::failpoint::hit("pod:background_teardown").await.map_err(|e| e.message().to_string())?;
            ctx.network.teardown(&req).await.map_err(|e| e.to_string())
        }
        .await;
        let removing = entry.update(|r| {
            r.teardown_in_flight = false;
            match &res {
                Ok(()) => {
                    r.network_set_up = false;
                    r.removing
                }
                Err(e) => {
                    r.error = Some(format!("network teardown: {e}"));
                    std::mem::take(&mut r.removing)
                }
            }
        });
        match (&res, removing) {
            (Ok(()), true) => {
                finish_removal(&ctx, &entry).await;
                return;
            }
            (Err(e), true) => {
                tracing::warn!(pod_id = %pod.id, error = %e, "network teardown of a removed pod failed; it is back, NOTREADY, and RemovePodSandbox retries it");
                ctx.pods.insert_entry(&pod.id, entry.clone());
            }
            (Err(e), false) => {
                tracing::warn!(pod_id = %pod.id, error = %e, "network teardown after StopPodSandbox failed; RemovePodSandbox retries it");
            }
            (Ok(()), false) => {}
        }
        if let Err(e) = ctx.pod_store.save_entry(&pod.id, &entry).await {
            tracing::warn!(pod_id = %pod.id, error = %e, "cannot persist the pod's network teardown");
        }
    });
}

/// The end of a removal that RemovePodSandbox answered (the record durably `removing`, the pod
/// out of the index, its name still reserved), after the network is torn down: the pod's
/// namespace pins, shm, files and cgroup, then the record (durably deleted) and the name. On a
/// failure the pod is back in the index, NOTREADY, with the failure in its `error` and
/// `removing` cleared, and `false` is returned: the next RemovePodSandbox removes it before it
/// answers and reports what fails. Run after the answer ([`spawn_removal`], or the network
/// teardown's task); a skiffd killed before it ended finishes it at the next start (recovery
/// finds the `removing` record). The failpoint `pod:background_removal` makes it fail before
/// removing anything.
pub(crate) async fn finish_removal(ctx: &Arc<Context>, entry: &PodEntry) -> bool {
    let pod = entry.get();
    let res = async {
        crate::failpoint::hit("pod:background_removal").await.map_err(|e| e.message().to_string())?;
        let (ctx2, id, cgroup) = (ctx.clone(), pod.id.clone(), pod.cgroup_parent.clone());
        tokio::task::spawn_blocking(move || {
            ctx2.sandboxes.teardown_pod(&ctx2.config.state, &id, &cgroup).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        ctx.pod_store.remove_entry(&pod.id, entry).await.map_err(|e| format!("delete the pod record: {e}"))
    }
    .await;
    match res {
        Ok(()) => {
            ctx.pods.names.release(&pod.name, &pod.id);
            tracing::info!(pod_id = %pod.id, "removed pod sandbox torn down, record deleted");
            true
        }
        Err(e) => {
            tracing::warn!(pod_id = %pod.id, error = %e, "the end of a pod sandbox's removal failed; it is back, NOTREADY");
            entry.update(|r| {
                r.error = Some(format!("removal incomplete: {e}"));
                r.removing = false;
            });
            ctx.pods.insert_entry(&pod.id, entry.clone());
            if let Err(e) = ctx.pod_store.save_entry(&pod.id, entry).await {
                tracing::warn!(pod_id = %pod.id, error = %e, "cannot persist the pod's failed removal");
            }
            false
        }
    }
}

/// [`finish_removal`] in a background task (counted for a graceful shutdown).
pub(crate) fn spawn_removal(ctx: &Arc<Context>, entry: &PodEntry) {
    let (ctx, entry) = (ctx.clone(), entry.clone());
    spawn_background(async move {
        finish_removal(&ctx, &entry).await;
    });
}

/// Stops the pod's PID namespace holder, if it has one.
async fn stop_infra(ctx: &Arc<Context>, pod: &PodRecord) -> Result<(), Status> {
    if let Some(pid) = pod.namespaces.infra_pid {
        let start = pod.namespaces.infra_start_time;
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || ctx.monitors.kill_infra(pid, start)).await.map_err(join_error)?;
    }
    Ok(())
}
