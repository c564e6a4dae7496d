//! ContainerStatus, and the CRI status of a record (also used by the events).

use proto::cri::*;
use tonic::Status;

use super::container_state;
use super::exit::refresh;
use crate::services::runtime::RuntimeSvc;
use crate::store::ContainerRecord;

impl RuntimeSvc {
    pub(in crate::services::runtime) async fn container_status_impl(
        &self,
        req: ContainerStatusRequest,
    ) -> Result<ContainerStatusResponse, Status> {
        let entry = self.container_or_not_found(&req.container_id)?;
        let c = refresh(&self.ctx, &entry).await;
        let status = container_status(&c);
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let spec_path = self.ctx.container_dir(&c.id).join("config.json");
            let spec: Option<serde_json::Value> = tokio::task::spawn_blocking(move || std::fs::read(spec_path))
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|b| serde_json::from_slice(&b).ok());
            let v = serde_json::json!({
                "pid": c.pid.unwrap_or(0),
                "monitorPid": c.monitor_pid,
                "sandboxID": c.pod_id,
                "cgroupPath": c.cgroup_path,
                "imageID": c.image_id,
                "error": c.error,
                // The long operation under way (Starting, Stopping, Removing…), if any.
                "transition": entry.transition().map(|t| format!("{t:?}")),
                "config": c.config,
                "runtimeSpec": spec,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(ContainerStatusResponse { status: Some(status), info })
    }
}

pub(crate) fn container_status(c: &ContainerRecord) -> proto::cri::ContainerStatus {
    proto::cri::ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: container_state(c.state) as i32,
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: Some(image_spec(c)),
        image_ref: c.image_ref.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: c.log_path.clone(),
        resources: c
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|r| ContainerResources { linux: Some(r), windows: None }),
        image_id: c.image_id.clone(),
        stop_signal: crate::spec::signal::to_cri(c.stop_signal),
        user: c.user.as_ref().map(|u| ContainerUser {
            linux: Some(LinuxContainerUser {
                uid: u.uid as i64,
                gid: u.gid as i64,
                supplemental_groups: u.supplemental_groups.iter().map(|g| *g as i64).collect(),
            }),
        }),
    }
}

/// The image as the container's config named it (with its annotations), as containerd reports it.
pub(super) fn image_spec(c: &ContainerRecord) -> ImageSpec {
    let mut spec = c.config.image.clone().unwrap_or_default();
    spec.image = c.image.clone();
    if spec.user_specified_image.is_empty() {
        spec.user_specified_image = c.image.clone();
    }
    spec
}
