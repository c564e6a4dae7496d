//! How containers of a pod share namespaces: net/ipc/uts shared and pid/mnt private by
//! default; a pod-level PID namespace held by skiff's infra process; the node's PID namespace;
//! a TARGET PID namespace; orphans reaped in each PID namespace flavour.

use std::time::{Duration, Instant};

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, Daemon};

/// Runs `sh -c script` in the container; panics unless it exits 0; returns stdout.
async fn sh(d: &Daemon, id: &str, script: &str) -> String {
    let out = d.exec(id, &["sh", "-c", script], 20).await.unwrap_or_else(|e| panic!("exec {script:?}: {e:?}"));
    assert_eq!(
        out.exit_code,
        0,
        "{script:?}: stdout {:?} stderr {:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pid_mode(c: &mut cri::ContainerConfig, mode: cri::NamespaceMode, target: &str) {
    let ns = c.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap();
    ns.pid = mode as i32;
    ns.target_id = target.into();
}

fn pod_pid_mode(pc: &mut cri::PodSandboxConfig, mode: cri::NamespaceMode) {
    pc.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption { pid: mode as i32, ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// The processes in the container's view of /proc that are zombies: "pid (comm)" each.
async fn zombies(d: &Daemon, id: &str) -> Vec<String> {
    let out = sh(d, id, "cat /proc/[0-9]*/stat 2>/dev/null; true").await;
    out.lines()
        .filter(|l| l.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) == Some("Z"))
        .map(|l| l.split(')').next().unwrap_or_default().to_owned() + ")")
        .collect()
}

/// Waits until `f` holds (polling), panics with `what` after `within`.
async fn wait_for<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_share_net_ipc_uts_but_not_pid_mnt() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let mut pc = pod_config(&d, "share");
    pod_pid_mode(&mut pc, cri::NamespaceMode::Container);
    let pod = d.run_pod(&pc).await;
    let a = d
        .create_and_start(
            &pod,
            &pc,
            container_config(
                "a",
                &[
                    "sh",
                    "-c",
                    "mkdir -p /www && echo hello-from-a > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www",
                ],
            ),
        )
        .await;
    let b = d.create_and_start(&pod, &pc, container_config("b", &["sleep", "1000"])).await;

    // Same hostname (the pod's), same net/ipc/uts namespaces; own pid and mount namespaces.
    assert_eq!(sh(&d, &a, "hostname").await.trim(), "share");
    assert_eq!(sh(&d, &b, "hostname").await.trim(), "share");
    let ns = |id: String| {
        let d = &d;
        async move {
            let out = sh(d, &id, "for n in net ipc uts pid mnt; do readlink /proc/self/ns/$n; done").await;
            out.lines().map(str::to_owned).collect::<Vec<_>>()
        }
    };
    let (na, nb) = (ns(a.clone()).await, ns(b.clone()).await);
    assert_eq!(na.len(), 5, "{na:?}");
    assert_eq!(na[..3], nb[..3], "net/ipc/uts differ: {na:?} vs {nb:?}");
    assert_ne!(na[3], nb[3], "pid namespace shared: {na:?} vs {nb:?}");
    assert_ne!(na[4], nb[4], "mount namespace shared: {na:?} vs {nb:?}");

    // The loopback listener of a is reachable from b.
    let mut got = String::new();
    for _ in 0..50 {
        let out = d.exec(&b, &["wget", "-q", "-O-", "http://127.0.0.1:8080/index.html"], 10).await.unwrap();
        got = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.exit_code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got.trim(), "hello-from-a");

    // /dev/shm is the pod's: a file written in a is seen by b.
    sh(&d, &a, "echo shared > /dev/shm/skiff-test").await;
    assert_eq!(sh(&d, &b, "cat /dev/shm/skiff-test").await.trim(), "shared");

    // Own PID namespaces: each container's PID 1 is its own command.
    assert!(sh(&d, &a, "cat /proc/1/cmdline").await.starts_with("httpd\0"));
    assert!(sh(&d, &b, "cat /proc/1/cmdline").await.starts_with("sleep\0"));
    assert!(!sh(&d, &b, "ps").await.contains("httpd"));

    // Own root filesystems.
    sh(&d, &a, "echo only-a > /only-a").await;
    let out = d.exec(&b, &["cat", "/only-a"], 10).await.unwrap();
    assert_ne!(out.exit_code, 0, "b sees a's file: {out:?}");
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_level_pid_namespace() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let mut pc = pod_config(&d, "podpid");
    pod_pid_mode(&mut pc, cri::NamespaceMode::Pod);
    let pod = d.run_pod(&pc).await;
    let info = d.pod_info(&pod).await;
    let holder = info["pidNamespaceHolder"].as_i64().expect("pid namespace holder in the verbose info");
    assert!(holder > 0);
    // It is accounted in the pod cgroup (it joins it itself, before its user namespace).
    let cg = info["cgroupParent"].as_str().expect("cgroupParent").to_string();
    let own = std::fs::read_to_string(format!("/proc/{holder}/cgroup")).unwrap();
    for ctl in ["memory", "pids", "cpu", "cpuacct"] {
        assert!(own.lines().any(|l| l.ends_with(&format!(":{ctl}:{cg}"))), "{ctl} {cg}: {own}");
    }

    let mut ca = container_config("a", &["sleep", "1001"]);
    pid_mode(&mut ca, cri::NamespaceMode::Pod, "");
    // A container that leaves orphans behind: they are reparented to the pod's PID 1.
    let mut cb = container_config("b", &["sh", "-c", "(sleep 0.2 &); (sleep 0.3 &); exec sleep 1002"]);
    pid_mode(&mut cb, cri::NamespaceMode::Pod, "");
    let a = d.create_and_start(&pod, &pc, ca).await;
    let b = d.create_and_start(&pod, &pc, cb).await;

    // Both see each other's processes; PID 1 is skiff's infra process.
    let ps = sh(&d, &a, "ps").await;
    assert!(ps.contains("sleep 1001") && ps.contains("sleep 1002"), "{ps}");
    let ps = sh(&d, &b, "ps").await;
    assert!(ps.contains("sleep 1001"), "{ps}");
    assert_eq!(sh(&d, &a, "cat /proc/1/comm").await.trim(), "skiff-infra");
    assert_eq!(sh(&d, &b, "readlink /proc/self/ns/pid").await, sh(&d, &a, "readlink /proc/self/ns/pid").await);
    assert_eq!(
        std::fs::read_link(format!("/proc/{holder}/ns/pid")).unwrap().to_string_lossy().trim(),
        sh(&d, &a, "readlink /proc/self/ns/pid").await.trim()
    );

    // Orphans are reaped by the infra process: no zombies appear.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let z = zombies(&d, &a).await;
    assert!(z.is_empty(), "zombies: {z:?}");
    // An exec that leaves an orphan behind, too.
    sh(&d, &a, "sleep 0.2 & exit 0").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let z = zombies(&d, &a).await;
    assert!(z.is_empty(), "zombies: {z:?}");

    // Stopping a container kills all its processes, not only the main one: in a shared PID
    // namespace the others would outlive it (and hold its log pipes open).
    let mut cc = container_config("c", &["sh", "-c", "sleep 1006 & exec sleep 1007"]);
    pid_mode(&mut cc, cri::NamespaceMode::Pod, "");
    let c = d.create_and_start(&pod, &pc, cc).await;
    wait_for(Duration::from_secs(5), "the background sleep", || async {
        sh(&d, &a, "ps").await.contains("sleep 1006")
    })
    .await;
    let t = Instant::now();
    d.runtime().stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 0 }).await.unwrap();
    let took = t.elapsed();
    assert!(!sh(&d, &a, "ps").await.contains("sleep 1006"), "a process of the stopped container lives on");
    assert!(took < Duration::from_millis(1500), "stop took {took:?}");

    // When the main process of a container in a shared PID namespace exits by itself, the
    // rest of the container goes with it (as containerd kills all on init exit), and the exit
    // is reported without waiting for their output to end.
    let mut cc = container_config("d", &["sh", "-c", "sleep 1008 & sleep 0.3; exit 3"]);
    pid_mode(&mut cc, cri::NamespaceMode::Pod, "");
    let t = Instant::now();
    let dd = d.create_and_start(&pod, &pc, cc).await;
    let st = d.wait_exited(&dd, Duration::from_secs(10)).await;
    let took = t.elapsed();
    assert_eq!(st.exit_code, 3);
    assert!(!sh(&d, &a, "ps").await.contains("sleep 1008"), "a process of the exited container lives on");
    assert!(took < Duration::from_millis(1800), "the exit was reported after {took:?}");

    // Stopping the pod ends the namespace holder too.
    d.remove_pod(&pod).await;
    wait_for(Duration::from_secs(5), "the infra process to exit", || async move {
        std::fs::read_to_string(format!("/proc/{holder}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pid_namespace() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let mut pc = pod_config(&d, "hostpid");
    pod_pid_mode(&mut pc, cri::NamespaceMode::Node);
    let pod = d.run_pod(&pc).await;
    // A container leaving orphans in the host PID namespace: its monitor reaps them.
    let mut c = container_config("c", &["sh", "-c", "(sleep 0.2 &); (sleep 0.3 &); exec sleep 1003"]);
    pid_mode(&mut c, cri::NamespaceMode::Node, "");
    let id = d.create_and_start(&pod, &pc, c).await;
    let host_pid_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    assert_eq!(sh(&d, &id, "readlink /proc/self/ns/pid").await.trim(), host_pid_ns.to_string_lossy());
    // It sees host processes: skiffd and this test.
    let skiffd = d.pid().unwrap();
    sh(&d, &id, &format!("test -e /proc/{skiffd}/stat && test -e /proc/{}/stat", std::process::id())).await;
    let skiffd_cmdline = std::fs::read(format!("/proc/{skiffd}/cmdline")).unwrap();
    let out = d.exec(&id, &["cat", &format!("/proc/{skiffd}/cmdline")], 10).await.unwrap();
    assert_eq!(out.stdout, skiffd_cmdline);

    // The orphans of the container and of an exec are reaped.
    sh(&d, &id, "sleep 0.2 & exit 0").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let st = d
        .runtime()
        .container_status(cri::ContainerStatusRequest { container_id: id.clone(), verbose: true })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    let monitor = info["monitorPid"].as_i64().expect("monitor pid");
    let pid = info["pid"].as_i64().expect("pid");
    for p in [monitor, pid] {
        let children = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        for child in children.split_whitespace() {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            assert!(!stat.contains(") Z "), "zombie child of {p}: {stat}");
        }
    }
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_pid_namespace_and_exec_orphans() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let mut pc = pod_config(&d, "target");
    pod_pid_mode(&mut pc, cri::NamespaceMode::Container);
    let pod = d.run_pod(&pc).await;
    let a = d.create_and_start(&pod, &pc, container_config("a", &["sleep", "1004"])).await;

    // An exec leaving an orphan in a container whose PID 1 (sleep) never reaps: no zombie.
    sh(&d, &a, "sleep 0.2 & exit 0").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let z = zombies(&d, &a).await;
    assert!(z.is_empty(), "zombies: {z:?}");

    // b joins a's PID namespace.
    let mut cb = container_config("b", &["sleep", "1005"]);
    pid_mode(&mut cb, cri::NamespaceMode::Target, &a);
    let b = d.create_and_start(&pod, &pc, cb).await;
    assert_eq!(sh(&d, &b, "cat /proc/1/cmdline").await, "sleep\x001004\x00");
    let ps = sh(&d, &a, "ps").await;
    assert!(ps.contains("sleep 1005"), "{ps}");
    assert_eq!(sh(&d, &a, "readlink /proc/self/ns/pid").await, sh(&d, &b, "readlink /proc/self/ns/pid").await);

    // A target that does not exist or does not run: refused, nothing left.
    let mut cc = container_config("c", &["true"]);
    pid_mode(&mut cc, cri::NamespaceMode::Target, "no-such-container");
    let err = d.create(&pod, &pc, cc).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    d.remove_pod(&pod).await;
}
