//! StartContainer: the monitor started gated, the container cgroup and the rootfs mount at
//! once (the container's process joins the cgroup as soon as it is made) → the durable start
//! mark → the gate opened → RUNNING.

use std::path::PathBuf;

use proto::cri::*;
use runtime::monitor::{self, MonitorConfig};
use tonic::Status;
use tracing::Instrument;

use std::sync::Arc;

use super::{container_not_found, container_or_not_found, detached, monitor_status, pod_not_found, pod_or_not_found};
use super::{ContainerEntry, PodEntry};
use crate::context::Context;
use crate::error::{join_error, StatusExt};
use crate::rollback::Rollback;
use crate::services::image::image_status;
use crate::services::runtime::events;
use crate::services::runtime::RuntimeSvc;
use crate::store::{now_nanos, ContainerState, Mode, PodState, Transition};

impl RuntimeSvc {
    pub(in crate::services::runtime) async fn start_container_impl(
        &self,
        req: StartContainerRequest,
    ) -> Result<StartContainerResponse, Status> {
        let ctx = self.ctx.clone();
        detached(async move {
            let entry = container_or_not_found(&ctx, &req.container_id)?;
            let c = entry.get();
            let pod = pod_or_not_found(&ctx, &c.pod_id)?;
            let span = tracing::info_span!("start_container", container_id = %c.id, pod_id = %c.pod_id);
            start_container(&ctx, &pod, &entry).instrument(span).await?;
            Ok(StartContainerResponse {})
        })
        .await
    }
}

/// Starts a CREATED container, holding its pod's InUse transition (so that the pod is not
/// stopped or removed meanwhile) and its own Starting transition: a concurrent or retried
/// start waits for this one and then finds the container no longer CREATED, so it never runs
/// twice.
async fn start_container(ctx: &Arc<Context>, pod: &PodEntry, entry: &ContainerEntry) -> Result<(), Status> {
    let c = entry.get();
    let _p = pod.begin(Transition::InUse, Mode::Shared).await.map_err(|_| pod_not_found(&c.pod_id))?;
    let _t = entry.begin(Transition::Starting, Mode::Exclusive).await.map_err(|_| container_not_found(&c.id))?;
    let c = entry.get();
    {
        if c.state != ContainerState::Created {
            return Err(Status::failed_precondition(format!("container {} is {:?}, not created", c.id, c.state)));
        }
        if pod.get().state != PodState::Ready {
            return Err(Status::failed_precondition(format!("pod sandbox {} is not ready", c.pod_id)));
        }
        // The start mark, durable before the monitor may start the container (its fdatasync
        // runs while the monitor starts up and the rootfs is mounted): the RUNNING record
        // written at the end is then not waited for (see `ContainerRecord::starting`).
        entry.update(|r| r.starting = true);
        // Straight to the blocking pool, first of the start's blocking tasks: its thread issues
        // the `fdatasync` before the others take the cores (through a task of its own, it was
        // often the last to end, 0.3 ms after the rest).
        let mark = {
            let (store, entry, id) = (ctx.container_store.clone(), entry.clone(), c.id.clone());
            tokio::task::spawn_blocking(move || store.save_entry_blocking(&id, &entry))
        };
        let cdir = ctx.container_dir(&c.id);
        let mut rb = Rollback::new();
        let result: Result<monitor::Started, Status> = async {
            let log_path = (!c.log_path.is_empty()).then(|| PathBuf::from(&c.log_path));
            let mut mc = MonitorConfig::new(&cdir, &c.id, log_path.clone());
            // The monitor makes the log's directories beneath the pod's log dir, following no symlink.
            let log_dir = crate::validate::log_dir_of(&c.log_path, &c.config.log_path);
            mc.log_dir = log_dir.clone();
            mc.tty = c.config.tty;
            mc.stdin = c.config.stdin;
            mc.stdin_once = c.config.stdin_once;
            // The monitor need not read mountinfo (it grows with every mount on the node).
            mc.cgroup_hierarchies = ctx.cgroups.hierarchies();
            // Three things at once: the monitor starts up (its monitor.json written, then it
            // loads that and the spec, detaches), the container cgroup is made with the spec's
            // resources, and the rootfs is mounted. The monitor starts the container only once
            // the gate opens and exits having started nothing if the gate is dropped (any
            // failure below).
            let (ctx2, dir) = (ctx.clone(), cdir.clone());
            let spawn = tokio::task::spawn_blocking(move || {
                if let Some(dir) = log_path.as_ref().and_then(|p| p.parent()).filter(|_| log_dir.is_none()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Status::internal(format!("create {}: {e}", dir.display())))?;
                }
                // A fresh start: no exit record of an earlier life may linger.
                let _ = std::fs::remove_file(&mc.exit_record_path);
                mc.write(&dir).map_err(|e| Status::internal(format!("write monitor.json: {e}")))?;
                ctx2.monitors.spawn_gated(&dir).map_err(|e| monitor_status(e, "start the container"))
            });
            let (ctx2, cg, spec_path) = (ctx.clone(), c.cgroup_path.clone(), cdir.join("config.json"));
            let cgroup = tokio::task::spawn_blocking(move || -> Result<(), Status> {
                let resources = spec_resources(&spec_path)?;
                ctx2.cgroups.create_with(&cg, resources.as_ref()).status("create the container cgroup")
            });
            // As soon as both the cgroup and the monitor are there, the container's process
            // (forked by the monitor, waiting) joins the cgroup, while the rootfs may still be
            // mounted and the start mark synced: a part of the start off its critical path.
            // Should the start fail after that, dropping the gate makes the process exit, and
            // the cgroup's rollback (which kills what is in it and waits) removes it.
            let early = async {
                let made = cgroup.await.map_err(join_error).and_then(|r| r);
                let mut gate = spawn.await.map_err(join_error).and_then(|r| r);
                if let (Ok(()), Ok(gate)) = (&made, &mut gate) {
                    gate.cgroup_ready();
                }
                (made, gate)
            };
            let (mounted, (made, gate)) = tokio::join!(mount_rootfs(ctx, &c, pod, &cdir), early);
            // Each rollback as soon as its step is known to have succeeded, whatever failed.
            if mounted.is_ok() {
                // Also unmounts the idmapped overlay: it is a mount on the same target.
                let (ctx2, target) = (ctx.clone(), cdir.join("rootfs"));
                rb.push_blocking("rootfs mount", move || {
                    ctx2.images.unmount_rootfs(&target).map_err(|e| e.to_string())
                });
            }
            if made.is_ok() {
                let (ctx2, cg) = (ctx.clone(), c.cgroup_path.clone());
                rb.push_blocking("container cgroup", move || {
                    let _ = ctx2.cgroups.kill_all(&cg);
                    ctx2.cgroups.remove(&cg).map_err(|e| e.to_string())
                });
            }
            mounted?;
            crate::failpoint::hit("start:after_mount").await?;
            made?;
            crate::failpoint::hit("start:after_cgroup").await?;
            let mut gate = gate?;

            // The rootfs is mounted, the cgroup made and the start mark durable: let the
            // monitor start the container (a byte into the gate's pipe, here: the container
            // goes on while the blocking pool picks up the wait for its report).
            mark.await.map_err(join_error)?.status("persist the start")?;
            gate.release();
            tokio::task::spawn_blocking(move || gate.wait())
                .await
                .map_err(join_error)?
                .map_err(|e| monitor_status(e, "start the container"))
        }
        .await;
        match result {
            Ok(started) => {
                rb.commit();
                entry.update(|r| {
                    r.state = ContainerState::Running;
                    r.starting = false;
                    r.pid = Some(started.pid);
                    r.monitor_pid = Some(started.monitor_pid);
                    r.started_at = now_nanos();
                });
                tracing::info!(pid = started.pid, "container started");
                events::emit(ctx, &c.id, &c.pod_id, ContainerEventType::ContainerStartedEvent);
                super::spawn_exit_watcher(ctx, entry);
                crate::failpoint::delay("start:after_monitor").await;
                // Written after the answer, without waiting for durability: the durable start
                // mark covers a crash of skiffd (recovery adopts the running container from its
                // monitor) and a power cut (it reports the container EXITED either way, as its
                // process is gone with the machine). Writes of one entry land in order, the
                // latest state last.
                // A graceful shutdown waits for it (`spawn_background`).
                let (ctx2, entry2, id) = (ctx.clone(), entry.clone(), c.id.clone());
                super::spawn_background(async move {
                    if let Err(e) = ctx2.container_store.save_entry_unsynced(&id, &entry2).await {
                        tracing::warn!(container_id = %id, error = %e, "cannot persist the started container");
                    }
                });
                Ok(())
            }
            Err(status) => {
                let failed = rb.run().await;
                // The container is done: it never ran. Its status says why.
                entry.update(|r| {
                    r.state = ContainerState::Exited;
                    r.starting = false;
                    r.exit_code = 128;
                    r.reason = "StartError".into();
                    r.message = status.message().to_owned();
                    r.finished_at = now_nanos();
                    r.started_at = r.finished_at;
                    if !failed.is_empty() {
                        r.error = Some(format!("cleanup after the failed start incomplete: {}", failed.join("; ")));
                    }
                });
                let _ = ctx.container_store.save_entry(&c.id, entry).await;
                tracing::info!(error = %status.message(), "container start failed");
                events::emit(ctx, &c.id, &c.pod_id, ContainerEventType::ContainerStoppedEvent);
                Err(status)
            }
        }
    }
}

/// The rootfs: the overlay of the image's snapshots and the container's own layer, mounted at
/// `CDIR/rootfs` (idmapped for a pod with a user namespace).
async fn mount_rootfs(
    ctx: &Arc<Context>,
    c: &crate::store::ContainerRecord,
    pod: &PodEntry,
    cdir: &std::path::Path,
) -> Result<(), Status> {
    let t = cdir.join("rootfs");
    let p = pod.get();
    let userns =
        (p.namespaces.user.clone(), crate::spec::userns::host_root(&crate::spec::namespace_options(&p.config)));
    let volatile = ctx.config.runtime.volatile_rootfs;
    if let (None, None) = userns {
        // The layout CreateContainer prepared, from the image store's memory, mounted in one
        // trip to the blocking pool; only if that fails (a directory of the layer lost, say)
        // is the layer prepared again (its directories made) and mounted once more.
        if let Some(mut layout) = ctx.images.held_rootfs(&c.id).await {
            layout.volatile = volatile;
            let (ctx2, t2) = (ctx.clone(), t.clone());
            let first = tokio::task::spawn_blocking(move || ctx2.images.mount_rootfs(&layout, &t2))
                .await
                .map_err(join_error)?;
            match first {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(container_id = %c.id, error = %e, "rootfs mount failed: preparing the layer again")
                }
            }
        }
    }
    let mut layout =
        ctx.images.prepare_rootfs(&c.image_id, &c.id).await.map_err(|e| image_status("prepare the rootfs", e))?;
    layout.volatile = volatile;
    match userns {
        // A pod with a user namespace: the image's layers idmapped under the overlay, the
        // upper dir's root owned by the pod's root (runtime::idmap).
        (Some(userns), Some((uid, gid))) => tokio::task::spawn_blocking(move || {
            runtime::idmap::own_upper(&layout.upperdir, uid, gid)?;
            runtime::idmap::mount_overlay(&layout.lowerdirs, &layout.upperdir, &layout.workdir, &t, &userns)
        })
        .await
        .map_err(join_error)?
        .status("mount the idmapped rootfs"),
        (None, None) => {
            let ctx2 = ctx.clone();
            tokio::task::spawn_blocking(move || ctx2.images.mount_rootfs(&layout, &t))
                .await
                .map_err(join_error)?
                .map_err(|e| image_status("mount the rootfs", e))
        }
        _ => Err(Status::failed_precondition(format!(
            "pod sandbox {}: its user namespace pin and its userns_options disagree",
            p.id
        ))),
    }
}

/// The resources of the container's `config.json` (blocking), read without the rest of the
/// spec.
fn spec_resources(path: &std::path::Path) -> Result<Option<oci_spec::runtime::LinuxResources>, Status> {
    #[derive(serde::Deserialize)]
    struct Spec {
        linux: Option<Linux>,
    }
    #[derive(serde::Deserialize)]
    struct Linux {
        resources: Option<oci_spec::runtime::LinuxResources>,
    }
    let bytes = std::fs::read(path).map_err(|e| Status::internal(format!("read config.json: {e}")))?;
    let spec: Spec = serde_json::from_slice(&bytes).map_err(|e| Status::internal(format!("parse config.json: {e}")))?;
    Ok(spec.linux.and_then(|l| l.resources))
}
