//! skiffd killed with SIGKILL and started again: running containers keep running (and logging)
//! under their monitors, containers that exited meanwhile are EXITED with their real exit
//! code, a container whose monitor died is EXITED with reason Unknown, names stay reserved,
//! and pods/containers caught half-created are rolled back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_tests::pods::{container_config, pod_config, read_log, BUSYBOX};
use skiff_tests::{cri, Daemon};
use tonic::Code;

async fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_skiffd_leaves_containers_alone() {
    let mut d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let trigger = d.dir().join("trigger");
    std::fs::create_dir_all(&trigger).unwrap();
    let pc = pod_config(&d, "survivor");
    let pod = d.run_pod(&pc).await;
    let runner = d
        .create_and_start(
            &pod,
            &pc,
            container_config(
                "runner",
                &["sh", "-c", "i=0; while true; do echo tick-$i; i=$((i+1)); usleep 20000; done"],
            ),
        )
        .await;
    let mut cfg =
        container_config("exiter", &["sh", "-c", "while [ ! -e /trigger/go ]; do usleep 20000; done; exit 7"]);
    cfg.mounts.push(cri::Mount {
        container_path: "/trigger".into(),
        host_path: trigger.display().to_string(),
        ..Default::default()
    });
    let exiter = d.create_and_start(&pod, &pc, cfg).await;
    let orphan = d.create_and_start(&pod, &pc, container_config("orphan", &["sleep", "1000"])).await;
    let runner_info = d.container_info(&runner).await;
    let orphan_monitor = d.container_info(&orphan).await["monitorPid"].as_i64().unwrap();
    let log = PathBuf::from(d.container_status(&runner).await.log_path);
    wait_until(Duration::from_secs(10), "the runner's first lines", || read_log(&log).len() > 3).await;

    d.kill();
    // While skiffd is down: one container exits, one loses its monitor, the runner logs on.
    std::fs::write(trigger.join("go"), b"").unwrap();
    let exit_record = d.state().join("containers").join(&exiter).join("exit.json");
    wait_until(Duration::from_secs(10), "the exit record of the exiter", || exit_record.exists()).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(orphan_monitor as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let before = read_log(&log).len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(read_log(&log).len() > before, "no log lines written while skiffd was down");

    d.start_again().await;
    let st = d.container_status(&runner).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32, "{st:?}");
    let info = d.container_info(&runner).await;
    assert_eq!(info["pid"], runner_info["pid"]);
    assert!(alive(info["pid"].as_i64().unwrap()));
    let st = d.container_status(&exiter).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32, "{st:?}");
    assert_eq!((st.exit_code, st.reason.as_str()), (7, "Error"), "{st:?}");
    assert!(st.finished_at > st.started_at);
    let st = d.container_status(&orphan).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32, "{st:?}");
    assert_eq!(st.reason, "Unknown", "{st:?}");
    let pods = d.runtime().list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);

    // The runner still logs, answers exec and stops; its log has no gap.
    let before = read_log(&log).len();
    wait_until(Duration::from_secs(5), "more log lines", || read_log(&log).len() > before + 3).await;
    let out = d.exec(&runner, &["echo", "still-here"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still-here\n");
    d.runtime().stop_container(cri::StopContainerRequest { container_id: runner.clone(), timeout: 0 }).await.unwrap();
    let st = d.container_status(&runner).await;
    assert_eq!((st.state, st.exit_code), (cri::ContainerState::ContainerExited as i32, 137), "{st:?}");
    let numbers: Vec<u64> =
        read_log(&log).iter().map(|l| l.2.strip_prefix("tick-").unwrap().parse().unwrap()).collect();
    assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>());

    // Names stay reserved across the restart.
    let err = d.create(&pod, &pc, container_config("runner", &["true"])).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let err = d
        .runtime()
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pc.clone()), runtime_handler: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    d.remove_pod(&pod).await;
}

/// The record `id` of the record directory `dir` (`ROOT/metadata/pods`, ...) as skiffd has it.
fn read_in(dir: &Path, id: &str) -> Vec<u8> {
    let (root, kind) = (dir.parent().and_then(Path::parent).unwrap(), dir.file_name().unwrap().to_string_lossy());
    skiff_tests::read_record(root, &format!("metadata/{kind}/{id}.json")).unwrap()
}

/// Copies the record `from` in `dir` to `to` with state "creating" and `name`.
fn fake_creating_record(dir: &Path, from: &str, to: &str, name: &str) {
    let mut v: serde_json::Value = serde_json::from_slice(&read_in(dir, from)).unwrap();
    let rec = v.get_mut("record").expect("versioned envelope with a record");
    rec["id"] = to.into();
    rec["name"] = name.into();
    rec["state"] = "creating".into();
    // A pod's own cgroup (`<parent>/<pod id>`), as the first persisted record names it.
    if let Some(cg) = rec.get("cgroup_parent").and_then(|c| c.as_str()).map(|c| c.replace(from, to)) {
        rec["cgroup_parent"] = cg.into();
    }
    // As first persisted: nothing acquired recorded yet.
    if rec.get("namespaces").is_some() {
        rec["namespaces"] = serde_json::json!({});
        rec["ips"] = serde_json::json!([]);
        rec["network_set_up"] = false.into();
        rec["shm_mounted"] = false.into();
    }
    std::fs::write(dir.join(format!("{to}.json")), serde_json::to_vec(&v).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_created_pods_and_containers_are_rolled_back() {
    let mut d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "half");
    let pod = d.run_pod(&pc).await;
    let ctr = d.create(&pod, &pc, container_config("done", &["sleep", "1000"])).await.unwrap();
    let pod_name = d.pod_status(&pod).await.metadata.unwrap();
    d.kill();

    // A pod and a container caught in the middle of their creation: records in "creating"
    // state with some of their files made.
    let meta = d.root().join("metadata");
    let half_pod = format!("{:064x}", 0xdead_beefu64);
    let half_ctr = format!("{:064x}", 0xfeed_faceu64);
    let half_pod_name = format!("{}_{}_{}_1", pod_name.name, pod_name.namespace, pod_name.uid);
    fake_creating_record(&meta.join("pods"), &pod, &half_pod, &half_pod_name);
    let pod_dir = d.state().join("pods").join(&half_pod);
    std::fs::create_dir_all(pod_dir.join("ns")).unwrap();
    std::fs::create_dir_all(pod_dir.join("shm")).unwrap();
    std::fs::write(pod_dir.join("hostname"), "half\n").unwrap();
    // A pinned namespace and the shm tmpfs, as RunPodSandbox makes them before it persists.
    std::fs::write(pod_dir.join("ns/uts"), b"").unwrap();
    nix::mount::mount(
        Some("/proc/self/ns/uts"),
        &pod_dir.join("ns/uts"),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    nix::mount::mount(Some("shm"), &pod_dir.join("shm"), Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m"))
        .unwrap();
    let half_ctr_name = format!("later_{}_{}_{}_0", pod_name.name, pod_name.namespace, pod_name.uid);
    fake_creating_record(&meta.join("containers"), &ctr, &half_ctr, &half_ctr_name);
    let ctr_dir = d.state().join("containers").join(&half_ctr);
    std::fs::create_dir_all(ctr_dir.join("rootfs")).unwrap();

    d.start_again().await;
    let pods = d.runtime().list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert_eq!(pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), vec![pod.as_str()]);
    let ctrs =
        d.runtime().list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    assert_eq!(ctrs.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec![ctr.as_str()]);
    assert_eq!(ctrs[0].state, cri::ContainerState::ContainerCreated as i32);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);
    assert!(!pod_dir.exists(), "{} left", pod_dir.display());
    assert!(!ctr_dir.exists(), "{} left", ctr_dir.display());
    assert!(skiff_tests::read_record(d.root(), &format!("metadata/pods/{half_pod}.json")).is_none());
    assert!(skiff_tests::read_record(d.root(), &format!("metadata/containers/{half_ctr}.json")).is_none());
    let err = d
        .runtime()
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: half_pod.clone(), verbose: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Their names are free; the surviving container starts.
    let mut again = pc.clone();
    again.metadata.as_mut().unwrap().attempt = 1;
    let pod2 = d.run_pod(&again).await;
    d.create(&pod, &pc, container_config("later", &["true"])).await.unwrap();
    d.runtime().start_container(cri::StartContainerRequest { container_id: ctr.clone() }).await.unwrap();
    assert_eq!(d.container_status(&ctr).await.state, cri::ContainerState::ContainerRunning as i32);
    d.remove_pod(&pod2).await;
    d.remove_pod(&pod).await;
}

/// Sets the state of a container record on disk.
fn set_state(dir: &Path, id: &str, state: &str) {
    let path = dir.join(format!("{id}.json"));
    let mut v: serde_json::Value = serde_json::from_slice(&read_in(dir, id)).unwrap();
    v["record"]["state"] = state.into();
    if state == "created" {
        // As persisted before the start: no pids, no start time.
        v["record"]["pid"] = serde_json::Value::Null;
        v["record"]["monitor_pid"] = serde_json::Value::Null;
        v["record"]["started_at"] = 0.into();
    }
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_start_container() {
    let mut d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "midstart");
    let pod = d.run_pod(&pc).await;
    let id = d.create_and_start(&pod, &pc, container_config("c", &["sleep", "1000"])).await;
    let pid = d.container_info(&id).await["pid"].as_i64().unwrap();
    d.kill();
    // As if skiffd died after the monitor started the container but before it persisted
    // RUNNING: the record still says "created".
    set_state(&d.root().join("metadata/containers"), &id, "created");
    d.start_again().await;
    let st = d.container_status(&id).await;
    // The running container is adopted (never CREATED while it runs, never started twice).
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32, "{st:?}");
    let err = d.runtime().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(alive(pid));
    assert_eq!(d.container_info(&id).await["pid"].as_i64(), Some(pid));
    assert!(st.started_at > 0, "{st:?}");
    d.runtime().stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 0 }).await.unwrap();
    assert!(!alive(pid), "the container survived its stop");
    let st = d.container_status(&id).await;
    assert_eq!((st.state, st.exit_code), (cri::ContainerState::ContainerExited as i32, 137), "{st:?}");
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_empties_the_state_dir() {
    let mut d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "reboot");
    let pod = d.run_pod(&pc).await;
    let id = d.create_and_start(&pod, &pc, container_config("c", &["sleep", "1000"])).await;
    let created = d.create(&pod, &pc, container_config("never", &["true"])).await.unwrap();
    d.kill();

    // "Reboot": every process gone, every mount under the state dir gone, the dir empty, no cgroups.
    d.simulate_reboot();

    d.start_again().await;
    let pods = d.runtime().list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxNotready as i32);
    let st = d.container_status(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32, "{st:?}");
    assert_eq!(st.reason, "Unknown", "{st:?}");
    // The never-started container cannot start in a pod that is gone.
    let err =
        d.runtime().start_container(cri::StartContainerRequest { container_id: created.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // The kubelet then removes the pod; a new pod of the same name works.
    d.remove_pod(&pod).await;
    let mut again = pc.clone();
    again.metadata.as_mut().unwrap().attempt = 1;
    let pod2 = d.run_pod(&again).await;
    let id2 = d.create_and_start(&pod2, &again, container_config("c", &["sleep", "1000"])).await;
    assert_eq!(d.container_status(&id2).await.state, cri::ContainerState::ContainerRunning as i32);
    d.remove_pod(&pod2).await;
}

/// Names in `dir` (none when it does not exist), dot files left out.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.retain(|n| !n.starts_with('.'));
    v.sort();
    v
}

/// CreateContainer writes its CREATED record while it makes the layer's directories, the spec
/// and config.json, and answers once both are done: a skiffd killed in the middle of one (the
/// writable layer, its hold, the state dir and the record made, config.json not yet) leaves
/// nothing after its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_container_killed_midway_leaves_nothing() {
    let mut d = Daemon::start_with_failpoints("container:after_rootfs=sleep:2000").await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "midway");
    let pod = d.run_pod(&pc).await;
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(container_config("cut", &["true"])),
        sandbox_config: Some(pc.clone()),
    };
    let mut client = d.runtime();
    let call = tokio::spawn(async move { client.create_container(req).await });
    let (layers, states) = (d.root().join("containers"), d.state().join("containers"));
    wait_until(Duration::from_secs(10), "the layer and the state dir made", || {
        !names_in(&layers).is_empty() && !names_in(&states).is_empty()
    })
    .await;
    let id = names_in(&states).remove(0);
    // The record's thread is done well before the failpoint's 2 s end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!states.join(&id).join("config.json").exists());
    d.kill();
    assert!(call.await.unwrap().is_err());
    assert_eq!(names_in(&layers), vec![id.clone()], "a hold on the disk before the restart");

    d.start_again().await;
    assert_eq!(names_in(&states), Vec::<String>::new(), "state dir of no container left");
    assert_eq!(names_in(&layers), Vec::<String>::new(), "writable layer of no container left");
    let ctrs =
        d.runtime().list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    assert!(ctrs.is_empty(), "{ctrs:?}");
    assert!(d.log().contains("whose creation was cut off before its answer"), "{}", d.log());
    // The name is free: the next attempt creates the container.
    let c = d.create(&pod, &pc, container_config("cut", &["true"])).await.unwrap();
    assert_eq!(c.len(), id.len());
    d.remove_pod(&pod).await;
}
