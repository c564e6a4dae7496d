//! Containers through the real daemon: lifecycle, logs, exit codes, start errors, stop with
//! and without a trapped SIGTERM, ExecSync, and nothing left behind.

use std::time::{Duration, Instant};

use skiff_tests::pods::{container_config, pod_config, read_log, BUSYBOX};
use skiff_tests::{cri, Daemon};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_logs_exec_stop_remove() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "life");
    let pod = d.run_pod(&pc).await;
    // PID 1 of a PID namespace gets no default signal actions: it traps TERM itself.
    let cfg = container_config(
        "main",
        &["sh", "-c", "trap 'exit 143' TERM; echo hello; echo oops >&2; while true; do sleep 0.1; done"],
    );
    let id = d.create(&pod, &pc, cfg.clone()).await.unwrap();
    let st = d.container_status(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerCreated as i32);
    let image = st.image.unwrap();
    assert_eq!((image.image.as_str(), image.user_specified_image.as_str()), (BUSYBOX, BUSYBOX));
    assert!(st.image_ref.contains("sha256:"), "{}", st.image_ref);

    // Same name in the same pod: AlreadyExists.
    let err = d.create(&pod, &pc, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    d.runtime().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap();
    let st = d.container_status(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    assert!(st.started_at > 0);
    // Starting again is refused.
    let err = d.runtime().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // The CRI log.
    let log_path = std::path::PathBuf::from(&st.log_path);
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = read_log(&log_path);
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(lines.contains(&("stdout".into(), "F".into(), "hello".into())), "{lines:?}");
    assert!(lines.contains(&("stderr".into(), "F".into(), "oops".into())), "{lines:?}");

    // ExecSync in the container: output, exit code, hostname of the pod.
    let out = d.exec(&id, &["sh", "-c", "echo out; echo err >&2; hostname; exit 3"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\nlife\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.exit_code, 3);
    // Its own PID namespace: the shell is PID 1.
    let out = d.exec(&id, &["cat", "/proc/1/cmdline"], 10).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sh\0-c"), "{:?}", out);

    // ExecSync timeout: DeadlineExceeded, and the command is gone.
    let t = Instant::now();
    let err = d.exec(&id, &["sh", "-c", "sleep 77; echo never"], 1).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    let out = d.exec(&id, &["ps"], 10).await.unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("sleep 77"), "{}", String::from_utf8_lossy(&out.stdout));

    // Stats: CPU, memory and the writable layer of the container; the pod's network too.
    let stats = d
        .runtime()
        .container_stats(cri::ContainerStatsRequest { container_id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(stats.writable_layer.unwrap().used_bytes.is_some());
    let listed = d
        .runtime()
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    let pod_stats = d
        .runtime()
        .pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: pod.clone() })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .linux
        .unwrap();
    assert_eq!(pod_stats.containers.len(), 1);
    assert_eq!(pod_stats.network.unwrap().default_interface.unwrap().name, "eth0");

    // List with filters.
    let list = d
        .runtime()
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter { pod_sandbox_id: pod.clone(), ..Default::default() }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);

    // Stop (the trap exits at once), idempotent.
    let t = Instant::now();
    for _ in 0..2 {
        d.runtime().stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 30 }).await.unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    let st = d.container_status(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 143, "{st:?}");
    assert_eq!(st.reason, "Error");
    assert!(st.finished_at >= st.started_at);

    // Remove: gone, idempotent.
    for _ in 0..2 {
        d.runtime().remove_container(cri::RemoveContainerRequest { container_id: id.clone() }).await.unwrap();
    }
    let err = d
        .runtime()
        .container_status(cri::ContainerStatusRequest { container_id: id.clone(), verbose: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_start_errors_and_trapped_sigterm() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "exits");
    let pod = d.run_pod(&pc).await;

    // Exits at once with 0 and with 3.
    let ok = d.create_and_start(&pod, &pc, container_config("ok", &["true"])).await;
    let st = d.wait_exited(&ok, Duration::from_secs(20)).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));
    let bad = d.create_and_start(&pod, &pc, container_config("bad", &["sh", "-c", "exit 3"])).await;
    let st = d.wait_exited(&bad, Duration::from_secs(20)).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"));

    // Command not found: the start fails clearly and the status says so.
    let id = d.create(&pod, &pc, container_config("nf", &["/no/such/binary"])).await.unwrap();
    let err = d.runtime().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap_err();
    assert!(err.message().contains("/no/such/binary"), "{err:?}");
    let st = d.container_status(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.reason, "StartError");
    assert!(st.message.contains("/no/such/binary"), "{}", st.message);

    // A trapped SIGTERM: stop waits for the timeout, then kills.
    let trap = d
        .create_and_start(
            &pod,
            &pc,
            container_config("trap", &["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    d.runtime().stop_container(cri::StopContainerRequest { container_id: trap.clone(), timeout: 2 }).await.unwrap();
    let waited = t.elapsed();
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    let st = d.container_status(&trap).await;
    assert_eq!(st.exit_code, 137, "{st:?}");

    // Timeout 0: at once.
    let now = d.create_and_start(&pod, &pc, container_config("now", &["sleep", "1000"])).await;
    let t = Instant::now();
    d.runtime().stop_container(cri::StopContainerRequest { container_id: now.clone(), timeout: 0 }).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));

    // Removing a pod removes its containers, running or not.
    let _running = d.create_and_start(&pod, &pc, container_config("running", &["sleep", "1000"])).await;
    d.remove_pod(&pod).await;
    let left =
        d.runtime().list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_container_requests() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "badreq");
    let pod = d.run_pod(&pc).await;
    // Unknown pod.
    let err = d.create("nope", &pc, container_config("x", &["true"])).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Image not pulled.
    let mut cfg = container_config("x", &["true"]);
    cfg.image =
        Some(cri::ImageSpec { image: "registry.k8s.io/e2e-test-images/nginx:1.14-2".into(), ..Default::default() });
    let err = d.create(&pod, &pc, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // A mount source that does not exist: InvalidArgument, nothing created.
    let mut cfg = container_config("x", &["true"]);
    cfg.mounts.push(cri::Mount {
        container_path: "/data".into(),
        host_path: "/no/such/dir/for/skiff".into(),
        ..Default::default()
    });
    let err = d.create(&pod, &pc, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(std::fs::read_dir(d.state().join("containers")).map(|r| r.count()).unwrap_or(0), 0);
    // Unknown user.
    let mut cfg = container_config("x", &["true"]);
    cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap().run_as_username = "nobody-here".into();
    let err = d.create(&pod, &pc, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // The name is free again after the failures.
    let id = d.create(&pod, &pc, container_config("x", &["true"])).await.unwrap();
    // Unknown container: NotFound for status and start; stop and remove are idempotent.
    d.runtime().stop_container(cri::StopContainerRequest { container_id: "zzz".into(), timeout: 0 }).await.unwrap();
    let err = d.runtime().start_container(cri::StartContainerRequest { container_id: "zzz".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    d.runtime().remove_container(cri::RemoveContainerRequest { container_id: "zzz".into() }).await.unwrap();
    d.runtime().remove_container(cri::RemoveContainerRequest { container_id: id }).await.unwrap();
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_container_resources() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "upd");
    let pod = d.run_pod(&pc).await;
    let mut cfg = container_config("c", &["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]);
    cfg.linux.as_mut().unwrap().resources =
        Some(cri::LinuxContainerResources { memory_limit_in_bytes: 64 << 20, ..Default::default() });
    let id = d.create_and_start(&pod, &pc, cfg).await;
    async fn limit(d: &Daemon, id: &str) -> u64 {
        let out = d.exec(id, &["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"], 10).await.unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().unwrap()
    }
    assert_eq!(limit(&d, &id).await, 64 << 20);
    d.runtime()
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limit(&d, &id).await, 96 << 20);
    let err = d
        .runtime()
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_events() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let mut events = d.runtime().get_container_events(cri::GetEventsRequest {}).await.unwrap().into_inner();
    let pc = pod_config(&d, "events");
    let pod = d.run_pod(&pc).await;
    let id = d.create_and_start(&pod, &pc, container_config("c", &["sh", "-c", "exit 0"])).await;
    d.wait_exited(&id, Duration::from_secs(20)).await;
    d.remove_pod(&pod).await;
    use cri::ContainerEventType::*;
    let want = [
        (pod.clone(), ContainerCreatedEvent),
        (pod.clone(), ContainerStartedEvent),
        (id.clone(), ContainerCreatedEvent),
        (id.clone(), ContainerStartedEvent),
        (id.clone(), ContainerStoppedEvent),
        (pod.clone(), ContainerStoppedEvent),
        (id.clone(), ContainerDeletedEvent),
        (pod.clone(), ContainerDeletedEvent),
    ];
    let mut got = Vec::new();
    while got.len() < want.len() {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        if ev.container_id == id && ev.container_event_type == ContainerStartedEvent as i32 {
            assert_eq!(ev.pod_sandbox_status.as_ref().unwrap().id, pod);
            assert_eq!(ev.containers_statuses.len(), 1);
        }
        got.push((ev.container_id, cri::ContainerEventType::try_from(ev.container_event_type).unwrap()));
    }
    assert_eq!(got, want);
}
