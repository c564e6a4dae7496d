//! GetContainerEvents: a stream of container and pod sandbox life-cycle events (created,
//! started, stopped, deleted), each with the pod's status and its containers' statuses, as the
//! kubelet's evented PLEG expects.
//!
//! Emitters push (id, pod id, type) into one queue; a single task turns them, in order, into
//! full events and broadcasts them to every subscriber. Nothing is built while nobody listens.

use std::sync::Arc;

use futures::StreamExt;
use proto::cri::{ContainerEventResponse, ContainerEventType};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::BroadcastStream;
use tonic::Status;

use super::container::container_status;
use super::pod::pod_status;
use super::EventStream;
use crate::context::Context;
use crate::store::{now_nanos, Lookup};

/// Events a slow subscriber may fall behind by before it misses some.
const BACKLOG: usize = 1024;

struct Pending {
    id: String,
    pod_id: String,
    kind: ContainerEventType,
    at: i64,
}

/// The event hub kept in the [`Context`].
pub struct Events {
    queue: mpsc::UnboundedSender<Pending>,
    queue_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Pending>>>,
    tx: broadcast::Sender<ContainerEventResponse>,
}

impl Default for Events {
    fn default() -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let (tx, _) = broadcast::channel(BACKLOG);
        Self { queue, queue_rx: std::sync::Mutex::new(Some(rx)), tx }
    }
}

impl Events {
    /// Records an event of container (or pod sandbox) `id` of pod `pod_id`.
    pub fn emit(&self, id: &str, pod_id: &str, kind: ContainerEventType) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let _ = self.queue.send(Pending { id: id.to_owned(), pod_id: pod_id.to_owned(), kind, at: now_nanos() });
    }

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

/// Starts the task that completes and broadcasts the queued events.
pub(crate) fn spawn_event_task(ctx: Arc<Context>) {
    let rx = ctx.events.queue_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(mut rx) = rx else { return };
    tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            let pod_sandbox_status = match ctx.pods.lookup(&p.pod_id) {
                Lookup::Found(pod) => Some(pod_status(&pod.get())),
                _ => None,
            };
            let mut containers_statuses = Vec::new();
            for (_, c) in ctx.containers.all() {
                if let Some(st) = c.read(|c| (c.pod_id == p.pod_id).then(|| container_status(c))) {
                    containers_statuses.push(st);
                }
            }
            let _ = ctx.events.tx.send(ContainerEventResponse {
                container_id: p.id,
                container_event_type: p.kind as i32,
                created_at: p.at,
                pod_sandbox_status,
                containers_statuses,
            });
        }
    });
}
