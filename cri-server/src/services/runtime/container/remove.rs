//! RemoveContainer: stop, unmount, cgroup, writable layer, state dir, record.

use std::sync::Arc;
use std::time::Duration;

use proto::cri::*;
use tokio::sync::Mutex;
use tonic::Status;
use tracing::Instrument;

use super::exit::release_runtime_resources;
use super::stop::stop_container;
use crate::context::Context;
use crate::error::StatusExt;
use crate::services::runtime::RuntimeSvc;
use crate::store::ContainerRecord;

impl RuntimeSvc {
    pub(in crate::services::runtime) async fn remove_container_impl(
        &self,
        req: RemoveContainerRequest,
    ) -> Result<RemoveContainerResponse, Status> {
        let Some(entry) = self.find_container(&req.container_id)? else {
            return Ok(RemoveContainerResponse {});
        };
        let id = entry.lock().await.id.clone();
        let span = tracing::info_span!("remove_container", container_id = %id);
        remove_container(&self.ctx, &entry).instrument(span).await?;
        Ok(RemoveContainerResponse {})
    }

    /// Removes every container of a pod.
    pub(in crate::services::runtime) async fn remove_pod_containers(&self, pod_id: &str) -> Result<(), Status> {
        for (_, c) in self.ctx.containers.all() {
            if c.lock().await.pod_id == pod_id {
                remove_container(&self.ctx, &c).await?;
            }
        }
        Ok(())
    }
}

/// Removes a container: kills it if it runs, unmounts, removes its cgroup, writable layer,
/// state dir and record. Idempotent.
pub(crate) async fn remove_container(ctx: &Arc<Context>, entry: &Arc<Mutex<ContainerRecord>>) -> Result<(), Status> {
    stop_container(ctx, entry, Duration::ZERO).await?;
    let mut c = entry.lock().await;
    if ctx.containers.lookup(&c.id).is_not_found() {
        return Ok(());
    }
    release_runtime_resources(ctx, &mut c).await;
    let mut failed: Vec<String> = c.error.take().into_iter().collect();
    if let Err(e) = ctx.images.release_rootfs(&c.id).await {
        failed.push(format!("writable layer: {e}"));
    }
    let cdir = ctx.container_dir(&c.id);
    if let Err(e) = std::fs::remove_dir_all(&cdir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            failed.push(format!("{}: {e}", cdir.display()));
        }
    }
    if !failed.is_empty() {
        c.error = Some(format!("removal incomplete: {}", failed.join("; ")));
        let _ = ctx.container_store.save(&c.id, &*c);
        return Err(Status::internal(format!("cannot remove container {}: {}", c.id, failed.join("; "))));
    }
    ctx.container_store.remove(&c.id).status("delete the container record")?;
    ctx.containers.remove(&c.id);
    ctx.containers.release(&c.name, &c.id);
    tracing::info!(container_id = %c.id, "container removed");
    ctx.events.emit(&c.id, &c.pod_id, ContainerEventType::ContainerDeletedEvent);
    Ok(())
}
