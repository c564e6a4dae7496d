//! RemoveContainer: stop, unmount, cgroup, writable layer, state dir, record.

use std::sync::Arc;
use std::time::Duration;

use proto::cri::*;
use tonic::Status;
use tracing::Instrument;

use super::exit::release_runtime_resources;
use super::stop::stop_running;
use super::{detached, find_container, ContainerEntry};
use crate::context::Context;
use crate::error::{join_error, StatusExt};
use crate::services::runtime::events;
use crate::services::runtime::RuntimeSvc;
use crate::store::{Mode, Transition};

impl RuntimeSvc {
    pub(in crate::services::runtime) async fn remove_container_impl(
        &self,
        req: RemoveContainerRequest,
    ) -> Result<RemoveContainerResponse, Status> {
        let ctx = self.ctx.clone();
        detached(async move {
            let Some(entry) = find_container(&ctx, &req.container_id)? else {
                return Ok(RemoveContainerResponse {});
            };
            let span = tracing::info_span!("remove_container", container_id = %entry.get().id);
            remove_container(&ctx, &entry).instrument(span).await?;
            Ok(RemoveContainerResponse {})
        })
        .await
    }

    /// Removes every container of a pod.
    pub(in crate::services::runtime) async fn remove_pod_containers(&self, pod_id: &str) -> Result<(), Status> {
        for (_, c) in self.ctx.containers.all() {
            if c.read(|c| c.pod_id == pod_id) {
                remove_container(&self.ctx, &c).await?;
            }
        }
        Ok(())
    }
}

/// Removes a container: kills it if it runs, unmounts, removes its cgroup, writable layer,
/// state dir and record. Idempotent. Holds the container's Removing transition (waiting for
/// any other operation on it to end); once removed, nothing writes its record again and the
/// operations that waited for it find it gone.
pub(crate) async fn remove_container(ctx: &Arc<Context>, entry: &ContainerEntry) -> Result<(), Status> {
    let Ok(_t) = entry.begin(Transition::Removing, Mode::Exclusive).await else { return Ok(()) };
    stop_running(ctx, entry, Duration::ZERO).await?;
    crate::failpoint::delay("remove:before_release").await;
    let c = entry.get();
    let mut failed: Vec<String> = release_runtime_resources(ctx, &c).await.into_iter().collect();
    if let Err(e) = ctx.images.release_rootfs(&c.id).await {
        failed.push(format!("writable layer: {e}"));
    }
    let cdir = ctx.container_dir(&c.id);
    let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&cdir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("{}: {e}", cdir.display())),
        _ => Ok(()),
    })
    .await
    .map_err(join_error)?;
    failed.extend(removed.err());
    if !failed.is_empty() {
        entry.update(|r| r.error = Some(format!("removal incomplete: {}", failed.join("; "))));
        let _ = ctx.container_store.save_entry(&c.id, entry).await;
        return Err(Status::internal(format!("cannot remove container {}: {}", c.id, failed.join("; "))));
    }
    ctx.container_store.remove_entry(&c.id, entry).await.status("delete the container record")?;
    ctx.containers.remove(&c.id);
    ctx.containers.names.release(&c.name, &c.id);
    tracing::info!(container_id = %c.id, "container removed");
    events::emit(ctx, &c.id, &c.pod_id, ContainerEventType::ContainerDeletedEvent);
    Ok(())
}
