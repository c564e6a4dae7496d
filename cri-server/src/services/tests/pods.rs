//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox.

use std::collections::HashMap;

use proto::cri::*;
use tonic::{Code, Request};

use super::{code, pod_config, Node, BUSYBOX};
use proto::cri::runtime_service_server::RuntimeService;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pod_sets_up_namespaces_cgroup_network_and_pid_holder() {
    let n = Node::new();
    let pod = n.run_pod("web").await;
    let st = n.pod_status(&pod).await.unwrap();
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(st.metadata.unwrap().name, "web");
    assert_eq!(st.network.unwrap().ip, "10.88.0.2");
    assert_eq!(n.fakes.sandboxes.live(), vec![pod.clone()]);
    assert_eq!(n.fakes.network.attached(), vec![pod.clone()]);
    // The pod-level PID namespace (the CRI default) has its holder, in the pod cgroup.
    assert_eq!(n.fakes.monitors.live_infra(), 1);
    assert!(n.fakes.cgroups.get(&n.pod_cgroup(&pod)).is_some(), "pod cgroup");
    assert_eq!(n.fakes.monitors.infra_cgroups(), vec![Some(n.pod_cgroup(&pod))]);
    // /etc/hosts names the pod's address.
    let hosts = std::fs::read_to_string(n.ctx.pod_paths(&pod).hosts()).unwrap();
    assert!(hosts.contains("10.88.0.2"), "{hosts}");
    // The record is on disk (once the journal's changes are written to the files).
    n.ctx.pod_store.journal().materialize().unwrap();
    assert_eq!(std::fs::read_dir(n.ctx.config.root.join("metadata/pods")).unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod_gets_no_network_and_container_pid_mode_no_holder() {
    let n = Node::new();
    let mut config = pod_config("host");
    config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                pid: NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = n.run_pod_with(config).await.unwrap();
    let st = n.pod_status(&pod).await.unwrap();
    assert_eq!(st.network.unwrap().ip, "");
    let ns = st.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(ns.network, NamespaceMode::Node as i32);
    assert_eq!(n.fakes.network.calls(), (0, 0));
    assert_eq!(n.fakes.monitors.live_infra(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pod_again_with_the_same_metadata_is_already_exists() {
    let n = Node::new();
    n.run_pod("web").await;
    assert_eq!(code(n.run_pod_with(pod_config("web")).await), Code::AlreadyExists);
    // Another attempt is another pod.
    let mut again = pod_config("web");
    again.metadata.as_mut().unwrap().attempt = 1;
    n.run_pod_with(again).await.unwrap();
    assert_eq!(n.list_pods(Default::default()).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pod_rejects_bad_requests() {
    let n = Node::new();
    let mut no_name = pod_config("x");
    no_name.metadata.as_mut().unwrap().name.clear();
    assert_eq!(code(n.run_pod_with(no_name).await), Code::InvalidArgument);
    let mut no_md = pod_config("x");
    no_md.metadata = None;
    assert_eq!(code(n.run_pod_with(no_md).await), Code::InvalidArgument);
    let req = RunPodSandboxRequest { config: Some(pod_config("x")), runtime_handler: "kata".into() };
    assert_eq!(n.rt.run_pod_sandbox(Request::new(req)).await.unwrap_err().code(), Code::InvalidArgument);
    let req = RunPodSandboxRequest { config: None, runtime_handler: String::new() };
    assert_eq!(n.rt.run_pod_sandbox(Request::new(req)).await.unwrap_err().code(), Code::InvalidArgument);
    assert!(n.list_pods(Default::default()).await.is_empty());
    assert!(n.fakes.sandboxes.live().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_network_setup_rolls_the_pod_back() {
    let n = Node::new();
    n.fakes.network.fail_setup(true);
    let err = n.run_pod_with(pod_config("web")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(n.list_pods(Default::default()).await.is_empty());
    assert!(n.fakes.sandboxes.live().is_empty(), "namespaces and files torn down");
    assert!(n.fakes.cgroups.paths().is_empty(), "pod cgroup removed: {:?}", n.fakes.cgroups.paths());
    assert_eq!(n.fakes.monitors.live_infra(), 0, "PID namespace holder killed");
    assert_eq!(std::fs::read_dir(n.ctx.config.root.join("metadata/pods")).unwrap().count(), 0);
    // Nothing stays reserved: the retry succeeds.
    n.fakes.network.fail_setup(false);
    n.run_pod_with(pod_config("web")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pod_setup_leaves_nothing() {
    let n = Node::new();
    n.fakes.sandboxes.fail_setup(true);
    let err = n.run_pod_with(pod_config("web")).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(err.message().contains("set up the pod"), "{err:?}");
    assert!(n.list_pods(Default::default()).await.is_empty());
    assert_eq!(n.fakes.network.calls(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_pod_stops_containers_releases_network_and_is_idempotent() {
    let n = Node::new();
    let (pod, c) = n.running("web").await;
    n.stop_pod(&pod).await.unwrap();
    let st = n.pod_status(&pod).await.unwrap();
    assert_eq!(st.state, PodSandboxState::SandboxNotready as i32);
    assert_eq!(n.status(&c).await.unwrap().state, ContainerState::ContainerExited as i32);
    // No grace period: SIGKILL at once.
    assert_eq!(n.fakes.monitors.process(&c).unwrap().signals, vec![libc::SIGKILL]);
    assert!(n.fakes.network.attached().is_empty());
    assert_eq!(n.fakes.monitors.live_infra(), 0);
    // Again, and for a pod that does not exist: not an error.
    n.stop_pod(&pod).await.unwrap();
    assert_eq!(n.fakes.network.calls(), (1, 1), "the network is released once");
    n.stop_pod("0123456789abcdef").await.unwrap();
    // A stopped pod takes no new containers.
    assert_eq!(code(n.create(&pod, "late", BUSYBOX).await), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_pod_removes_its_containers_and_everything_it_held() {
    let n = Node::new();
    let (pod, c) = n.running("web").await;
    let other = n.run_pod("other").await;
    n.remove_pod(&pod).await.unwrap();
    assert_eq!(code(n.pod_status(&pod).await), Code::NotFound);
    assert_eq!(code(n.status(&c).await), Code::NotFound);
    assert_eq!(n.fakes.sandboxes.live(), vec![other.clone()]);
    assert_eq!(n.fakes.cgroups.paths(), vec![n.pod_cgroup(&other)]);
    assert!(n.fakes.images.holders().is_empty(), "the container's rootfs released");
    assert!(n.fakes.images.mounted().is_empty());
    assert!(!n.ctx.container_dir(&c).exists());
    assert_eq!(std::fs::read_dir(n.ctx.config.root.join("metadata/containers")).unwrap().count(), 0);
    // Idempotent, also for unknown pods; the name is free again.
    n.remove_pod(&pod).await.unwrap();
    n.remove_pod("0123456789abcdef").await.unwrap();
    n.run_pod("web").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_status_of_unknown_pod_is_not_found() {
    let n = Node::new();
    n.run_pod("web").await;
    assert_eq!(code(n.pod_status("0123456789abcdef").await), Code::NotFound);
    assert_eq!(code(n.pod_status("").await), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_status_by_prefix_verbose_and_with_containers() {
    let n = Node::new();
    let (pod, c) = n.running("web").await;
    let req = PodSandboxStatusRequest { pod_sandbox_id: pod[..8].into(), verbose: true };
    let resp = n.rt.pod_sandbox_status(Request::new(req)).await.unwrap().into_inner();
    assert_eq!(resp.status.unwrap().id, pod);
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).unwrap();
    assert_eq!(info["cgroupParent"], n.pod_cgroup(&pod));
    assert_eq!(resp.containers_statuses.len(), 1);
    assert_eq!(resp.containers_statuses[0].id, c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pods_filters_by_id_state_and_labels() {
    let n = Node::new();
    let a = n.run_pod("a").await;
    let b = n.run_pod("b").await;
    let c = n.run_pod("c").await;
    n.stop_pod(&b).await.unwrap();
    let ids = |v: Vec<PodSandbox>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
    // Newest first.
    assert_eq!(ids(n.list_pods(Default::default()).await), vec![c.clone(), b.clone(), a.clone()]);
    assert_eq!(ids(n.list_pods(PodSandboxFilter { id: a.clone(), ..Default::default() }).await), vec![a.clone()]);
    assert_eq!(ids(n.list_pods(PodSandboxFilter { id: b[..6].into(), ..Default::default() }).await), vec![b.clone()]);
    let ready = PodSandboxStateValue { state: PodSandboxState::SandboxReady as i32 };
    assert_eq!(
        ids(n.list_pods(PodSandboxFilter { state: Some(ready), ..Default::default() }).await),
        vec![c.clone(), a]
    );
    let notready = PodSandboxStateValue { state: PodSandboxState::SandboxNotready as i32 };
    assert_eq!(ids(n.list_pods(PodSandboxFilter { state: Some(notready), ..Default::default() }).await), vec![b]);
    let sel = HashMap::from([("app".to_string(), "c".to_string())]);
    assert_eq!(ids(n.list_pods(PodSandboxFilter { label_selector: sel, ..Default::default() }).await), vec![c]);
    let none = HashMap::from([("app".to_string(), "zzz".to_string())]);
    assert!(n.list_pods(PodSandboxFilter { label_selector: none, ..Default::default() }).await.is_empty());
    assert!(n.list_pods(PodSandboxFilter { id: "ffffffffffff".into(), ..Default::default() }).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_resize_applies_to_skiffs_pod_cgroup_only() {
    let n = Node::new();
    let ours = n.run_pod("ours").await;
    let kubelet_parent = "/kubepods/burstable/poduid-k";
    n.fakes.cgroups.add_foreign(kubelet_parent);
    let mut config = pod_config("theirs");
    config.linux = Some(LinuxPodSandboxConfig { cgroup_parent: kubelet_parent.into(), ..Default::default() });
    let theirs = n.run_pod_with(config).await.unwrap();
    let resize = |id: &str| UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: id.into(),
        resources: Some(LinuxContainerResources { memory_limit_in_bytes: 100 << 20, ..Default::default() }),
        overhead: Some(LinuxContainerResources { memory_limit_in_bytes: 10 << 20, ..Default::default() }),
    };
    n.rt.update_pod_sandbox_resources(Request::new(resize(&ours))).await.unwrap();
    n.rt.update_pod_sandbox_resources(Request::new(resize(&theirs))).await.unwrap();
    let applied = n.fakes.cgroups.get(&n.pod_cgroup(&ours)).unwrap().applied;
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].memory().as_ref().and_then(|m| m.limit()), Some(110 << 20), "resources + overhead");
    assert!(n.fakes.cgroups.get(kubelet_parent).unwrap().applied.is_empty(), "the kubelet's cgroup is its own");
    // Both record what they were told.
    let req = PodSandboxStatusRequest { pod_sandbox_id: theirs.clone(), verbose: true };
    let info = n.rt.pod_sandbox_status(Request::new(req)).await.unwrap().into_inner().info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    assert_eq!(info["config"]["linux"]["resources"]["memory_limit_in_bytes"], 100 << 20);
    let err = n.rt.update_pod_sandbox_resources(Request::new(resize("0123456789abcdef"))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}
