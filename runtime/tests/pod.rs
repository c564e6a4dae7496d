//! Pod setup/teardown against the real kernel (pins, files, shm, v1 cgroups), and rollback.

use std::path::Path;

use proto::cri;
use runtime::cgroups::CgroupManager;
use runtime::pod::{self, PodSetupRequest};

fn uniq() -> String {
    format!(
        "{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() & 0xffffff
    )
}

fn mounts_under(dir: &Path) -> usize {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.lines().filter(|l| l.split(' ').nth(4).map(|m| m.starts_with(&*dir.to_string_lossy())).unwrap_or(false)).count()
}

fn config(cgroup_parent: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "p".into(),
            uid: "u".into(),
            namespace: "ns".into(),
            attempt: 0,
        }),
        hostname: "pod-host".into(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec![],
        }),
        linux: Some(cri::LinuxPodSandboxConfig { cgroup_parent: cgroup_parent.into(), ..Default::default() }),
        ..Default::default()
    }
}

#[test]
fn setup_and_teardown() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cg = CgroupManager::detect(Some(tmp.path().join("cgroups.json"))).unwrap();
    let id = format!("pod{}", uniq());
    let parent = format!("/skiff-test-{}/burstable/{id}", uniq());
    let cfg = config(&parent);
    let req = PodSetupRequest {
        state_dir: tmp.path(),
        pod_id: &id,
        config: &cfg,
        host_resolv_conf: Path::new("/etc/resolv.conf"),
        shm_size: 1 << 20,
        default_cgroup_parent: "/skiff",
    };
    let r = pod::setup_pod(&cg, &req).unwrap();
    assert_eq!(r.cgroup_parent, parent);
    assert!(cg.exists(&parent).unwrap());
    assert!(r.namespaces.net.is_some() && r.namespaces.ipc.is_some() && r.namespaces.uts.is_some());
    assert_eq!(std::fs::read_to_string(r.files.hostname.as_ref().unwrap()).unwrap(), "pod-host\n");
    assert!(std::fs::read_to_string(r.files.resolv_conf.as_ref().unwrap()).unwrap().contains("nameserver 10.96.0.10"));
    assert_eq!(mounts_under(&r.dir), 4, "3 pins + shm");
    // the record serializes for the pod store
    let j = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<pod::PodResources>(&j).unwrap(), r);
    pod::teardown_pod(&cg, tmp.path(), &id, &parent).unwrap();
    assert_eq!(mounts_under(&r.dir), 0);
    assert!(!r.dir.exists());
    assert!(!cg.exists(&parent.split('/').take(2).collect::<Vec<_>>().join("/")).unwrap(), "created parents removed");
    pod::teardown_pod(&cg, tmp.path(), &id, &parent).unwrap();
}

#[test]
fn host_network_and_rollback() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cg = CgroupManager::detect(Some(tmp.path().join("cgroups.json"))).unwrap();
    let id = format!("pod{}", uniq());
    let mut cfg = config("");
    cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            ipc: cri::NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let req = PodSetupRequest {
        state_dir: tmp.path(),
        pod_id: &id,
        config: &cfg,
        host_resolv_conf: Path::new("/etc/resolv.conf"),
        shm_size: 1 << 20,
        default_cgroup_parent: "/skiff",
    };
    let r = pod::setup_pod(&cg, &req).unwrap();
    assert!(r.namespaces.net.is_none() && r.namespaces.uts.is_none() && r.namespaces.ipc.is_none());
    assert_eq!(r.files.shm.as_deref(), Some(Path::new("/dev/shm")));
    assert_eq!(r.cgroup_parent, format!("/skiff/{id}"));
    assert_eq!(mounts_under(&r.dir), 0);
    pod::teardown_pod(&cg, tmp.path(), &id, &r.cgroup_parent).unwrap();
    assert!(!cg.exists(&r.cgroup_parent).unwrap());

    // a bad DNS server fails after the pins were made: everything is rolled back
    let mut bad = config("");
    bad.dns_config.as_mut().unwrap().servers = vec!["not-an-ip".into()];
    let req = PodSetupRequest { config: &bad, ..req };
    let e = pod::setup_pod(&cg, &req).unwrap_err();
    assert_eq!(e.kind(), runtime::ErrorKind::InvalidArgument);
    let dir = tmp.path().join("pods").join(&id);
    assert_eq!(mounts_under(&dir), 0);
    assert!(!dir.exists());
    assert!(!cg.exists(&format!("/skiff/{id}")).unwrap());
    // systemd slices are refused
    let slice = config("kubepods-burstable-pod1.slice");
    assert_eq!(
        pod::setup_pod(&cg, &PodSetupRequest { config: &slice, ..req }).unwrap_err().kind(),
        runtime::ErrorKind::InvalidArgument
    );
}
