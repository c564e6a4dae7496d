//! The installer DaemonSet's image and pod, run through skiff as the kubelet would run them:
//! `manifests/build-installer-image.sh --engine oci` builds the image from the test's binaries
//! without a container engine and pushes it (skopeo) to a registry the test starts on a free
//! loopback port; skiffd pulls it and runs daemonset.yaml's pod as the kubelet translates it
//! (privileged, host PID and network namespaces, the node's / at /host with HostToContainer
//! propagation, the ConfigMap read-only at /opt/skiff/config, and the kubelet's own /etc/hosts,
//! termination log and token mounts). The node's / is a directory of the test (the machine's
//! real / once, with `HOST_ROOT=/host<prefix>`); a process of the test stands in for the node's
//! init (`NODE_PID`; this machine's PID 1 may not be entered). Then: the install with
//! `NODE_START=none` (files only), five failures (each must exit non-zero with a message that
//! says what is wrong), and `NODE_START=systemd` against the machine's systemctl where systemd
//! does not run (its failure must be reported) and against a recording systemctl bound over it
//! in the stand-in's own mount namespace (the calls, and the success path).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::pods::pod_config;
use skiff_tests::{bin_dir, cri, processes_mentioning, Daemon};

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A throw-away docker-registry on a free loopback port; killed (by its pid) on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::Builder::new().prefix("skiff-reg-").tempdir_in("/tmp").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let reg = Registry { child, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Command::new("curl")
            .args(["-fsS", &format!("http://{}/v2/", reg.addr)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            assert!(Instant::now() < deadline, "docker-registry did not start on {}", reg.addr);
            std::thread::sleep(Duration::from_millis(100));
        }
        reg
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process in this machine's namespaces standing in for the node's init (the target of
/// install-on-node.sh's nsenter); killed on drop.
struct NodeInit(Child);

impl Drop for NodeInit {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What goes wrong, the container's environment and mounts, the message, the prefix that must stay empty.
type FailureCase<'a> = (&'a str, Vec<(&'a str, String)>, Vec<cri::Mount>, &'a str, Option<PathBuf>);

/// Unmounts (detached) on drop.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn mount(container: &str, host: &Path, readonly: bool) -> cri::Mount {
    cri::Mount {
        container_path: container.into(),
        host_path: host.to_string_lossy().into_owned(),
        readonly,
        // What the kubelet sends for a volumeMount without mountPropagation.
        propagation: cri::MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    }
}

/// daemonset.yaml's host and pid namespaces, as the kubelet sends them for hostNetwork and hostPID.
fn node_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Node as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The DaemonSet's container `install` (attempt `attempt`, so each run has its own log).
fn install_container(
    image: &str,
    attempt: u32,
    env: &[(&str, String)],
    mounts: Vec<cri::Mount>,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "install".into(), attempt }),
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        log_path: format!("install/{attempt}.log"),
        envs: env.iter().map(|(k, v)| cri::KeyValue { key: k.to_string(), value: v.clone() }).collect(),
        mounts,
        linux: Some(cri::LinuxContainerConfig {
            // resources: requests cpu 10m, limits memory 64Mi
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 10,
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                namespace_options: Some(node_namespaces()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

fn log_text(pc: &cri::PodSandboxConfig, attempt: u32) -> String {
    let path = Path::new(&pc.log_directory).join(format!("install/{attempt}.log"));
    skiff_tests::pods::read_log(&path).into_iter().map(|(_, _, text)| text + "\n").collect()
}

/// The ConfigMap's config.toml as the rendered manifest has it (the block under `config.toml: |`).
fn configmap_config(manifest: &str) -> String {
    let mut out = String::new();
    let mut lines = manifest.lines().skip_while(|l| *l != "  config.toml: |").skip(1);
    for l in lines.by_ref() {
        if l.is_empty() {
            out.push('\n');
        } else if let Some(rest) = l.strip_prefix("    ") {
            out.push_str(rest);
            out.push('\n');
        } else {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installer_image_built_without_an_engine_installs_through_skiff() {
    let tools = ["docker-registry", "skopeo", "python3", "busybox", "curl"];
    let yaml = Command::new("python3").args(["-c", "import yaml"]).status().is_ok_and(|s| s.success());
    if !common::prerequisite(
        yaml && tools.iter().all(|t| have(t)),
        "docker-registry, skopeo, python3, python3-yaml, busybox-static and curl",
    ) {
        return;
    }
    let work = tempfile::Builder::new().prefix("skiff-instimg-").tempdir_in("/tmp").unwrap();
    let w = |s: &str| work.path().join(s);
    let registry = Registry::start();

    // The image, from the test's binaries, without docker/podman/buildah.
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(manifests().join("build-installer-image.sh"))
        .arg(format!("{}/skiff", registry.addr))
        .args(["--from", bin_dir().to_str().unwrap(), "--engine", "oci", "--push", "--insecure", "--out"])
        .arg(w("image"))
        .output()
        .unwrap();
    eprintln!(
        "--- build-installer-image.sh ({:?}): {}\n{}{}",
        started.elapsed(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    let manifest = std::fs::read_to_string(w("image/daemonset.yaml")).unwrap();
    let image_line = manifest.lines().find(|l| l.trim_start().starts_with("image: ")).unwrap();
    let image = image_line.trim_start().trim_start_matches("image: ").to_owned();
    assert!(image.starts_with(&format!("{}/skiff/skiff-installer:", registry.addr)), "{image_line}");

    // The rendered manifest (ConfigMap + DaemonSet) parses and is consistent (and, with the
    // Kubernetes Python client installed, uses only fields of the API's types).
    let out = Command::new("python3")
        .arg(manifests().join("check-manifest.py"))
        .arg(w("image/daemonset.yaml"))
        .output()
        .unwrap();
    eprintln!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());

    let d = Daemon::start().await;
    let image_ref = d.pull(&image).await;
    assert!(!image_ref.is_empty());

    // The "node": a directory for its / (mounted at /host as the DaemonSet mounts the node's /),
    // a process for its namespaces. The machine's real / goes to /host only in one short run
    // below: a container holding a copy of every mount of the machine would keep other tests'
    // mounts (and so their network namespaces) alive while it runs.
    let node = w("node");
    std::fs::create_dir_all(node.join("etc/skiff")).unwrap();
    // A file system of its own under the node's /, as /run or /var are on real nodes: the
    // pod's /host must be a recursive bind for the script to write into it.
    let etc_skiff = node.join("etc/skiff");
    nix::mount::mount(Some("tmpfs"), &etc_skiff, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m")).unwrap();
    let tmpfs = Unmount(etc_skiff.clone());
    let init = NodeInit(Command::new("sleep").arg("300").spawn().unwrap());
    let node_pid = init.0.id().to_string();
    let config = configmap_config(&manifest);
    assert!(config.contains("pod_cidr = \"\""), "the ConfigMap's config.toml: {config:?}");
    std::fs::create_dir_all(w("configmap")).unwrap();
    std::fs::write(w("configmap/config.toml"), &config).unwrap();

    // The DaemonSet's pod: hostPID, hostNetwork, privileged.
    let mut pc = pod_config(&d, "skiff-installer-x7k2p");
    if let Some(m) = pc.metadata.as_mut() {
        m.namespace = "kube-system".into();
    }
    pc.hostname = String::new();
    pc.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            namespace_options: Some(node_namespaces()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = d.run_pod(&pc).await;
    // What the kubelet adds to every container: /etc/hosts, the termination log and the
    // service account token (the image from scratch has none of these paths).
    std::fs::create_dir_all(w("kubelet/token")).unwrap();
    std::fs::write(w("kubelet/token/token"), "not-a-token").unwrap();
    std::fs::write(w("kubelet/etc-hosts"), "127.0.0.1 localhost\n").unwrap();
    std::fs::write(w("kubelet/termination-log"), "").unwrap();
    let volumes = |config_dir: &Path, node_root: &Path| {
        vec![
            // mountPropagation: HostToContainer, as daemonset.yaml says
            cri::Mount {
                propagation: cri::MountPropagation::PropagationHostToContainer as i32,
                ..mount("/host", node_root, false)
            },
            mount("/opt/skiff/config", config_dir, true),
            mount("/etc/hosts", &w("kubelet/etc-hosts"), false),
            mount("/dev/termination-log", &w("kubelet/termination-log"), false),
            mount("/var/run/secrets/kubernetes.io/serviceaccount", &w("kubelet/token"), true),
        ]
    };
    // HOST_ROOT and CONFIG_DIR stay unset, as in the DaemonSet.
    let env = |start: &str| vec![("NODE_PID", node_pid.clone()), ("NODE_START", start.to_owned())];

    // 1. The installation.
    let c = d
        .create_and_start(&pod, &pc, install_container(&image, 0, &env("none"), volumes(&w("configmap"), &node)))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log_text(&pc, 0).contains("skiffd not started") {
        let st = d.container_status(&c).await;
        assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32, "exited: {st:?}\n{}", log_text(&pc, 0));
        assert!(Instant::now() < deadline, "install-on-node.sh did not finish:\n{}", log_text(&pc, 0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = log_text(&pc, 0);
    eprintln!("--- install-on-node.sh:\n{log}");
    let same = |installed: &str, original: &Path| {
        let a = std::fs::read(node.join(installed)).unwrap_or_else(|e| panic!("{installed}: {e}"));
        assert!(a == std::fs::read(original).unwrap(), "{installed} differs from {}", original.display());
    };
    same("usr/local/bin/skiffd", &bin_dir().join("skiffd"));
    same("usr/local/bin/skiff-monitor", &bin_dir().join("skiff-monitor"));
    same("etc/systemd/system/skiffd.service", &manifests().join("skiffd.service"));
    same("etc/skiff/config.toml", &w("configmap/config.toml"));
    let mode = std::fs::metadata(node.join("usr/local/bin/skiffd")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o755);
    let crictl = std::fs::read_to_string(node.join("etc/crictl.yaml")).unwrap();
    assert!(crictl.contains("runtime-endpoint: unix:///run/skiff/skiff.sock"), "{crictl}");
    assert!(crictl.contains("image-endpoint: unix:///run/skiff/skiff.sock"), "{crictl}");
    let half_written: Vec<_> =
        walk(&node).into_iter().filter(|p| p.to_string_lossy().ends_with(".skiff-new")).collect();
    assert!(half_written.is_empty(), "{half_written:?}");
    // nsenter reached the stand-in's mount namespace (not the pod's own).
    let node_mnt = std::fs::read_link(format!("/proc/{node_pid}/ns/mnt")).unwrap();
    assert!(log.contains(&format!("mount namespace {}; this pod's", node_mnt.display())), "{log}");
    // Pod deletion: TERM ends it at once, exit 0.
    let t = Instant::now();
    d.runtime().stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 30 }).await.unwrap();
    let st = d.container_status(&c).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "stop took {:?}", t.elapsed());
    assert!(log_text(&pc, 0).contains("stopping (skiffd keeps running on the node)"));

    // 2. Failures: each exits non-zero, names the problem, and installs nothing.
    std::fs::create_dir_all(w("bad-configmap")).unwrap();
    std::fs::write(w("bad-configmap/config.toml"), "[network]\npod_cidr = \"\"\nbogus = 1\n").unwrap();
    std::fs::create_dir_all(w("empty")).unwrap();
    let fresh = |name: &str| {
        let p = w(name);
        std::fs::create_dir_all(p.join("etc")).unwrap();
        p
    };
    let (n2, n3, n4, n6) = (fresh("node2"), fresh("node3"), fresh("node4"), fresh("node6"));
    let mut with_empty_bin = volumes(&w("configmap"), &n3);
    with_empty_bin.push(mount("/opt/skiff/bin", &w("empty"), true));
    let cases: Vec<FailureCase> = vec![
        (
            "invalid ConfigMap",
            env("none"),
            volumes(&w("bad-configmap"), &n2),
            "the ConfigMap's config.toml",
            Some(n2.clone()),
        ),
        (
            "no binaries in the image",
            env("none"),
            with_empty_bin,
            "bin/skiffd is missing from the image",
            Some(n3.clone()),
        ),
        (
            "node without systemd",
            env("systemd"),
            volumes(&w("configmap"), &n4),
            "the node does not run systemd",
            Some(n4.clone()),
        ),
        ("node's / not mounted", env("none"), vec![], "the node's root is not mounted", None),
        // The machine's real / at /host (the prefix through HOST_ROOT): the files go through it
        // into the prefix, then nsenter fails at once (the container lives for a moment only).
        (
            "node's namespaces out of reach",
            vec![
                ("HOST_ROOT", format!("/host{}", n6.display())),
                ("NODE_PID", "999999999".into()),
                ("NODE_START", "none".into()),
            ],
            volumes(&w("configmap"), Path::new("/")),
            "cannot enter the namespaces of the node's process 999999999",
            None,
        ),
    ];
    for (attempt, (what, env, mounts, message, prefix)) in cases.into_iter().enumerate() {
        let attempt = attempt as u32 + 1;
        let c = d.create_and_start(&pod, &pc, install_container(&image, attempt, &env, mounts)).await;
        let st = d.wait_exited(&c, Duration::from_secs(30)).await;
        let log = log_text(&pc, attempt);
        eprintln!("--- {what}: exit {}\n{log}", st.exit_code);
        assert_ne!(st.exit_code, 0, "{what}: exit 0\n{log}");
        assert!(log.contains("install-on-node: error: ") && log.contains(message), "{what}: no {message:?} in\n{log}");
        if let Some(prefix) = prefix {
            let files: Vec<_> = walk(&prefix).into_iter().filter(|p| !p.is_dir()).collect();
            assert!(files.is_empty(), "{what}: installed {files:?}");
        }
    }
    let through_real_root = std::fs::read(n6.join("usr/local/bin/skiff-monitor"));
    assert!(through_real_root.ok() == std::fs::read(bin_dir().join("skiff-monitor")).ok(), "not installed through /");

    // 3. NODE_START=systemd as far as a machine without systemd allows: the node's own bash
    // (through nsenter) finds the packages installed and runs systemctl, which fails there; the
    // failure must be loud. Only where systemd does not run (where it does, systemctl would act
    // on this machine) and the packages are there (else apt-get would install them here).
    let packages = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}\n", "nftables", "iproute2", "libseccomp2"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).matches("install ok installed").count() == 3);
    if !Path::new("/run/systemd/system").exists() && packages {
        let n5 = fresh("node5");
        std::fs::create_dir_all(n5.join("run/systemd/system")).unwrap();
        let c = d
            .create_and_start(&pod, &pc, install_container(&image, 9, &env("systemd"), volumes(&w("configmap"), &n5)))
            .await;
        let st = d.wait_exited(&c, Duration::from_secs(60)).await;
        let log = log_text(&pc, 9);
        eprintln!("--- systemd mode on a node without systemd: exit {}\n{log}", st.exit_code);
        assert_ne!(st.exit_code, 0, "{log}");
        assert!(log.contains("install-on-node: error: starting skiffd.service on node"), "{log}");
        assert!(!log.contains("installing nftables"), "{log}");
        assert!(n5.join("usr/local/bin/skiffd").is_file(), "the files come first");
    } else {
        eprintln!("NODE_START=systemd not run: systemd runs here, or nftables/iproute2/libseccomp2 are missing");
    }

    // 4. NODE_START=systemd to the end, against a recording systemctl: the stand-in node gets a
    // mount namespace of its own in which a script is bound over systemctl (nothing changes on
    // this machine), so the script's calls and its success path can be checked.
    if packages {
        let n7 = fresh("node7");
        std::fs::create_dir_all(n7.join("run/systemd/system")).unwrap();
        let calls = w("systemctl.calls");
        std::fs::write(w("systemctl"), format!("#!/bin/sh\necho \"$*\" >>{}\n", calls.display())).unwrap();
        std::fs::set_permissions(w("systemctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let systemctl = String::from_utf8(
            Command::new("sh").args(["-c", "command -v systemctl || echo /usr/bin/systemctl"]).output().unwrap().stdout,
        )
        .unwrap();
        let systemctl = systemctl.trim();
        if !Path::new(systemctl).exists() {
            eprintln!("no systemctl on this machine: the recording systemctl case is not run");
        } else {
            let fake_node = NodeInit(
                Command::new("unshare")
                    .args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(format!("mount --bind {} {systemctl} && exec sleep 300", w("systemctl").display()))
                    .spawn()
                    .unwrap(),
            );
            let fake_pid = fake_node.0.id().to_string();
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::read_link(format!("/proc/{fake_pid}/ns/mnt")).ok()
                == std::fs::read_link("/proc/self/ns/mnt").ok()
                || !cmdline_is_sleep(&fake_pid)
            {
                assert!(Instant::now() < deadline, "the stand-in node with its own systemctl did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            let env7 = vec![("NODE_PID", fake_pid.clone()), ("NODE_START", "systemd".to_owned())];
            let c = d
                .create_and_start(&pod, &pc, install_container(&image, 10, &env7, volumes(&w("configmap"), &n7)))
                .await;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !log_text(&pc, 10).contains("skiffd installed and started on node") {
                let st = d.container_status(&c).await;
                assert_eq!(
                    st.state,
                    cri::ContainerState::ContainerRunning as i32,
                    "exited: {st:?}\n{}",
                    log_text(&pc, 10)
                );
                assert!(Instant::now() < deadline, "not finished:\n{}", log_text(&pc, 10));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!("--- systemd mode against a recording systemctl:\n{}", log_text(&pc, 10));
            let recorded = std::fs::read_to_string(&calls).unwrap_or_default();
            assert_eq!(
                recorded,
                "daemon-reload\nenable skiffd.service\nrestart skiffd.service\nis-active --quiet skiffd.service\n"
            );
            d.runtime().stop_container(cri::StopContainerRequest { container_id: c, timeout: 30 }).await.unwrap();
            drop(fake_node);
        }
    }

    d.remove_pod(&pod).await;
    drop(init);
    let on_tmpfs = std::fs::read_to_string(etc_skiff.join("config.toml"));
    drop(tmpfs);
    assert_eq!(on_tmpfs.ok().as_deref(), Some(config.as_str()), "config.toml not written into the node's submount");
    let dir = work.path().to_string_lossy().into_owned();
    let mut left: Vec<String> = processes_mentioning(&dir).into_iter().map(|p| format!("process {p}")).collect();
    for line in std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
        if line.split_whitespace().nth(4).is_some_and(|mp| mp.starts_with(&dir)) {
            left.push(format!("mount {line}"));
        }
    }
    assert!(left.is_empty(), "left behind: {left:#?}");
    // The daemon's own checks (mounts, processes, cgroups, veths) run when it drops.
    drop(d);
    drop(registry);
}

fn cmdline_is_sleep(pid: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\0"))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}
