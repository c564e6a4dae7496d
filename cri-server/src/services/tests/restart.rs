//! Recovery (`crate::recovery`): skiffd started again on its records, with the monitors,
//! cgroups and pods of its first life still "on the host" (the same fakes). Each first life
//! runs on a runtime of its own, dropped before the second starts, as a stopped skiffd's tasks
//! end with it.

use proto::cri::runtime_service_server::RuntimeService;
use proto::cri::*;
use tonic::Code;

use super::{code, pod_config, runtime, Node, BUSYBOX};

/// A first life that runs a pod with one container, then ends (its runtime dropped).
fn first_life_with_a_running_container() -> (Node, String, String) {
    let first = runtime();
    let (n, pod, c) = first.block_on(async {
        let n = Node::new();
        let (pod, c) = n.running("web").await;
        (n, pod, c)
    });
    drop(first);
    (n, pod, c)
}

#[test]
fn a_running_container_is_adopted_and_its_later_exit_noticed() {
    let (n, pod, c) = first_life_with_a_running_container();
    runtime().block_on(async move {
        let n = n.restart().await;
        assert_eq!(n.pod_status(&pod).await.unwrap().state, PodSandboxState::SandboxReady as i32);
        let st = n.status(&c).await.unwrap();
        assert_eq!(st.state, ContainerState::ContainerRunning as i32);
        // The names are held again; the recovered container's exit is pushed to a new watcher.
        assert_eq!(code(n.run_pod_with(pod_config("web")).await), Code::AlreadyExists);
        n.fakes.monitors.exit(&c, 7);
        let entry = n.entry(&c);
        n.eventually("exit recorded", || entry.get().state == crate::store::ContainerState::Exited).await;
        assert_eq!(n.status(&c).await.unwrap().exit_code, 7);
        // And it stops and goes as any other.
        n.remove_pod(&pod).await.unwrap();
        assert!(n.fakes.sandboxes.live().is_empty());
        assert!(n.fakes.images.holders().is_empty());
    });
}

#[test]
fn an_exit_while_skiffd_was_down_is_recorded_and_released() {
    let (n, pod, c) = first_life_with_a_running_container();
    assert!(n.fakes.monitors.exit(&c, 0));
    runtime().block_on(async move {
        let n = n.restart().await;
        let st = n.status(&c).await.unwrap();
        assert_eq!(
            (st.state, st.exit_code, st.reason.as_str()),
            (ContainerState::ContainerExited as i32, 0, "Completed")
        );
        assert!(n.fakes.images.mounted().is_empty(), "rootfs unmounted at recovery");
        assert_eq!(n.fakes.cgroups.paths(), vec![n.pod_cgroup(&pod)], "container cgroup removed");
        // The writable layer stays until RemoveContainer.
        assert_eq!(n.fakes.images.holders(), vec![c.clone()]);
    });
}

#[test]
fn after_a_reboot_pods_are_not_ready_and_their_network_released() {
    let first = runtime();
    let (n, pod) = first.block_on(async {
        let n = Node::new();
        let pod = n.run_pod("web").await;
        (n, pod)
    });
    drop(first);
    n.fakes.sandboxes.reboot(&n.ctx.config.state);
    runtime().block_on(async move {
        let n = n.restart().await;
        assert_eq!(n.pod_status(&pod).await.unwrap().state, PodSandboxState::SandboxNotready as i32);
        assert!(n.fakes.network.attached().is_empty());
        // No container starts in it; it is removed as any other.
        assert_eq!(code(n.create(&pod, "late", BUSYBOX).await), Code::FailedPrecondition);
        n.remove_pod(&pod).await.unwrap();
        assert!(n.fakes.sandboxes.live().is_empty());
    });
}

#[test]
fn a_creation_cut_off_before_its_record_leaves_nothing_after_a_restart() {
    let first = runtime();
    let (n, pod, kept) = first.block_on(async {
        let n = Node::new();
        let pod = n.run_pod("web").await;
        let kept = n.create(&pod, "kept", BUSYBOX).await.unwrap();
        // What a CreateContainer killed before its CREATED record leaves: the writable layer
        // with its hold, and the state dir with its config.json (no record: none is written
        // before the CREATED one).
        n.ctx.images.prepare_rootfs(BUSYBOX, "cutoff").await.unwrap();
        let dir = n.ctx.container_dir("cutoff");
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        (n, pod, kept)
    });
    drop(first);
    runtime().block_on(async move {
        let n = n.restart().await;
        assert!(!n.ctx.container_dir("cutoff").exists(), "state dir of no container deleted");
        assert_eq!(n.fakes.images.holders(), vec![kept.clone()], "hold of no container released");
        // The created container keeps its state dir and starts.
        assert!(n.ctx.container_dir(&kept).join("config.json").exists());
        assert_eq!(n.status("cutoff").await.unwrap_err().code(), Code::NotFound);
        n.remove_pod(&pod).await.unwrap();
    });
}

/// CreateContainer writes its CREATED record while it makes the files and answers once both
/// are done; config.json is the last file. A skiffd killed after the record but before that
/// (the state dir there, no config.json) leaves nothing after its restart; after a reboot (the
/// volatile state dir gone) an acknowledged CREATED container stays.
#[test]
fn a_creation_cut_off_after_its_record_is_rolled_back_and_a_reboot_keeps_created_ones() {
    let first = runtime();
    let (n, pod, kept, cut) = first.block_on(async {
        let n = Node::new();
        let pod = n.run_pod("web").await;
        let kept = n.create(&pod, "kept", BUSYBOX).await.unwrap();
        let cut = n.create(&pod, "cut", BUSYBOX).await.unwrap();
        std::fs::remove_file(n.ctx.container_dir(&cut).join("config.json")).unwrap();
        (n, pod, kept, cut)
    });
    drop(first);
    let (pod2, kept2) = (pod.clone(), kept.clone());
    let n = runtime().block_on(async move {
        let (pod, kept) = (pod2, kept2);
        let n = n.restart().await;
        assert_eq!(n.status(&cut).await.unwrap_err().code(), Code::NotFound);
        assert!(!n.ctx.container_dir(&cut).exists(), "state dir of the cut-off creation deleted");
        assert_eq!(n.fakes.images.holders(), vec![kept.clone()], "its hold released");
        // Its name is free again.
        let again = n.create(&pod, "cut", BUSYBOX).await.unwrap();
        n.remove(&again).await.unwrap();
        let st = n.status(&kept).await.unwrap();
        assert_eq!(st.state, ContainerState::ContainerCreated as i32);
        n
    });
    // A reboot: the state dir (a tmpfs) is empty; the CREATED container is kept.
    std::fs::remove_dir_all(&n.ctx.config.state).unwrap();
    std::fs::create_dir_all(&n.ctx.config.state).unwrap();
    n.fakes.sandboxes.reboot(&n.ctx.config.state);
    runtime().block_on(async move {
        let n = n.restart().await;
        assert_eq!(n.status(&kept).await.unwrap().state, ContainerState::ContainerCreated as i32);
        // Its pod is NOTREADY (its namespaces are gone), so it does not start (as containerd);
        // its resources can still be updated, though its spec went with the state dir.
        assert_eq!(n.pod_status(&pod).await.unwrap().state, PodSandboxState::SandboxNotready as i32);
        assert_eq!(code(n.start(&kept).await), Code::FailedPrecondition);
        let update = UpdateContainerResourcesRequest {
            container_id: kept.clone(),
            linux: Some(LinuxContainerResources { cpu_shares: 512, ..Default::default() }),
            ..Default::default()
        };
        n.rt.update_container_resources(tonic::Request::new(update)).await.unwrap();
        let st = n.status(&kept).await.unwrap();
        assert_eq!(st.resources.and_then(|r| r.linux).map(|l| l.cpu_shares), Some(512));
        n.remove_pod(&pod).await.unwrap();
        assert!(n.fakes.images.holders().is_empty());
    });
}
