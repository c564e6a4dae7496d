//! Unit tests of the services on [`Context::for_tests`]: the RPCs as the kubelet calls them,
//! on fakes of the image store, cgroups, pod setup, monitors and network (`crate::testing`), so
//! they need neither root nor the kernel pieces. One module per RPC group; the integration
//! tests in `tests/` run the same RPCs on the real daemon.

mod containers;
mod errors;
mod images;
mod pods;
mod restart;
mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proto::cri::runtime_service_server::RuntimeService;
use proto::cri::*;
use tonic::{Code, Request, Status};

use super::image::ImageSvc;
use super::runtime::RuntimeSvc;
use crate::context::Context;
use crate::testing::Fakes;

pub(super) const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
pub(super) const NGINX: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-2";

/// A service pair on fakes, in a temporary directory.
pub(super) struct Node {
    pub ctx: Arc<Context>,
    pub fakes: Fakes,
    pub rt: RuntimeSvc,
    pub img: ImageSvc,
    pub dir: Arc<tempfile::TempDir>,
}

impl Node {
    /// With busybox (`sh`, root) and nginx (user `app`) pulled.
    pub fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, fakes) = Context::for_tests(dir.path());
        let ctx = Arc::new(ctx);
        fakes.images.add(BUSYBOX, serde_json::json!({"config": {"Cmd": ["sh"]}}));
        fakes.images.add(
            NGINX,
            serde_json::json!({"config": {"Entrypoint": ["/nginx"], "User": "app", "StopSignal": "SIGQUIT"}}),
        );
        let rt = RuntimeSvc::new(ctx.clone());
        let img = ImageSvc::new(ctx.images.clone());
        Node { ctx, fakes, rt, img, dir: Arc::new(dir) }
    }

    /// skiffd started again on the same directory and "host" (the fakes), after recovery.
    /// Run the first life on a runtime of its own and drop it first, so that none of its tasks
    /// (exit watchers) outlives it.
    pub async fn restart(self) -> Node {
        let ctx = Arc::new(Context::for_tests_with(self.dir.path(), &self.fakes));
        crate::recovery::recover(&ctx).await.unwrap();
        let rt = RuntimeSvc::new(ctx.clone());
        let img = ImageSvc::new(ctx.images.clone());
        Node { ctx, fakes: self.fakes, rt, img, dir: self.dir }
    }

    pub async fn run_pod(&self, name: &str) -> String {
        self.run_pod_with(pod_config(name)).await.unwrap()
    }

    pub async fn run_pod_with(&self, config: PodSandboxConfig) -> Result<String, Status> {
        let req = RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
        Ok(self.rt.run_pod_sandbox(Request::new(req)).await?.into_inner().pod_sandbox_id)
    }

    pub async fn pod_status(&self, id: &str) -> Result<PodSandboxStatus, Status> {
        let req = PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false };
        Ok(self.rt.pod_sandbox_status(Request::new(req)).await?.into_inner().status.unwrap())
    }

    pub async fn stop_pod(&self, id: &str) -> Result<(), Status> {
        self.rt.stop_pod_sandbox(Request::new(StopPodSandboxRequest { pod_sandbox_id: id.into() })).await.map(drop)
    }

    /// RemovePodSandbox, then waits (at most 5 s) for the end of the removal that it leaves to
    /// the background (the pod's record deleted, or the pod back in the index after a failed
    /// end), so that tests see the end state.
    pub async fn remove_pod(&self, id: &str) -> Result<(), Status> {
        let entry = match self.ctx.pods.lookup(id) {
            crate::store::table::Lookup::Found(e) => Some(e),
            _ => None,
        };
        self.rt.remove_pod_sandbox(Request::new(RemovePodSandboxRequest { pod_sandbox_id: id.into() })).await?;
        let Some(entry) = entry else { return Ok(()) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline
            && !entry.is_removed()
            && !matches!(self.ctx.pods.lookup(id), crate::store::table::Lookup::Found(_))
        {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        Ok(())
    }

    pub async fn list_pods(&self, filter: PodSandboxFilter) -> Vec<PodSandbox> {
        let req = ListPodSandboxRequest { filter: Some(filter) };
        self.rt.list_pod_sandbox(Request::new(req)).await.unwrap().into_inner().items
    }

    pub async fn create(&self, pod: &str, name: &str, image: &str) -> Result<String, Status> {
        self.create_with(pod, container_config(name, image)).await
    }

    pub async fn create_with(&self, pod: &str, config: ContainerConfig) -> Result<String, Status> {
        let sandbox = self.ctx.pods.lookup(pod);
        let sandbox_config = match sandbox {
            crate::store::Lookup::Found(p) => Some(p.get().config),
            _ => Some(pod_config("unknown")),
        };
        let req = CreateContainerRequest { pod_sandbox_id: pod.into(), config: Some(config), sandbox_config };
        Ok(self.rt.create_container(Request::new(req)).await?.into_inner().container_id)
    }

    pub async fn start(&self, id: &str) -> Result<(), Status> {
        self.rt.start_container(Request::new(StartContainerRequest { container_id: id.into() })).await.map(drop)
    }

    /// A pod with one running busybox container: (pod, container).
    pub async fn running(&self, name: &str) -> (String, String) {
        let pod = self.run_pod(name).await;
        let c = self.create(&pod, "main", BUSYBOX).await.unwrap();
        self.start(&c).await.unwrap();
        (pod, c)
    }

    pub async fn stop(&self, id: &str, timeout: i64) -> Result<(), Status> {
        self.rt.stop_container(Request::new(StopContainerRequest { container_id: id.into(), timeout })).await.map(drop)
    }

    pub async fn remove(&self, id: &str) -> Result<(), Status> {
        self.rt.remove_container(Request::new(RemoveContainerRequest { container_id: id.into() })).await.map(drop)
    }

    pub async fn status(&self, id: &str) -> Result<ContainerStatus, Status> {
        let req = ContainerStatusRequest { container_id: id.into(), verbose: false };
        Ok(self.rt.container_status(Request::new(req)).await?.into_inner().status.unwrap())
    }

    pub async fn list(&self, filter: ContainerFilter) -> Vec<Container> {
        let req = ListContainersRequest { filter: Some(filter) };
        self.rt.list_containers(Request::new(req)).await.unwrap().into_inner().containers
    }

    /// Waits (at most 5 s) for a container to reach `state`; returns its status.
    pub async fn wait_state(&self, id: &str, state: ContainerState) -> ContainerStatus {
        for _ in 0..500 {
            let s = self.status(id).await.unwrap();
            if s.state == state as i32 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("container {id} never reached {state:?}");
    }

    /// Waits (at most 5 s) for `cond`.
    pub async fn eventually(&self, what: &str, cond: impl Fn() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    /// A container's entry in the table.
    pub fn entry(&self, id: &str) -> crate::services::runtime::container::ContainerEntry {
        crate::services::runtime::container::container_or_not_found(&self.ctx, id).unwrap()
    }

    /// The pod's cgroup (`/skiff/<id>` with the default parent).
    pub fn pod_cgroup(&self, pod: &str) -> String {
        format!("{}/{pod}", self.ctx.config.runtime.default_cgroup_parent.trim_end_matches('/'))
    }
}

/// A multi-threaded runtime, for the tests that span two lives of skiffd.
pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

pub(super) fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        ..Default::default()
    }
}

pub(super) fn container_config(name: &str, image: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: image.into(), ..Default::default() }),
        labels: HashMap::from([("container".to_string(), name.to_string())]),
        ..Default::default()
    }
}

pub(super) fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    r.expect_err("an error").code()
}
