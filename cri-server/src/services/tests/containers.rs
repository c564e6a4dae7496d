//! CreateContainer, StartContainer, StopContainer, RemoveContainer, ContainerStatus,
//! ListContainers, ReopenContainerLog, UpdateContainerResources, ExecSync.

use std::collections::HashMap;

use proto::cri::runtime_service_server::RuntimeService;
use proto::cri::*;
use tonic::{Code, Request};

use super::{code, container_config, Node, BUSYBOX, NGINX};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_prepares_rootfs_and_spec_and_reports_created() {
    let n = Node::new();
    let pod = n.run_pod("web").await;
    let c = n.create(&pod, "app", NGINX).await.unwrap();
    let st = n.status(&c).await.unwrap();
    assert_eq!(st.state, ContainerState::ContainerCreated as i32);
    assert_eq!(st.metadata.unwrap().name, "app");
    assert_eq!(st.image.unwrap().image, NGINX);
    assert!(st.image_ref.starts_with("registry.k8s.io/e2e-test-images/nginx@sha256:"), "{}", st.image_ref);
    assert!(st.image_id.starts_with("sha256:"));
    assert_eq!(st.labels["container"], "app");
    // The image's user, resolved in its /etc/passwd.
    let user = st.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (1000, 1000));
    assert_eq!(n.fakes.images.holders(), vec![c.clone()]);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(n.ctx.container_dir(&c).join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["args"][0], "/nginx");
    assert_eq!(spec["linux"]["cgroupsPath"], format!("{}/{c}", n.pod_cgroup(&pod)));
    // The image's stop signal is kept for StopContainer.
    assert_eq!(n.entry(&c).get().stop_signal, libc::SIGQUIT);
    assert!(n.fakes.images.mounted().is_empty(), "mounted only at start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_refuses_unknown_pods_missing_images_and_bad_configs() {
    let n = Node::new();
    let pod = n.run_pod("web").await;
    assert_eq!(code(n.create("0123456789abcdef", "a", BUSYBOX).await), Code::NotFound);
    let err = n.create(&pod, "a", "registry.k8s.io/pause:3.10").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("pull it first"), "{err:?}");
    let mut no_image = container_config("a", "");
    no_image.image = None;
    assert_eq!(code(n.create_with(&pod, no_image).await), Code::InvalidArgument);
    let mut no_name = container_config("", BUSYBOX);
    no_name.metadata = None;
    assert_eq!(code(n.create_with(&pod, no_name).await), Code::InvalidArgument);
    let mut bad_signal = container_config("a", BUSYBOX);
    bad_signal.stop_signal = 10_000;
    assert_eq!(code(n.create_with(&pod, bad_signal).await), Code::InvalidArgument);
    // Nothing was left by the refused ones.
    assert!(n.list(Default::default()).await.is_empty());
    assert!(n.fakes.images.holders().is_empty());
    // The same name twice: ALREADY_EXISTS.
    n.create(&pod, "a", BUSYBOX).await.unwrap();
    assert_eq!(code(n.create(&pod, "a", BUSYBOX).await), Code::AlreadyExists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_mounts_creates_the_cgroup_and_runs_the_monitor() {
    let n = Node::new();
    let pod = n.run_pod("web").await;
    let mut config = container_config("app", BUSYBOX);
    config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources { memory_limit_in_bytes: 64 << 20, ..Default::default() }),
        ..Default::default()
    });
    let c = n.create_with(&pod, config).await.unwrap();
    n.start(&c).await.unwrap();
    let st = n.status(&c).await.unwrap();
    assert_eq!(st.state, ContainerState::ContainerRunning as i32);
    assert!(st.started_at > 0);
    assert_eq!(n.fakes.images.mounted(), vec![n.ctx.container_dir(&c).join("rootfs")]);
    let cg = n.fakes.cgroups.get(&format!("{}/{c}", n.pod_cgroup(&pod))).expect("container cgroup");
    let limit = cg.created_with.and_then(|r| r.memory().as_ref().and_then(|m| m.limit()));
    assert_eq!(limit, Some(64 << 20));
    let p = n.fakes.monitors.process(&c).unwrap();
    assert_eq!(n.entry(&c).get().pid, Some(p.pid));
    // Only a CREATED container starts.
    assert_eq!(code(n.start(&c).await), Code::FailedPrecondition);
    assert_eq!(code(n.start("0123456789abcdef").await), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_start_is_exited_with_start_error_and_rolled_back() {
    let n = Node::new();
    let pod = n.run_pod("web").await;
    let c = n.create(&pod, "app", BUSYBOX).await.unwrap();
    n.fakes.monitors.fail_next_start("exec: \"sh\": executable file not found in $PATH");
    let err = n.start(&c).await.unwrap_err();
    assert_eq!(err.code(), Code::Unknown, "{err:?}");
    let st = n.status(&c).await.unwrap();
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!((st.exit_code, st.reason.as_str()), (128, "StartError"));
    assert!(st.message.contains("executable file not found"));
    assert!(n.fakes.images.mounted().is_empty(), "rootfs unmounted");
    assert_eq!(n.fakes.cgroups.paths(), vec![n.pod_cgroup(&pod)], "container cgroup removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_reported_by_the_monitor_is_noticed_and_cleaned_up() {
    let n = Node::new();
    let (pod, c) = n.running("web").await;
    let ctr_cgroup = format!("{}/{c}", n.pod_cgroup(&pod));
    assert!(n.fakes.monitors.exit(&c, 3));
    // The watcher records the exit without anyone asking.
    let entry = n.entry(&c);
    n.eventually("exit recorded", || entry.get().state == crate::store::ContainerState::Exited).await;
    let st = n.status(&c).await.unwrap();
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"));
    assert!(st.finished_at >= st.started_at);
    n.eventually("rootfs and cgroup released", || {
        n.fakes.images.mounted().is_empty() && n.fakes.cgroups.get(&ctr_cgroup).is_none()
    })
    .await;
    // A clean exit is Completed.
    let c2 = n.create(&pod, "second", BUSYBOX).await.unwrap();
    n.start(&c2).await.unwrap();
    n.fakes.monitors.exit(&c2, 0);
    let st = n.wait_state(&c2, ContainerState::ContainerExited).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sends_the_stop_signal_and_is_idempotent() {
    let n = Node::new();
    let (pod, c) = n.running("web").await;
    n.stop(&c, 10).await.unwrap();
    let st = n.status(&c).await.unwrap();
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 128 + libc::SIGTERM);
    assert_eq!(n.fakes.monitors.process(&c).unwrap().signals, vec![libc::SIGTERM]);
    // Again, and unknown containers: no error, no signal.
    n.stop(&c, 10).await.unwrap();
    n.stop("0123456789abcdef", 10).await.unwrap();
    assert_eq!(n.fakes.monitors.process(&c).unwrap().signals.len(), 1);
    // A CREATED container stays CREATED (as containerd leaves it).
    let created = n.create(&pod, "idle", BUSYBOX).await.unwrap();
    n.stop(&created, 10).await.unwrap();
    assert_eq!(n.status(&created).await.unwrap().state, ContainerState::ContainerCreated as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_after_the_timeout_and_at_once_with_zero() {
    let n = Node::new();
    let (pod, c) = n.running("web").await;
    n.fakes.monitors.ignore_signals(&c);
    n.stop(&c, 1).await.unwrap();
    assert_eq!(n.fakes.monitors.process(&c).unwrap().signals, vec![libc::SIGTERM, libc::SIGKILL]);
    assert_eq!(n.status(&c).await.unwrap().exit_code, 128 + libc::SIGKILL);
    // The rest of the container's processes too.
    assert!(n.fakes.cgroups.killed().contains(&format!("{}/{c}", n.pod_cgroup(&pod))));
    let c2 = n.create(&pod, "second", BUSYBOX).await.unwrap();
    n.start(&c2).await.unwrap();
    n.stop(&c2, 0).await.unwrap();
    assert_eq!(n.fakes.monitors.process(&c2).unwrap().signals, vec![libc::SIGKILL]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_kills_a_running_container_and_releases_everything() {
    let n = Node::new();
    let (pod, c) = n.running("web").await;
    // RemoveContainer of a running container kills it first (as containerd's force removal).
    n.remove(&c).await.unwrap();
    assert_eq!(n.fakes.monitors.process(&c).unwrap().signals, vec![libc::SIGKILL]);
    assert_eq!(code(n.status(&c).await), Code::NotFound);
    assert!(n.list(Default::default()).await.is_empty());
    assert!(n.fakes.images.holders().is_empty());
    assert!(n.fakes.images.mounted().is_empty());
    assert_eq!(n.fakes.cgroups.paths(), vec![n.pod_cgroup(&pod)]);
    assert!(!n.ctx.container_dir(&c).exists());
    // Idempotent; the name is free again.
    n.remove(&c).await.unwrap();
    n.remove("0123456789abcdef").await.unwrap();
    n.create(&pod, "main", BUSYBOX).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_containers_filters_by_pod_state_id_and_labels() {
    let n = Node::new();
    let (p1, running) = n.running("one").await;
    let created = n.create(&p1, "idle", BUSYBOX).await.unwrap();
    let p2 = n.run_pod("two").await;
    let other = n.create(&p2, "main", BUSYBOX).await.unwrap();
    let ids = |v: Vec<Container>| {
        let mut v: Vec<String> = v.into_iter().map(|c| c.id).collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(ids(n.list(Default::default()).await), sorted(vec![running.clone(), created.clone(), other.clone()]));
    let by_pod = ContainerFilter { pod_sandbox_id: p1.clone(), ..Default::default() };
    assert_eq!(ids(n.list(by_pod).await), sorted(vec![running.clone(), created.clone()]));
    let st = ContainerStateValue { state: ContainerState::ContainerRunning as i32 };
    assert_eq!(ids(n.list(ContainerFilter { state: Some(st), ..Default::default() }).await), vec![running.clone()]);
    let by_prefix = ContainerFilter { id: other[..7].into(), ..Default::default() };
    assert_eq!(ids(n.list(by_prefix).await), vec![other.clone()]);
    let sel = HashMap::from([("container".to_string(), "idle".to_string())]);
    assert_eq!(ids(n.list(ContainerFilter { label_selector: sel, ..Default::default() }).await), vec![created]);
    let unknown_pod = ContainerFilter { pod_sandbox_id: "0123456789abcdef".into(), ..Default::default() };
    assert!(n.list(unknown_pod).await.is_empty());
    // An exit shows in the list.
    n.fakes.monitors.exit(&running, 1);
    let st = ContainerStateValue { state: ContainerState::ContainerExited as i32 };
    let exited = ContainerFilter { state: Some(st), ..Default::default() };
    for _ in 0..500 {
        if !n.list(exited.clone()).await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(ids(n.list(exited).await), vec![running]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_log_needs_a_running_container() {
    let n = Node::new();
    let (pod, c) = n.running("web").await;
    let reopen = |id: &str| ReopenContainerLogRequest { container_id: id.into() };
    n.rt.reopen_container_log(Request::new(reopen(&c))).await.unwrap();
    assert_eq!(n.fakes.monitors.process(&c).unwrap().log_reopens, 1);
    let created = n.create(&pod, "idle", BUSYBOX).await.unwrap();
    let err = n.rt.reopen_container_log(Request::new(reopen(&created))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = n.rt.reopen_container_log(Request::new(reopen("0123456789abcdef"))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_resources_applies_them_to_the_cgroup() {
    let n = Node::new();
    let (pod, c) = n.running("web").await;
    let req = UpdateContainerResourcesRequest {
        container_id: c.clone(),
        linux: Some(LinuxContainerResources {
            cpu_shares: 512,
            memory_limit_in_bytes: 128 << 20,
            ..Default::default()
        }),
        ..Default::default()
    };
    n.rt.update_container_resources(Request::new(req.clone())).await.unwrap();
    let cg = n.fakes.cgroups.get(&format!("{}/{c}", n.pod_cgroup(&pod))).unwrap();
    let applied = cg.applied.last().expect("resources applied");
    assert_eq!(applied.memory().as_ref().and_then(|m| m.limit()), Some(128 << 20));
    assert_eq!(applied.cpu().as_ref().and_then(|c| c.shares()), Some(512));
    let unknown = UpdateContainerResourcesRequest { container_id: "0123456789abcdef".into(), ..req };
    assert_eq!(n.rt.update_container_resources(Request::new(unknown)).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_runs_in_a_running_container_only() {
    let n = Node::new();
    let (pod, c) = n.running("web").await;
    let exec = |id: &str, cmd: &[&str], timeout: i64| ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    };
    let out = n.rt.exec_sync(Request::new(exec(&c, &["echo", "hello"], 0))).await.unwrap().into_inner();
    assert_eq!((out.stdout.as_slice(), out.exit_code), (&b"hello\n"[..], 0));
    let out = n.rt.exec_sync(Request::new(exec(&c, &["false"], 0))).await.unwrap().into_inner();
    assert_eq!(out.exit_code, 1);
    let err = n.rt.exec_sync(Request::new(exec(&c, &["sleep", "100"], 1))).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let err = n.rt.exec_sync(Request::new(exec(&c, &["nope"], 0))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unknown);
    assert!(err.message().contains("not found"), "{err:?}");
    assert_eq!(n.fakes.monitors.process(&c).unwrap().execs.len(), 4);
    assert_eq!(n.rt.exec_sync(Request::new(exec(&c, &[], 0))).await.unwrap_err().code(), Code::InvalidArgument);
    let created = n.create(&pod, "idle", BUSYBOX).await.unwrap();
    let err = n.rt.exec_sync(Request::new(exec(&created, &["echo"], 0))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = n.rt.exec_sync(Request::new(exec("0123456789abcdef", &["echo"], 0))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_events_follow_the_lifecycle() {
    use futures::StreamExt;
    let n = Node::new();
    let mut events = n.rt.get_container_events(Request::new(GetEventsRequest {})).await.unwrap().into_inner();
    let (pod, c) = n.running("web").await;
    n.fakes.monitors.exit(&c, 0);
    n.wait_state(&c, ContainerState::ContainerExited).await;
    n.remove(&c).await.unwrap();
    use ContainerEventType::*;
    let want = [
        (pod.clone(), ContainerCreatedEvent),
        (pod.clone(), ContainerStartedEvent),
        (c.clone(), ContainerCreatedEvent),
        (c.clone(), ContainerStartedEvent),
        (c.clone(), ContainerStoppedEvent),
        (c.clone(), ContainerDeletedEvent),
    ];
    for (id, kind) in want {
        let ev =
            tokio::time::timeout(std::time::Duration::from_secs(5), events.next()).await.unwrap().unwrap().unwrap();
        assert_eq!((ev.container_id.as_str(), ev.container_event_type), (id.as_str(), kind as i32));
        assert_eq!(ev.pod_sandbox_status.as_ref().unwrap().id, pod);
    }
}
