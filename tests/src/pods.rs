//! Helpers for tests that run pods and containers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::{cri, Daemon};

/// The busybox test image, through the harness's registry mirror.
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
/// A web server on port 80 (the nginx test image).
pub const NGINX: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-2";

/// A pod config with a log directory inside the daemon's dir.
pub fn pod_config(d: &Daemon, name: &str) -> cri::PodSandboxConfig {
    let uid = format!("uid-{name}");
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata { name: name.into(), uid, namespace: "test".into(), attempt: 0 }),
        hostname: name.into(),
        log_directory: d.dir().join("logs").join(name).display().to_string(),
        labels: HashMap::from([("pod".into(), name.into())]),
        ..Default::default()
    }
}

/// `config.linux` of a pod with these namespace modes (e.g. the node's network).
pub fn pod_namespaces(ns: cri::NamespaceOption) -> Option<cri::LinuxPodSandboxConfig> {
    Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext { namespace_options: Some(ns), ..Default::default() }),
        ..Default::default()
    })
}

/// A container config running `cmd` in busybox, logging to `<name>.log`.
pub fn container_config(name: &str, cmd: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: BUSYBOX.into(), ..Default::default() }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        labels: HashMap::from([("container".into(), name.into())]),
        // As the kubelet sends it for pods that do not share their process namespace.
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Daemon {
    /// Pulls an image; panics on failure.
    pub async fn pull(&self, image: &str) -> String {
        self.images()
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("pull {image}: {e:?}"))
            .into_inner()
            .image_ref
    }

    /// Runs a pod; returns its ID.
    pub async fn run_pod(&self, config: &cri::PodSandboxConfig) -> String {
        self.runtime()
            .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
            .await
            .unwrap_or_else(|e| panic!("run pod: {e:?}"))
            .into_inner()
            .pod_sandbox_id
    }

    /// Creates a container (without starting it).
    pub async fn create(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.runtime()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    /// Creates and starts a container; panics on failure.
    pub async fn create_and_start(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let id = self.create(pod, pod_config, config).await.unwrap_or_else(|e| panic!("create: {e:?}"));
        self.runtime()
            .start_container(cri::StartContainerRequest { container_id: id.clone() })
            .await
            .unwrap_or_else(|e| panic!("start: {e:?}"));
        id
    }

    pub async fn container_status(&self, id: &str) -> cri::ContainerStatus {
        self.runtime()
            .container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: false })
            .await
            .unwrap_or_else(|e| panic!("status: {e:?}"))
            .into_inner()
            .status
            .unwrap()
    }

    /// Waits until the container has exited; returns its status.
    pub async fn wait_exited(&self, id: &str, within: Duration) -> cri::ContainerStatus {
        let deadline = Instant::now() + within;
        loop {
            let st = self.container_status(id).await;
            if st.state == cri::ContainerState::ContainerExited as i32 {
                return st;
            }
            assert!(Instant::now() < deadline, "container {id} still {:?} after {within:?}", st.state);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn exec(&self, id: &str, cmd: &[&str], timeout: i64) -> Result<cri::ExecSyncResponse, tonic::Status> {
        self.runtime()
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    /// The verbose `info` of ContainerStatus (pid, monitorPid, the OCI spec...).
    pub async fn container_info(&self, id: &str) -> serde_json::Value {
        let st = self
            .runtime()
            .container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: true })
            .await
            .unwrap()
            .into_inner();
        serde_json::from_str(&st.info["info"]).unwrap()
    }

    /// The IDs of the containers ListContainers answers with `filter`, sorted.
    pub async fn container_ids(&self, filter: Option<cri::ContainerFilter>) -> Vec<String> {
        let req = cri::ListContainersRequest { filter };
        let list = self.runtime().list_containers(req).await.unwrap().into_inner().containers;
        let mut ids: Vec<String> = list.into_iter().map(|c| c.id).collect();
        ids.sort();
        ids
    }

    /// The IDs of the pods ListPodSandbox answers with `filter`, sorted.
    pub async fn pod_ids(&self, filter: Option<cri::PodSandboxFilter>) -> Vec<String> {
        let list = self.runtime().list_pod_sandbox(cri::ListPodSandboxRequest { filter }).await.unwrap().into_inner();
        let mut ids: Vec<String> = list.items.into_iter().map(|p| p.id).collect();
        ids.sort();
        ids
    }

    /// The status of a pod (PodSandboxStatus, not verbose); panics on failure.
    pub async fn pod_status(&self, id: &str) -> cri::PodSandboxStatus {
        self.runtime()
            .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false })
            .await
            .unwrap_or_else(|e| panic!("pod status {id}: {e:?}"))
            .into_inner()
            .status
            .unwrap_or_else(|| panic!("pod status {id}: no status in the answer"))
    }

    /// The IP of a pod, "" when it has none (e.g. on the node's network).
    pub async fn pod_ip(&self, id: &str) -> String {
        self.pod_status(id).await.network.unwrap_or_default().ip
    }

    /// The verbose `info` of PodSandboxStatus (PID namespace holder, namespaces, `error`,
    /// `transition`...).
    pub async fn pod_info(&self, id: &str) -> serde_json::Value {
        let st = self
            .runtime()
            .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true })
            .await
            .unwrap_or_else(|e| panic!("pod status {id}: {e:?}"))
            .into_inner();
        serde_json::from_str(&st.info["info"]).unwrap()
    }

    /// Stops and removes a pod (and so its containers), and waits until its record is gone.
    pub async fn remove_pod(&self, id: &str) {
        let mut rt = self.runtime();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() }).await.unwrap();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() }).await.unwrap();
        // RemovePodSandbox may answer while the background network teardown is still under way
        // (it then deletes the record): wait for that, so that tests see the end state.
        let record = format!("metadata/pods/{id}.json");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while crate::read_record(self.root(), &record).is_some() {
            assert!(std::time::Instant::now() < deadline, "pod {id} still has a record:\n{}", self.log());
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// Reads a CRI log file: (stream, tag, text) per line.
pub fn read_log(path: &std::path::Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let ts = parts.next().unwrap_or_default();
            assert!(ts.contains('T') && ts.ends_with('Z'), "bad timestamp in {l:?}");
            let stream = parts.next().unwrap_or_default().to_owned();
            let tag = parts.next().unwrap_or_default().to_owned();
            let text = parts.next().unwrap_or_default().to_owned();
            (stream, tag, text)
        })
        .collect()
}
