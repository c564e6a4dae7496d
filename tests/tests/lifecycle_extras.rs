//! Pod and container details beyond the basic lifecycle: a kubelet-style cgroup_parent (missing
//! parents created, only skiff-made ones removed), the termination message (file, and
//! FallbackToLogsOnError), ExecSync output cap, ListContainers state filter.

use std::collections::HashMap;
use std::time::Duration;

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, memory_hierarchy, Daemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_style_cgroup_parent() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let mem = memory_hierarchy();
    // The kubelet made .../kubepods itself; burstable and pod<uid> are for skiff to create.
    let kubepods = format!("{}/kubepods", d.cgroup_parent);
    std::fs::create_dir_all(mem.join(kubepods.trim_start_matches('/'))).unwrap();
    let parent = format!("{kubepods}/burstable/poduid-cg");
    let mut pc = pod_config(&d, "cg");
    pc.linux = Some(cri::LinuxPodSandboxConfig { cgroup_parent: parent.clone(), ..Default::default() });
    let pod = d.run_pod(&pc).await;
    assert!(mem.join(parent.trim_start_matches('/')).is_dir());
    let id = d.create_and_start(&pod, &pc, container_config("c", &["sleep", "1000"])).await;
    let ctr_cg = mem.join(parent.trim_start_matches('/')).join(&id);
    assert!(ctr_cg.is_dir(), "{}", ctr_cg.display());
    d.remove_pod(&pod).await;
    assert!(!mem.join(format!("{kubepods}/burstable").trim_start_matches('/')).exists(), "skiff's parents left");
    assert!(mem.join(kubepods.trim_start_matches('/')).is_dir(), "the kubelet's cgroup was removed");
    // Ours to clean (the other hierarchies got only what skiff made, now removed).
    std::fs::remove_dir(mem.join(kubepods.trim_start_matches('/'))).unwrap();
    std::fs::remove_dir(mem.join(d.cgroup_parent.trim_start_matches('/'))).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_message_exec_cap_and_state_filter() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "term");
    let pod = d.run_pod(&pc).await;
    let with = |name: &str, cmd: &str, policy: &str| {
        let mut c = container_config(name, &["sh", "-c", cmd]);
        c.annotations = HashMap::from([
            ("io.kubernetes.container.terminationMessagePath".into(), "/tmp/termination-log".into()),
            ("io.kubernetes.container.terminationMessagePolicy".into(), policy.into()),
        ]);
        c
    };
    let file = d.create_and_start(&pod, &pc, with("file", "echo boom > /tmp/termination-log; exit 2", "File")).await;
    let logs = d
        .create_and_start(&pod, &pc, with("fallback", "echo first; echo last words; exit 1", "FallbackToLogsOnError"))
        .await;
    let ok = d.create_and_start(&pod, &pc, with("ok", "echo fine; exit 0", "FallbackToLogsOnError")).await;
    let st = d.wait_exited(&file, Duration::from_secs(20)).await;
    assert_eq!((st.exit_code, st.message.trim()), (2, "boom"), "{st:?}");
    let st = d.wait_exited(&logs, Duration::from_secs(20)).await;
    assert_eq!(st.exit_code, 1);
    assert!(st.message.contains("last words"), "{st:?}");
    let st = d.wait_exited(&ok, Duration::from_secs(20)).await;
    assert_eq!((st.exit_code, st.message.as_str()), (0, ""), "{st:?}");

    // ExecSync output is capped (16 MiB per stream, and the response fits the 16 MiB gRPC
    // message limit): the caller gets the output, not an encoding error.
    let runner = d.create_and_start(&pod, &pc, container_config("runner", &["sleep", "1000"])).await;
    let out = d.exec(&runner, &["sh", "-c", "head -c 20000000 /dev/zero; echo done >&2"], 30).await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(out.stdout.len() > (15 << 20) && out.stdout.len() + out.stderr.len() < (16 << 20), "{}", out.stdout.len());
    assert!(out.stdout.iter().all(|b| *b == 0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "done\n");

    // ListContainers by state.
    let by_state = |s: cri::ContainerState| {
        let filter = cri::ContainerFilter {
            state: Some(cri::ContainerStateValue { state: s as i32 }),
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        };
        d.container_ids(Some(filter))
    };
    assert_eq!(by_state(cri::ContainerState::ContainerRunning).await, vec![runner.clone()]);
    let mut exited = vec![file, logs, ok];
    exited.sort();
    assert_eq!(by_state(cri::ContainerState::ContainerExited).await, exited);
    assert!(by_state(cri::ContainerState::ContainerCreated).await.is_empty());
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "race");
    // Five RunPodSandbox of the same pod at once: one pod is made; the calls that arrive while
    // it is being made join it and get its ID, later ones get AlreadyExists.
    let runs = (0..5).map(|_| {
        let mut rt = d.runtime();
        let pc = pc.clone();
        async move {
            rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pc), runtime_handler: String::new() }).await
        }
    });
    let results = futures_join_all(runs).await;
    let mut ok: Vec<String> =
        results.iter().filter_map(|r| r.as_ref().ok().map(|r| r.get_ref().pod_sandbox_id.clone())).collect();
    ok.dedup();
    assert_eq!(ok.len(), 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
        }
    }
    let pod = ok[0].clone();
    let creates = (0..5).map(|_| d.create(&pod, &pc, container_config("same", &["sleep", "1000"])));
    let results = futures_join_all(creates).await;
    let mut ok: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    ok.dedup();
    assert_eq!(ok.len(), 1, "{results:?}");
    assert!(results.iter().all(|r| r.as_ref().err().is_none_or(|e| e.code() == tonic::Code::AlreadyExists)));
    assert_eq!(std::fs::read_dir(d.state().join("containers")).unwrap().count(), 1);
    d.remove_pod(&pod).await;
}

/// Awaits all futures concurrently (on this task).
async fn futures_join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    let mut handles: Vec<Option<std::pin::Pin<Box<F>>>> = handles.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, h) in handles.iter_mut().enumerate() {
            if let Some(f) = h {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out[i] = Some(v);
                        *h = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failures_and_image_removed_under_a_container() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let mut pc = pod_config(&d, "failures");
    // The log directory cannot be created (a file is in the way): the start fails cleanly.
    let blocker = d.dir().join("blocker");
    std::fs::write(&blocker, b"").unwrap();
    pc.log_directory = blocker.join("logs").display().to_string();
    let pod = d.run_pod(&pc).await;
    let id = d.create(&pod, &pc, container_config("nolog", &["sleep", "1000"])).await.unwrap();
    let err = d.runtime().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap_err();
    assert!(err.message().contains("blocker"), "{err:?}");
    let st = d.container_status(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32, "{st:?}");
    assert!(skiff_tests::processes_mentioning(&id).is_empty(), "a monitor was left running");
    d.runtime().remove_container(cri::RemoveContainerRequest { container_id: id }).await.unwrap();
    d.remove_pod(&pod).await;

    // The image is removed after CreateContainer: the container still starts and runs.
    let pc = pod_config(&d, "noimage");
    let pod = d.run_pod(&pc).await;
    let id = d.create(&pod, &pc, container_config("c", &["sh", "-c", "echo still-here; sleep 1000"])).await.unwrap();
    d.images()
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec { image: BUSYBOX.into(), ..Default::default() }),
        })
        .await
        .unwrap();
    d.runtime().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap();
    let out = d.exec(&id, &["cat", "/bin/sh"], 10).await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(!out.stdout.is_empty());
    d.remove_pod(&pod).await;
}
