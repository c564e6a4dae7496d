//! Startup reconciliation: rebuild the in-memory state from the records on disk and from the
//! monitors, so that a skiffd killed at any point comes back consistent.
//!
//! - Pods or containers caught half-created are rolled back: a pod's "creating" record; a
//!   container's CREATED record whose state dir is there without its `config.json` (its
//!   creation writes the record while it makes the files, and answers only once both are
//!   done; after a reboot the state dir is gone and a CREATED container stays); a container's
//!   "creating" record of earlier versions. State dirs of containers without a record (a
//!   creation cut off before its record) are deleted.
//! - A READY pod whose namespace pins are gone (the state dir did not survive a reboot) or
//!   whose PID namespace holder died becomes NOTREADY and releases its network.
//! - CREATED containers whose start was interrupted after their monitor started them are
//!   adopted (RUNNING or EXITED); otherwise their rootfs mount and cgroup are released. One
//!   whose start had begun (its durable start mark) and whose state dir is gone (a reboot)
//!   is EXITED with reason Unknown, as a RUNNING one is.
//! - RUNNING containers are checked against their monitor: still running, or EXITED with the
//!   exit record the monitor wrote meanwhile (or reason Unknown when it died without one).
//! - The network plugin releases the leases of pods that are no longer alive, and the image
//!   store the writable layers of containers that no longer exist.

use std::collections::HashSet;
use std::sync::Arc;

use crate::context::Context;
use crate::services::runtime::container::{cleanup_after_exit, notice_exit};
use crate::services::runtime::pod_extras::{network_request, teardown_pod_extras};
use crate::store::{ContainerRecord, ContainerState, Entry, PodRecord, PodState, StoreError};

/// Runs `f` on the blocking pool (file, mount and /proc work).
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Task(e.to_string()))
}

/// Runs the reconciliation; problems with single objects are logged and the object is kept
/// visible, never dropped silently.
pub async fn recover(ctx: &Arc<Context>) -> Result<(), StoreError> {
    let mut live_pods = HashSet::new();
    let store = ctx.pod_store.clone();
    for (id, rec) in blocking(move || store.load_all::<PodRecord>()).await?? {
        let mut pod = match rec {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(pod_id = %id, error = %e, "unreadable pod record kept aside");
                continue;
            }
        };
        // A creation that was cut off, or a removal RemovePodSandbox answered and left to a
        // background network teardown that skiffd did not live to finish.
        let interrupted = if pod.state == PodState::Creating {
            Some(("rolling back a pod sandbox whose creation was interrupted", "interrupted creation"))
        } else if pod.removing {
            Some(("finishing a pod sandbox removal that was interrupted", "interrupted removal"))
        } else {
            None
        };
        if let Some((what, failed)) = interrupted {
            tracing::info!(pod_id = %id, "{what}");
            match remove_pod_leftovers(ctx, &mut pod).await {
                Ok(()) => {
                    let (store, id) = (ctx.pod_store.clone(), id.clone());
                    let _ = blocking(move || store.remove(&id)).await;
                    continue;
                }
                Err(e) => {
                    pod.removing = false;
                    pod.state = PodState::NotReady;
                    pod.error = Some(format!("{failed}, cleanup incomplete: {e}"));
                }
            }
        }
        if pod.state == PodState::Ready {
            let (ns, ctx2) = (pod.namespaces.clone(), ctx.clone());
            let (pins_ok, infra_ok) = blocking(move || {
                let pins_ok = [&ns.net, &ns.ipc, &ns.uts, &ns.user]
                    .iter()
                    .all(|p| p.as_ref().map(|p| ctx2.sandboxes.is_pinned(p)).unwrap_or(true));
                let infra_ok = match ns.infra_pid {
                    Some(pid) => ctx2.monitors.process_start_time(pid) == ns.infra_start_time,
                    None => true,
                };
                (pins_ok, infra_ok)
            })
            .await?;
            if !pins_ok || !infra_ok {
                tracing::warn!(pod_id = %id, pins_ok, infra_ok, "pod sandbox lost its namespaces: NOTREADY");
                pod.state = PodState::NotReady;
                if let Err(e) = teardown_pod_extras(ctx, &mut pod).await {
                    pod.error = Some(format!("network teardown: {}", e.message()));
                }
            }
        }
        if pod.state == PodState::Ready && pod.network_set_up {
            live_pods.insert(pod.id.clone());
        }
        let _ = ctx.pod_store.save_async(&id, &pod).await;
        if let Err(holder) = ctx.pods.names.hold(&pod.name, &pod.id) {
            tracing::error!(pod_id = %id, holder = %holder, "two pod records hold the same name");
        }
        ctx.pods.insert(&id, pod);
    }

    let tdir = ctx.trash_dir();
    blocking(move || crate::services::runtime::container::sweep_trash(&tdir)).await?;
    let mut containers = HashSet::new();
    // Every container with a record, readable or not (whose state dir stays).
    let mut recorded = HashSet::new();
    let store = ctx.container_store.clone();
    for (id, rec) in blocking(move || store.load_all::<ContainerRecord>()).await?? {
        recorded.insert(id.clone());
        let mut c = match rec {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(container_id = %id, error = %e, "unreadable container record kept aside");
                continue;
            }
        };
        if c.state == ContainerState::Created && !c.starting {
            // Same boot (the volatile state dir survived) and no spec: CreateContainer was cut
            // off between its record and its answer. The file written last is config.json.
            let dir = ctx.container_dir(&id);
            let cut_off = blocking(move || dir.is_dir() && matches!(dir.join("config.json").try_exists(), Ok(false)))
                .await
                .unwrap_or(false);
            if cut_off {
                tracing::info!(container_id = %id, "a container whose creation was cut off before its answer");
                c.state = ContainerState::Creating;
            }
        }
        if c.state == ContainerState::Creating {
            tracing::info!(container_id = %id, "rolling back a container whose creation was interrupted");
            let released = ctx.images.release_rootfs(&id).await;
            let dir = ctx.container_dir(&id);
            let removed = blocking(move || match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            })
            .await?;
            if released.is_ok() && removed.is_ok() {
                let (store, id) = (ctx.container_store.clone(), id.clone());
                let _ = blocking(move || store.remove(&id)).await;
                continue;
            }
            c.state = ContainerState::Unknown;
            c.error = Some(format!("interrupted creation, cleanup incomplete: {released:?} {removed:?}"));
        }
        if c.state == ContainerState::Created {
            recover_created(ctx, &mut c).await;
        }
        if ctx.pods.lookup(&c.pod_id).is_not_found() {
            tracing::warn!(container_id = %id, pod_id = %c.pod_id, "container of a pod that no longer exists");
        }
        if let Err(holder) = ctx.containers.names.hold(&c.name, &c.id) {
            tracing::error!(container_id = %id, holder = %holder, "two container records hold the same name");
        }
        let entry = Entry::new(c);
        if notice_exit(ctx, &entry).await.1 {
            cleanup_after_exit(ctx, &entry).await;
        }
        containers.insert(id.clone());
        tracing::info!(container_id = %id, state = ?entry.get().state, "container recovered");
        if entry.get().state == ContainerState::Running {
            crate::services::runtime::container::spawn_exit_watcher(ctx, &entry);
        }
        ctx.containers.insert_entry(&id, entry);
    }

    let cdirs = ctx.config.state.join("containers");
    blocking(move || sweep_unrecorded_state_dirs(&cdirs, &recorded)).await?;

    if let Err(e) = ctx.network.recover(&live_pods).await {
        tracing::warn!(error = %e, "network recovery incomplete");
    }
    for holder in ctx.images.rootfs_holders().await {
        if !containers.contains(&holder) {
            tracing::info!(container_id = %holder, "releasing the writable layer of a container that no longer exists");
            if let Err(e) = ctx.images.release_rootfs(&holder).await {
                tracing::warn!(container_id = %holder, error = %e, "cannot release a leftover writable layer");
            }
        }
    }
    Ok(())
}

/// Deletes the state dirs (`STATE/containers/<id>`) of containers without a record: a
/// CreateContainer cut off before its CREATED record (it writes none before; its writable layer
/// and hold are released with the other holds of no container). Nothing is mounted in such a
/// dir (only a StartContainer of a recorded container mounts its rootfs); one that has a mount
/// is kept and logged all the same.
fn sweep_unrecorded_state_dirs(dir: &std::path::Path, recorded: &HashSet<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let path = e.path();
        if recorded.contains(e.file_name().to_string_lossy().as_ref()) {
            continue;
        }
        if runtime::podfiles::is_mountpoint(&path.join("rootfs")) {
            tracing::warn!(path = %path.display(), "the state dir of no container has its rootfs mounted: kept");
            continue;
        }
        tracing::info!(path = %path.display(), "deleting the state dir of a container whose creation was cut off");
        if let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete the state dir of no container");
        }
    }
}

/// A CREATED container whose StartContainer was interrupted: if its monitor got to start it,
/// adopt it (RUNNING, or EXITED through the exit record the monitor wrote); otherwise undo
/// what the start acquired (rootfs mount, container cgroup) so that the next start begins
/// afresh. Never CREATED while a process runs, never started twice.
async fn recover_created(ctx: &Arc<Context>, c: &mut ContainerRecord) {
    use runtime::monitor;
    let cdir = ctx.container_dir(&c.id);
    if std::mem::take(&mut c.starting) {
        // Its start had begun and the state dir is gone (a reboot: a power cut may have lost
        // the RUNNING record of a start that was acknowledged). Its process, if it ran, died
        // with the machine, as a RUNNING container's would.
        let dir = cdir.clone();
        if blocking(move || !dir.exists()).await.unwrap_or(false) {
            tracing::info!(container_id = %c.id, "start interrupted by a reboot: exited");
            c.state = ContainerState::Exited;
            c.exit_code = 255;
            c.reason = "Unknown".into();
            c.message = "the node restarted while the container was being started".into();
            c.started_at = c.started_at.max(c.created_at);
            c.finished_at = crate::store::now_nanos();
            if let Err(e) = ctx.container_store.save_async(&c.id, &*c).await {
                tracing::warn!(container_id = %c.id, error = %e, "cannot persist the recovered container");
            }
            return;
        }
    }
    let (dir, ctx2) = (cdir.clone(), ctx.clone());
    let read = blocking(move || {
        let monitor_pid =
            std::fs::read_to_string(dir.join(monitor::PID_FILE)).ok().and_then(|s| s.trim().parse::<i32>().ok());
        (monitor_pid, ctx2.monitors.read_exit_record(&dir.join(monitor::EXIT_FILE)).is_some())
    })
    .await;
    let (monitor_pid, exited) = read.unwrap_or((None, false));
    if exited {
        tracing::info!(container_id = %c.id, "interrupted start: the container ran and exited");
        c.state = ContainerState::Running;
        c.monitor_pid = None;
        return;
    }
    let socket = cdir.join(monitor::SOCKET_FILE);
    let ctx2 = ctx.clone();
    let status = tokio::task::spawn_blocking(move || ctx2.monitors.connect(&socket)?.status()).await;
    match status {
        Ok(Ok(st)) if st.state == monitor::ContainerState::Running => {
            tracing::info!(container_id = %c.id, pid = st.pid, "interrupted start: adopting the running container");
            c.state = ContainerState::Running;
            c.pid = Some(st.pid);
            c.monitor_pid = monitor_pid;
            c.started_at = st.started_at;
        }
        Ok(Ok(_)) => {
            // Exited meanwhile: the monitor is writing its exit record; refresh reads it.
            c.state = ContainerState::Running;
            c.monitor_pid = monitor_pid;
        }
        _ => {
            let dir = cdir.clone();
            let started = blocking(move || {
                dir.join(monitor::PID_FILE).exists() || runtime::podfiles::is_mountpoint(&dir.join("rootfs"))
            })
            .await
            .unwrap_or(true);
            if started {
                tracing::info!(container_id = %c.id, "interrupted start: releasing its rootfs mount and cgroup");
            }
            if let Some(e) = crate::services::runtime::container::release_runtime_resources(ctx, c).await {
                c.error = Some(e);
            }
            let _ = blocking(move || std::fs::remove_file(cdir.join(monitor::PID_FILE))).await;
        }
    }
    if let Err(e) = ctx.container_store.save_async(&c.id, &*c).await {
        tracing::warn!(container_id = %c.id, error = %e, "cannot persist the recovered container");
    }
}

/// Undoes whatever an interrupted RunPodSandbox may have done.
async fn remove_pod_leftovers(ctx: &Arc<Context>, pod: &mut PodRecord) -> Result<(), String> {
    // The network may have been set up before the crash even if the record does not say so.
    if !crate::services::runtime::pod_extras::host_network(pod) {
        if let Ok(req) = network_request(ctx, pod) {
            ctx.network.teardown(&req).await.map_err(|e| e.to_string())?;
        }
    }
    pod.network_set_up = false;
    teardown_pod_extras(ctx, pod).await.map_err(|e| e.message().to_owned())?;
    // A PID namespace holder started before the crash is not in the record yet.
    let (dir, ctx2) = (ctx.pod_paths(&pod.id).dir, ctx.clone());
    tokio::task::spawn_blocking(move || {
        for pid in infra_processes(&dir) {
            tracing::info!(pid, "stopping the PID namespace holder of an interrupted pod");
            ctx2.monitors.kill_infra(pid, ctx2.monitors.process_start_time(pid));
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    let ctx2 = ctx.clone();
    let (id, cgroup) = (pod.id.clone(), pod.cgroup_parent.clone());
    tokio::task::spawn_blocking(move || {
        ctx2.sandboxes.teardown_pod(&ctx2.config.state, &id, &cgroup).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The PID namespace holders (`skiff-monitor infra <pod dir>`) of a pod, found by their
/// command line: a skiffd killed between starting one and recording it leaves no pid on disk.
fn infra_processes(pod_dir: &std::path::Path) -> Vec<i32> {
    use std::os::unix::ffi::OsStrExt;
    let want = pod_dir.as_os_str().as_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.len() >= 3 && args[1] == b"infra" && args[2] == want
        })
        .collect()
}
