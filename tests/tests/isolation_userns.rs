//! User namespaces through skiffd (CRI `userns_options` mode POD): the container's root is the
//! pod's mapped host id, the image and the pod's files appear owned by root inside (idmapped),
//! a host-path volume gets the mapped ids, two pods with different mappings cannot read each
//! other's files, capabilities are the user namespace's, and invalid requests are refused with
//! InvalidArgument and the reason (never run in the node's user namespace).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use skiff_tests::pods::{container_config, pod_config, BUSYBOX, NGINX};
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

fn userns(mode: cri::NamespaceMode, maps: Vec<cri::IdMapping>) -> cri::UserNamespace {
    cri::UserNamespace { mode: mode as i32, uids: maps.clone(), gids: maps }
}

/// A mode POD pod config mapping 0..65536 to `host..`.
fn userns_pod(d: &Daemon, name: &str, host: u32) -> cri::PodSandboxConfig {
    with_userns(pod_config(d, name), userns(cri::NamespaceMode::Pod, vec![map(0, host, 65536)]), false)
}

async fn announced(d: &Daemon) -> (bool, bool) {
    let st = d.runtime().status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    let h = st.runtime_handlers.iter().all(|h| h.features.as_ref().is_some_and(|f| f.user_namespaces));
    let net = st.features.as_ref().is_some_and(|f| f.user_namespaces_host_network);
    (h && !st.runtime_handlers.is_empty(), net)
}

async fn out(d: &Daemon, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let r = d.exec(id, cmd, 20).await.unwrap_or_else(|e| panic!("exec {cmd:?}: {e:?}"));
    (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned(), String::from_utf8_lossy(&r.stderr).into_owned())
}

/// `Uid:` or `Gid:` of a host process: (real, effective).
fn host_ids(pid: i64, key: &str) -> (u32, u32) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = s.lines().find(|l| l.starts_with(key)).unwrap();
    let v: Vec<u32> = l.split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
    (v[0], v[1])
}

fn volume(host: &std::path::Path, at: &str) -> cri::Mount {
    cri::Mount { container_path: at.into(), host_path: host.display().to_string(), ..Default::default() }
}

async fn pid_of(d: &Daemon, id: &str) -> i64 {
    let r = d
        .runtime()
        .container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: true })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(r.info.get("info").expect("verbose info")).unwrap();
    info["pid"].as_i64().expect("pid in the verbose info")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespace_requests() {
    let d = Daemon::start().await;
    let one = vec![map(0, 1_000_000, 65536)];
    for (name, u, privileged, what) in [
        (
            "two",
            userns(cri::NamespaceMode::Pod, vec![map(0, 1000, 100000), map(0, 2000, 100000)]),
            false,
            "exactly one",
        ),
        ("no-root", userns(cri::NamespaceMode::Pod, vec![map(1, 1000, 100000)]), false, "container id 0"),
        ("empty", userns(cri::NamespaceMode::Pod, vec![]), false, "exactly one"),
        ("container", userns(cri::NamespaceMode::Container, vec![]), false, "CONTAINER"),
        ("target", userns(cri::NamespaceMode::Target, vec![]), false, "TARGET"),
        ("privileged", userns(cri::NamespaceMode::Pod, one.clone()), true, "privileged"),
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
    let pc = with_userns(pod_config(&d, "node"), userns(cri::NamespaceMode::Node, vec![]), false);
    let id = d.run_pod(&pc).await;
    d.remove_pod(&id).await;

    if !common::prerequisite(announced(&d).await.0, "user namespaces and idmapped mounts (skiffd check)") {
        return;
    }
    // A container asking for another user namespace than its pod's, or a mount idmapped with
    // other mappings, is refused.
    d.pull(BUSYBOX).await;
    let pc = userns_pod(&d, "refusals", 1_000_000);
    let pod = d.run_pod(&pc).await;
    let mut c = container_config("other", &["true"]);
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().userns_options =
        Some(userns(cri::NamespaceMode::Pod, vec![map(0, 2_000_000, 65536)]));
    let e = d.create(&pod, &pc, c).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("differ"), "{}", e.message());
    let mut c = container_config("idmap", &["true"]);
    let mut m = volume(d.dir(), "/v");
    m.uid_mappings = vec![map(0, 5_000_000, 10)];
    m.gid_mappings = vec![map(0, 5_000_000, 10)];
    c.mounts = vec![m];
    let e = d.create(&pod, &pc, c).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("pod's user namespace"), "{}", e.message());
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_with_a_user_namespace() {
    let mut d = Daemon::start().await;
    if !common::prerequisite(announced(&d).await.0, "user namespaces and idmapped mounts (skiffd check)") {
        return;
    }
    d.pull(BUSYBOX).await;
    const HOST: u32 = 3_000_000;
    let vol = d.dir().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::os::unix::fs::chown(&vol, Some(HOST), Some(HOST)).unwrap();
    // a host root's 0600 file: the container's root cannot read it (its capabilities are the
    // user namespace's, not the host's)
    std::fs::write(vol.join("host-secret"), "x").unwrap();
    std::fs::set_permissions(vol.join("host-secret"), std::fs::Permissions::from_mode(0o600)).unwrap();

    let pc = userns_pod(&d, "userns", HOST);
    let pod = d.run_pod(&pc).await;
    let mut c = container_config("c", &["sleep", "3600"]);
    c.mounts = vec![volume(&vol, "/v")];
    let id = d.create_and_start(&pod, &pc, c).await;

    let (_, uid, _) = out(&d, &id, &["id", "-u"]).await;
    assert_eq!(uid.trim(), "0", "root inside");
    let (_, map, _) = out(&d, &id, &["cat", "/proc/self/uid_map"]).await;
    assert_eq!(map.split_whitespace().collect::<Vec<_>>(), ["0", "3000000", "65536"]);
    let pid = pid_of(&d, &id).await;
    assert_eq!(host_ids(pid, "Uid:"), (HOST, HOST), "the container's root is the mapped id on the host");
    assert_eq!(host_ids(pid, "Gid:"), (HOST, HOST));

    // The image's root-owned files are root's inside, the mapped id's seen from the host, and
    // the layers themselves are not chowned (idmapped lower dirs).
    let (_, ls, _) = out(
        &d,
        &id,
        &["stat", "-c", "%u:%g", "/bin/sh", "/etc/hosts", "/etc/resolv.conf", "/dev/shm", "/dev", "/dev/null"],
    )
    .await;
    assert_eq!(ls.split_whitespace().collect::<Vec<_>>(), ["0:0"; 6], "image, pod files and /dev owned by root inside");
    let host_sh = std::fs::metadata(format!("/proc/{pid}/root/bin/sh")).unwrap();
    assert_eq!((host_sh.uid(), host_sh.gid()), (HOST, HOST));
    let snapshots = d.root().join("snapshots");
    let mut layer_root_owned = false;
    for e in std::fs::read_dir(&snapshots).unwrap().flatten() {
        if let Ok(m) = std::fs::metadata(e.path().join("fs/bin")) {
            layer_root_owned |= m.uid() == 0;
        }
    }
    assert!(layer_root_owned, "the image layer keeps its own owners");
    // root inside writes its rootfs, /etc/hosts, /dev/shm
    let (rc, _, err) = out(&d, &id, &["sh", "-c", "touch /new /dev/shm/x && echo x >> /etc/hosts"]).await;
    assert_eq!(rc, 0, "{err}");
    let new = std::fs::metadata(format!("/proc/{pid}/root/new")).unwrap();
    assert_eq!(new.uid(), HOST, "a new file of the container's root on the host");

    // A host-path volume (not idmapped: the kubelet sent no mappings) gets the mapped ids.
    let (rc, _, err) = out(&d, &id, &["sh", "-c", "echo hi > /v/f"]).await;
    assert_eq!(rc, 0, "{err}");
    let f = std::fs::metadata(vol.join("f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (HOST, HOST));
    let (rc, _, err) = out(&d, &id, &["cat", "/v/host-secret"]).await;
    assert_ne!(rc, 0, "the container's root read a host root's 0600 file");
    assert!(err.contains("denied"), "{err}");
    // but its capabilities work on what its user namespace owns
    let (rc, _, err) = out(&d, &id, &["sh", "-c", "touch /tmp/o && chown 1234:1234 /tmp/o"]).await;
    assert_eq!(rc, 0, "{err}");
    assert_eq!(std::fs::metadata(format!("/proc/{pid}/root/tmp/o")).unwrap().uid(), HOST + 1234);

    // A user namespace inside the container still works (busybox's unshare -U -r).
    let (rc, o, err) = out(&d, &id, &["unshare", "-U", "-r", "cat", "/proc/self/uid_map"]).await;
    assert_eq!(rc, 0, "{err}");
    assert_eq!(o.split_whitespace().collect::<Vec<_>>(), ["0", "0", "1"], "{o}");

    // The pod's namespaces are owned by its user namespace (the pinned one).
    let ns = d.state().join("pods").join(&pod).join("ns");
    let user_ino = std::fs::metadata(ns.join("user")).unwrap().ino();
    assert_eq!(std::fs::metadata(format!("/proc/{pid}/ns/user")).unwrap().ino(), user_ino);

    // Across a restart the pod keeps its user namespace (its pin is in the record).
    d.restart().await;
    assert_eq!(d.pod_status(&pod).await.state, cri::PodSandboxState::SandboxReady as i32);
    let (_, uid, _) = out(&d, &id, &["id", "-u"]).await;
    assert_eq!(uid.trim(), "0");
    // A container started after the restart joins the same user namespace. With CAP_SYS_ADMIN
    // (of the user namespace) it may set the hostname, as the pod's UTS namespace is owned by
    // the pod's user namespace, but it still cannot mount over what the host set up.
    let mut c2 = container_config("c2", &["sleep", "3600"]);
    c2.linux.as_mut().unwrap().security_context.as_mut().unwrap().capabilities =
        Some(cri::Capability { add_capabilities: vec!["CAP_SYS_ADMIN".into()], ..Default::default() });
    let c2 = d.create_and_start(&pod, &pc, c2).await;
    let pid2 = pid_of(&d, &c2).await;
    assert_eq!(std::fs::metadata(format!("/proc/{pid2}/ns/user")).unwrap().ino(), user_ino);
    assert_eq!(host_ids(pid2, "Uid:"), (HOST, HOST));
    let (rc, o, err) = out(&d, &c2, &["sh", "-c", "hostname changed && hostname"]).await;
    assert_eq!((rc, o.trim()), (0, "changed"), "{err}");
    let (rc, _, _) = out(&d, &c2, &["umount", "/etc/hosts"]).await;
    assert_ne!(rc, 0, "the container's root unmounted a mount the host's root made (mounts are locked)");
    // A container with a terminal: its pty belongs to the container's root (the mapped id).
    let mut c3 = container_config("tty", &["sleep", "3600"]);
    c3.tty = true;
    let c3 = d.create_and_start(&pod, &pc, c3).await;
    let pid3 = pid_of(&d, &c3).await;
    let pty = std::fs::metadata(format!("/proc/{pid3}/fd/0")).unwrap();
    assert_eq!((pty.uid(), pty.gid()), (HOST, HOST + 5), "the terminal's owner and tty group");
    d.remove_pod(&pod).await;
    assert!(!ns.join("user").exists(), "the user namespace pin is removed with the pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_with_different_mappings_are_apart() {
    let d = Daemon::start().await;
    if !common::prerequisite(announced(&d).await.0, "user namespaces and idmapped mounts (skiffd check)") {
        return;
    }
    d.pull(BUSYBOX).await;
    let shared = d.dir().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut ids = Vec::new();
    for (name, host) in [("a", 4_000_000u32), ("b", 4_100_000)] {
        let pc = userns_pod(&d, name, host);
        let pod = d.run_pod(&pc).await;
        let mut c = container_config("c", &["sleep", "3600"]);
        c.mounts = vec![volume(&shared, "/shared")];
        ids.push((pod.clone(), d.create_and_start(&pod, &pc, c).await));
    }
    let (rc, _, err) = out(&d, &ids[0].1, &["sh", "-c", "echo secret > /shared/a && chmod 600 /shared/a"]).await;
    assert_eq!(rc, 0, "{err}");
    assert_eq!(std::fs::metadata(shared.join("a")).unwrap().uid(), 4_000_000);
    let (rc, o, err) = out(&d, &ids[1].1, &["cat", "/shared/a"]).await;
    assert_ne!(rc, 0, "pod b (root in its own user namespace) read pod a's 0600 file: {o}");
    assert!(err.contains("denied"), "{err}");
    let (_, o, _) = out(&d, &ids[0].1, &["cat", "/shared/a"]).await;
    assert_eq!(o.trim(), "secret");
    for (pod, _) in ids {
        d.remove_pod(&pod).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespace_with_host_network_and_a_pod_pid_namespace() {
    let d = Daemon::start().await;
    let (userns_ok, host_net_ok) = announced(&d).await;
    if !common::prerequisite(userns_ok && host_net_ok, "user namespaces with the host network") {
        return;
    }
    d.pull(BUSYBOX).await;
    let mut pc = userns_pod(&d, "hostnet", 4_200_000);
    {
        let nso = pc.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap();
        nso.network = cri::NamespaceMode::Node as i32;
        nso.pid = cri::NamespaceMode::Pod as i32;
    }
    d.pull(NGINX).await;
    let pod = d.run_pod(&pc).await;
    let mut c = container_config("c", &["sleep", "3600"]);
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().pid =
        cri::NamespaceMode::Pod as i32;
    // image volumes are idmapped too (an overlay of the image's layers, or a bind of a sub-path)
    let image_mount = |path: &str, image: &str, sub: &str| cri::Mount {
        container_path: path.into(),
        readonly: true,
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        image_sub_path: sub.into(),
        ..Default::default()
    };
    // (nginx has two layers: an overlay; busybox one: a bind)
    c.mounts = vec![
        image_mount("/mnt/whole", NGINX, ""),
        image_mount("/mnt/bb", BUSYBOX, ""),
        image_mount("/mnt/etc", BUSYBOX, "etc"),
    ];
    let id = d.create_and_start(&pod, &pc, c).await;
    let (rc, o, err) =
        out(&d, &id, &["stat", "-c", "%u:%g", "/mnt/whole/bin", "/mnt/bb/bin/sh", "/mnt/etc/passwd"]).await;
    assert_eq!(rc, 0, "{err}");
    assert_eq!(o.split_whitespace().collect::<Vec<_>>(), ["0:0"; 3], "image volumes owned by root inside");
    let (_, o, _) = out(&d, &id, &["cat", "/proc/self/uid_map"]).await;
    assert_eq!(o.split_whitespace().collect::<Vec<_>>(), ["0", "4200000", "65536"]);
    let pid = pid_of(&d, &id).await;
    // the node's network namespace, the pod's user namespace
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino(),
        std::fs::metadata("/proc/self/ns/net").unwrap().ino()
    );
    assert_eq!(host_ids(pid, "Uid:"), (4_200_000, 4_200_000));
    // the pod's PID namespace: PID 1 is the pod's infra process, not the container's
    let (_, o, _) = out(&d, &id, &["cat", "/proc/1/comm"]).await;
    assert_eq!(o.trim(), "skiff-infra");
    let (rc, _, err) = out(&d, &id, &["ls", "/sys/class/net/lo"]).await;
    assert_eq!(rc, 0, "{err}");
    let st = d
        .wait_exited(
            &d.create_and_start(&pod, &pc, container_config("quick", &["true"])).await,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(st.exit_code, 0);
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespace_rollbacks_and_reboot() {
    // A RunPodSandbox failing after the pins: the user namespace pin goes with the others.
    let d = Daemon::start_with_failpoints("pod:after_network,start:after_mount").await;
    if !common::prerequisite(announced(&d).await.0, "user namespaces and idmapped mounts (skiffd check)") {
        return;
    }
    let pc = userns_pod(&d, "doomed", 4_300_000);
    let e = d
        .runtime()
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pc), runtime_handler: String::new() })
        .await
        .unwrap_err();
    assert!(e.message().contains("injected"), "{e:?}");
    assert_eq!(std::fs::read_dir(d.state().join("pods")).map(|r| r.count()).unwrap_or(0), 0, "a pod dir is left");
    assert!(d.leftovers().iter().all(|l| !l.starts_with("mount")), "{:?}", d.leftovers());
    drop(d);

    // A start failing after the idmapped rootfs was mounted unmounts it; a reboot leaves the
    // pod NOTREADY and removable.
    let mut d = Daemon::start_with_failpoints("start:after_mount").await;
    d.pull(BUSYBOX).await;
    let pc = userns_pod(&d, "p", 4_300_000);
    let pod = d.run_pod(&pc).await;
    let id = d.create(&pod, &pc, container_config("c", &["sleep", "3600"])).await.unwrap();
    let e = d.runtime().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap_err();
    assert!(e.message().contains("injected"), "{e:?}");
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mi.contains(&format!("{id}/rootfs")), "the rootfs stayed mounted");
    d.kill();
    d.simulate_reboot();
    d.start_again().await;
    assert_eq!(d.pod_status(&pod).await.state, cri::PodSandboxState::SandboxNotready as i32);
    d.remove_pod(&pod).await;
}
