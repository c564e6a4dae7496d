//! Pod sandboxes through the real daemon: run, status, list with filters, name reservation,
//! stop and remove (idempotent), and nothing left behind.

use std::collections::HashMap;

use skiff_tests::pods::pod_namespaces;
use skiff_tests::{cri, Daemon};
use tonic::Code;

pub fn pod_config(name: &str, uid: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: HashMap::from([("app".into(), name.into()), ("tier".into(), "test".into())]),
        annotations: HashMap::from([("note".into(), "hello".into())]),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        ..Default::default()
    }
}

async fn run(d: &Daemon, config: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    d.runtime()
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_lifecycle() {
    let d = Daemon::start().await;
    let mut rt = d.runtime();
    let id = run(&d, pod_config("web", "uid-1")).await.unwrap();
    assert_eq!(id.len(), 64);

    // Files and pins exist.
    let pod_dir = d.state().join("pods").join(&id);
    for f in ["ns/net", "ns/ipc", "ns/uts", "resolv.conf", "hosts", "hostname", "shm"] {
        assert!(pod_dir.join(f).exists(), "{f} missing");
    }
    let resolv = std::fs::read_to_string(pod_dir.join("resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 10.0.0.10") && resolv.contains("ndots:5"), "{resolv}");
    assert_eq!(std::fs::read_to_string(pod_dir.join("hostname")).unwrap().trim(), "web");

    let st = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: true })
        .await
        .unwrap()
        .into_inner();
    let status = st.status.unwrap();
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(status.metadata.unwrap().name, "web");
    assert_eq!(status.labels["app"], "web");
    assert_eq!(status.annotations["note"], "hello");
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    assert!(info["cgroupParent"].as_str().unwrap().starts_with(&d.cgroup_parent));

    // A prefix of the ID works.
    d.pod_status(&id[..12]).await;

    // The same name again: AlreadyExists.
    let err = run(&d, pod_config("web", "uid-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    let other = run(&d, pod_config("db", "uid-2")).await.unwrap();
    assert_eq!(d.pod_ids(Some(Default::default())).await.len(), 2);
    assert_eq!(
        d.pod_ids(Some(cri::PodSandboxFilter { id: id[..10].into(), ..Default::default() })).await,
        vec![id.clone()]
    );
    let by_label =
        cri::PodSandboxFilter { label_selector: HashMap::from([("app".into(), "db".into())]), ..Default::default() };
    assert_eq!(d.pod_ids(Some(by_label)).await, vec![other.clone()]);

    // Stop: NOTREADY, idempotent; stopping an unknown pod is fine.
    for _ in 0..2 {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await.unwrap();
    }
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: "f00".into() }).await.unwrap();
    let not_ready = cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue { state: cri::PodSandboxState::SandboxNotready as i32 }),
        ..Default::default()
    };
    assert_eq!(d.pod_ids(Some(not_ready)).await, vec![id.clone()]);

    // Remove: gone, idempotent, the name is free again. The pod's directory (namespace pins,
    // shm, files) goes right after the answer, in the background.
    for _ in 0..2 {
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.clone() }).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pod_dir.exists() {
        assert!(std::time::Instant::now() < deadline, "{} still there:\n{}", pod_dir.display(), d.log());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let err = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let again = run(&d, pod_config("web", "uid-1")).await.unwrap();
    for p in [again, other] {
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: p }).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_cleanly() {
    let d = Daemon::start().await;
    let mut rt = d.runtime();
    let err = rt.run_pod_sandbox(cri::RunPodSandboxRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("x", "u")),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("kata"));
    // A bad DNS option fails the pod and rolls everything back; a retry with a good one works.
    let mut bad = pod_config("x", "u");
    bad.hostname = "not a hostname!".into();
    let err = run(&d, bad).await.unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert_eq!(std::fs::read_dir(d.state().join("pods")).map(|r| r.count()).unwrap_or(0), 0);
    let id = run(&d, pod_config("x", "u")).await.unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_namespaces() {
    let d = Daemon::start().await;
    let mut config = pod_config("hostnet", "uid-h");
    config.hostname = String::new();
    config.linux = pod_namespaces(cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        ipc: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Node as i32,
        ..Default::default()
    });
    let id = run(&d, config).await.unwrap();
    let pod_dir = d.state().join("pods").join(&id);
    assert!(!pod_dir.join("ns/net").exists());
    assert!(!pod_dir.join("ns/ipc").exists());
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(std::fs::read_to_string(pod_dir.join("hostname")).unwrap().trim(), host);
    d.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }).await.unwrap();
    let _ = &mut d.runtime();
}
