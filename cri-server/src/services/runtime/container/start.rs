//! StartContainer: rootfs mount → container cgroup → monitor → RUNNING.

use std::path::PathBuf;

use proto::cri::*;
use runtime::monitor::{self, MonitorConfig};
use tonic::Status;
use tracing::Instrument;

use super::monitor_status;
use crate::error::{join_error, StatusExt};
use crate::rollback::Rollback;
use crate::services::image::image_status;
use crate::services::runtime::RuntimeSvc;
use crate::store::{now_nanos, ContainerRecord, ContainerState, PodState};

impl RuntimeSvc {
    pub(in crate::services::runtime) async fn start_container_impl(
        &self,
        req: StartContainerRequest,
    ) -> Result<StartContainerResponse, Status> {
        let entry = self.container_or_not_found(&req.container_id)?;
        let mut c = entry.lock().await;
        let span = tracing::info_span!("start_container", container_id = %c.id, pod_id = %c.pod_id);
        self.start_locked(&mut c).instrument(span).await?;
        Ok(StartContainerResponse {})
    }

    async fn start_locked(&self, c: &mut ContainerRecord) -> Result<(), Status> {
        if c.state != ContainerState::Created {
            return Err(Status::failed_precondition(format!("container {} is {:?}, not created", c.id, c.state)));
        }
        let pod = self.pod_or_not_found(&c.pod_id)?;
        if pod.lock().await.state != PodState::Ready {
            return Err(Status::failed_precondition(format!("pod sandbox {} is not ready", c.pod_id)));
        }
        let ctx = self.ctx.clone();
        let cdir = ctx.container_dir(&c.id);
        let mut rb = Rollback::new();
        let result: Result<monitor::Started, Status> = async {
            // The rootfs: the overlay of the image's snapshots and the container's own layer.
            let layout = ctx
                .images
                .prepare_rootfs(&c.image_id, &c.id)
                .await
                .map_err(|e| image_status("prepare the rootfs", e))?;
            let target = cdir.join("rootfs");
            let t = target.clone();
            tokio::task::spawn_blocking(move || layout.mount(&t))
                .await
                .map_err(join_error)?
                .map_err(|e| image_status("mount the rootfs", e))?;
            rb.push_blocking("rootfs mount", move || {
                imagesvc::RootfsMount::unmount(&target).map_err(|e| e.to_string())
            });
            crate::failpoint::check("start:after_mount")?;

            // The container cgroup, with the resources of the spec.
            let spec_bytes = std::fs::read(cdir.join("config.json"))
                .map_err(|e| Status::internal(format!("read config.json: {e}")))?;
            let spec: oci_spec::runtime::Spec =
                serde_json::from_slice(&spec_bytes).map_err(|e| Status::internal(format!("parse config.json: {e}")))?;
            let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
            let (ctx2, cg) = (ctx.clone(), c.cgroup_path.clone());
            tokio::task::spawn_blocking(move || ctx2.cgroups.create_with(&cg, resources.as_ref()))
                .await
                .map_err(join_error)?
                .status("create the container cgroup")?;
            let (ctx2, cg) = (ctx.clone(), c.cgroup_path.clone());
            rb.push_blocking("container cgroup", move || {
                let _ = ctx2.cgroups.kill_all(&cg);
                ctx2.cgroups.remove(&cg).map_err(|e| e.to_string())
            });
            crate::failpoint::check("start:after_cgroup")?;

            let log_path = (!c.log_path.is_empty()).then(|| PathBuf::from(&c.log_path));
            if let Some(dir) = log_path.as_ref().and_then(|p| p.parent()) {
                std::fs::create_dir_all(dir).map_err(|e| Status::internal(format!("create {}: {e}", dir.display())))?;
            }
            let mut mc = MonitorConfig::new(&cdir, &c.id, log_path);
            mc.tty = c.config.tty;
            mc.stdin = c.config.stdin;
            mc.stdin_once = c.config.stdin_once;
            // A fresh start: no exit record of an earlier life may linger.
            let _ = std::fs::remove_file(&mc.exit_record_path);
            mc.write(&cdir).map_err(|e| Status::internal(format!("write monitor.json: {e}")))?;
            let (bin, dir) = (ctx.monitor_path.clone(), cdir.clone());
            tokio::task::spawn_blocking(move || monitor::spawn(&bin, &dir))
                .await
                .map_err(join_error)?
                .map_err(|e| monitor_status(e, "start the container"))
        }
        .await;
        match result {
            Ok(started) => {
                rb.commit();
                c.state = ContainerState::Running;
                c.pid = Some(started.pid);
                c.monitor_pid = Some(started.monitor_pid);
                c.started_at = now_nanos();
                ctx.container_store.save(&c.id, &*c).status("persist the container")?;
                tracing::info!(pid = started.pid, "container started");
                ctx.events.emit(&c.id, &c.pod_id, ContainerEventType::ContainerStartedEvent);
                Ok(())
            }
            Err(status) => {
                let failed = rb.run().await;
                // The container is done: it never ran. Its status says why.
                c.state = ContainerState::Exited;
                c.exit_code = 128;
                c.reason = "StartError".into();
                c.message = status.message().to_owned();
                c.finished_at = now_nanos();
                c.started_at = c.finished_at;
                if !failed.is_empty() {
                    c.error = Some(format!("cleanup after the failed start incomplete: {}", failed.join("; ")));
                }
                let _ = ctx.container_store.save(&c.id, &*c);
                tracing::info!(error = %status.message(), "container start failed");
                ctx.events.emit(&c.id, &c.pod_id, ContainerEventType::ContainerStoppedEvent);
                Err(status)
            }
        }
    }
}
