//! RemoveContainer deletes the writable layer and the state dir after it answers (renamed
//! away before, deleted in the background): both are gone from their places when it returns,
//! deleted shortly after, the image is free at once, and a trash a killed skiffd left behind
//! is swept at the next start. StopPodSandbox leaves the veth's deletion to a background task;
//! when that fails, RemovePodSandbox tears the network down itself. RemovePodSandbox leaves
//! the pod's namespace pins, shm, files and cgroup to a background task too, its record kept
//! (durably `removing`) until they are gone.

mod net_support;

use std::path::Path;
use std::time::{Duration, Instant};

use net_support::leases;
use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, Daemon};

/// The entries of `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn trash_of(d: &Daemon) -> Vec<String> {
    let mut out: Vec<String> = entries(&d.state().join("trash"));
    out.extend(entries(&d.root().join("containers")).into_iter().filter(|n| n.starts_with(".del-")));
    out
}

async fn wait_no_trash(d: &Daemon, within: Duration) {
    let deadline = Instant::now() + within;
    while !trash_of(d).is_empty() {
        assert!(Instant::now() < deadline, "still there after {within:?}: {:?}", trash_of(d));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_container_dirs_are_deleted_in_the_background() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "bgrm");
    let pod = d.run_pod(&pc).await;
    // Some data in the writable layer (a few hundred files and 4 MiB).
    let cfg = container_config(
        "w",
        &["sh", "-c", "mkdir /data; for i in $(seq 300); do echo $i > /data/f$i; done; head -c 4194304 /dev/zero > /big; sleep 3600"],
    );
    let id = d.create_and_start(&pod, &pc, cfg).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.root().join("containers").join(&id).join("upper/big").exists() {
        assert!(Instant::now() < deadline, "the container did not write its data");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.runtime().stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 0 }).await.unwrap();
    d.runtime().remove_container(cri::RemoveContainerRequest { container_id: id.clone() }).await.unwrap();
    // Gone from their places when RemoveContainer answers.
    assert!(!d.state().join("containers").join(&id).exists());
    assert!(!d.root().join("containers").join(&id).exists());
    // Deleted shortly after.
    wait_no_trash(&d, Duration::from_secs(10)).await;
    assert!(
        !entries(&d.root().join("containers")).iter().any(|n| n.contains(&id)),
        "{:?}",
        entries(&d.root().join("containers"))
    );
    // Idempotent, and a second container in the same pod is removed alike, also with the pod.
    d.runtime().remove_container(cri::RemoveContainerRequest { container_id: id.clone() }).await.unwrap();
    let id2 = d.create_and_start(&pod, &pc, container_config("x", &["sleep", "3600"])).await;
    d.remove_pod(&pod).await;
    assert!(!d.state().join("containers").join(&id2).exists());
    wait_no_trash(&d, Duration::from_secs(10)).await;
    // The image has no holder any more: it can be removed (the pod does not use it).
    d.images()
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec { image: BUSYBOX.into(), ..Default::default() }),
        })
        .await
        .unwrap();
    let left = d.images().list_images(cri::ListImagesRequest { filter: None }).await.unwrap().into_inner().images;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trash_left_by_a_killed_skiffd_is_swept_at_start() {
    let mut d = Daemon::start().await;
    d.kill();
    // What a skiffd killed between RemoveContainer's answer and its background deletion leaves.
    let state_trash = d.state().join("trash").join("0123abcd-77-0");
    std::fs::create_dir_all(state_trash.join("rootfs")).unwrap();
    std::fs::write(state_trash.join("exit.json"), b"{}").unwrap();
    let layer = d.root().join("containers").join(".del-0123abcd-77-0");
    std::fs::create_dir_all(layer.join("upper/etc")).unwrap();
    std::fs::write(layer.join("upper/etc/x"), b"x").unwrap();
    std::fs::write(layer.join("rootfs.json"), b"{}").unwrap();
    assert_eq!(trash_of(&d).len(), 2);
    d.start_again().await;
    wait_no_trash(&d, Duration::from_secs(10)).await;
    d.restart().await;
    assert!(trash_of(&d).is_empty());
}

fn chattr(flag: &str, path: &Path) {
    let st = std::process::Command::new("chattr").arg(flag).arg(path).status().expect("chattr");
    assert!(st.success(), "chattr {flag} {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_background_deletion_is_logged_and_retried_at_the_next_start() {
    let ok = std::process::Command::new("chattr").arg("-V").output().is_ok();
    if !common::prerequisite(ok, "chattr (e2fsprogs) to make a file undeletable") {
        return;
    }
    let mut d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "bgfail");
    let pod = d.run_pod(&pc).await;
    let id = d.create_and_start(&pod, &pc, container_config("w", &["sh", "-c", "echo x > /stuck; sleep 3600"])).await;
    let stuck = d.root().join("containers").join(&id).join("upper/stuck");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stuck.exists() {
        assert!(Instant::now() < deadline, "the container did not write its file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.runtime().stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 0 }).await.unwrap();
    // An immutable file: its unlink fails with EPERM, also for root.
    let probe = stuck.with_file_name("probe");
    std::fs::write(&probe, b"p").unwrap();
    chattr("+i", &probe);
    let undeletable = std::fs::remove_file(&probe).is_err();
    chattr("-i", &probe);
    std::fs::remove_file(&probe).unwrap();
    if !common::prerequisite(undeletable, "a file system honouring the immutable attribute") {
        d.remove_pod(&pod).await;
        return;
    }
    chattr("+i", &stuck);
    d.runtime().remove_container(cri::RemoveContainerRequest { container_id: id.clone() }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("cannot delete a removed container's directory") {
        assert!(Instant::now() < deadline, "no warning logged:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<String> =
        entries(&d.root().join("containers")).into_iter().filter(|n| n.starts_with(&format!(".del-{id}"))).collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(d.log().contains(&left[0]), "the warning names the path");
    // Fixed by hand; the next start deletes it.
    chattr("-i", &d.root().join("containers").join(&left[0]).join("upper/stuck"));
    d.remove_pod(&pod).await;
    d.restart().await;
    wait_no_trash(&d, Duration::from_secs(10)).await;
}

/// StopPodSandbox leaves the veth's deletion (and then the lease's release) to a background
/// task: a graceful shutdown right after waits for it, and a RemovePodSandbox right after
/// leaves nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_pod_sandbox_veth_deletion_in_the_background() {
    let mut d = Daemon::start().await;
    let brif = std::path::PathBuf::from("/sys/class/net").join(&d.bridge).join("brif");
    let pa = pod_config(&d, "neta");
    let a = d.run_pod(&pa).await;
    assert_eq!(entries(&brif).len(), 1);
    d.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: a.clone() }).await.unwrap();
    let status = d.stop();
    assert!(status.map(|s| s.success()).unwrap_or(false), "{}", d.log());
    assert!(entries(&brif).is_empty(), "the shutdown did not wait: {:?}", entries(&brif));
    assert!(!d.log().contains("operations still under way at shutdown"), "{}", d.log());
    d.start_again().await;
    // Its lease went with the veth: a new pod gets an address, stop + remove at once.
    let pb = pod_config(&d, "netb");
    let b = d.run_pod(&pb).await;
    d.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: b.clone() }).await.unwrap();
    d.remove_pod(&b).await;
    assert!(entries(&brif).is_empty(), "{:?}", entries(&brif));
    d.remove_pod(&a).await;
    let pods = d.runtime().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.unwrap().into_inner();
    assert!(pods.items.is_empty());
    assert!(!d.log().contains("network teardown after StopPodSandbox failed"), "{}", d.log());
}

/// The pod's record as skiffd persisted it.
fn pod_record(d: &Daemon, pod: &str) -> serde_json::Value {
    let rec = skiff_tests::read_record(d.root(), &format!("metadata/pods/{pod}.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&rec).unwrap();
    v["record"].clone()
}

/// Whether skiffd has a record of the pod (in its journal or in the file).
fn has_record(d: &Daemon, pod: &str) -> bool {
    skiff_tests::read_record(d.root(), &format!("metadata/pods/{pod}.json")).is_some()
}

/// A failed background teardown (failpoint `pod:background_teardown`, before anything is torn
/// down) is logged with the pod and kept in its `error`; the pod stays `network_set_up` (its
/// veth and lease kept), and RemovePodSandbox tears the network down itself: when it answers,
/// the veth and the lease are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_background_veth_teardown_is_kept_and_retried_by_remove_pod_sandbox() {
    const WARNING: &str = "network teardown after StopPodSandbox failed";
    let d = Daemon::start_with_failpoints("pod:background_teardown").await;
    let brif = std::path::PathBuf::from("/sys/class/net").join(&d.bridge).join("brif");
    let pc = pod_config(&d, "netfail");
    let pod = d.run_pod(&pc).await;
    let ip = d.pod_ip(&pod).await;
    assert!(!ip.is_empty());
    assert_eq!(entries(&brif).len(), 1);
    assert_eq!(leases(&d).get(&pod), Some(&vec![ip.clone()]));
    d.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();

    // The background task fails: a warning naming the pod and the cause...
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains(WARNING) {
        assert!(Instant::now() < deadline, "no warning logged:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = d.log();
    let line = log.lines().find(|l| l.contains(WARNING)).unwrap();
    assert!(line.contains(&pod) && line.contains("injected failure"), "{line}");
    // ...the failure in the pod's error once the task let go of the pod, also on disk, where the
    // pod is still NOTREADY with its network set up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        let info = d.pod_info(&pod).await;
        if info["networkTeardownInBackground"] == false && pod_record(&d, &pod)["error"].is_string() {
            break info;
        }
        assert!(Instant::now() < deadline, "the background teardown is still under way: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = info["error"].as_str().unwrap_or_else(|| panic!("no error kept: {info}"));
    assert!(error.starts_with("network teardown: ") && error.contains("injected failure"), "{error}");
    assert_eq!(d.pod_status(&pod).await.state, cri::PodSandboxState::SandboxNotready as i32);
    let record = pod_record(&d, &pod);
    assert_eq!(record["network_set_up"], true, "{record}");
    assert_eq!(record["error"], error, "{record}");
    assert_eq!(entries(&brif).len(), 1, "the veth went although the teardown failed");
    assert_eq!(leases(&d).get(&pod), Some(&vec![ip.clone()]));

    // RemovePodSandbox tears the network down before it answers.
    d.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert!(entries(&brif).is_empty(), "{:?}", entries(&brif));
    assert!(leases(&d).is_empty(), "{:?}", leases(&d));
    let pods = d.runtime().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.unwrap().into_inner();
    assert!(pods.items.is_empty());
}

/// Waits for a pod whose removal failed in the background to be back; it must be NOTREADY.
/// Returns its verbose info and the `error` in it.
async fn wait_back_not_ready(d: &Daemon, pod: &str) -> (serde_json::Value, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Ok(s) = d
            .runtime()
            .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.into(), verbose: true })
            .await
        {
            break s.into_inner();
        }
        assert!(Instant::now() < deadline, "the pod did not come back:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.status.unwrap().state, cri::PodSandboxState::SandboxNotready as i32);
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    let error = info["error"].as_str().unwrap_or_default().to_owned();
    (info, error)
}

/// A removed pod is gone for List and Status, and removing it again is fine.
async fn assert_gone(d: &Daemon, pod: &str) {
    let pods = d.runtime().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.unwrap().into_inner();
    assert!(pods.items.is_empty(), "{:?}", pods.items);
    let err = d
        .runtime()
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.into(), verbose: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    d.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.into() }).await.unwrap();
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// RemovePodSandbox right after StopPodSandbox, while the background veth deletion is under
/// way (held up by the failpoint): it answers at once; the pod is gone for every call, its
/// record kept with `removing` and its name and address reserved until the veth and the lease
/// are gone, then the record is deleted; a RunPodSandbox of the same name meanwhile waits for
/// the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_pod_sandbox_hands_the_end_of_the_removal_to_the_background_teardown() {
    let d = Daemon::start_with_failpoints("pod:background_teardown=sleep:1500").await;
    let brif = std::path::PathBuf::from("/sys/class/net").join(&d.bridge).join("brif");
    let pc = pod_config(&d, "handoff");
    let pod = d.run_pod(&pc).await;
    let ip = d.pod_ip(&pod).await;
    d.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert_eq!(d.pod_info(&pod).await["networkTeardownInBackground"], true);
    d.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();

    // Gone for every call (and removing it again is fine)...
    assert_gone(&d, &pod).await;
    // ...while its record, address and name are kept (the veth may already be gone: the
    // removal deleted the pod's network namespace, which takes the veth pair with it).
    assert_eq!(pod_record(&d, &pod)["removing"], true);
    assert_eq!(leases(&d).get(&pod), Some(&vec![ip.clone()]));
    // A new pod of the same name waits for the name (instead of being refused), so it runs
    // only once the background teardown has ended the removal.
    assert!(has_record(&d, &pod));
    let again = d.run_pod(&pc).await;
    assert!(!has_record(&d, &pod));
    assert!(!leases(&d).contains_key(&pod), "{:?}", leases(&d));
    assert!(d.log().contains("removed pod sandbox torn down, record deleted"), "{}", d.log());
    d.remove_pod(&again).await;
    assert!(leases(&d).is_empty(), "{:?}", leases(&d));
    assert!(entries(&brif).is_empty(), "{:?}", entries(&brif));
}

/// A skiffd killed after such a removal answered finishes it at its next start: no record,
/// veth or lease is left, and the name is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_left_to_the_background_is_finished_after_sigkill() {
    let mut d = Daemon::start_with_failpoints("pod:background_teardown=sleep:5000").await;
    let brif = std::path::PathBuf::from("/sys/class/net").join(&d.bridge).join("brif");
    let pc = pod_config(&d, "handoff-kill");
    let pod = d.run_pod(&pc).await;
    d.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    d.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert_eq!(pod_record(&d, &pod)["removing"], true);
    d.kill();
    d.start_again().await;
    assert!(d.log().contains("finishing a pod sandbox removal that was interrupted"), "{}", d.log());
    assert!(!has_record(&d, &pod));
    let pods = d.runtime().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.unwrap().into_inner();
    assert!(pods.items.is_empty(), "{:?}", pods.items);
    assert!(entries(&brif).is_empty(), "{:?}", entries(&brif));
    assert!(leases(&d).is_empty(), "{:?}", leases(&d));
    let again = d.run_pod(&pc).await;
    d.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: again.clone() }).await.unwrap();
    d.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: again.clone() }).await.unwrap();
    wait_for("the second pod's lease", || leases(&d).is_empty()).await;
}

/// When the background teardown a removal was handed to fails, the pod comes back NOTREADY
/// with the error (never leaked silently), and the next RemovePodSandbox tears the network
/// down itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_teardown_after_the_removal_puts_the_pod_back() {
    let d = Daemon::start_with_failpoints("pod:background_teardown=fail-after:1000").await;
    let brif = std::path::PathBuf::from("/sys/class/net").join(&d.bridge).join("brif");
    let pc = pod_config(&d, "handoff-fail");
    let pod = d.run_pod(&pc).await;
    d.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    d.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    let (info, error) = wait_back_not_ready(&d, &pod).await;
    assert!(error.starts_with("network teardown: ") && error.contains("injected failure"), "{info}");
    let record = pod_record(&d, &pod);
    assert_eq!(record["removing"], serde_json::Value::Null, "{record}");
    assert_eq!(record["network_set_up"], true, "{record}");
    assert!(d.log().contains("network teardown of a removed pod failed"), "{}", d.log());
    assert!(leases(&d).contains_key(&pod), "{:?}", leases(&d));

    d.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert!(entries(&brif).is_empty(), "{:?}", entries(&brif));
    assert!(leases(&d).is_empty(), "{:?}", leases(&d));
    assert!(!has_record(&d, &pod));
}

/// Whether anything is mounted at or below `dir`.
fn mounted_below(dir: &Path) -> bool {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|mp| mp == dir || mp.starts_with(&format!("{dir}/")))
}

/// The pod's cgroup directories (in the v1 memory hierarchy), from its verbose status.
fn pod_cgroup(cgroup_parent: &str) -> std::path::PathBuf {
    Path::new("/sys/fs/cgroup/memory").join(cgroup_parent.trim_start_matches('/'))
}

/// RemovePodSandbox of a READY pod: the containers are removed and the network torn down before
/// the answer; the pod's namespace pins, shm, files and cgroup are left to a background task
/// (held up here by the failpoint `pod:background_removal=sleep:1500`). It answers at once;
/// the pod is gone for every call, its record kept with `removing` and its name reserved until
/// the rest is gone; then the record is deleted and a RunPodSandbox of the same name (which
/// waited for the name) runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_pod_sandbox_leaves_the_pods_teardown_to_the_background() {
    let d = Daemon::start_with_failpoints("pod:background_removal=sleep:1500").await;
    let pc = pod_config(&d, "bgremove");
    let pod = d.run_pod(&pc).await;
    let cgroup = d.pod_info(&pod).await["cgroupParent"].as_str().unwrap().to_owned();
    d.pull(BUSYBOX).await;
    d.create_and_start(&pod, &pc, container_config("c", &["sleep", "60"])).await;
    let pod_dir = d.state().join("pods").join(&pod);
    assert!(mounted_below(&pod_dir));
    assert!(pod_cgroup(&cgroup).exists());
    let started = Instant::now();
    d.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(1500), "the answer waited for the teardown");

    // Gone for every call (the container too), removable again...
    assert_gone(&d, &pod).await;
    let ctrs = d.runtime().list_containers(cri::ListContainersRequest { filter: None }).await.unwrap().into_inner();
    assert!(ctrs.containers.is_empty(), "{:?}", ctrs.containers);
    // ...while its record says `removing` (durably) and its pins and cgroup are still there.
    assert_eq!(pod_record(&d, &pod)["removing"], true);
    assert!(mounted_below(&pod_dir), "torn down before the failpoint's delay");
    assert!(leases(&d).is_empty(), "the network is torn down before the answer: {:?}", leases(&d));

    // The same name waits for the end of the removal.
    let again = d.run_pod(&pc).await;
    assert!(!has_record(&d, &pod));
    assert!(!pod_dir.exists() && !mounted_below(&pod_dir));
    assert!(!pod_cgroup(&cgroup).exists());
    assert!(d.log().contains("removed pod sandbox torn down, record deleted"), "{}", d.log());
    d.remove_pod(&again).await;
}

/// When the background end of a removal fails (failpoint `pod:background_removal`, before
/// anything is removed), the pod comes back NOTREADY with the failure in its `error`, also on
/// disk (never leaked silently), and the next RemovePodSandbox removes it wholly before it
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_background_removal_puts_the_pod_back_and_the_retry_removes_it() {
    let d = Daemon::start_with_failpoints("pod:background_removal").await;
    let pc = pod_config(&d, "bgremove-fail");
    let pod = d.run_pod(&pc).await;
    let cgroup = d.pod_info(&pod).await["cgroupParent"].as_str().unwrap().to_owned();
    let pod_dir = d.state().join("pods").join(&pod);
    d.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    let (info, error) = wait_back_not_ready(&d, &pod).await;
    assert!(error.starts_with("removal incomplete: ") && error.contains("injected failure"), "{info}");
    wait_for("the failure on disk", || pod_record(&d, &pod)["error"].is_string()).await;
    let record = pod_record(&d, &pod);
    assert_eq!(record["removing"], serde_json::Value::Null, "{record}");
    assert!(d.log().contains("the end of a pod sandbox's removal failed"), "{}", d.log());
    assert!(mounted_below(&pod_dir));

    d.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert!(!has_record(&d, &pod));
    assert!(!pod_dir.exists() && !mounted_below(&pod_dir));
    assert!(!pod_cgroup(&cgroup).exists());
    let pods = d.runtime().list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.unwrap().into_inner();
    assert!(pods.items.is_empty(), "{:?}", pods.items);
}

/// A skiffd killed while the background end of a removal is held up finishes it at its next
/// start: no record, mount, file or cgroup is left, and the name is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_removal_cut_off_by_sigkill_is_finished_at_start() {
    let mut d = Daemon::start_with_failpoints("pod:background_removal=sleep:5000").await;
    let pc = pod_config(&d, "bgremove-kill");
    let pod = d.run_pod(&pc).await;
    let cgroup = d.pod_info(&pod).await["cgroupParent"].as_str().unwrap().to_owned();
    let pod_dir = d.state().join("pods").join(&pod);
    d.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert_eq!(pod_record(&d, &pod)["removing"], true);
    d.kill();
    assert!(mounted_below(&pod_dir));
    d.start_again().await;
    assert!(d.log().contains("finishing a pod sandbox removal that was interrupted"), "{}", d.log());
    assert!(!has_record(&d, &pod));
    assert!(!pod_dir.exists() && !mounted_below(&pod_dir));
    assert!(!pod_cgroup(&cgroup).exists());
    let again = d.run_pod(&pc).await;
    d.remove_pod(&again).await;
}
