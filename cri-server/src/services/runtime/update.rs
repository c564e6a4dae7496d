//! UpdateContainerResources: new CPU, memory, pids and hugepage limits for a container, applied
//! to its cgroup when it runs and kept in its spec and record for later starts. Runs in a task
//! of its own holding the container's Updating transition.

use proto::cri::{UpdateContainerResourcesRequest, UpdateContainerResourcesResponse};
use tonic::Status;
use tracing::Instrument;

use super::container::{container_not_found, container_or_not_found, detached, refresh};
use super::RuntimeSvc;
use crate::error::{from_kind, join_error, StatusExt};
use crate::store::{ContainerState, Mode, Transition};

impl RuntimeSvc {
    pub(super) async fn update_container_resources_impl(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> Result<UpdateContainerResourcesResponse, Status> {
        let ctx = self.ctx.clone();
        detached(async move {
            let entry = container_or_not_found(&ctx, &req.container_id)?;
            let Some(linux) = req.linux else {
                return Ok(UpdateContainerResourcesResponse {});
            };
            let id = entry.get().id;
            let span = tracing::info_span!("update_container_resources", container_id = %id);
            async {
                let _t =
                    entry.begin(Transition::Updating, Mode::Exclusive).await.map_err(|_| container_not_found(&id))?;
                let c = refresh(&ctx, &entry).await;
                if matches!(c.state, ContainerState::Exited | ContainerState::Unknown) {
                    return Err(Status::failed_precondition(format!("container {} is not running", c.id)));
                }
                // The effective resources: the update's fields over the ones in force.
                let effective = crate::validate::merge_resources(
                    c.config.linux.as_ref().and_then(|l| l.resources.as_ref()),
                    &linux,
                );
                crate::validate::check_resources("linux", &effective)?;
                let new = crate::spec::resources_from_cri(&effective)
                    .map_err(|e| from_kind(e.kind(), format!("resources: {e}")))?;

                // The spec keeps its device rules; the limits are replaced. A CREATED
                // container whose volatile state dir did not survive a reboot has no spec (its
                // pod is NOTREADY, so it never starts): only its record takes the update.
                let spec_path = ctx.container_dir(&c.id).join("config.json");
                let p = spec_path.clone();
                let bytes = match tokio::task::spawn_blocking(move || std::fs::read(p)).await.map_err(join_error)? {
                    Ok(bytes) => Some(bytes),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && c.state == ContainerState::Created => None,
                    Err(e) => return Err(Status::internal(format!("read config.json: {e}"))),
                };
                if let Some(bytes) = bytes {
                    let mut spec: oci_spec::runtime::Spec = serde_json::from_slice(&bytes)
                        .map_err(|e| Status::internal(format!("parse config.json: {e}")))?;
                    if let Some(l) = spec.linux_mut() {
                        let mut merged = l.resources().clone().unwrap_or_default();
                        merged.set_cpu(new.cpu().clone());
                        merged.set_memory(*new.memory());
                        merged.set_pids(*new.pids());
                        merged.set_hugepage_limits(new.hugepage_limits().clone());
                        merged.set_unified(new.unified().clone());
                        l.set_resources(Some(merged));
                    }

                    if c.state == ContainerState::Running {
                        let (ctx, cg, res) = (ctx.clone(), c.cgroup_path.clone(), new.clone());
                        tokio::task::spawn_blocking(move || ctx.cgroups.apply(&cg, &res))
                            .await
                            .map_err(join_error)?
                            .status("apply the resources")?;
                    }
                    let bytes = serde_json::to_vec_pretty(&spec)
                        .map_err(|e| Status::internal(format!("encode config.json: {e}")))?;
                    // config.json is in the volatile state dir: replaced, not fsynced.
                    tokio::task::spawn_blocking(move || runtime::util::write_replace(&spec_path, &bytes, 0o600))
                        .await
                        .map_err(join_error)?
                        .map_err(|e| Status::internal(format!("write config.json: {e}")))?;
                }
                entry.update(|r| r.config.linux.get_or_insert_with(Default::default).resources = Some(effective));
                ctx.container_store.save_entry(&c.id, &entry).await.status("persist the container")?;
                tracing::info!("container resources updated");
                Ok(())
            }
            .instrument(span)
            .await?;
            Ok(UpdateContainerResourcesResponse {})
        })
        .await
    }
}
