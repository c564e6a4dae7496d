//! Generated specs for representative CRI configs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::image::{Config as ImageConfig, ConfigBuilder};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use proto::cri;

use super::*;
use runtime::user::ResolvedUser;

fn root_user() -> ResolvedUser {
    ResolvedUser { uid: 0, gid: 0, additional_gids: vec![0], username: Some("root".into()), home: "/root".into() }
}

fn image() -> ImageConfig {
    ConfigBuilder::default()
        .env(vec!["PATH=/usr/bin:/bin".to_string(), "FOO=image".to_string()])
        .cmd(vec!["sh".to_string()])
        .working_dir("/work".to_string())
        .build()
        .unwrap()
}

fn sandbox(privileged: bool) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "u1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web-0".into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/podu1".into(),
            security_context: Some(cri::LinuxSandboxSecurityContext { privileged, ..Default::default() }),
            sysctls: HashMap::from([("net.ipv4.ip_forward".to_string(), "1".to_string())]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container() -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "app".into(), attempt: 0 }),
        command: vec!["sleep".into()],
        args: vec!["100".into()],
        envs: vec![
            cri::KeyValue { key: "FOO".into(), value: "cri".into() },
            cri::KeyValue { key: "BAR".into(), value: "1".into() },
        ],
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 512,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: -999,
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext::default()),
        }),
        ..Default::default()
    }
}

struct Fixture {
    _d: tempfile::TempDir,
    dir: PathBuf,
    user: ResolvedUser,
    image: ImageConfig,
}

fn fixture() -> Fixture {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    for f in ["resolv.conf", "hosts", "hostname"] {
        std::fs::write(dir.join(f), "").unwrap();
    }
    std::fs::create_dir(dir.join("shm")).unwrap();
    Fixture { _d: d, dir, user: root_user(), image: image() }
}

fn gen(
    f: &Fixture,
    config: &cri::ContainerConfig,
    sb: &cri::PodSandboxConfig,
    pid: PidNamespace,
    ns: PodNamespacePaths,
) -> Result<Spec, SpecError> {
    let input = SpecInput {
        container_id: "c1",
        sandbox_id: "p1",
        config,
        sandbox: sb,
        image: Some(&f.image),
        image_name: "busybox:1.29",
        rootfs: Path::new("/run/skiff/containers/c1/rootfs"),
        pod_files: PodFilePaths {
            resolv_conf: Some(f.dir.join("resolv.conf")),
            hosts: Some(f.dir.join("hosts")),
            hostname: Some(f.dir.join("hostname")),
            shm: Some(f.dir.join("shm")),
        },
        namespaces: ns,
        pid,
        cgroups_path: "/kubepods/podu1/c1",
        user: &f.user,
        oom_score_adj_min: -500,
        rlimits: vec![],
        cgroup_v2: false,
    };
    generate(&input)
}

fn pod_ns() -> PodNamespacePaths {
    PodNamespacePaths {
        net: Some("/run/skiff/pods/p1/ns/net".into()),
        ipc: Some("/run/skiff/pods/p1/ns/ipc".into()),
        uts: Some("/run/skiff/pods/p1/ns/uts".into()),
        user: None,
    }
}

fn dests(s: &Spec) -> Vec<String> {
    s.mounts().as_ref().unwrap().iter().map(|m| m.destination().display().to_string()).collect()
}

#[test]
fn basic_container() {
    let f = fixture();
    let s = gen(&f, &container(), &sandbox(false), PidNamespace::Container, pod_ns()).unwrap();
    let p = s.process().as_ref().unwrap();
    assert_eq!(p.args().as_ref().unwrap(), &vec!["sleep".to_string(), "100".to_string()]);
    let env = p.env().as_ref().unwrap();
    assert_eq!(
        env,
        &vec![
            "PATH=/usr/bin:/bin".to_string(),
            "HOSTNAME=web-0".into(),
            "FOO=cri".into(),
            "BAR=1".into(),
            "HOME=/root".into()
        ]
    );
    assert_eq!(p.cwd(), Path::new("/work"));
    assert_eq!(p.user().uid(), 0);
    assert_eq!(p.oom_score_adj(), Some(-500), "clamped to the floor");
    assert_eq!(p.no_new_privileges(), None);
    let caps = p.capabilities().as_ref().unwrap();
    assert_eq!(
        runtime::caps::names(caps.bounding().as_ref().unwrap()),
        runtime::caps::names(&runtime::caps::compute(false, &[], &[]).unwrap())
    );
    assert!(caps.inheritable().is_none() && caps.ambient().is_none(), "no inheritable/ambient caps unless asked");
    let rules = serde_json::to_value(s.linux().as_ref().unwrap().resources().as_ref().unwrap().devices()).unwrap();
    assert_eq!(rules[0], serde_json::json!({"allow": false, "access": "rwm"}));
    assert_eq!(rules[1], serde_json::json!({"allow": true, "type": "c", "access": "m"}));
    assert_eq!(rules[3], serde_json::json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}));
    assert_eq!(s.hostname().as_deref(), Some("web-0"));
    assert_eq!(s.root().as_ref().unwrap().path(), Path::new("/run/skiff/containers/c1/rootfs"));
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(false));
    assert_eq!(
        dests(&s),
        vec![
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/etc/hostname",
            "/dev/shm",
        ]
    );
    let l = s.linux().as_ref().unwrap();
    let nss: Vec<(LinuxNamespaceType, Option<PathBuf>)> =
        l.namespaces().as_ref().unwrap().iter().map(|n| (n.typ(), n.path().clone())).collect();
    assert_eq!(
        nss,
        vec![
            (LinuxNamespaceType::Pid, None),
            (LinuxNamespaceType::Network, Some("/run/skiff/pods/p1/ns/net".into())),
            (LinuxNamespaceType::Ipc, Some("/run/skiff/pods/p1/ns/ipc".into())),
            (LinuxNamespaceType::Uts, Some("/run/skiff/pods/p1/ns/uts".into())),
            (LinuxNamespaceType::Mount, None),
        ]
    );
    assert_eq!(l.cgroups_path().as_deref(), Some(Path::new("/kubepods/podu1/c1")));
    let r = l.resources().as_ref().unwrap();
    assert_eq!(r.cpu().as_ref().unwrap().shares(), Some(512));
    assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
    assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
    assert!(!r.devices().as_ref().unwrap()[0].allow(), "deny all devices first");
    assert_eq!(l.masked_paths().as_ref().unwrap(), &default_masked_paths());
    assert_eq!(l.readonly_paths().as_ref().unwrap(), &default_readonly_paths());
    assert!(l.seccomp().is_none(), "no profile asked: unconfined, as containerd");
    assert_eq!(l.sysctl().as_ref().unwrap()["net.ipv4.ip_forward"], "1");
    let a = s.annotations().as_ref().unwrap();
    assert_eq!(a["io.kubernetes.cri.sandbox-id"], "p1");
    assert_eq!(a["io.kubernetes.cri.container-name"], "app");
    // round-trips through JSON (what the monitor reads)
    let j = serde_json::to_string(&s).unwrap();
    if std::env::var_os("SKIFF_DUMP_SPEC").is_some() {
        eprintln!("{}", serde_json::to_string_pretty(&s).unwrap());
    }
    let back: Spec = serde_json::from_str(&j).unwrap();
    assert_eq!(back.process().as_ref().unwrap().args(), p.args());
}

#[test]
fn args_merge() {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // (command, args, entrypoint, cmd) → result
    assert_eq!(merge_args(&[], &[], &v(&["/ep"]), &v(&["c1"])).unwrap(), v(&["/ep", "c1"]));
    assert_eq!(merge_args(&v(&["cmd"]), &[], &v(&["/ep"]), &v(&["c1"])).unwrap(), v(&["cmd"]));
    assert_eq!(merge_args(&[], &v(&["a"]), &v(&["/ep"]), &v(&["c1"])).unwrap(), v(&["/ep", "a"]));
    assert_eq!(merge_args(&v(&["cmd"]), &v(&["a"]), &v(&["/ep"]), &v(&["c1"])).unwrap(), v(&["cmd", "a"]));
    assert_eq!(merge_args(&[], &[], &v(&[""]), &v(&["c1"])).unwrap(), v(&["c1"]));
    assert_eq!(merge_args(&[], &v(&["a"]), &[], &v(&["c1"])).unwrap(), v(&["a"]));
    assert_eq!(merge_args(&[], &[], &[], &[]).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn privileged_container() {
    let f = fixture();
    let mut c = container();
    c.linux.as_mut().unwrap().security_context =
        Some(cri::LinuxContainerSecurityContext { privileged: true, ..Default::default() });
    assert_eq!(
        gen(&f, &c, &sandbox(false), PidNamespace::Container, pod_ns()).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let s = gen(&f, &c, &sandbox(true), PidNamespace::Container, pod_ns()).unwrap();
    let l = s.linux().as_ref().unwrap();
    assert!(l.masked_paths().is_none() && l.readonly_paths().is_none() && l.seccomp().is_none());
    let rules = l.resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert!(rules.len() == 1 && rules[0].allow());
    assert!(l.devices().as_ref().unwrap().iter().any(|d| d.path() == Path::new("/dev/null")));
    let caps = s.process().as_ref().unwrap().capabilities().as_ref().unwrap();
    assert_eq!(caps.bounding().as_ref().unwrap(), &runtime::caps::current_caps());
    let sys = s.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new("/sys")).unwrap();
    assert!(sys.options().as_ref().unwrap().contains(&"rw".to_string()));
}

#[test]
fn cri_mounts() {
    let f = fixture();
    let data = f.dir.join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::symlink(&data, f.dir.join("link")).unwrap();
    let mut c = container();
    c.mounts = vec![
        cri::Mount {
            container_path: "/var/lib/x/y".into(),
            host_path: data.display().to_string(),
            readonly: true,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/var/".into(),
            host_path: f.dir.join("link").display().to_string(),
            propagation: cri::MountPropagation::PropagationHostToContainer as i32,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/etc/hosts".into(),
            host_path: f.dir.join("hosts").display().to_string(),
            ..Default::default()
        },
    ];
    let s = gen(&f, &c, &sandbox(false), PidNamespace::Container, pod_ns()).unwrap();
    let ms = s.mounts().as_ref().unwrap();
    assert_eq!(
        dests(&s),
        vec![
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/var",
            "/etc/resolv.conf",
            "/etc/hostname",
            "/dev/shm",
            "/etc/hosts",
            "/var/lib/x/y",
        ]
    );
    let var = ms.iter().find(|m| m.destination() == Path::new("/var")).unwrap();
    assert_eq!(var.source().as_deref(), Some(data.canonicalize().unwrap().as_path()), "host symlinks resolved");
    assert_eq!(var.options().as_ref().unwrap(), &vec!["rbind".to_string(), "rslave".into(), "rw".into()]);
    let y = ms.iter().find(|m| m.destination() == Path::new("/var/lib/x/y")).unwrap();
    assert_eq!(y.options().as_ref().unwrap(), &vec!["rbind".to_string(), "rprivate".into(), "ro".into()]);
    assert_eq!(s.linux().as_ref().unwrap().rootfs_propagation().as_deref(), Some("rslave"));
    // a missing host path is InvalidArgument and nothing is created
    let missing = f.dir.join("nope/deeper");
    c.mounts = vec![cri::Mount {
        container_path: "/m".into(),
        host_path: missing.display().to_string(),
        ..Default::default()
    }];
    let e = gen(&f, &c, &sandbox(false), PidNamespace::Container, pod_ns()).unwrap_err();
    assert!(matches!(e, SpecError::MountSourceMissing { .. }));
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(!f.dir.join("nope").exists());
    c.mounts = vec![cri::Mount {
        container_path: "relative".into(),
        host_path: data.display().to_string(),
        ..Default::default()
    }];
    assert_eq!(
        gen(&f, &c, &sandbox(false), PidNamespace::Container, pod_ns()).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn security_context() {
    let f = fixture();
    let mut c = container();
    let profile = f.dir.join("profile.json");
    std::fs::write(
        &profile,
        br#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
    )
    .unwrap();
    c.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_capabilities: vec!["SYS_ADMIN".into()],
            drop_capabilities: vec!["CHOWN".into(), "NET_RAW".into()],
            ..Default::default()
        }),
        no_new_privs: true,
        readonly_rootfs: true,
        masked_paths: vec!["/proc/secret".into()],
        readonly_paths: vec![],
        seccomp: Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        }),
        ..Default::default()
    });
    let s = gen(&f, &c, &sandbox(false), PidNamespace::Container, pod_ns()).unwrap();
    let p = s.process().as_ref().unwrap();
    let caps = runtime::caps::names(p.capabilities().as_ref().unwrap().bounding().as_ref().unwrap());
    assert!(!caps.contains(&"CAP_CHOWN".to_string()) && !caps.contains(&"CAP_NET_RAW".to_string()));
    assert!(
        caps.contains(&"CAP_SYS_ADMIN".to_string())
            || !runtime::caps::current_caps().contains(&oci_spec::runtime::Capability::SysAdmin)
    );
    assert_eq!(p.no_new_privileges(), Some(true));
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
    let hosts = s.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new("/etc/hosts")).unwrap();
    assert!(hosts.options().as_ref().unwrap().contains(&"ro".to_string()));
    let l = s.linux().as_ref().unwrap();
    assert_eq!(l.masked_paths().as_ref().unwrap(), &vec!["/proc/secret".to_string()]);
    assert_eq!(l.readonly_paths().as_ref().unwrap(), &default_readonly_paths());
    let sc = l.seccomp().as_ref().unwrap();
    assert!(
        sc.syscalls().as_ref().unwrap().iter().any(|r| r.names().iter().any(|n| n == "mount")),
        "SYS_ADMIN adds mount"
    );
    // Localhost
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap().seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: profile.display().to_string(),
    });
    let s = gen(&f, &c, &sandbox(false), PidNamespace::Container, pod_ns()).unwrap();
    assert_eq!(s.linux().as_ref().unwrap().seccomp().as_ref().unwrap().syscalls().as_ref().unwrap().len(), 1);
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap().seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: "/no/such/profile.json".into(),
    });
    assert_eq!(
        gen(&f, &c, &sandbox(false), PidNamespace::Container, pod_ns()).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    // unknown capability
    c.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability { add_capabilities: vec!["NOT_A_CAP".into()], ..Default::default() }),
        ..Default::default()
    });
    assert_eq!(
        gen(&f, &c, &sandbox(false), PidNamespace::Container, pod_ns()).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn host_namespaces() {
    let f = fixture();
    let c = container();
    let mut sb = sandbox(false);
    // host network with a net.* sysctl would change the host
    let host_net = PodNamespacePaths { net: None, ..pod_ns() };
    assert_eq!(gen(&f, &c, &sb, PidNamespace::Node, host_net.clone()).unwrap_err().kind(), ErrorKind::InvalidArgument);
    sb.linux.as_mut().unwrap().sysctls.clear();
    let s = gen(&f, &c, &sb, PidNamespace::Node, PodNamespacePaths::default()).unwrap();
    let types: Vec<LinuxNamespaceType> =
        s.linux().as_ref().unwrap().namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect();
    assert_eq!(types, vec![LinuxNamespaceType::Mount]);
    assert!(s.hostname().is_none(), "host UTS: the hostname is not touched");
    let s = gen(&f, &c, &sb, PidNamespace::Pod("/proc/42/ns/pid".into()), pod_ns()).unwrap();
    let pid = s
        .linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Pid)
        .unwrap()
        .clone();
    assert_eq!(pid.path().as_deref(), Some(Path::new("/proc/42/ns/pid")));
}

#[test]
fn resources_conversion() {
    let r = cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 20_000,
        cpu_shares: 2,
        memory_limit_in_bytes: 100 << 20,
        memory_swap_limit_in_bytes: 200 << 20,
        cpuset_cpus: "0-1,3".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![cri::HugepageLimit { page_size: "2MB".into(), limit: 4 << 20 }],
        unified: HashMap::from([("memory.high".to_string(), "max".to_string())]),
        ..Default::default()
    };
    let o = resources_from_cri(&r).unwrap();
    assert_eq!(o.cpu().as_ref().unwrap().cpus().as_deref(), Some("0-1,3"));
    assert_eq!(o.memory().as_ref().unwrap().swap(), Some(200 << 20));
    assert_eq!(o.hugepage_limits().as_ref().unwrap()[0].limit(), 4 << 20);
    assert!(resources_from_cri(&cri::LinuxContainerResources::default()).unwrap().cpu().is_none());
    for bad in [
        cri::LinuxContainerResources { cpuset_cpus: "a-b".into(), ..Default::default() },
        cri::LinuxContainerResources {
            memory_limit_in_bytes: 100,
            memory_swap_limit_in_bytes: 50,
            ..Default::default()
        },
        cri::LinuxContainerResources {
            hugepage_limits: vec![cri::HugepageLimit { page_size: "2XB".into(), limit: 1 }],
            ..Default::default()
        },
    ] {
        assert_eq!(resources_from_cri(&bad).unwrap_err().kind(), ErrorKind::InvalidArgument);
    }
    assert_eq!(clamp_oom_score_adj(100, -998).unwrap(), 100);
    assert_eq!(clamp_oom_score_adj(-1000, -998).unwrap(), -998);
    assert!(clamp_oom_score_adj(1001, 0).is_err());
}

#[test]
fn user_request_from_config() {
    let mut c = container();
    let img = image();
    c.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        run_as_user: Some(cri::Int64Value { value: 1000 }),
        supplemental_groups: vec![5],
        ..Default::default()
    });
    let r = user_request(&c, Some(&img));
    assert_eq!(r.run_as_user, Some(1000));
    assert_eq!(r.supplemental_groups, &[5]);
}

#[test]
fn sysctl_names() {
    assert_eq!(sysctl_dots("kernel/shm_rmid_forced"), "kernel.shm_rmid_forced");
    assert_eq!(sysctl_dots("net/ipv4/conf/eth0.100/rp_filter"), "net.ipv4.conf.eth0/100.rp_filter");
    assert_eq!(sysctl_dots("net.ipv4.conf.eth0/100.rp_filter"), "net.ipv4.conf.eth0/100.rp_filter");
    let f = fixture();
    let mut sb = sandbox(false);
    sb.linux.as_mut().unwrap().sysctls = HashMap::from([("kernel/shm_rmid_forced".to_string(), "1".to_string())]);
    let s = gen(&f, &container(), &sb, PidNamespace::Container, pod_ns()).unwrap();
    assert_eq!(s.linux().as_ref().unwrap().sysctl().as_ref().unwrap()["kernel.shm_rmid_forced"], "1");
    sb.linux.as_mut().unwrap().sysctls = HashMap::from([("kernel.pid_max".to_string(), "1".to_string())]);
    assert_eq!(
        gen(&f, &container(), &sb, PidNamespace::Container, pod_ns()).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn minimal_config() {
    let f = fixture();
    let c = cri::ContainerConfig { command: vec!["/pause".into()], ..Default::default() };
    let sb = cri::PodSandboxConfig::default();
    let s = gen(&f, &c, &sb, PidNamespace::Container, pod_ns()).unwrap();
    assert_eq!(s.process().as_ref().unwrap().args().as_ref().unwrap(), &vec!["/pause".to_string()]);
    assert!(s.linux().as_ref().unwrap().resources().as_ref().unwrap().memory().is_none());
    let r =
        resources_from_cri(&cri::LinuxContainerResources { memory_limit_in_bytes: 100, ..Default::default() }).unwrap();
    assert_eq!(r.memory().as_ref().unwrap().swap(), Some(100), "no swap unless asked");
}

#[test]
fn user_namespace_of_the_pod() {
    let f = fixture();
    let mut sb = sandbox(false);
    let maps = vec![cri::IdMapping { container_id: 0, host_id: 100_000, length: 65536 }];
    let u = cri::UserNamespace { mode: cri::NamespaceMode::Pod as i32, uids: maps.clone(), gids: maps.clone() };
    sb.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options =
        Some(cri::NamespaceOption { userns_options: Some(u.clone()), ..Default::default() });
    let mut c = container();
    c.mounts =
        vec![cri::Mount { container_path: "/v".into(), host_path: f.dir.display().to_string(), ..Default::default() }];
    let ns = PodNamespacePaths { user: Some("/run/skiff/pods/p1/ns/user".into()), ..pod_ns() };
    let s = gen(&f, &c, &sb, PidNamespace::Container, ns.clone()).unwrap();
    let l = s.linux().as_ref().unwrap();
    let user = l.namespaces().as_ref().unwrap().iter().find(|n| n.typ() == LinuxNamespaceType::User).unwrap();
    assert_eq!(user.path().as_deref(), Some(Path::new("/run/skiff/pods/p1/ns/user")));
    let m = &l.uid_mappings().as_ref().unwrap()[0];
    assert_eq!((m.container_id(), m.host_id(), m.size()), (0, 100_000, 65536));
    assert!(l.gid_mappings().is_some());
    // the pod's files are idmapped; the host-path volume (no mappings asked for) is not
    for m in s.mounts().as_ref().unwrap() {
        let d = m.destination().to_string_lossy().into_owned();
        let idmapped = m.uid_mappings().is_some() && m.gid_mappings().is_some();
        match d.as_str() {
            "/etc/hosts" | "/etc/resolv.conf" | "/etc/hostname" | "/dev/shm" => assert!(idmapped, "{d}"),
            _ => assert!(!idmapped, "{d}"),
        }
    }
    // a volume asking for the pod's mappings is idmapped; other mappings are refused
    c.mounts[0].uid_mappings = maps.clone();
    c.mounts[0].gid_mappings = maps.clone();
    let s = gen(&f, &c, &sb, PidNamespace::Container, ns.clone()).unwrap();
    let v = s.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new("/v")).unwrap();
    assert!(v.uid_mappings().is_some());
    c.mounts[0].uid_mappings[0].host_id = 5;
    assert_eq!(gen(&f, &c, &sb, PidNamespace::Container, ns.clone()).unwrap_err().kind(), ErrorKind::InvalidArgument);
    c.mounts.clear();
    // the container's options must be its pod's
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options = Some(cri::NamespaceOption {
        userns_options: Some(cri::UserNamespace { mode: cri::NamespaceMode::Node as i32, ..Default::default() }),
        ..Default::default()
    });
    assert_eq!(gen(&f, &c, &sb, PidNamespace::Container, ns.clone()).unwrap_err().kind(), ErrorKind::InvalidArgument);
    // a pod record without its user namespace pin never runs the container in the node's
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options = None;
    assert_eq!(gen(&f, &c, &sb, PidNamespace::Container, pod_ns()).unwrap_err().kind(), ErrorKind::InvalidArgument);
}
