//! Requests of a hostile (or broken) CRI client, through the real daemon: each is refused with
//! the right code naming the field, or handled correctly, and skiffd keeps serving every
//! client afterwards. One test per defect found (see the README's "Limits and validation").

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, unique_suffix, Daemon};
use tonic::Code;

/// A pod with one running busybox container (`sleep`, exits at once on SIGTERM).
async fn pod_with_sleeper(d: &Daemon, name: &str) -> (String, cri::PodSandboxConfig, String) {
    d.pull(BUSYBOX).await;
    let pc = pod_config(d, name);
    let pod = d.run_pod(&pc).await;
    let c = container_config("sleeper", &["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]);
    let id = d.create_and_start(&pod, &pc, c).await;
    (pod, pc, id)
}

/// skiffd answers List* and Version.
async fn still_serves(d: &Daemon) {
    let mut rt = d.runtime();
    rt.version(cri::VersionRequest::default()).await.expect("skiffd still serves Version");
    rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.expect("ListPodSandbox still works");
    rt.list_containers(cri::ListContainersRequest::default()).await.expect("ListContainers still works");
}

fn assert_refused(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) {
    let e = r.expect_err("the request must be refused");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(e.message().contains(needle), "{:?} should mention {needle:?}", e.message());
}

async fn run_pod(d: &Daemon, pc: &cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    d.runtime()
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pc.clone()), runtime_handler: String::new() })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

fn sc(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap()
}

fn localhost_seccomp(path: &Path) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: path.display().to_string(),
    })
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn update(d: &Daemon, id: &str, r: cri::LinuxContainerResources) -> Result<(), tonic::Status> {
    d.runtime()
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(r),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// ExecSync and StopContainer with `timeout: i64::MAX` used to abort skiffd (overflow when
/// adding the duration to an Instant): now it is no limit at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_timeouts_are_no_limit() {
    let d = Daemon::start().await;
    let (pod, _pc, id) = pod_with_sleeper(&d, "timeouts").await;
    let out = d.exec(&id, &["echo", "hi"], i64::MAX).await.expect("ExecSync with i64::MAX timeout");
    assert_eq!((out.exit_code, out.stdout.as_slice()), (0, &b"hi\n"[..]));
    let out = d.exec(&id, &["echo", "neg"], i64::MIN).await.expect("ExecSync with a negative timeout");
    assert_eq!(out.stdout, b"neg\n");
    still_serves(&d).await;
    d.runtime()
        .stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: i64::MAX })
        .await
        .expect("StopContainer with i64::MAX timeout");
    assert_eq!(d.container_status(&id).await.state, cri::ContainerState::ContainerExited as i32);
    d.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("stop pod");
    still_serves(&d).await;
    d.remove_pod(&pod).await;
}

/// A container's log_path must stay inside the pod's log directory: `..`, absolute paths and
/// symlinks (of the file or of a directory on the way) never write a host file elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_path_stays_in_the_log_directory() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "logpath");
    let pod = d.run_pod(&pc).await;
    let s = unique_suffix();
    let outside = std::env::temp_dir().join(format!("skiff-pwned-{s}.log"));
    let escape = format!("../../../../../../../..{}", outside.display());
    for bad in [escape.as_str(), &outside.display().to_string(), "c/../../x.log"] {
        let mut c = container_config("escape", &["echo", "pwned"]);
        c.log_path = bad.into();
        assert_refused(d.create(&pod, &pc, c).await, Code::InvalidArgument, "log_path");
    }
    assert!(!outside.exists(), "{} was written", outside.display());

    // Symlinks planted in the log directory: the create is fine (lexically inside), the start
    // is refused by the monitor, which opens the log beneath the directory without symlinks.
    let logdir = Path::new(&pc.log_directory);
    std::fs::create_dir_all(logdir).unwrap();
    std::os::unix::fs::symlink(&outside, logdir.join("link.log")).unwrap();
    std::os::unix::fs::symlink(std::env::temp_dir(), logdir.join("dirlink")).unwrap();
    let via_dir = format!("dirlink/skiff-pwned-{s}.log");
    let made = format!("dirlink/skiff-made-{s}/0.log");
    for (name, path) in [("filelink", "link.log"), ("dirlink", via_dir.as_str()), ("dirmade", made.as_str())] {
        let mut c = container_config(name, &["echo", "pwned"]);
        c.log_path = path.into();
        let id = d.create(&pod, &pc, c).await.expect("create");
        let e = d
            .runtime()
            .start_container(cri::StartContainerRequest { container_id: id.clone() })
            .await
            .expect_err("start through a symlinked log path must fail");
        eprintln!("start with log_path {path:?}: {e:?}");
        assert!(e.message().contains("log"), "{e:?}");
        assert!(!outside.exists(), "{} was written through {path}", outside.display());
    }
    let made_dir = std::env::temp_dir().join(format!("skiff-made-{s}"));
    assert!(!made_dir.exists(), "{} was created through the symlink", made_dir.display());
    // An ordinary nested log path still works.
    let mut c = container_config("fine", &["echo", "fine"]);
    c.log_path = "fine/0.log".into();
    let id = d.create_and_start(&pod, &pc, c).await;
    let st = d.wait_exited(&id, Duration::from_secs(20)).await;
    assert_eq!(st.log_path, logdir.join("fine/0.log").display().to_string());
    assert!(std::fs::read_to_string(&st.log_path).unwrap().contains("stdout F fine"));
    still_serves(&d).await;
    d.remove_pod(&pod).await;
}

/// A relative log_directory is refused (it would be created in skiffd's working directory);
/// an empty one means no logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_directory_must_be_absolute() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let rel = format!("relative-{}/logs", unique_suffix());
    let mut pc = pod_config(&d, "rel");
    pc.log_directory = rel.clone();
    assert_refused(run_pod(&d, &pc).await, Code::InvalidArgument, "log_directory");
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", d.pid().unwrap())).unwrap();
    assert!(!cwd.join(&rel).exists(), "{} created", cwd.join(&rel).display());
    pc.log_directory = "/var/log/../../tmp".into();
    assert_refused(run_pod(&d, &pc).await, Code::InvalidArgument, "log_directory");

    pc.log_directory.clear();
    let pod = d.run_pod(&pc).await;
    let id = d.create_and_start(&pod, &pc, container_config("nolog", &["echo", "x"])).await;
    let st = d.wait_exited(&id, Duration::from_secs(20)).await;
    assert_eq!((st.exit_code, st.log_path.as_str()), (0, ""));
    still_serves(&d).await;
    d.remove_pod(&pod).await;
}

/// PID namespace TARGET only within the same pod, and the target must exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_target_only_within_the_pod() {
    let d = Daemon::start().await;
    let (pod_a, pc_a, a) = pod_with_sleeper(&d, "target-a").await;
    let pc_b = pod_config(&d, "target-b");
    let pod_b = d.run_pod(&pc_b).await;
    let target = |t: &str| {
        let mut c = container_config("intruder", &["ps"]);
        let ns = sc(&mut c).namespace_options.as_mut().unwrap();
        ns.pid = cri::NamespaceMode::Target as i32;
        ns.target_id = t.into();
        c
    };
    assert_refused(d.create(&pod_b, &pc_b, target(&a)).await, Code::InvalidArgument, "same pod");
    assert_refused(d.create(&pod_b, &pc_b, target("feedface")).await, Code::NotFound, "target_id");
    assert_refused(d.create(&pod_b, &pc_b, target("")).await, Code::InvalidArgument, "target_id");
    let listed = d
        .runtime()
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter { pod_sandbox_id: pod_b.clone(), ..Default::default() }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(listed.is_empty(), "{listed:?}");
    // Within the pod it works.
    let id = d.create(&pod_a, &pc_a, target(&a)).await.expect("TARGET in the same pod");
    d.runtime().remove_container(cri::RemoveContainerRequest { container_id: id }).await.unwrap();
    still_serves(&d).await;
    d.remove_pod(&pod_b).await;
    d.remove_pod(&pod_a).await;
}

/// A Localhost seccomp profile that is /dev/zero (unbounded read) or a FIFO (blocking open):
/// refused at once, skiffd's memory stays small and SIGTERM still stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_profile_must_be_a_small_regular_file() {
    let mut d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "seccomp");
    let pod = d.run_pod(&pc).await;
    let fifo = d.dir().join("profile.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let big = d.dir().join("big.json");
    std::fs::write(&big, vec![b' '; 2 << 20]).unwrap();
    for (path, needle) in [(Path::new("/dev/zero"), "device"), (fifo.as_path(), "FIFO"), (big.as_path(), "limit")] {
        let mut c = container_config("sec", &["true"]);
        sc(&mut c).seccomp = localhost_seccomp(path);
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(20), d.create(&pod, &pc, c)).await.expect("create returns");
        assert_refused(r, Code::InvalidArgument, needle);
        assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    }
    let rss = rss_kib(d.pid().unwrap());
    assert!(rss < 512 * 1024, "skiffd RSS {rss} KiB");
    still_serves(&d).await;
    d.remove_pod(&pod).await;
    let status = d.stop();
    assert!(status.map(|s| s.success()).unwrap_or(false), "skiffd exit {status:?}");
}

/// Huge labels and annotations are refused, so that ListPodSandbox keeps working for every
/// client (a 7 MiB label made every list response too large).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_metadata_is_refused() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let big = "x".repeat(7 << 20);
    let mut pc = pod_config(&d, "huge");
    pc.labels.insert("big".into(), big.clone());
    assert_refused(run_pod(&d, &pc).await, Code::InvalidArgument, "labels");
    let mut pc = pod_config(&d, "huge");
    pc.annotations.insert("big".into(), big.clone());
    assert_refused(run_pod(&d, &pc).await, Code::InvalidArgument, "annotations");
    let mut pc = pod_config(&d, "huge");
    pc.metadata.as_mut().unwrap().name = "n".repeat(300);
    assert_refused(run_pod(&d, &pc).await, Code::InvalidArgument, "metadata.name");

    let pc = pod_config(&d, "huge");
    let pod = d.run_pod(&pc).await;
    type Edit = Box<dyn Fn(&mut cri::ContainerConfig)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("labels", Box::new(|c| drop(c.labels.insert("big".into(), "x".repeat(7 << 20))))),
        ("annotations", Box::new(|c| drop(c.annotations.insert("big".into(), "x".repeat(7 << 20))))),
        ("envs", Box::new(|c| c.envs = vec![cri::KeyValue { key: "K".into(), value: "v".repeat(200_000) }])),
        ("command", Box::new(|c| c.command = vec!["x".repeat(64); 20_000])),
        (
            "mounts",
            Box::new(|c| {
                c.mounts =
                    vec![
                        cri::Mount { container_path: "/m".into(), host_path: "/tmp".into(), ..Default::default() };
                        2000
                    ]
            }),
        ),
    ];
    for (field, f) in cases {
        let mut c = container_config("big", &["true"]);
        f(&mut c);
        assert_refused(d.create(&pod, &pc, c).await, Code::InvalidArgument, field);
    }
    let pods = d.runtime().list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert_eq!(pods.len(), 1);
    still_serves(&d).await;
    d.remove_pod(&pod).await;
}

/// Values the kernel would refuse are refused first, with INVALID_ARGUMENT naming the field
/// (not INTERNAL/UNKNOWN with the kernel's wording); a memory limit below the usage is
/// FAILED_PRECONDITION naming the resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_refusals_become_invalid_argument() {
    let d = Daemon::start().await;
    let (pod, pc, id) = pod_with_sleeper(&d, "kernel").await;
    let res = |f: &dyn Fn(&mut cri::LinuxContainerResources)| {
        let mut r = cri::LinuxContainerResources::default();
        f(&mut r);
        r
    };
    assert_refused(
        update(&d, &id, res(&|r| r.memory_limit_in_bytes = 1)).await,
        Code::InvalidArgument,
        "memory_limit_in_bytes",
    );
    assert_refused(update(&d, &id, res(&|r| r.cpu_period = 1)).await, Code::InvalidArgument, "cpu_period");
    assert_refused(update(&d, &id, res(&|r| r.cpu_quota = 5)).await, Code::InvalidArgument, "cpu_quota");
    assert_refused(update(&d, &id, res(&|r| r.cpu_shares = 1 << 40)).await, Code::InvalidArgument, "cpu_shares");
    assert_refused(
        update(&d, &id, res(&|r| r.cpuset_cpus = "0-999".into())).await,
        Code::InvalidArgument,
        "cpuset_cpus",
    );
    assert_refused(
        update(&d, &id, res(&|r| r.cpuset_mems = "0-999".into())).await,
        Code::InvalidArgument,
        "cpuset_mems",
    );
    assert_refused(
        update(&d, &id, res(&|r| r.hugepage_limits = vec![cri::HugepageLimit { page_size: "3MB".into(), limit: 1 }]))
            .await,
        Code::InvalidArgument,
        "hugepage_limits",
    );
    // Valid values still apply.
    update(
        &d,
        &id,
        res(&|r| {
            r.cpu_period = 100_000;
            r.cpu_quota = 50_000;
            r.memory_limit_in_bytes = 64 << 20;
        }),
    )
    .await
    .expect("a valid update");

    assert_refused(d.exec(&id, &[""], 10).await, Code::InvalidArgument, "cmd");
    assert_refused(d.exec(&id, &[], 10).await, Code::InvalidArgument, "cmd");

    let mut c = container_config("procmount", &["true"]);
    c.mounts = vec![cri::Mount { container_path: "/proc".into(), host_path: "/tmp".into(), ..Default::default() }];
    assert_refused(d.create(&pod, &pc, c).await, Code::InvalidArgument, "/proc");
    let mut c = container_config("procmount", &["true"]);
    c.mounts =
        vec![cri::Mount { container_path: "/proc/sys/kernel".into(), host_path: "/tmp".into(), ..Default::default() }];
    assert_refused(d.create(&pod, &pc, c).await, Code::InvalidArgument, "/proc");

    let mut bad = pod_config(&d, "msgmax");
    bad.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: HashMap::from([("kernel.msgmax".into(), "-1".into())]),
        ..Default::default()
    });
    assert_refused(run_pod(&d, &bad).await, Code::InvalidArgument, "kernel.msgmax");

    // A memory limit below what the container uses (tmpfs pages: not reclaimable without
    // swap): the kernel says EBUSY; the client gets FAILED_PRECONDITION naming the limit.
    let mut hog = container_config(
        "hog",
        &["sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=40 && echo ready; sleep 3600"],
    );
    hog.linux.as_mut().unwrap().resources =
        Some(cri::LinuxContainerResources { memory_limit_in_bytes: 256 << 20, ..Default::default() });
    let hog = d.create_and_start(&pod, &pc, hog).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(Path::new(&pc.log_directory).join("hog.log")).unwrap_or_default().contains("ready") {
        assert!(Instant::now() < deadline, "the hog never got ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = update(&d, &hog, res(&|r| r.memory_limit_in_bytes = 8 << 20)).await;
    eprintln!("memory limit below the usage: {r:?}");
    let no_swap = std::fs::read_to_string("/proc/swaps").map(|s| s.lines().count() <= 1).unwrap_or(false);
    match r {
        Ok(()) => assert!(!no_swap, "a memory limit below the (unswappable) usage was accepted"),
        Err(e) => {
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            assert!(e.message().contains("memory.limit_in_bytes") || e.message().contains("memory.max"), "{e:?}");
        }
    }
    // The refused update changed nothing.
    let r = d.container_status(&hog).await.resources.and_then(|r| r.linux).unwrap();
    assert_eq!(r.memory_limit_in_bytes, 256 << 20);
    still_serves(&d).await;
    d.remove_pod(&pod).await;
}

/// oom_score_adj outside [-1000, 1000] is refused by UpdateContainerResources as by
/// CreateContainer, and ContainerStatus shows the merged effective resources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_checks_oom_score_adj_and_merges() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "merge");
    let pod = d.run_pod(&pc).await;
    let mut c = container_config("merge", &["sleep", "3600"]);
    c.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        oom_score_adj: 500,
        ..Default::default()
    });
    let mut over = c.clone();
    over.metadata.as_mut().unwrap().name = "over".into();
    over.linux.as_mut().unwrap().resources.as_mut().unwrap().oom_score_adj = 5000;
    assert_refused(d.create(&pod, &pc, over).await, Code::InvalidArgument, "oom_score_adj");
    let id = d.create_and_start(&pod, &pc, c).await;
    assert_refused(
        update(&d, &id, cri::LinuxContainerResources { oom_score_adj: 5000, ..Default::default() }).await,
        Code::InvalidArgument,
        "oom_score_adj",
    );
    update(&d, &id, cri::LinuxContainerResources { memory_limit_in_bytes: 128 << 20, ..Default::default() })
        .await
        .expect("update memory");
    let r = d.container_status(&id).await.resources.and_then(|r| r.linux).expect("resources in the status");
    assert_eq!((r.cpu_shares, r.memory_limit_in_bytes, r.oom_score_adj), (512, 128 << 20, 500), "{r:?}");
    update(&d, &id, cri::LinuxContainerResources { cpu_shares: 1024, ..Default::default() }).await.expect("update cpu");
    let r = d.container_status(&id).await.resources.and_then(|r| r.linux).unwrap();
    assert_eq!((r.cpu_shares, r.memory_limit_in_bytes), (1024, 128 << 20), "{r:?}");
    still_serves(&d).await;
    d.remove_pod(&pod).await;
}

/// Sysctls that could never work are refused by RunPodSandbox (not by every CreateContainer
/// after it): non-namespaced ones, net.* on a host-network pod, IPC ones on a host-IPC pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_sysctls_are_refused_at_run_pod() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pod_with = |name: &str, k: &str, v: &str, network: cri::NamespaceMode, ipc: cri::NamespaceMode| {
        let mut pc = pod_config(&d, name);
        pc.linux = Some(cri::LinuxPodSandboxConfig {
            sysctls: HashMap::from([(k.into(), v.into())]),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: network as i32,
                    ipc: ipc as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        pc
    };
    use cri::NamespaceMode::{Node, Pod};
    for (k, v, net, ipc, needle) in [
        ("kernel.panic", "1", Pod, Pod, "not a namespaced sysctl"),
        ("vm.swappiness", "10", Pod, Pod, "not a namespaced sysctl"),
        ("net.ipv4.ip_forward", "1", Node, Pod, "host's network"),
        ("kernel.shmmax", "100000", Pod, Node, "host's IPC"),
        ("fs.mqueue.msg_max", "10", Pod, Node, "host's IPC"),
    ] {
        assert_refused(run_pod(&d, &pod_with("sysctl", k, v, net, ipc)).await, Code::InvalidArgument, needle);
    }
    let pods = d.runtime().list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert!(pods.is_empty(), "{pods:?}");
    // A namespaced one works, and the container sees it.
    let pc = pod_with("ok", "kernel.shm_rmid_forced", "1", Pod, Pod);
    let pod = d.run_pod(&pc).await;
    let id = d.create_and_start(&pod, &pc, container_config("c", &["cat", "/proc/sys/kernel/shm_rmid_forced"])).await;
    let st = d.wait_exited(&id, Duration::from_secs(20)).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert!(std::fs::read_to_string(&st.log_path).unwrap().contains("stdout F 1"));
    still_serves(&d).await;
    d.remove_pod(&pod).await;
}

/// A container that leaves a FIFO or a device node (it may mknod by default) where the kubelet
/// reads its termination message: skiffd reads only regular files, a bounded amount, and keeps
/// answering (a FIFO used to block the status calls, /dev/zero to fill skiffd's memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_message_files_are_bounded() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "termmsg");
    let pod = d.run_pod(&pc).await;
    for (name, script) in [
        ("fifo", "mkfifo /tmp/term; exit 1"),
        ("zero", "mknod /tmp/term c 1 5; exit 1"),
        ("big", "head -c 10000000 /dev/zero | tr '\\0' m > /tmp/term; exit 1"),
    ] {
        let mut c = container_config(name, &["sh", "-c", script]);
        c.annotations.insert("io.kubernetes.container.terminationMessagePath".into(), "/tmp/term".into());
        let id = d.create_and_start(&pod, &pc, c).await;
        let st = tokio::time::timeout(Duration::from_secs(30), d.wait_exited(&id, Duration::from_secs(25)))
            .await
            .unwrap_or_else(|_| panic!("{name}: status calls hang"));
        assert_eq!(st.exit_code, 1, "{name}: {st:?}");
        assert!(st.message.len() <= 4096, "{name}: message of {} bytes", st.message.len());
        if name == "big" {
            assert_eq!(st.message, "m".repeat(4096));
        }
        assert!(rss_kib(d.pid().unwrap()) < 512 * 1024, "{name}: skiffd RSS");
    }
    still_serves(&d).await;
    d.remove_pod(&pod).await;
}
