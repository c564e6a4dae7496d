//! The host side end to end: pod setup → user resolution → spec generation → container cgroup →
//! the real `skiff-monitor` runs the generated spec → checks from inside → teardown leaves
//! nothing. Needs root and /bin/busybox (busybox-static).

use std::path::{Path, PathBuf};
use std::time::Duration;

use cri_server::spec::{self, PidNamespace, SpecInput};
use proto::cri;
use runtime::cgroups::CgroupManager;
use runtime::monitor::{self, Client, MonitorConfig, MonitorError};

fn monitor_bin() -> std::path::PathBuf {
    skiff_tests::bin_dir().join("skiff-monitor")
}

fn uniq() -> String {
    format!(
        "{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() & 0xffffff
    )
}

struct Cleanup<'a> {
    cg: &'a CgroupManager,
    state: PathBuf,
    pod_id: String,
    pod_cgroup: String,
    ctr_cgroup: Option<String>,
    socket: Option<PathBuf>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(s) = &self.socket {
            if let Ok(mut c) = Client::connect(s) {
                let _ = c.signal(9);
                let _ = c.wait_exit(Some(Duration::from_secs(10)));
            }
        }
        if let Some(c) = &self.ctr_cgroup {
            let _ = self.cg.kill_all(c);
            self.cg.remove(c).unwrap();
        }
        runtime::pod::teardown_pod(self.cg, &self.state, &self.pod_id, &self.pod_cgroup).unwrap();
    }
}

#[test]
fn generated_spec_runs_under_the_monitor() {
    if !common::prerequisite(
        nix::unistd::geteuid().is_root() && Path::new("/bin/busybox").exists(),
        "root and /bin/busybox",
    ) {
        return;
    }
    let tmp = tempfile::Builder::new().prefix("skspec-").tempdir_in("/tmp").unwrap();
    let state = tmp.path().join("state");
    let cg = std::sync::Arc::new(CgroupManager::detect(Some(state.join("cgroups.json"))).unwrap());
    let host = cri_server::backends::HostSandboxes(cg.clone());
    let pod_id = format!("pod{}", uniq());
    let ctr_id = format!("ctr{}", uniq());
    let pod_cgroup = format!("/skiff-e2e-{}/{pod_id}", uniq());
    let sandbox = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "e2e".into(),
            uid: "u".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "e2e-pod".into(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc".into()],
            options: vec!["ndots:5".into()],
        }),
        linux: Some(cri::LinuxPodSandboxConfig { cgroup_parent: pod_cgroup.clone(), ..Default::default() }),
        ..Default::default()
    };
    let res =
        spec::setup_pod(&host, &state, &pod_id, &sandbox, Path::new("/etc/resolv.conf"), 8 << 20, "/skiff").unwrap();
    let mut guard = Cleanup {
        cg: &cg,
        state: state.clone(),
        pod_id: pod_id.clone(),
        pod_cgroup: pod_cgroup.clone(),
        ctr_cgroup: None,
        socket: None,
    };

    let dir = state.join("containers").join(&ctr_id);
    let rootfs = dir.join("rootfs");
    skiff_tests::busybox_rootfs(&rootfs);
    let script = "echo host=$(hostname); grep nameserver /etc/resolv.conf; echo uid=$(id -u) groups=$(id -G); \
        echo foo=$FOO home=$HOME; grep -E '^(Seccomp|NoNewPrivs|CapInh|CapAmb):' /proc/self/status; \
        echo net=$(readlink /proc/self/ns/net); grep memory /proc/self/cgroup; \
        touch /dev/shm/x && echo shm-ok; touch /nope 2>/dev/null || echo rootfs-ro; echo pid1=$$";
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "c".into(), attempt: 0 }),
        command: vec!["sh".into(), "-c".into()],
        args: vec![script.into()],
        envs: vec![cri::KeyValue { key: "FOO".into(), value: "bar".into() }],
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                cpu_shares: 256,
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_username: "alice".into(),
                readonly_rootfs: true,
                no_new_privs: true,
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let user = runtime::user::resolve(&rootfs, &spec::user_request(&config, None)).unwrap();
    assert_eq!((user.uid, user.gid), (1000, 1000));
    let ctr_cgroup = format!("{pod_cgroup}/{ctr_id}");
    let input = SpecInput {
        container_id: &ctr_id,
        sandbox_id: &pod_id,
        config: &config,
        sandbox: &sandbox,
        image: None,
        image_name: "busybox",
        rootfs: &rootfs,
        pod_files: res.files.clone(),
        namespaces: res.namespaces.clone(),
        pid: PidNamespace::Container,
        cgroups_path: &ctr_cgroup,
        user: &user,
        oom_score_adj_min: spec::current_oom_score_adj(),
        rlimits: vec![],
        cgroup_v2: cg.mode() == runtime::cgroups::CgroupMode::Unified,
    };
    let s = spec::generate(&input).unwrap();
    cg.create_with(&ctr_cgroup, s.linux().as_ref().unwrap().resources().as_ref()).unwrap();
    guard.ctr_cgroup = Some(ctr_cgroup.clone());
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&s).unwrap()).unwrap();
    let log = dir.join("ctr.log");
    let mcfg = MonitorConfig::new(&dir, &ctr_id, Some(log.clone()));
    mcfg.write(&dir).unwrap();
    guard.socket = Some(mcfg.socket_path.clone());

    let started = monitor::spawn(&monitor_bin(), &dir).unwrap();
    let rec = match Client::connect(&mcfg.socket_path).and_then(|mut c| c.wait_exit(Some(Duration::from_secs(20)))) {
        Ok(r) => r,
        Err(MonitorError::MonitorGone) => monitor::read_exit_record(&mcfg.exit_record_path).unwrap(),
        Err(e) => panic!("wait: {e}"),
    };
    let text: String = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or("").to_string() + "\n")
        .collect();
    assert_eq!(
        rec.exit_code,
        0,
        "{text}\nmonitor log: {}",
        std::fs::read_to_string(dir.join("monitor.log")).unwrap_or_default()
    );
    assert!(started.pid > 0);
    let net = format!("net:[{}]", runtime::namespaces::ns_inode(res.namespaces.net.as_ref().unwrap()).unwrap());
    for want in [
        "host=e2e-pod".to_string(),
        "nameserver 10.96.0.10".into(),
        "uid=1000 groups=1000 50".into(),
        "foo=bar home=/home/alice".into(),
        "NoNewPrivs:\t1".into(),
        "Seccomp:\t2".into(),
        "CapInh:\t0000000000000000".into(),
        "CapAmb:\t0000000000000000".into(),
        format!("net={net}"),
        format!("memory:{ctr_cgroup}"),
        "shm-ok".into(),
        "rootfs-ro".into(),
        "pid1=1".into(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    let stats = cg.stats(&ctr_cgroup).unwrap();
    assert!(stats.cpu_usage_ns.unwrap() > 0);
    drop(guard);
    assert!(!cg.exists(&pod_cgroup).unwrap());
    let parent = pod_cgroup.rsplit_once('/').unwrap().0;
    assert!(!cg.exists(parent).unwrap(), "the parent made on the way is gone too");
    assert!(!state.join("pods").join(&pod_id).exists());
}

#[test]
fn privileged_host_namespaces_under_the_monitor() {
    if !common::prerequisite(
        nix::unistd::geteuid().is_root() && Path::new("/bin/busybox").exists(),
        "root and /bin/busybox",
    ) {
        return;
    }
    let tmp = tempfile::Builder::new().prefix("skspec-").tempdir_in("/tmp").unwrap();
    let state = tmp.path().join("state");
    let cg = std::sync::Arc::new(CgroupManager::detect(Some(state.join("cgroups.json"))).unwrap());
    let host = cri_server::backends::HostSandboxes(cg.clone());
    let pod_id = format!("pod{}", uniq());
    let ctr_id = format!("ctr{}", uniq());
    let pod_cgroup = format!("/skiff-e2e-{}/{pod_id}", uniq());
    let host_ns = cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        ipc: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Node as i32,
        ..Default::default()
    };
    let sandbox = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "priv".into(),
            uid: "u".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: pod_cgroup.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                privileged: true,
                namespace_options: Some(host_ns.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let res =
        spec::setup_pod(&host, &state, &pod_id, &sandbox, Path::new("/etc/resolv.conf"), 8 << 20, "/skiff").unwrap();
    let mut guard = Cleanup {
        cg: &cg,
        state: state.clone(),
        pod_id: pod_id.clone(),
        pod_cgroup: pod_cgroup.clone(),
        ctr_cgroup: None,
        socket: None,
    };
    let dir = state.join("containers").join(&ctr_id);
    let rootfs = dir.join("rootfs");
    skiff_tests::busybox_rootfs(&rootfs);
    let script = "grep -E '^(Seccomp|CapEff):' /proc/self/status; echo net=$(readlink /proc/self/ns/net); \
        echo pidns=$(readlink /proc/self/ns/pid); echo host=$(hostname); test -e /dev/null && echo devnull-ok";
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "c".into(), attempt: 0 }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        linux: Some(cri::LinuxContainerConfig {
            resources: None,
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                namespace_options: Some(host_ns),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let user = runtime::user::resolve(&rootfs, &spec::user_request(&config, None)).unwrap();
    let ctr_cgroup = format!("{pod_cgroup}/{ctr_id}");
    let input = SpecInput {
        container_id: &ctr_id,
        sandbox_id: &pod_id,
        config: &config,
        sandbox: &sandbox,
        image: None,
        image_name: "busybox",
        rootfs: &rootfs,
        pod_files: res.files.clone(),
        namespaces: res.namespaces.clone(),
        pid: PidNamespace::Node,
        cgroups_path: &ctr_cgroup,
        user: &user,
        oom_score_adj_min: spec::current_oom_score_adj(),
        rlimits: vec![],
        cgroup_v2: cg.mode() == runtime::cgroups::CgroupMode::Unified,
    };
    let s = spec::generate(&input).unwrap();
    cg.create_with(&ctr_cgroup, s.linux().as_ref().unwrap().resources().as_ref()).unwrap();
    guard.ctr_cgroup = Some(ctr_cgroup.clone());
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&s).unwrap()).unwrap();
    let log = dir.join("ctr.log");
    let mcfg = MonitorConfig::new(&dir, &ctr_id, Some(log.clone()));
    mcfg.write(&dir).unwrap();
    guard.socket = Some(mcfg.socket_path.clone());
    monitor::spawn(&monitor_bin(), &dir).unwrap();
    let rec = match Client::connect(&mcfg.socket_path).and_then(|mut c| c.wait_exit(Some(Duration::from_secs(20)))) {
        Ok(r) => r,
        Err(MonitorError::MonitorGone) => monitor::read_exit_record(&mcfg.exit_record_path).unwrap(),
        Err(e) => panic!("wait: {e}"),
    };
    let text: String = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or("").to_string() + "\n")
        .collect();
    assert_eq!(
        rec.exit_code,
        0,
        "{text}\nmonitor log: {}",
        std::fs::read_to_string(dir.join("monitor.log")).unwrap_or_default()
    );
    let own_caps = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap()
        .to_string();
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap().display().to_string();
    let host_pid = std::fs::read_link("/proc/self/ns/pid").unwrap().display().to_string();
    let node = nix::unistd::gethostname().unwrap().into_string().unwrap();
    for want in [
        "Seccomp:\t0".to_string(),
        own_caps,
        format!("net={host_net}"),
        format!("pidns={host_pid}"),
        format!("host={node}"),
        "devnull-ok".into(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    drop(guard);
    assert!(!cg.exists(&pod_cgroup).unwrap());
    let parent = pod_cgroup.rsplit_once('/').unwrap().0;
    assert!(!cg.exists(parent).unwrap(), "the parent made on the way is gone too");
}
