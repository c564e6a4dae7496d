//! RemoveContainer: stop, unmount, cgroup, writable layer, state dir, record (the two
//! directories deleted after the answer; see [`remove_container`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::cri::*;
use tonic::Status;
use tracing::Instrument;

use super::exit::release_runtime_resources;
use super::stop::stop_running;
use super::{detached, find_container, spawn_background_blocking, spawn_low_priority, ContainerEntry};
use crate::context::Context;
use crate::error::StatusExt;
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
///
/// It answers once the removal is durable: the rootfs unmounted (at the exit already, again
/// here), the writable layer and the state dir renamed out of the way (the layer to
/// `ROOT/containers/.del-*`, which also drops the image hold, the state dir to `STATE/trash/`;
/// renames are atomic and cheap) and the record deleted (fsynced), all three on one thread of
/// the blocking pool, which then hands the two renamed trees to a background deletion (a
/// graceful shutdown waits for it); what a crash or a failed deletion leaves is swept at the next start
/// ([`sweep_trash`], and the image store's own sweep of `.del-*`). The renames need no fsync: a
/// state dir lives on a tmpfs (or is swept, being in `STATE/trash/`), and a layer whose rename
/// a power loss undid has a hold without a container, which recovery releases.
pub(crate) async fn remove_container(ctx: &Arc<Context>, entry: &ContainerEntry) -> Result<(), Status> {
    let Ok(_t) = entry.begin(Transition::Removing, Mode::Exclusive).await else { return Ok(()) };
    stop_running(ctx, entry, Duration::ZERO).await?;
    crate::failpoint::delay("remove:before_release").await;
    let c = entry.get();
    // Released already by the cleanup after the exit, unless that failed or has not run.
    let failed: Vec<String> =
        if c.cleaned_up { Vec::new() } else { release_runtime_resources(ctx, &c).await.into_iter().collect() };
    if !failed.is_empty() {
        return Err(incomplete(ctx, entry, &c.id, failed).await);
    }
    // Only once the rootfs is unmounted (a deletion must never walk into a mount): on one
    // thread of the blocking pool, the layer and the state dir renamed away, then the record
    // deleted (durably); the answer goes out from there, and the two renamed trees are
    // deleted in the background.
    let (done_tx, done) = tokio::sync::oneshot::channel();
    {
        let (ctx, entry, id) = (ctx.clone(), entry.clone(), c.id.clone());
        let (cdir, tdir) = (ctx.container_dir(&id), ctx.trash_dir());
        spawn_background_blocking(move || {
            let mut trash = Vec::new();
            let mut failed = Vec::new();
            match ctx.images.retire_rootfs(&id) {
                Ok(p) => trash.extend(p),
                Err(e) => failed.push(format!("writable layer: {e}")),
            }
            match move_to_trash(&cdir, &tdir, &id) {
                Ok(p) => trash.extend(p),
                Err(e) => failed.push(e),
            }
            // Renamed already: deleted whether or not the record could be (a record left is
            // removed again, finding nothing to delete).
            let removed = failed.is_empty().then(|| ctx.container_store.remove_entry_blocking(&id, &entry));
            let _ = done_tx.send((failed, removed));
            // On a thread of the lowest priority: on this one, the deletion kept the CPU from
            // the async thread that the answer had just woken (0.3 ms later answers on 2 cores).
            if !trash.is_empty() {
                spawn_low_priority(move || {
                    for p in trash {
                        remove_tree(&p);
                    }
                });
            }
        });
    }
    let (failed, removed) = done.await.map_err(|_| Status::internal("the container's removal task ended early"))?;
    let Some(removed) = removed else { return Err(incomplete(ctx, entry, &c.id, failed).await) };
    removed.status("delete the container record")?;
    // The image store forgets the hold (journaled as removed with the rename) and collects
    // the snapshots it was the last user of (an image removed while the container held it);
    // a failure there is the garbage collector's, retried at its next run.
    if let Err(e) = ctx.images.forget_rootfs(&c.id).await {
        tracing::warn!(container_id = %c.id, error = %e, "image store: garbage collection after a removal failed");
    }
    ctx.containers.remove(&c.id);
    ctx.containers.names.release(&c.name, &c.id);
    tracing::info!(container_id = %c.id, "container removed");
    events::emit(ctx, &c.id, &c.pod_id, ContainerEventType::ContainerDeletedEvent);
    Ok(())
}

/// A removal that could not release everything: the container stays, its record saying what
/// is left (a later removal tries again).
async fn incomplete(ctx: &Arc<Context>, entry: &ContainerEntry, id: &str, failed: Vec<String>) -> Status {
    entry.update(|r| r.error = Some(format!("removal incomplete: {}", failed.join("; "))));
    let _ = ctx.container_store.save_entry(id, entry).await;
    Status::internal(format!("cannot remove container {id}: {}", failed.join("; ")))
}

/// Renames `cdir` to `STATE/trash/<id>-<pid>-<n>` (blocking); `None` when it does not exist.
fn move_to_trash(cdir: &Path, tdir: &Path, id: &str) -> Result<Option<PathBuf>, String> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    if !cdir.exists() {
        return Ok(None);
    }
    std::fs::create_dir_all(tdir).map_err(|e| format!("{}: {e}", tdir.display()))?;
    let dest = tdir.join(format!("{id}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    match std::fs::rename(cdir, &dest) {
        Ok(()) => Ok(Some(dest)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", cdir.display())),
    }
}

fn remove_tree(p: &Path) {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %p.display(), error = %e, "cannot delete a removed container's directory; retried at the next start");
        }
        _ => tracing::debug!(path = %p.display(), "removed container's directory deleted"),
    }
}

/// At startup (blocking): deletes what `STATE/trash/` still holds (a skiffd killed before its
/// background deletions ended, or a deletion that failed). Nothing in it is mounted: a state
/// dir is renamed there only after its rootfs was unmounted.
pub(crate) fn sweep_trash(tdir: &Path) {
    let Ok(rd) = std::fs::read_dir(tdir) else { return };
    for e in rd.flatten() {
        tracing::info!(path = %e.path().display(), "deleting a removed container's leftover state dir");
        remove_tree(&e.path());
    }
}
