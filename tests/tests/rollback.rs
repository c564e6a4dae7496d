//! Rollback with injected faults: every named step of RunPodSandbox, CreateContainer and
//! StartContainer is made to fail (`SKIFF_FAILPOINTS`), and everything acquired before it must be
//! released: no namespace pin, shm, rootfs mount, cgroup, veth, lease, record or state dir stays,
//! and the name is free for a retry once the fault is gone.

use std::path::Path;

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cgroup_v1_hierarchies, cri, Daemon};
use tonic::Code;

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&dir))
        .collect()
}

/// What a daemon holds for pods and containers right now.
fn held(d: &Daemon) -> Vec<String> {
    let mut out = Vec::new();
    for m in mounts_under(d.dir()) {
        out.push(format!("mount {m}"));
    }
    for (what, dir) in [
        ("pod state", d.state().join("pods")),
        ("container state", d.state().join("containers")),
        ("pod record", d.root().join("metadata/pods")),
        ("container record", d.root().join("metadata/containers")),
        ("writable layer", d.root().join("containers")),
    ] {
        if count(&dir) > 0 {
            out.push(format!("{what}: {} entries in {}", count(&dir), dir.display()));
        }
    }
    for h in cgroup_v1_hierarchies() {
        let parent = h.join(d.cgroup_parent.trim_start_matches('/'));
        let children =
            std::fs::read_dir(&parent).map(|r| r.flatten().filter(|e| e.path().is_dir()).count()).unwrap_or(0);
        if children > 0 {
            out.push(format!("{children} cgroups under {}", parent.display()));
        }
    }
    let brif = Path::new("/sys/class/net").join(&d.bridge).join("brif");
    if count(&brif) > 0 {
        out.push(format!("{} veths on {}", count(&brif), d.bridge));
    }
    if let Ok(leases) = std::fs::read_to_string(d.root().join("network/leases.json")) {
        if leases.contains("\"pod_id\"") {
            out.push(format!("leases: {leases}"));
        }
    }
    out
}

async fn run_pod(d: &Daemon, config: &cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    d.runtime()
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pod_sandbox_rolls_back_at_every_step() {
    for point in ["pod:after_setup", "pod:after_network"] {
        let mut d = Daemon::start_with_failpoints(point).await;
        let mut pc = pod_config(&d, "rb");
        // A pod-level PID namespace too, so that its holder process must be stopped as well.
        pc.linux = Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption::default()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = run_pod(&d, &pc).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{point}: {err:?}");
        assert!(err.message().contains(point), "{err:?}");
        assert_eq!(held(&d), Vec::<String>::new(), "{point}");
        let infra = skiff_tests::processes_mentioning("infra");
        let ours: Vec<_> = infra
            .iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .unwrap_or_default()
                    .contains(&*d.dir().to_string_lossy())
            })
            .collect();
        assert!(ours.is_empty(), "{point}: PID namespace holder left: {ours:?}");
        // Without the fault the same pod (same name) runs.
        d.env.clear();
        d.restart().await;
        let id = run_pod(&d, &pc).await.unwrap();
        d.remove_pod(&id).await;
        assert_eq!(held(&d), Vec::<String>::new(), "{point}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_container_rolls_back_at_every_step() {
    for point in ["container:after_rootfs", "container:after_spec"] {
        let mut d = Daemon::start_with_failpoints(point).await;
        d.pull(BUSYBOX).await;
        let pc = pod_config(&d, "rbc");
        let pod = d.run_pod(&pc).await;
        let before = held(&d);
        let err = d.create(&pod, &pc, container_config("c", &["true"])).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{point}: {err:?}");
        assert_eq!(held(&d), before, "{point}");
        d.env.clear();
        d.restart().await;
        d.create(&pod, &pc, container_config("c", &["true"])).await.unwrap();
        d.remove_pod(&pod).await;
        assert_eq!(held(&d), Vec::<String>::new(), "{point}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_container_rolls_back_at_every_step() {
    for point in ["start:after_mount", "start:after_cgroup"] {
        let d = Daemon::start_with_failpoints(point).await;
        d.pull(BUSYBOX).await;
        let pc = pod_config(&d, "rbs");
        let pod = d.run_pod(&pc).await;
        let id = d.create(&pod, &pc, container_config("c", &["sleep", "100"])).await.unwrap();
        let err =
            d.runtime().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap_err();
        assert!(err.message().contains(point), "{err:?}");
        // The container is done, with the reason; its rootfs mount and cgroup are gone.
        let st = d.container_status(&id).await;
        assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!(st.reason, "StartError");
        let rootfs = d.state().join("containers").join(&id).join("rootfs");
        assert!(mounts_under(&rootfs).is_empty(), "{point}: rootfs still mounted");
        for h in cgroup_v1_hierarchies() {
            let cg = h.join(d.cgroup_parent.trim_start_matches('/')).join(&pod).join(&id);
            assert!(!cg.exists(), "{point}: {} left", cg.display());
        }
        d.remove_pod(&pod).await;
        assert_eq!(held(&d), Vec::<String>::new(), "{point}");
    }
}

#[test]
fn every_failpoint_is_tested() {
    let src = include_str!("rollback.rs");
    for p in cri_server_failpoints() {
        assert!(src.contains(&format!("\"{p}\"")), "failpoint {p} has no rollback test");
    }
}

/// The failpoints skiffd defines (read from its source, since the tests do not link it).
fn cri_server_failpoints() -> Vec<String> {
    let src = include_str!("../../cri-server/src/failpoint.rs");
    let list = &src[src.find("pub const ALL").unwrap()..];
    let list = &list[..list.find("];").unwrap()];
    list.split('"').skip(1).step_by(2).map(str::to_owned).collect()
}
