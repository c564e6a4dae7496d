//! Pod setup/teardown against the real kernel (pins, files, shm, v1 cgroups), and rollback.

use std::path::Path;

use runtime::cgroups::CgroupManager;
use runtime::pod::{self, PodSetupRequest};
use runtime::podfiles::DnsSettings;

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

fn dns() -> DnsSettings {
    DnsSettings { servers: vec!["10.96.0.10".into()], searches: vec!["svc.cluster.local".into()], options: vec![] }
}

fn request<'a>(
    state_dir: &'a Path,
    pod_id: &'a str,
    cgroup_parent: &'a str,
    dns: &'a DnsSettings,
) -> PodSetupRequest<'a> {
    PodSetupRequest {
        state_dir,
        pod_id,
        host_network: false,
        host_ipc: false,
        hostname: "pod-host",
        dns: Some(dns),
        cgroup_parent,
        host_resolv_conf: Path::new("/etc/resolv.conf"),
        shm_size: 1 << 20,
        default_cgroup_parent: "/skiff",
        userns: None,
    }
}

#[test]
fn setup_and_teardown() {
    if !common::prerequisite(nix::unistd::geteuid().is_root(), "root") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cg = CgroupManager::detect(Some(tmp.path().join("cgroups.json"))).unwrap();
    let id = format!("pod{}", uniq());
    let parent = format!("/skiff-test-{}/burstable/{id}", uniq());
    let dns = dns();
    let req = request(tmp.path(), &id, &parent, &dns);
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
    if !common::prerequisite(nix::unistd::geteuid().is_root(), "root") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cg = CgroupManager::detect(Some(tmp.path().join("cgroups.json"))).unwrap();
    let id = format!("pod{}", uniq());
    let dns = dns();
    let req = PodSetupRequest { host_network: true, host_ipc: true, ..request(tmp.path(), &id, "", &dns) };
    let r = pod::setup_pod(&cg, &req).unwrap();
    assert!(r.namespaces.net.is_none() && r.namespaces.uts.is_none() && r.namespaces.ipc.is_none());
    assert_eq!(r.files.shm.as_deref(), Some(Path::new("/dev/shm")));
    assert_eq!(r.cgroup_parent, format!("/skiff/{id}"));
    assert_eq!(mounts_under(&r.dir), 0);
    pod::teardown_pod(&cg, tmp.path(), &id, &r.cgroup_parent).unwrap();
    assert!(!cg.exists(&r.cgroup_parent).unwrap());

    // a bad DNS server fails after the pins were made: everything is rolled back
    let bad = DnsSettings { servers: vec!["not-an-ip".into()], ..dns.clone() };
    let req = PodSetupRequest { host_network: false, host_ipc: false, dns: Some(&bad), ..req };
    let e = pod::setup_pod(&cg, &req).unwrap_err();
    assert_eq!(e.kind(), runtime::ErrorKind::InvalidArgument);
    let dir = tmp.path().join("pods").join(&id);
    assert_eq!(mounts_under(&dir), 0);
    assert!(!dir.exists());
    assert!(!cg.exists(&format!("/skiff/{id}")).unwrap());
    // systemd slices are refused
    assert_eq!(
        pod::setup_pod(&cg, &PodSetupRequest { cgroup_parent: "kubepods-burstable-pod1.slice", ..req })
            .unwrap_err()
            .kind(),
        runtime::ErrorKind::InvalidArgument
    );
}

#[test]
fn user_namespace_pinned_first_and_rolled_back() {
    if !common::prerequisite(nix::unistd::geteuid().is_root(), "root") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let cg = CgroupManager::detect(Some(tmp.path().join("cgroups.json"))).unwrap();
    let id = format!("pod{}", uniq());
    let dns = dns();
    let m = runtime::namespaces::IdMap { container_id: 0, host_id: 2_000_000, length: 65536 };
    // A cgroup tree of its own: two tests sharing the default parent (`/skiff`) race on
    // removing it (each manager removes only the parents it created) and leave it behind.
    let parent = format!("/skiff-test-{}/{id}", uniq());
    let req = PodSetupRequest { userns: Some((m, m)), ..request(tmp.path(), &id, &parent, &dns) };
    let r = pod::setup_pod(&cg, &req).unwrap();
    let user = r.namespaces.user.clone().expect("a user namespace pin");
    assert_eq!(mounts_under(&r.dir), 5, "4 pins + shm");
    assert_ne!(std::fs::metadata(&user).unwrap().ino(), std::fs::metadata("/proc/self/ns/user").unwrap().ino());
    let j = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<pod::PodResources>(&j).unwrap(), r);
    pod::teardown_pod(&cg, tmp.path(), &id, &r.cgroup_parent).unwrap();
    assert_eq!(mounts_under(&r.dir), 0);
    assert!(!r.dir.exists());
    assert!(!cg.exists(&parent.split('/').take(2).collect::<Vec<_>>().join("/")).unwrap(), "created parents removed");

    // a failure after the pins: the user namespace pin goes with the others
    let bad = DnsSettings { servers: vec!["not-an-ip".into()], ..dns.clone() };
    let e = pod::setup_pod(&cg, &PodSetupRequest { dns: Some(&bad), ..req }).unwrap_err();
    assert_eq!(e.kind(), runtime::ErrorKind::InvalidArgument);
    let dir = tmp.path().join("pods").join(&id);
    assert_eq!(mounts_under(&dir), 0);
    assert!(!dir.exists());
    assert!(!cg.exists(&parent.split('/').take(2).collect::<Vec<_>>().join("/")).unwrap(), "rolled back");
}
