//! GetContainerEvents: a stream of container and pod sandbox life-cycle events (created,
//! started, stopped, deleted), each with the pod's status and its containers' statuses, as the
//! kubelet's evented PLEG expects.
//!
//! [`emit`] captures those statuses at the transition itself (copies taken under the records'
//! short locks, no waiting) and broadcasts the event to every subscriber; nothing is built
//! while nobody listens.

use futures::StreamExt;
use proto::cri::{ContainerEventResponse, ContainerEventType};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tonic::Status;

use super::container::container_status;
use super::pod::pod_status;
use super::EventStream;
use crate::context::Context;
use crate::store::{now_nanos, Lookup};

/// Events a slow subscriber may fall behind by before it misses some.
const BACKLOG: usize = 1024;

/// The event hub kept in the [`Context`].
pub struct Events {
    tx: broadcast::Sender<ContainerEventResponse>,
}

impl Default for Events {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(BACKLOG);
        Self { tx }
    }
}

impl Events {
    /// A new subscriber's stream.
    pub fn subscribe(&self) -> EventStream {
        let stream = BroadcastStream::new(self.tx.subscribe()).filter_map(|r| async move {
            match r {
                Ok(ev) => Some(Ok::<_, Status>(ev)),
                Err(e) => {
                    tracing::warn!(error = %e, "a container event subscriber fell behind");
                    None
                }
            }
        });
        Box::pin(stream)
    }
}

/// Records an event of container (or pod sandbox) `id` of pod `pod_id`, with the pod's status
/// and its containers' statuses as they are now.
pub(crate) fn emit(ctx: &Context, id: &str, pod_id: &str, kind: ContainerEventType) {
    if ctx.events.tx.receiver_count() == 0 {
        return;
    }
    let pod_sandbox_status = match ctx.pods.lookup(pod_id) {
        Lookup::Found(pod) => Some(pod.read(pod_status)),
        _ => None,
    };
    let mut containers_statuses = Vec::new();
    for (_, c) in ctx.containers.all() {
        if let Some(st) = c.read(|c| (c.pod_id == pod_id).then(|| container_status(c))) {
            containers_statuses.push(st);
        }
    }
    let _ = ctx.events.tx.send(ContainerEventResponse {
        container_id: id.to_owned(),
        container_event_type: kind as i32,
        created_at: now_nanos(),
        pod_sandbox_status,
        containers_statuses,
    });
}
