//! Mutating RPCs cut off by the client's deadline (`SKIFF_FAILPOINTS` delays hold skiffd at a
//! chosen step while the deadline passes): the operation completes anyway, and a retry with the
//! same metadata gets the same pod or container instead of ALREADY_EXISTS; a cancelled start
//! runs the container once.

use std::time::{Duration, Instant};

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, monitors_of, Daemon};
use tonic::Code;

/// A request with a client deadline (sent to skiffd as `grpc-timeout`).
fn with_deadline<T>(msg: T, ms: u64) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(Duration::from_millis(ms));
    r
}

fn run_req(config: &cri::PodSandboxConfig) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() }
}

fn create_req(pod: &str, pc: &cri::PodSandboxConfig, c: &cri::ContainerConfig) -> cri::CreateContainerRequest {
    cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(c.clone()),
        sandbox_config: Some(pc.clone()),
    }
}

fn rootfs_mounts(d: &Daemon, id: &str) -> usize {
    let target = d.state().join("containers").join(id).join("rootfs");
    let target = target.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some(target.as_str()))
        .count()
}

async fn pods_named(d: &Daemon, name: &str) -> Vec<String> {
    let items = d.runtime().list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    items.into_iter().filter(|p| p.metadata.as_ref().map(|m| m.name.as_str()) == Some(name)).map(|p| p.id).collect()
}

async fn containers_named(d: &Daemon, name: &str) -> Vec<String> {
    let list = d.runtime().list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner();
    list.containers
        .into_iter()
        .filter(|c| c.metadata.as_ref().map(|m| m.name.as_str()) == Some(name))
        .map(|c| c.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_run_pod_sandbox_and_create_container_are_retried_to_the_same_id() {
    let d = Daemon::start_with_failpoints("pod:after_setup=sleep:1500,container:after_spec=sleep:1500").await;
    d.pull(BUSYBOX).await;

    // RunPodSandbox: cut off at 200 ms, retried at once (joins the creation under way).
    let pc = pod_config(&d, "cancelled");
    let err = d.runtime().run_pod_sandbox(with_deadline(run_req(&pc), 200)).await.unwrap_err();
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
    let t = Instant::now();
    let id = d.runtime().run_pod_sandbox(run_req(&pc)).await.expect("retry").into_inner().pod_sandbox_id;
    println!("retry joined the running creation: {:?}", t.elapsed());
    assert_eq!(pods_named(&d, "cancelled").await, vec![id.clone()]);
    // Delivered now: the same request again is a duplicate.
    let dup = d.runtime().run_pod_sandbox(run_req(&pc)).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists, "{dup:?}");

    // Cut off, then retried after the creation finished unclaimed: the same ID at once.
    let pc2 = pod_config(&d, "finished");
    let _ = d.runtime().run_pod_sandbox(with_deadline(run_req(&pc2), 200)).await.unwrap_err();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let t = Instant::now();
    let id2 = d.runtime().run_pod_sandbox(run_req(&pc2)).await.expect("late retry").into_inner().pod_sandbox_id;
    assert!(t.elapsed() < Duration::from_millis(1000), "the finished result took {:?}", t.elapsed());
    assert_eq!(pods_named(&d, "finished").await, vec![id2.clone()]);

    // CreateContainer: the same, joined while running and after it finished.
    let cc = container_config("sleeper", &["sleep", "3600"]);
    let err = d.runtime().create_container(with_deadline(create_req(&id, &pc, &cc), 200)).await.unwrap_err();
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
    let cid = d.runtime().create_container(create_req(&id, &pc, &cc)).await.expect("retry").into_inner().container_id;
    assert_eq!(containers_named(&d, "sleeper").await, vec![cid.clone()]);
    let dup = d.runtime().create_container(create_req(&id, &pc, &cc)).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists, "{dup:?}");

    let cc2 = container_config("later", &["sleep", "3600"]);
    let _ = d.runtime().create_container(with_deadline(create_req(&id, &pc, &cc2), 200)).await.unwrap_err();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let cid2 = d.runtime().create_container(create_req(&id, &pc, &cc2)).await.expect("late").into_inner().container_id;
    assert_eq!(containers_named(&d, "later").await, vec![cid2.clone()]);
    let st = d.container_status(&cid2).await;
    assert_eq!(st.state, cri::ContainerState::ContainerCreated as i32);

    d.remove_pod(&id).await;
    d.remove_pod(&id2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_start_runs_the_container_once() {
    let d = Daemon::start_with_failpoints("start:after_cgroup=sleep:1000,start:after_monitor=sleep:1000").await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "starter");
    let pod = d.run_pod(&pc).await;

    // Retried while the first start still runs: it waits for it and never starts a second monitor.
    let a = d.create(&pod, &pc, container_config("a", &["sleep", "3600"])).await.unwrap();
    let err =
        d.runtime().start_container(with_deadline(cri::StartContainerRequest { container_id: a.clone() }, 200)).await;
    assert!(err.is_err(), "the deadline should have cut the start off");
    let retry = d.runtime().start_container(cri::StartContainerRequest { container_id: a.clone() }).await;
    // Either answer is fine (the container was started by the first call); running twice is not.
    if let Err(e) = &retry {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    }
    let st = d.container_status(&a).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(monitors_of(&a).len(), 1, "monitors of {a}: {:?}", monitors_of(&a));
    assert_eq!(rootfs_mounts(&d, &a), 1);

    // Not retried: the start completes on its own, the record says RUNNING, one monitor.
    let b = d.create(&pod, &pc, container_config("b", &["sleep", "3600"])).await.unwrap();
    let _ =
        d.runtime().start_container(with_deadline(cri::StartContainerRequest { container_id: b.clone() }, 200)).await;
    // Meanwhile the record says CREATED and nothing runs, or RUNNING with its one monitor.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = d.container_status(&b).await;
        let monitors = monitors_of(&b).len();
        if st.state == cri::ContainerState::ContainerRunning as i32 {
            assert!(monitors <= 1, "{monitors} monitors");
            if monitors == 1 {
                break;
            }
        } else {
            assert_eq!(st.state, cri::ContainerState::ContainerCreated as i32);
        }
        assert!(Instant::now() < deadline, "start never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(monitors_of(&b).len(), 1);
    assert_eq!(rootfs_mounts(&d, &b), 1);
    d.remove_pod(&pod).await;
    assert!(monitors_of(&a).is_empty() && monitors_of(&b).is_empty());
}

/// Mounts under the daemon's dir, and entries of its state and record dirs.
fn held(d: &Daemon) -> Vec<String> {
    let dir = d.dir().to_string_lossy().into_owned();
    let mut out: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&dir))
        .map(|m| format!("mount {m}"))
        .collect();
    for sub in [
        d.state().join("pods"),
        d.state().join("containers"),
        d.root().join("metadata/pods"),
        d.root().join("metadata/containers"),
        d.root().join("containers"),
    ] {
        for e in std::fs::read_dir(&sub).into_iter().flatten().flatten() {
            out.push(e.path().display().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_creation_that_then_fails_leaves_nothing() {
    // Held 1 s at the first step (the client gives up), then failing at the next.
    let d = Daemon::start_with_failpoints("pod:after_setup=sleep:1000,pod:after_network").await;
    let pc = pod_config(&d, "doomed");
    let err = d.runtime().run_pod_sandbox(with_deadline(run_req(&pc), 200)).await.unwrap_err();
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
    // A retry joins it, sees it fail, tries itself (and fails at the same failpoint).
    let err = d.runtime().run_pod_sandbox(run_req(&pc)).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.message().contains("injected"), "{err:?}");
    assert!(pods_named(&d, "doomed").await.is_empty());
    assert_eq!(held(&d), Vec::<String>::new());

    // The same for CreateContainer, in a daemon whose pods work.
    drop(d);
    let d = Daemon::start_with_failpoints("container:after_rootfs=sleep:1000,container:after_spec").await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "host");
    let pod = d.run_pod(&pc).await;
    let cc = container_config("doomed", &["true"]);
    let _ = d.runtime().create_container(with_deadline(create_req(&pod, &pc, &cc), 200)).await.unwrap_err();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(containers_named(&d, "doomed").await.is_empty());
    assert!(std::fs::read_dir(d.state().join("containers")).map(|r| r.count()).unwrap_or(0) == 0);
    assert!(std::fs::read_dir(d.root().join("containers")).map(|r| r.count()).unwrap_or(0) == 0);
    // The name is free again: the next attempt runs (and fails at the failpoint, not as a duplicate).
    let err = d.runtime().create_container(create_req(&pod, &pc, &cc)).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    d.remove_pod(&pod).await;
    assert_eq!(held(&d), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_cut_off_creation_finish() {
    let mut d = Daemon::start_with_failpoints("pod:after_setup=sleep:1500").await;
    let pc = pod_config(&d, "draining");
    let _ = d.runtime().run_pod_sandbox(with_deadline(run_req(&pc), 200)).await.unwrap_err();
    // SIGTERM while the creation (whose caller is gone) still runs: skiffd waits for it.
    d.restart().await;
    assert!(d.log().contains("pod sandbox ready"), "the creation did not finish before the exit");
    let ids = pods_named(&d, "draining").await;
    assert_eq!(ids.len(), 1, "the pod was rolled back instead of completed");
    assert_eq!(d.pod_status(&ids[0]).await.state, cri::PodSandboxState::SandboxReady as i32);
    d.remove_pod(&ids[0]).await;
}

/// The answer to a call whose `grpc-timeout` passes is DEADLINE_EXCEEDED (as grpc-go servers
/// give it), never CANCELLED, whether or not the client's own timer fired first. A raw client
/// without a timer of its own sees skiffd's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_is_deadline_exceeded() {
    // The creation outlasts the three calls below, which all join it.
    let d = Daemon::start_with_failpoints("pod:after_setup=sleep:4000").await;
    let pc = pod_config(&d, "deadline-code");
    for _ in 0..3 {
        let mut req = tonic::Request::new(run_req(&pc));
        // tonic's client also runs a timer for this header, and answers CANCELLED itself when
        // it fires first: skiffd answers 50 ms before it (the margin of a 1 s deadline), enough
        // on a loaded 2-core machine, where a 300 ms deadline's 15 ms were not.
        req.metadata_mut().insert("grpc-timeout", "1000m".parse().unwrap());
        let t = Instant::now();
        let e = d.runtime().run_pod_sandbox(req).await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
        assert!(t.elapsed() < Duration::from_millis(1300), "answered after {:?}", t.elapsed());
    }
    // The cut-off creation finished in the background and a retry gets it.
    let pod = d.run_pod(&pc).await;
    d.remove_pod(&pod).await;
}
