//! The streaming list RPCs of CRI 1.36: StreamPodSandboxes, StreamContainers,
//! StreamContainerStats and StreamPodSandboxStats answer what their List* RPC answers, in
//! messages of at most [`CHUNK`] items, so that a node with many pods never hits the gRPC
//! message size limit (the reason the kubelet moves to them). An empty list sends no message.

use std::pin::Pin;

use futures::Stream;
use proto::cri::*;
use tonic::Status;

use super::RuntimeSvc;

/// Items per streamed message.
pub(crate) const CHUNK: usize = 100;

/// A server-streaming response.
pub(crate) type ListStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// `items` as a stream of messages of at most [`CHUNK`] items each.
pub(crate) fn chunked<I: Send + 'static, T: Send + 'static>(
    items: Vec<I>,
    wrap: impl Fn(Vec<I>) -> T + Send + 'static,
) -> ListStream<T> {
    let mut chunks = Vec::with_capacity(items.len().div_ceil(CHUNK));
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        chunks.push(Ok(wrap(it.by_ref().take(CHUNK).collect())));
    }
    Box::pin(futures::stream::iter(chunks))
}

impl RuntimeSvc {
    pub(super) async fn stream_pod_sandboxes_impl(
        &self,
        req: StreamPodSandboxesRequest,
    ) -> Result<ListStream<StreamPodSandboxesResponse>, Status> {
        let list = self.list_pod_sandbox_impl(ListPodSandboxRequest { filter: req.filter }).await?;
        Ok(chunked(list.items, |pod_sandboxes| StreamPodSandboxesResponse { pod_sandboxes }))
    }

    pub(super) async fn stream_containers_impl(
        &self,
        req: StreamContainersRequest,
    ) -> Result<ListStream<StreamContainersResponse>, Status> {
        let list = self.list_containers_impl(ListContainersRequest { filter: req.filter }).await?;
        Ok(chunked(list.containers, |containers| StreamContainersResponse { containers }))
    }

    pub(super) async fn stream_container_stats_impl(
        &self,
        req: StreamContainerStatsRequest,
    ) -> Result<ListStream<StreamContainerStatsResponse>, Status> {
        let list = self.list_container_stats_impl(ListContainerStatsRequest { filter: req.filter }).await?;
        Ok(chunked(list.stats, |container_stats| StreamContainerStatsResponse { container_stats }))
    }

    pub(super) async fn stream_pod_sandbox_stats_impl(
        &self,
        req: StreamPodSandboxStatsRequest,
    ) -> Result<ListStream<StreamPodSandboxStatsResponse>, Status> {
        let list = self.list_pod_sandbox_stats_impl(ListPodSandboxStatsRequest { filter: req.filter }).await?;
        Ok(chunked(list.stats, |pod_sandbox_stats| StreamPodSandboxStatsResponse { pod_sandbox_stats }))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn chunks_hold_every_item_in_order() {
        for n in [0usize, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
            let items: Vec<usize> = (0..n).collect();
            let msgs: Vec<Vec<usize>> = chunked(items.clone(), |v| v).map(|r| r.unwrap()).collect().await;
            assert_eq!(msgs.len(), n.div_ceil(CHUNK), "n={n}");
            assert!(msgs.iter().all(|m| !m.is_empty() && m.len() <= CHUNK));
            assert_eq!(msgs.concat(), items);
        }
    }
}
