//! RPCs and fields of the CRI of Kubernetes 1.36: the streaming lists, UpdatePodSandboxResources
//! (in-place pod resize) and stop signals.

use std::time::Duration;

use futures::StreamExt;
use skiff_tests::pods::{container_config, pod_config, read_log, BUSYBOX};
use skiff_tests::{cri, memory_hierarchy, Daemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_lists_answer_what_the_lists_answer() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let mut pods = Vec::new();
    for name in ["sa", "sb", "sc"] {
        let pc = pod_config(&d, name);
        let pod = d.run_pod(&pc).await;
        d.create_and_start(&pod, &pc, container_config("c", &["sleep", "1000"])).await;
        pods.push(pod);
    }
    let mut rt = d.runtime();
    let mut got = Vec::new();
    let mut s = rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest { filter: None }).await.unwrap().into_inner();
    while let Some(m) = s.next().await {
        got.extend(m.unwrap().pod_sandboxes.into_iter().map(|p| p.id));
    }
    got.sort();
    let mut want = pods.clone();
    want.sort();
    assert_eq!(got, want);

    // a filter is honoured
    let filter =
        cri::PodSandboxFilter { label_selector: [("pod".to_string(), "sb".to_string())].into(), ..Default::default() };
    let mut s =
        rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest { filter: Some(filter) }).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(m) = s.next().await {
        n += m.unwrap().pod_sandboxes.len();
    }
    assert_eq!(n, 1);

    let mut s = rt.stream_containers(cri::StreamContainersRequest { filter: None }).await.unwrap().into_inner();
    let mut ctrs = 0;
    while let Some(m) = s.next().await {
        ctrs += m.unwrap().containers.len();
    }
    assert_eq!(ctrs, 3);
    let mut s =
        rt.stream_container_stats(cri::StreamContainerStatsRequest { filter: None }).await.unwrap().into_inner();
    let mut stats = 0;
    while let Some(m) = s.next().await {
        stats += m.unwrap().container_stats.len();
    }
    assert_eq!(stats, 3);
    let mut s =
        rt.stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest { filter: None }).await.unwrap().into_inner();
    let mut pstats = 0;
    while let Some(m) = s.next().await {
        pstats += m.unwrap().pod_sandbox_stats.len();
    }
    assert_eq!(pstats, 3);
    let mut s = d.images().stream_images(cri::StreamImagesRequest { filter: None }).await.unwrap().into_inner();
    let mut tags = Vec::new();
    while let Some(m) = s.next().await {
        tags.extend(m.unwrap().images.into_iter().flat_map(|i| i.repo_tags));
    }
    assert!(tags.iter().any(|t| t == BUSYBOX), "{tags:?}");
    // pod metrics stream too (their content: cri136_metrics.rs)
    let mut s = rt.stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest {}).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(m) = s.next().await {
        n += m.unwrap().pod_sandbox_metrics.len();
    }
    assert_eq!(n, 3);
    for p in pods {
        d.remove_pod(&p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_resize_applies_to_skiffs_pod_cgroup_only() {
    let d = Daemon::start().await;
    let mem = memory_hierarchy();
    let pc = pod_config(&d, "resize");
    let pod = d.run_pod(&pc).await;
    let limit_file = mem.join(d.cgroup_parent.trim_start_matches('/')).join(&pod).join("memory.limit_in_bytes");
    let mut rt = d.runtime();
    let res = |mib: i64| cri::LinuxContainerResources { memory_limit_in_bytes: mib << 20, ..Default::default() };
    for (r, o, want) in [(64, 16, 80i64 << 20), (32, 16, 48 << 20), (128, 0, 128 << 20)] {
        rt.update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: pod.clone(),
            resources: Some(res(r)),
            overhead: (o > 0).then(|| res(o)),
        })
        .await
        .unwrap();
        let got: i64 = std::fs::read_to_string(&limit_file).unwrap().trim().parse().unwrap();
        assert_eq!(got, want, "resources {r} MiB + overhead {o} MiB");
    }
    let e = rt
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "no-such-pod".into(),
            resources: Some(res(64)),
            overhead: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // A pod cgroup the kubelet made (in every hierarchy, as it does) is the kubelet's:
    // recorded, never written.
    let theirs = format!("{}/kubelet-made", d.cgroup_parent);
    let theirs_dir = mem.join(theirs.trim_start_matches('/'));
    for h in skiff_tests::cgroup_v1_hierarchies() {
        let mut dir = h.clone();
        for part in theirs.trim_start_matches('/').split('/') {
            let parent = dir.clone();
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap();
            }
            // as the kubelet does: a new cpuset cgroup gets its parent's cpus and mems
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(parent.join(f)) {
                    std::fs::write(dir.join(f), v.trim()).unwrap();
                }
            }
        }
    }
    let before = std::fs::read_to_string(theirs_dir.join("memory.limit_in_bytes")).unwrap();
    let mut pc2 = pod_config(&d, "resize2");
    pc2.linux = Some(cri::LinuxPodSandboxConfig { cgroup_parent: theirs.clone(), ..Default::default() });
    let pod2 = d.run_pod(&pc2).await;
    rt.update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod2.clone(),
        resources: Some(res(64)),
        overhead: None,
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read_to_string(theirs_dir.join("memory.limit_in_bytes")).unwrap(), before);
    d.remove_pod(&pod2).await;
    d.remove_pod(&pod).await;
    for h in skiff_tests::cgroup_v1_hierarchies() {
        std::fs::remove_dir(h.join(theirs.trim_start_matches('/'))).unwrap();
        let _ = std::fs::remove_dir(h.join(d.cgroup_parent.trim_start_matches('/')));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_signal_from_the_config_is_sent_and_reported() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "sig");
    let pod = d.run_pod(&pc).await;
    let mut cfg = container_config(
        "usr1",
        &["sh", "-c", "trap 'echo got-usr1; exit 0' USR1; echo ready; while true; do sleep 0.1; done"],
    );
    cfg.stop_signal = cri::Signal::Sigusr1 as i32;
    let id = d.create_and_start(&pod, &pc, cfg).await;
    let plain = d.create_and_start(&pod, &pc, container_config("plain", &["sleep", "1000"])).await;
    assert_eq!(d.container_status(&id).await.stop_signal, cri::Signal::Sigusr1 as i32);
    assert_eq!(d.container_status(&plain).await.stop_signal, cri::Signal::Sigterm as i32);
    let log = std::path::Path::new(&pc.log_directory).join("usr1.log");
    for _ in 0..50 {
        if read_log(&log).iter().any(|l| l.2 == "ready") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rt = d.runtime();
    rt.stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 30 }).await.unwrap();
    let st = d.container_status(&id).await;
    assert_eq!(st.exit_code, 0, "the trap for SIGUSR1 ran: {st:?}");
    assert!(read_log(&log).iter().any(|l| l.2 == "got-usr1"), "{:?}", read_log(&log));
    // an undefined signal value is refused
    let mut bad = container_config("bad", &["true"]);
    bad.stop_signal = 999;
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(bad),
            sandbox_config: Some(pc.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    d.remove_pod(&pod).await;
}
