//! CRI RuntimeService. The trait implementation here only dispatches; each RPC group lives in
//! its own module (`status`: Version/Status/RuntimeConfig; later pods, containers, exec, stats).

pub(crate) mod container;
pub(crate) mod events;
mod exec;
mod pod;
pub(crate) mod pod_extras;
mod stats;
mod status;
mod update;

use std::pin::Pin;
use std::sync::Arc;

use proto::cri::runtime_service_server::RuntimeService;
use proto::cri::*;
use tonic::{Request, Response, Status};

use crate::context::Context;
use crate::error::unimplemented;

pub use status::RUNTIME_NAME;

/// Starts the daemon's background work (noticing container exits).
pub fn start_background(ctx: Arc<Context>) {
    container::spawn_exit_sweeper(ctx);
}

/// Serves the CRI RuntimeService.
pub struct RuntimeSvc {
    ctx: Arc<Context>,
    cpu_samples: stats::CpuSamples,
}

impl RuntimeSvc {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx, cpu_samples: stats::CpuSamples::default() }
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
        self.update_runtime_config_impl(r.into_inner());
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
        self.run_pod_sandbox_impl(r.into_inner()).await.map(Response::new)
    }
    async fn stop_pod_sandbox(
        &self,
        r: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        self.stop_pod_sandbox_impl(r.into_inner()).await.map(Response::new)
    }
    async fn remove_pod_sandbox(
        &self,
        r: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        self.remove_pod_sandbox_impl(r.into_inner()).await.map(Response::new)
    }
    async fn pod_sandbox_status(
        &self,
        r: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        self.pod_sandbox_status_impl(r.into_inner()).await.map(Response::new)
    }
    async fn list_pod_sandbox(
        &self,
        r: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        self.list_pod_sandbox_impl(r.into_inner()).await.map(Response::new)
    }
    async fn create_container(
        &self,
        r: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        self.create_container_impl(r.into_inner()).await.map(Response::new)
    }
    async fn start_container(
        &self,
        r: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        self.start_container_impl(r.into_inner()).await.map(Response::new)
    }
    async fn stop_container(
        &self,
        r: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        self.stop_container_impl(r.into_inner()).await.map(Response::new)
    }
    async fn remove_container(
        &self,
        r: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        self.remove_container_impl(r.into_inner()).await.map(Response::new)
    }
    async fn list_containers(
        &self,
        r: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        self.list_containers_impl(r.into_inner()).await.map(Response::new)
    }
    async fn container_status(
        &self,
        r: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        self.container_status_impl(r.into_inner()).await.map(Response::new)
    }
    async fn update_container_resources(
        &self,
        r: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        self.update_container_resources_impl(r.into_inner()).await.map(Response::new)
    }
    async fn reopen_container_log(
        &self,
        r: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        self.reopen_container_log_impl(r.into_inner()).await.map(Response::new)
    }
    async fn exec_sync(&self, r: Request<ExecSyncRequest>) -> Result<Response<ExecSyncResponse>, Status> {
        self.exec_sync_impl(r.into_inner()).await.map(Response::new)
    }
    async fn exec(&self, _r: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        Err(unimplemented("Exec"))
    }
    async fn attach(&self, _r: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
        Err(unimplemented("Attach"))
    }
    async fn port_forward(&self, _r: Request<PortForwardRequest>) -> Result<Response<PortForwardResponse>, Status> {
        Err(unimplemented("PortForward"))
    }
    async fn container_stats(
        &self,
        r: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        self.container_stats_impl(r.into_inner()).await.map(Response::new)
    }
    async fn list_container_stats(
        &self,
        r: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        self.list_container_stats_impl(r.into_inner()).await.map(Response::new)
    }
    async fn pod_sandbox_stats(
        &self,
        r: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        self.pod_sandbox_stats_impl(r.into_inner()).await.map(Response::new)
    }
    async fn list_pod_sandbox_stats(
        &self,
        r: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        self.list_pod_sandbox_stats_impl(r.into_inner()).await.map(Response::new)
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
        Err(unimplemented("ListMetricDescriptors"))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        Err(unimplemented("ListPodSandboxMetrics"))
    }
}
