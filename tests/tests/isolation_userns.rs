//! User namespaces through skiffd: skiff does not create pod user namespaces yet, so it does
//! not announce them and refuses every request for one with InvalidArgument and the reason
//! (never silently running the pod in the node's user namespace); NODE is the usual pod.

use skiff_tests::pods::pod_config;
use skiff_tests::{cri, Daemon};
use tonic::Code;

fn with_userns(mut pc: cri::PodSandboxConfig, u: cri::UserNamespace, privileged: bool) -> cri::PodSandboxConfig {
    pc.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption { userns_options: Some(u), ..Default::default() }),
            privileged,
            ..Default::default()
        }),
        ..Default::default()
    });
    pc
}

fn map(c: u32, h: u32, l: u32) -> cri::IdMapping {
    cri::IdMapping { container_id: c, host_id: h, length: l }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespace_requests() {
    let d = Daemon::start().await;
    let pod = |mode: cri::NamespaceMode, maps: Vec<cri::IdMapping>| cri::UserNamespace {
        mode: mode as i32,
        uids: maps.clone(),
        gids: maps,
    };
    let one = vec![map(0, 1_000_000, 65536)];
    for (name, u, privileged, what) in [
        ("two", pod(cri::NamespaceMode::Pod, vec![map(0, 1000, 100000), map(0, 2000, 100000)]), false, "exactly one"),
        ("no-root", pod(cri::NamespaceMode::Pod, vec![map(1, 1000, 100000)]), false, "container id 0"),
        ("container", pod(cri::NamespaceMode::Container, vec![]), false, "CONTAINER"),
        ("target", pod(cri::NamespaceMode::Target, vec![]), false, "TARGET"),
        ("privileged", pod(cri::NamespaceMode::Pod, one.clone()), true, "privileged"),
        ("pod", pod(cri::NamespaceMode::Pod, one.clone()), false, "not supported"),
    ] {
        let pc = with_userns(pod_config(&d, name), u, privileged);
        let e = d
            .runtime()
            .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pc), runtime_handler: String::new() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(what), "{name}: {}", e.message());
    }
    // NODE is the node's user namespace, as without the option.
    let pc = with_userns(pod_config(&d, "node"), pod(cri::NamespaceMode::Node, vec![]), false);
    let id = d.run_pod(&pc).await;
    d.remove_pod(&id).await;
}
