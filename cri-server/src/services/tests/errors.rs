//! What library failures become at the gRPC edge (`crate::error`, `monitor_status`,
//! `image_status`, `network_status`), seen through the RPCs.

use proto::cri::runtime_service_server::RuntimeService;
use proto::cri::*;
use runtime::monitor::MonitorError;
use tonic::{Code, Request};

use super::{code, container_config, Node, BUSYBOX};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_kernel_refuses_is_invalid_argument() {
    let n = Node::new();
    let (pod, c) = n.running("web").await;
    n.fakes.cgroups.fail_next_write(libc::EINVAL);
    let req = UpdateContainerResourcesRequest {
        container_id: c.clone(),
        linux: Some(LinuxContainerResources { memory_limit_in_bytes: 64 << 20, ..Default::default() }),
        ..Default::default()
    };
    let err = n.rt.update_container_resources(Request::new(req.clone())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Busy (a cpuset in use, a limit below the usage): FAILED_PRECONDITION; other I/O: INTERNAL.
    n.fakes.cgroups.fail_next_write(libc::EBUSY);
    assert_eq!(
        n.rt.update_container_resources(Request::new(req.clone())).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    n.fakes.cgroups.fail_next_write(libc::EIO);
    assert_eq!(n.rt.update_container_resources(Request::new(req.clone())).await.unwrap_err().code(), Code::Internal);
    n.rt.update_container_resources(Request::new(req.clone())).await.unwrap();
    // Refused before any cgroup write: below the smallest memory limit.
    let tiny = LinuxContainerResources { memory_limit_in_bytes: 4096, ..Default::default() };
    let req = UpdateContainerResourcesRequest { linux: Some(tiny), ..req };
    assert_eq!(n.rt.update_container_resources(Request::new(req)).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(n.fakes.cgroups.get(&format!("{}/{c}", n.pod_cgroup(&pod))).unwrap().applied.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_cgroup_at_start_fails_the_start_with_its_code() {
    let n = Node::new();
    let pod = n.run_pod("web").await;
    let mut config = container_config("app", BUSYBOX);
    config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources { cpu_shares: 2, ..Default::default() }),
        ..Default::default()
    });
    let c = n.create_with(&pod, config).await.unwrap();
    n.fakes.cgroups.fail_next_write(libc::ERANGE);
    let err = n.start(&c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("create the container cgroup"), "{err:?}");
    let st = n.status(&c).await.unwrap();
    assert_eq!(st.reason, "StartError");
    assert!(n.fakes.images.mounted().is_empty(), "the rootfs mount was rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_failures_map_to_deadline_exceeded_or_internal() {
    let n = Node::new();
    let (_pod, c) = n.running("web").await;
    n.fakes.monitors.fail_calls(&c, || MonitorError::Timeout);
    assert_eq!(code(n.stop(&c, 5).await), Code::DeadlineExceeded);
    n.fakes.monitors.fail_calls(&c, || MonitorError::Remote("no such process".into()));
    let req = ReopenContainerLogRequest { container_id: c.clone() };
    assert_eq!(n.rt.reopen_container_log(Request::new(req)).await.unwrap_err().code(), Code::Internal);
    // The container is still running: nothing pretended it stopped.
    assert_eq!(n.status(&c).await.unwrap().state, ContainerState::ContainerRunning as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_id_prefix_is_invalid_argument() {
    let n = Node::new();
    // Seventeen pods: two of them share their first hex digit.
    let mut ids = Vec::new();
    for i in 0..17 {
        ids.push(n.run_pod(&format!("p{i}")).await);
    }
    let shared = ids.iter().find(|a| ids.iter().filter(|b| b[..1] == a[..1]).count() > 1).unwrap();
    let prefix = &shared[..1];
    assert_eq!(code(n.pod_status(prefix).await), Code::InvalidArgument);
    assert_eq!(code(n.stop_pod(prefix).await), Code::InvalidArgument);
    // A unique prefix finds its pod.
    assert_eq!(n.pod_status(&shared[..20]).await.unwrap().id, *shared);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_metadata_journal_makes_the_runtime_not_ready_and_loses_nothing() {
    let n = Node::new();
    let (pod, c) = n.running("web").await;
    let ready =
        |s: StatusResponse| s.status.unwrap().conditions.into_iter().find(|c| c.r#type == "RuntimeReady").unwrap();
    let st = n.rt.status(Request::new(StatusRequest { verbose: false })).await.unwrap().into_inner();
    assert!(ready(st).status);
    n.ctx.pod_store.journal().poison("fdatasync of journal.0: Input/output error");
    let cond = ready(n.rt.status(Request::new(StatusRequest { verbose: false })).await.unwrap().into_inner());
    assert!(!cond.status);
    assert_eq!(cond.reason, crate::services::runtime::JOURNAL_UNUSABLE);
    assert!(cond.message.contains("Input/output error"), "{}", cond.message);
    // Every change fails (none is acknowledged that would not survive a power cut)...
    assert_eq!(code(n.run_pod_with(super::pod_config("db")).await), Code::Internal);
    assert_eq!(code(n.create(&pod, "side", BUSYBOX).await), Code::Internal);
    // ...and what was there is still listed, the container still running.
    assert_eq!(n.status(&c).await.unwrap().state, ContainerState::ContainerRunning as i32);
    assert_eq!(n.pod_status(&pod).await.unwrap().state, PodSandboxState::SandboxReady as i32);
    assert!(n.list_pods(PodSandboxFilter::default()).await.iter().all(|p| p.metadata.as_ref().unwrap().name == "web"));
}
