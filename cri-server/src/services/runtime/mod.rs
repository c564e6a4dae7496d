//! CRI RuntimeService. The trait implementation here only dispatches; each RPC group lives in
//! its own module (`status`: Version/Status/RuntimeConfig; later pods, containers, exec, stats).

pub(crate) mod container;
pub(crate) mod events;
mod exec;
mod filter;
mod metrics;
mod pod;
pub(crate) mod pod_extras;
mod pod_resize;
mod stats;
mod status;
mod streaming;
mod streams;
mod update;

use std::pin::Pin;
use std::sync::Arc;

use proto::cri::runtime_service_server::RuntimeService;
use proto::cri::*;
use tonic::{Request, Response, Status};

use crate::context::Context;
use crate::error::unimplemented;
use crate::validate;

pub use status::{JOURNAL_UNUSABLE, RUNTIME_NAME};
pub(crate) use streams::{chunked, ListStream};

/// Starts the daemon's background work (noticing container exits).
pub fn start_background(ctx: Arc<Context>) {
    container::spawn_exit_sweeper(ctx);
}

/// Serves the CRI RuntimeService.
pub struct RuntimeSvc {
    ctx: Arc<Context>,
    cpu_samples: Arc<stats::CpuSamples>,
    fs_cache: Arc<metrics::FsUsageCache>,
}

impl RuntimeSvc {
    pub fn new(ctx: Arc<Context>) -> Self {
        validate::init_host_limits();
        let fs_cache: Arc<metrics::FsUsageCache> = Arc::default();
        fs_cache.spawn_refresher(&ctx);
        Self { ctx, cpu_samples: Arc::default(), fs_cache }
    }
}

pub(crate) type EventStream =
    Pin<Box<dyn futures::Stream<Item = Result<ContainerEventResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RuntimeService for RuntimeSvc {
    async fn version(&self, _r: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(self.version_impl()))
    }

    async fn status(&self, r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.status_impl(r.into_inner()).await.map(Response::new)
    }

    async fn runtime_config(
        &self,
        _r: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        Ok(Response::new(self.runtime_config_impl()))
    }

    async fn update_runtime_config(
        &self,
        r: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        validate::update_runtime_config(r.get_ref())?;
        self.update_runtime_config_impl(r.into_inner()).await?;
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _r: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Ok(Response::new(self.ctx.events.subscribe()))
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        validate::run_pod_sandbox(r.get_ref())?;
        self.run_pod_sandbox_impl(r.into_inner()).await.map(Response::new)
    }
    async fn stop_pod_sandbox(
        &self,
        r: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        validate::pod_id(&r.get_ref().pod_sandbox_id)?;
        self.stop_pod_sandbox_impl(r.into_inner()).await.map(Response::new)
    }
    async fn remove_pod_sandbox(
        &self,
        r: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        validate::pod_id(&r.get_ref().pod_sandbox_id)?;
        self.remove_pod_sandbox_impl(r.into_inner()).await.map(Response::new)
    }
    async fn pod_sandbox_status(
        &self,
        r: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        validate::pod_id(&r.get_ref().pod_sandbox_id)?;
        self.pod_sandbox_status_impl(r.into_inner()).await.map(Response::new)
    }
    async fn list_pod_sandbox(
        &self,
        r: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        validate::list_pod_sandbox(r.get_ref())?;
        self.list_pod_sandbox_impl(r.into_inner()).await.map(Response::new)
    }
    async fn create_container(
        &self,
        r: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        validate::create_container(&self.ctx, r.get_ref()).await?;
        self.create_container_impl(r.into_inner()).await.map(Response::new)
    }
    async fn start_container(
        &self,
        r: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        validate::container_id(&r.get_ref().container_id)?;
        self.start_container_impl(r.into_inner()).await.map(Response::new)
    }
    async fn stop_container(
        &self,
        r: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        validate::container_id(&r.get_ref().container_id)?;
        self.stop_container_impl(r.into_inner()).await.map(Response::new)
    }
    async fn remove_container(
        &self,
        r: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        validate::container_id(&r.get_ref().container_id)?;
        self.remove_container_impl(r.into_inner()).await.map(Response::new)
    }
    async fn list_containers(
        &self,
        r: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        validate::list_containers(r.get_ref())?;
        self.list_containers_impl(r.into_inner()).await.map(Response::new)
    }
    async fn container_status(
        &self,
        r: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        validate::container_id(&r.get_ref().container_id)?;
        self.container_status_impl(r.into_inner()).await.map(Response::new)
    }
    async fn update_container_resources(
        &self,
        r: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        validate::update_container_resources(r.get_ref())?;
        self.update_container_resources_impl(r.into_inner()).await.map(Response::new)
    }
    async fn reopen_container_log(
        &self,
        r: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        validate::container_id(&r.get_ref().container_id)?;
        self.reopen_container_log_impl(r.into_inner()).await.map(Response::new)
    }
    async fn exec_sync(&self, r: Request<ExecSyncRequest>) -> Result<Response<ExecSyncResponse>, Status> {
        validate::exec_sync(r.get_ref())?;
        self.exec_sync_impl(r.into_inner()).await.map(Response::new)
    }
    async fn exec(&self, r: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        self.exec_impl(r.into_inner()).await.map(Response::new)
    }
    async fn attach(&self, r: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
        self.attach_impl(r.into_inner()).await.map(Response::new)
    }
    async fn port_forward(&self, r: Request<PortForwardRequest>) -> Result<Response<PortForwardResponse>, Status> {
        self.port_forward_impl(r.into_inner()).await.map(Response::new)
    }
    async fn container_stats(
        &self,
        r: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        validate::container_id(&r.get_ref().container_id)?;
        self.container_stats_impl(r.into_inner()).await.map(Response::new)
    }
    async fn list_container_stats(
        &self,
        r: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        validate::list_container_stats(r.get_ref())?;
        self.list_container_stats_impl(r.into_inner()).await.map(Response::new)
    }
    async fn pod_sandbox_stats(
        &self,
        r: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        validate::pod_id(&r.get_ref().pod_sandbox_id)?;
        self.pod_sandbox_stats_impl(r.into_inner()).await.map(Response::new)
    }
    async fn list_pod_sandbox_stats(
        &self,
        r: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        validate::list_pod_sandbox_stats(r.get_ref())?;
        self.list_pod_sandbox_stats_impl(r.into_inner()).await.map(Response::new)
    }
    async fn update_pod_sandbox_resources(
        &self,
        r: Request<UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<UpdatePodSandboxResourcesResponse>, Status> {
        self.update_pod_sandbox_resources_impl(r.into_inner()).await.map(Response::new)
    }

    type StreamPodSandboxesStream = streams::ListStream<StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        r: Request<StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        self.stream_pod_sandboxes_impl(r.into_inner()).await.map(Response::new)
    }
    type StreamContainersStream = streams::ListStream<StreamContainersResponse>;
    async fn stream_containers(
        &self,
        r: Request<StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        self.stream_containers_impl(r.into_inner()).await.map(Response::new)
    }
    type StreamContainerStatsStream = streams::ListStream<StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        r: Request<StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        self.stream_container_stats_impl(r.into_inner()).await.map(Response::new)
    }
    type StreamPodSandboxStatsStream = streams::ListStream<StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        r: Request<StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        self.stream_pod_sandbox_stats_impl(r.into_inner()).await.map(Response::new)
    }
    type StreamPodSandboxMetricsStream = streams::ListStream<StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        _r: Request<StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        self.stream_pod_sandbox_metrics_impl().await.map(Response::new)
    }

    async fn checkpoint_container(
        &self,
        _r: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        Err(unimplemented("CheckpointContainer"))
    }
    async fn list_metric_descriptors(
        &self,
        _r: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(ListMetricDescriptorsResponse { descriptors: metrics::descriptors() }))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        self.list_pod_sandbox_metrics_impl().await.map(Response::new)
    }
}
