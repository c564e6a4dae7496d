//! What RunPodSandbox and CreateContainer acknowledged survives a SIGKILL of skiffd right after
//! the answer (the lifecycle writes fewer fsyncs: the "creating" records, the lease file and the
//! state dir's files are only replaced, see README "Lifecycle performance"): after the restart
//! the pod is READY with its address and the container CREATED, and both work.

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, Daemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_run_pod_sandbox_and_create_container() {
    let mut d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "durable");
    let pod = d.run_pod(&pc).await;
    d.kill();
    d.start_again().await;
    let st = d.pod_status(&pod).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = st.network.unwrap_or_default().ip;
    assert!(!ip.is_empty());

    let id = d.create(&pod, &pc, container_config("c", &["sleep", "1000"])).await.unwrap();
    d.kill();
    d.start_again().await;
    assert_eq!(d.container_status(&id).await.state, cri::ContainerState::ContainerCreated as i32);
    d.runtime().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap();
    let out = d.exec(&id, &["ip", "-4", "addr", "show", "eth0"], 10).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("inet {ip}/")), "{text}");
    // A new pod never gets the address of the one that survived.
    let pc2 = pod_config(&d, "other");
    let pod2 = d.run_pod(&pc2).await;
    let ip2 = d.pod_ip(&pod2).await;
    assert!(!ip2.is_empty());
    assert_ne!(ip, ip2);
    d.remove_pod(&pod2).await;
    d.remove_pod(&pod).await;
}

/// The record files and the container's hold are written without fsync; their durability is
/// the metadata journal's (`ROOT/metadata/journal.*`). Files a power cut may lose (left empty,
/// or gone) come back from it when skiffd starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_record_files_come_back_from_the_journal() {
    let mut d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "journaled");
    let pod = d.run_pod(&pc).await;
    let ip = d.pod_ip(&pod).await;
    let id = d.create(&pod, &pc, container_config("c", &["sleep", "1000"])).await.unwrap();
    let id2 = d.create(&pod, &pc, container_config("d", &["sleep", "1000"])).await.unwrap();
    d.kill();
    let root = d.root().to_owned();
    // The writable layer's directories are made without fsync (a power cut may lose them): a
    // start mounts what the image store has in memory, fails, and makes them again.
    for sub in ["upper", "work"] {
        std::fs::remove_dir_all(root.join("containers").join(&id2).join(sub)).unwrap();
    }
    // (skiffd writes the files from the journal later: they may not be there at all yet.)
    std::fs::write(root.join("metadata/pods").join(format!("{pod}.json")), b"").unwrap();
    let _ = std::fs::remove_file(root.join("metadata/containers").join(format!("{id}.json")));
    let _ = std::fs::remove_file(root.join("containers").join(&id).join("rootfs.json"));
    d.start_again().await;
    assert!(d.log().contains("replayed the metadata journal"), "{}", d.log());
    let st = d.pod_status(&pod).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32, "{st:?}");
    assert_eq!(st.network.unwrap_or_default().ip, ip);
    assert_eq!(d.container_status(&id).await.state, cri::ContainerState::ContainerCreated as i32);
    // The hold came back too, so the writable layer was kept and the container starts.
    d.runtime().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap();
    let out = d.exec(&id, &["true"], 10).await.unwrap();
    assert_eq!(out.exit_code, 0);
    d.runtime().start_container(cri::StartContainerRequest { container_id: id2.clone() }).await.unwrap();
    let out = d.exec(&id2, &["sh", "-c", "touch /x && ls /bin/sh"], 10).await.unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert!(root.join("containers").join(&id2).join("upper/x").exists());
    d.remove_pod(&pod).await;
}

/// skiffd writes the record files from its journal at its checkpoints and when it stops: while
/// it runs a record may be in the journal only, after a clean stop its file is current (and the
/// next start has nothing to replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_the_record_files_current() {
    let mut d = Daemon::start().await;
    let pc = pod_config(&d, "files");
    let pod = d.run_pod(&pc).await;
    let rel = format!("metadata/pods/{pod}.json");
    let latest = skiff_tests::read_record(d.root(), &rel).expect("the pod's record");
    let status = d.stop();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(std::fs::read(d.root().join(&rel)).unwrap(), latest);
    d.start_again().await;
    assert!(!d.log().contains("replayed the metadata journal"), "{}", d.log());
    assert_eq!(d.pod_status(&pod).await.state, cri::PodSandboxState::SandboxReady as i32);
    d.remove_pod(&pod).await;
}
