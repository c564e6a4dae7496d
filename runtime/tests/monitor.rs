//! Tests of the real `skiff-monitor` binary (run as root). Each test builds a busybox rootfs
//! in a temp dir (needs /bin/busybox: Debian's `busybox-static`), writes config.json and
//! monitor.json by hand, spawns the monitor and cleans up (kills what it started, removes
//! dirs, netns and cgroups it created). Container mounts live only in the container's mount
//! namespace, so nothing is mounted on the host.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runtime::monitor::{self, Client, ContainerState, MonitorConfig, MonitorError};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_skiff-monitor");

fn rand_suffix() -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:x}{:x}", std::process::id(), n)
}

fn have_busybox() -> bool {
    common::prerequisite(Path::new("/bin/busybox").exists(), "/bin/busybox (apt-get install busybox-static)")
        && common::prerequisite(nix::unistd::geteuid().is_root(), "root")
}

fn build_rootfs(root: &Path) {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let out = std::process::Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
        .unwrap();
}

const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A containerd-like spec for `args`.
fn base_spec(rootfs: &Path, args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
            "cwd": "/",
            "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS},
            "noNewPrivileges": false,
            "oomScoreAdj": -998,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}]
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": "ctr-host",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0"}
        }
    })
}

/// One container directory with its rootfs; cleans up on drop.
struct Ctr {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    rootfs: PathBuf,
    log: PathBuf,
    cfg: MonitorConfig,
    started: Option<monitor::Started>,
    cleanups: Vec<Box<dyn FnOnce()>>,
}

impl Ctr {
    fn new(args: &[&str]) -> Ctr {
        Self::with(args, |_| {})
    }

    fn with(args: &[&str], edit: impl FnOnce(&mut Value)) -> Ctr {
        let tmp = tempfile::Builder::new().prefix("skmon-").tempdir_in("/tmp").unwrap();
        let dir = tmp.path().to_path_buf();
        let rootfs = dir.join("rootfs");
        build_rootfs(&rootfs);
        let mut spec = base_spec(&rootfs, args);
        edit(&mut spec);
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        let log = dir.join("ctr.log");
        let cfg = MonitorConfig::new(&dir, &format!("ctr-{}", rand_suffix()), Some(log.clone()));
        cfg.write(&dir).unwrap();
        Ctr { _tmp: tmp, dir, rootfs, log, cfg, started: None, cleanups: Vec::new() }
    }

    fn start(&mut self) -> Result<monitor::Started, MonitorError> {
        let s = monitor::spawn(Path::new(BIN), &self.dir)?;
        self.started = Some(s);
        Ok(s)
    }

    fn client(&self) -> Client {
        Client::connect(&self.cfg.socket_path).unwrap()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) -> String {
        let t = Instant::now();
        loop {
            let s = self.log_text();
            if s.contains(needle) || t.elapsed() > Duration::from_secs(10) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait(&self) -> monitor::ExitRecord {
        let res = Client::connect(&self.cfg.socket_path).and_then(|mut c| c.wait_exit(Some(Duration::from_secs(20))));
        match res {
            Ok(r) => r,
            Err(MonitorError::MonitorGone) => monitor::read_exit_record(&self.cfg.exit_record_path).unwrap(),
            Err(e) => panic!("wait: {e}"),
        }
    }

    fn exec(&self, cmd: &[&str], timeout: Option<Duration>) -> Result<monitor::ExecOutput, MonitorError> {
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        monitor::exec_sync(Path::new(BIN), &self.dir, &cmd, timeout, 16 << 20)
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        if let Some(s) = self.started {
            if let Ok(mut c) = Client::connect(&self.cfg.socket_path) {
                let _ = c.signal(9);
                let _ = c.wait_exit(Some(Duration::from_secs(10)));
            }
            // The monitor removes its socket and exits right after the record.
            let t = Instant::now();
            while Path::new(&format!("/proc/{}", s.monitor_pid)).exists() && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for c in self.cleanups.drain(..).rev() {
            c();
        }
    }
}

fn records(log: &str) -> Vec<(String, String, String)> {
    log.lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let ts = it.next().unwrap_or_default();
            assert!(ts.ends_with('Z') && ts.contains('T'), "bad timestamp in {l:?}");
            (
                it.next().unwrap_or_default().to_string(),
                it.next().unwrap_or_default().to_string(),
                it.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn rec(s: &str, t: &str, c: &str) -> (String, String, String) {
    (s.into(), t.into(), c.into())
}

#[test]
fn echo_to_cri_log_and_exit_code() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::new(&["sh", "-c", "echo hello; echo oops >&2; printf 'no newline'; exit 3"]);
    let s = c.start().unwrap();
    assert!(s.pid > 0 && s.monitor_pid > 0);
    let r = c.wait();
    assert_eq!(r.exit_code, 3);
    assert_eq!(r.signal, None);
    assert_eq!(r.reason.as_deref(), Some("Error"));
    assert!(r.started_at.unwrap() <= r.finished_at);
    let recs = records(&c.log_text());
    assert!(recs.contains(&rec("stdout", "F", "hello")), "{recs:?}");
    assert!(recs.contains(&rec("stderr", "F", "oops")), "{recs:?}");
    assert!(recs.contains(&rec("stdout", "P", "no newline")), "{recs:?}");
    // The durable record and no leftovers.
    let t = Instant::now();
    while c.cfg.socket_path.exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let on_disk = monitor::read_exit_record(&c.cfg.exit_record_path).unwrap();
    assert_eq!(on_disk, r);
    assert!(!c.cfg.socket_path.exists());
    assert!(!c.dir.join("monitor.pid").exists());
}

#[test]
fn command_not_found_is_a_start_error() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::new(&["no-such-command", "x"]);
    match c.start() {
        Err(MonitorError::StartError(m)) => assert!(m.contains("no-such-command") && m.contains("not found"), "{m}"),
        other => panic!("expected a start error, got {other:?}"),
    }
    let r = monitor::read_exit_record(&c.cfg.exit_record_path).unwrap();
    assert_eq!(r.reason.as_deref(), Some("StartError"));
    assert!(r.message.unwrap().contains("no-such-command"));
    assert!(!c.cfg.socket_path.exists());
}

#[test]
fn bad_cwd_and_bad_mount_are_start_errors() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::with(&["true"], |s| {
        s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": "/nonexistent-skiff-src", "options": ["rbind"]
        }));
    });
    match c.start() {
        Err(MonitorError::StartError(m)) => assert!(m.contains("/data") && m.contains("nonexistent"), "{m}"),
        other => panic!("expected a start error, got {other:?}"),
    }
}

#[test]
fn long_lines_are_split_at_16k() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::new(&["sh", "-c", "head -c 40000 /dev/zero | tr '\\0' a; echo; echo short"]);
    c.start().unwrap();
    assert_eq!(c.wait().exit_code, 0);
    let recs = records(&c.log_text());
    let a = |n| "a".repeat(n);
    assert_eq!(
        recs,
        vec![
            rec("stdout", "P", &a(16384)),
            rec("stdout", "P", &a(16384)),
            rec("stdout", "F", &a(40000 - 2 * 16384)),
            rec("stdout", "F", "short"),
        ]
    );
}

#[test]
fn reopen_log_after_rotation() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::new(&["sh", "-c", "echo one; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo two"]);
    c.start().unwrap();
    assert!(c.wait_log("one").contains("one"));
    let rotated = c.dir.join("ctr.log.1");
    std::fs::rename(&c.log, &rotated).unwrap();
    c.client().reopen_log().unwrap();
    std::fs::write(c.rootfs.join("tmp/go"), "").unwrap();
    assert_eq!(c.wait().exit_code, 0);
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("stdout F one") && !old.contains("two"), "{old}");
    let new = c.log_text();
    assert!(new.contains("stdout F two") && !new.contains("one"), "{new}");
}

#[test]
fn status_signal_and_sigkill() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::new(&["sleep", "1000"]);
    let s = c.start().unwrap();
    let st = c.client().status().unwrap();
    assert_eq!(st.pid, s.pid);
    assert_eq!(st.state, ContainerState::Running);
    assert!(st.exit.is_none());
    // PID 1 of its namespace without a handler ignores SIGTERM (kubelet then SIGKILLs).
    c.client().signal(15).unwrap();
    assert!(matches!(c.client().wait_exit(Some(Duration::from_millis(500))), Err(MonitorError::Timeout)));
    c.client().signal(9).unwrap();
    let r = c.wait();
    assert_eq!((r.exit_code, r.signal), (137, Some(9)));
    assert_eq!(r.reason.as_deref(), Some("Error"));
}

#[test]
fn trapped_sigterm() {
    if !have_busybox() {
        return;
    }
    let mut c =
        Ctr::new(&["sh", "-c", "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.05; done"]);
    c.start().unwrap();
    c.wait_log("ready");
    c.client().signal(15).unwrap();
    let r = c.wait();
    assert_eq!(r.exit_code, 7);
    assert!(c.log_text().contains("stdout F got TERM"));
}

fn ns_of(pid: &str, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap().to_string_lossy().into_owned()
}

#[test]
fn new_pid_and_mount_namespaces_and_setup() {
    if !have_busybox() {
        return;
    }
    let script = "echo pid=$$; echo mnt=$(readlink /proc/self/ns/mnt); echo host=$(hostname); \
                  echo nofile=$(ulimit -n); echo oom=$(cat /proc/self/oom_score_adj); \
                  echo cap=$(grep CapBnd /proc/self/status); \
                  ls /dev/null /dev/zero /dev/ptmx /dev/fd/ >/dev/null && echo devok; \
                  cat /proc/keys 2>/dev/null | wc -c; echo x > /proc/sys/kernel/foo 2>/dev/null || echo rosys; \
                  echo port=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start); \
                  ls /sys/fs/cgroup >/dev/null && echo cgok";
    let mut c = Ctr::new(&["sh", "-c", script]);
    c.start().unwrap();
    let r = c.wait();
    let log = c.log_text();
    assert_eq!(r.exit_code, 0, "{log}");
    let out: Vec<String> = records(&log).into_iter().map(|r| r.2).collect();
    assert!(out.contains(&"pid=1".to_string()), "{out:?}");
    let host_mnt = ns_of("self", "mnt");
    assert!(out.iter().any(|l| l.starts_with("mnt=mnt:[") && *l != format!("mnt={host_mnt}")), "{out:?}");
    assert!(out.contains(&"host=ctr-host".to_string()), "{out:?}");
    assert!(out.contains(&"nofile=1024".to_string()), "{out:?}");
    // oom_score_adj -998 is clamped to ours (no CAP_SYS_RESOURCE on the test machine).
    let ours: i32 = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap().trim().parse().unwrap();
    let want = if ours > -998 { ours } else { -998 };
    assert!(out.contains(&format!("oom={want}")) || out.contains(&"oom=-998".to_string()), "{out:?}");
    assert!(
        out.contains(&"cap=CapBnd:\t00000000a80425fb".to_string()) || out.iter().any(|l| l.starts_with("cap=CapBnd:")),
        "{out:?}"
    );
    assert!(out.contains(&"devok".to_string()), "{out:?}");
    assert!(out.contains(&"0".to_string()), "masked /proc/keys readable: {out:?}");
    assert!(out.contains(&"rosys".to_string()), "{out:?}");
    assert!(out.contains(&"port=0".to_string()), "{out:?}");
    assert!(out.contains(&"cgok".to_string()), "{out:?}");
}

#[test]
fn symlinked_mount_target_stays_in_rootfs() {
    if !have_busybox() {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("marker"), "inside").unwrap();
    let escape = format!("/tmp/skiff-escape-{}", rand_suffix());
    let esc2 = escape.clone();
    let mut c = Ctr::with(&["cat", "/data/marker"], |s| {
        s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": src.path(), "options": ["rbind", "ro"]
        }));
    });
    // /data in the image is a symlink pointing at a host path: it must resolve inside.
    std::os::unix::fs::symlink(&escape, c.rootfs.join("data")).unwrap();
    c.cleanups.push(Box::new(move || {
        let _ = std::fs::remove_dir_all(&esc2);
    }));
    c.start().unwrap();
    assert_eq!(c.wait().exit_code, 0);
    assert!(c.log_text().contains("stdout P inside"), "{}", c.log_text());
    assert!(!Path::new(&escape).exists(), "mount target escaped to the host");
    assert!(c.rootfs.join(escape.trim_start_matches('/')).is_dir());
}

#[test]
fn joins_a_netns_pin() {
    if !have_busybox() {
        return;
    }
    let name = format!("skmon-{}", rand_suffix());
    let ok = std::process::Command::new("ip").args(["netns", "add", &name]).status().unwrap().success();
    assert!(ok);
    let pin = format!("/run/netns/{name}");
    let mut c = Ctr::with(&["readlink", "/proc/self/ns/net"], |s| {
        let ns = s["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        ns.push(json!({"type": "network", "path": pin}));
    });
    let n2 = name.clone();
    c.cleanups.push(Box::new(move || {
        let _ = std::process::Command::new("ip").args(["netns", "del", &n2]).status();
    }));
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(format!("/run/netns/{name}")).unwrap().ino();
    c.start().unwrap();
    assert_eq!(c.wait().exit_code, 0);
    assert!(c.log_text().contains(&format!("stdout F net:[{ino}]")), "{}", c.log_text());
}

fn procs_matching(pred: impl Fn(&str, &str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{name}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let stat = std::fs::read_to_string(format!("/proc/{name}/stat")).unwrap_or_default();
        if pred(&cmd, &stat) {
            out.push(format!("{name}: {cmd} {stat}"));
        }
    }
    out
}

#[test]
fn exec_sync_output_exit_code_errors_timeout() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::new(&["sleep", "1000"]);
    let s = c.start().unwrap();
    let o = c.exec(&["sh", "-c", "echo out; echo err >&2; echo $$ > /tmp/execpid; exit 5"], None).unwrap();
    assert_eq!((o.stdout.as_slice(), o.stderr.as_slice(), o.exit_code), (&b"out\n"[..], &b"err\n"[..], 5));
    // It ran inside the container: its pid file is in the rootfs, its pid is small.
    let p: i32 = std::fs::read_to_string(c.rootfs.join("tmp/execpid")).unwrap().trim().parse().unwrap();
    assert!(p > 1 && p < 100, "{p}");
    // Same namespaces as the container.
    let o = c.exec(&["sh", "-c", "readlink /proc/1/ns/pid; readlink /proc/self/ns/pid"], None).unwrap();
    let txt = String::from_utf8_lossy(&o.stdout).into_owned();
    let l: Vec<&str> = txt.lines().collect();
    assert_eq!(l.len(), 2);
    assert_eq!(l[0], l[1]);
    assert_eq!(l[0], ns_of(&s.pid.to_string(), "pid"));
    // Not found.
    match c.exec(&["no-such-cmd"], None) {
        Err(MonitorError::StartError(m)) => assert!(m.contains("no-such-cmd"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Output cap.
    let cmd: Vec<String> = ["sh", "-c", "head -c 100000 /dev/zero"].iter().map(|s| s.to_string()).collect();
    let o = monitor::exec_sync(Path::new(BIN), &c.dir, &cmd, None, 1000).unwrap();
    assert_eq!(o.stdout.len(), 1000);
    assert!(o.stdout_truncated);
    // Timeout kills the command and what it started.
    let t = Instant::now();
    let marker = format!("skmon{}", rand_suffix());
    // Even a process that left the process group (setsid) is found: the stub is a subreaper.
    let script = format!("setsid sleep 1005 & sleep 1001 & sleep 1002; echo {marker}");
    match c.exec(&["sh", "-c", &script], Some(Duration::from_secs(1))) {
        Err(MonitorError::Timeout) => {}
        other => panic!("expected timeout, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let left = procs_matching(|cmd, _| {
        cmd.starts_with("sleep 1001")
            || cmd.starts_with("sleep 1002")
            || cmd.starts_with("sleep 1005")
            || cmd.contains(&marker)
    });
    assert!(left.is_empty(), "left behind: {left:?}");
    // Not even zombies: the stub reaped what it killed (PID 1, sleep, never reaps).
    let z = zombies_in(&ns_of(&s.pid.to_string(), "pid"));
    assert!(z.is_empty(), "zombies after the timeout: {z:?}");
    let st = c.client().status().unwrap();
    assert_eq!(st.state, ContainerState::Running);
}

#[test]
fn orphans_of_exec_are_reaped() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::new(&["sleep", "1000"]);
    let s = c.start().unwrap();
    // The background sleep is orphaned when sh exits; PID 1 (sleep) never reaps.
    let o = c.exec(&["sh", "-c", "sleep 0.3 >/dev/null 2>&1 & echo started"], Some(Duration::from_secs(10))).unwrap();
    assert_eq!(o.exit_code, 0);
    std::thread::sleep(Duration::from_millis(1000));
    let pidns = ns_of(&s.pid.to_string(), "pid");
    // The stub itself ends up with the host's init once the helper has exited: give a lazy
    // init some time; but nothing may stay a zombie below the container's PID 1.
    let t = Instant::now();
    let zombies = loop {
        let zombies = procs_matching(|_, stat| {
            let state = stat.rsplit(") ").next().unwrap_or("").split(' ').next().unwrap_or("");
            state == "Z"
        });
        let zombies: Vec<_> = zombies
            .into_iter()
            .filter(|z| {
                let pid = z.split(':').next().unwrap();
                std::fs::read_link(format!("/proc/{pid}/ns/pid")).map(|l| l.to_string_lossy() == pidns).unwrap_or(false)
            })
            .collect();
        if zombies.is_empty() || t.elapsed() > Duration::from_secs(10) {
            break zombies;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(zombies.is_empty(), "zombies in the container: {zombies:?}");
}

#[test]
fn monitor_is_detached_from_its_spawner() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::new(&["sleep", "1000"]);
    let s = c.start().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.monitor_pid)).unwrap();
    let f: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
    let (ppid, sid): (i32, i32) = (f[1].parse().unwrap(), f[3].parse().unwrap());
    assert_ne!(ppid, std::process::id() as i32);
    assert_eq!(sid, s.monitor_pid, "the monitor leads its own session");
    let cstat = std::fs::read_to_string(format!("/proc/{}/stat", s.pid)).unwrap();
    let cppid: i32 = cstat.rsplit(") ").next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(cppid, s.monitor_pid);
    // A spawner dying changes nothing: run one in a child process and kill it.
    let mut c2 = Ctr::new(&["sh", "-c", "while true; do echo tick; sleep 0.1; done"]);
    let mut sh = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{BIN} run {} > {}/report; sleep 100", c2.dir.display(), c2.dir.display()))
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !c2.cfg.socket_path.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    sh.kill().unwrap();
    sh.wait().unwrap();
    let report = std::fs::read_to_string(c2.dir.join("report")).unwrap();
    let v: Value = serde_json::from_str(report.trim()).unwrap();
    c2.started = Some(monitor::Started {
        pid: v["pid"].as_i64().unwrap() as i32,
        monitor_pid: v["monitor_pid"].as_i64().unwrap() as i32,
    });
    let n = c2.log_text().matches("tick").count();
    std::thread::sleep(Duration::from_millis(500));
    assert!(c2.log_text().matches("tick").count() > n, "log stopped after the spawner died");
    assert_eq!(c2.client().status().unwrap().state, ContainerState::Running);
}

/// Removes a test's cgroup directory, retrying for up to 5 s while its last tasks exit.
fn rmdir_patiently(d: &Path) {
    for _ in 0..50 {
        if std::fs::remove_dir(d).is_ok() || !d.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cgroup_join_and_oom_kill() {
    if !have_busybox() || !Path::new("/sys/fs/cgroup/memory").is_dir() {
        return;
    }
    let cg = format!("skmon-test-{}", rand_suffix());
    let mem = Path::new("/sys/fs/cgroup/memory").join(&cg);
    let pids = Path::new("/sys/fs/cgroup/pids").join(&cg);
    std::fs::create_dir(&mem).unwrap();
    std::fs::create_dir(&pids).unwrap();
    std::fs::write(mem.join("memory.limit_in_bytes"), "24M").unwrap();
    let _ = std::fs::write(mem.join("memory.memsw.limit_in_bytes"), "24M");
    let cgp = format!("/{cg}");
    let mut c = Ctr::with(
        &[
            "sh",
            "-c",
            "grep -E 'memory|pids' /proc/self/cgroup; x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
        |s| {
            s["linux"]["cgroupsPath"] = json!(cgp);
        },
    );
    let (m2, p2) = (mem.clone(), pids.clone());
    c.cleanups.push(Box::new(move || {
        for d in [&m2, &p2] {
            rmdir_patiently(d);
        }
    }));
    c.start().unwrap();
    let r = c.wait();
    let log = c.log_text();
    assert!(log.contains(&format!(":memory:/{cg}")) && log.contains(&format!(":pids:/{cg}")), "{log}");
    assert!(r.oom_killed, "{r:?} {log}");
    assert_eq!(r.reason.as_deref(), Some("OOMKilled"));
}

/// The gate's `cgroup_ready`: the container's process (forked ahead, not exec'd) joins its
/// cgroup before the gate is released; released, it runs there; called off after the join, it
/// exits and leaves the cgroup empty (removable).
#[test]
fn gated_start_joins_the_cgroup_early_and_leaves_it_when_called_off() {
    if !have_busybox() || !Path::new("/sys/fs/cgroup/pids").is_dir() {
        return;
    }
    let cg = format!("skmon-early-{}", rand_suffix());
    let pids = Path::new("/sys/fs/cgroup/pids").join(&cg);
    std::fs::create_dir(&pids).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            rmdir_patiently(&self.0);
        }
    }
    let _rm = Rm(pids.clone());
    let tasks = || -> Vec<i32> {
        std::fs::read_to_string(pids.join("tasks")).unwrap().split_whitespace().map(|p| p.parse().unwrap()).collect()
    };
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let cgp = format!("/{cg}");
    let spec = |s: &mut Value| s["linux"]["cgroupsPath"] = json!(cgp);

    // Told, then released: the process joined before it exec'd, and runs in the cgroup.
    let mut c = Ctr::with(&["sh", "-c", "grep pids /proc/self/cgroup"], spec);
    let mut gate = monitor::spawn_gated(Path::new(BIN), &c.dir).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(tasks().is_empty(), "nothing joins before the gate says so");
    gate.cgroup_ready();
    wait_for("the waiting process joined the cgroup", &|| !tasks().is_empty());
    let early = tasks();
    assert_eq!(early.len(), 1, "{early:?}");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", early[0])).unwrap_or_default();
    assert_ne!(comm.trim(), "sh", "not exec'd before the release");
    assert!(!c.log_text().contains(":pids:"), "nothing ran yet");
    gate.release();
    let s = gate.wait().unwrap();
    assert_eq!(s.pid, early[0], "the process that joined early is the container's");
    c.started = Some(s);
    assert_eq!(c.wait().exit_code, 0);
    assert!(c.log_text().contains(&format!(":pids:/{cg}")), "{}", c.log_text());

    // Told, then called off: the process exits and the cgroup is empty again.
    let marker = format!("/tmp/skiff-gate-{}", rand_suffix());
    let c2 = Ctr::with(&["sh", "-c", &format!("echo ran > {marker}")], spec);
    let mut gate = monitor::spawn_gated(Path::new(BIN), &c2.dir).unwrap();
    gate.cgroup_ready();
    wait_for("the waiting process joined the cgroup", &|| !tasks().is_empty());
    drop(gate);
    wait_for("the called-off process left the cgroup", &|| tasks().is_empty());
    std::fs::remove_dir(&pids).expect("the cgroup is removable");
    assert!(!Path::new(&marker).exists(), "nothing ran");
    assert!(monitor::read_exit_record(&c2.cfg.exit_record_path).is_none());
}

#[test]
fn infra_pid_namespace_shared_by_a_container() {
    if !have_busybox() {
        return;
    }
    let pod = tempfile::Builder::new().prefix("skpod-").tempdir_in("/tmp").unwrap();
    let infra = monitor::spawn_infra(Path::new(BIN), pod.path(), None, None).unwrap();
    let ipid = infra.pid;
    let kill_infra = move || {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(ipid), nix::sys::signal::Signal::SIGTERM);
    };
    let ns = format!("/proc/{ipid}/ns/pid");
    let mut c = Ctr::with(&["sh", "-c", "echo pid=$$; sleep 0.2 & exit 0"], |s| {
        let nss = s["linux"]["namespaces"].as_array_mut().unwrap();
        nss.retain(|n| n["type"] != "pid");
        nss.push(json!({"type": "pid", "path": ns}));
    });
    c.cleanups.push(Box::new(kill_infra));
    c.start().unwrap();
    assert_eq!(c.wait().exit_code, 0);
    assert!(c.log_text().contains("stdout F pid=2") || c.log_text().contains("stdout F pid="), "{}", c.log_text());
    assert!(!c.log_text().contains("stdout F pid=1\n"));
    std::thread::sleep(Duration::from_millis(600));
    // The orphaned sleep was reaped by the infra process.
    let stat = std::fs::read_to_string(format!("/proc/{ipid}/stat")).unwrap();
    assert!(stat.contains("(skiff-infra)"), "{stat}");
    let children = std::fs::read_to_string(format!("/proc/{ipid}/task/{ipid}/children")).unwrap_or_default();
    assert!(children.trim().is_empty(), "infra still has children: {children}");
}

#[test]
fn user_caps_no_new_privs_and_seccomp() {
    if !have_busybox() {
        return;
    }
    let script = "echo id=$(id -u):$(id -g):$(id -G); grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status; \
                  mkdir /tmp/x 2>&1; echo mkdir=$?; echo cwd=$(pwd)";
    let mut c = Ctr::with(&["sh", "-c", script], |s| {
        s["process"]["user"] = json!({"uid": 65534, "gid": 65534, "additionalGids": [5, 65534]});
        s["process"]["cwd"] = json!("/work/dir");
        s["process"]["noNewPrivileges"] = json!(true);
        s["process"]["capabilities"] = json!({
            "bounding": ["CAP_NET_BIND_SERVICE", "CAP_KILL"],
            "effective": ["CAP_NET_BIND_SERVICE"],
            "permitted": ["CAP_NET_BIND_SERVICE"],
            "inheritable": ["CAP_NET_BIND_SERVICE"],
            "ambient": ["CAP_NET_BIND_SERVICE"]
        });
        s["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
        });
    });
    std::fs::create_dir_all(c.rootfs.join("tmp")).unwrap();
    std::fs::set_permissions(c.rootfs.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    c.start().unwrap();
    let r = c.wait();
    let log = c.log_text();
    assert_eq!(r.exit_code, 0, "{log}");
    let out: Vec<String> = records(&log).into_iter().map(|r| r.2).collect();
    assert!(
        out.contains(&"id=65534:65534:65534 5".to_string()) || out.contains(&"id=65534:65534:5 65534".to_string()),
        "{out:?}"
    );
    // NET_BIND_SERVICE = bit 10 (0x400), KILL = bit 5 (0x20).
    assert!(out.contains(&"CapEff:\t0000000000000400".to_string()), "{out:?}");
    assert!(out.contains(&"CapPrm:\t0000000000000400".to_string()), "{out:?}");
    assert!(out.contains(&"CapBnd:\t0000000000000420".to_string()), "{out:?}");
    assert!(out.contains(&"NoNewPrivs:\t1".to_string()), "{out:?}");
    // ENOSYS (38) from the seccomp filter, not EACCES.
    assert!(out.iter().any(|l| l.contains("mkdir") && l.contains("not implemented")), "{out:?}");
    assert!(out.contains(&"cwd=/work/dir".to_string()), "{out:?}");
    // exec_sync gets the same user and filter.
    let mut c2 = Ctr::with(&["sleep", "1000"], |s| {
        s["process"]["user"] = json!({"uid": 65534, "gid": 65534});
        s["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
        s["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
        });
    });
    c2.start().unwrap();
    let o = c2.exec(&["sh", "-c", "echo $(id -u) $FOO; mkdir /tmp/y 2>&1; true"], None).unwrap();
    let txt = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(txt.starts_with("65534 bar\n") && txt.contains("not implemented"), "{txt}");
}

#[test]
fn stdin_pipe_keeps_a_shell_running_and_tty_logs_as_stdout() {
    if !have_busybox() {
        return;
    }
    // stdin: true, like critest's shell container: `sh` waits on its stdin instead of exiting.
    let mut c = Ctr::new(&["sh"]);
    c.cfg.stdin = true;
    c.cfg.stdin_once = true;
    c.cfg.write(&c.dir).unwrap();
    c.start().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.client().status().unwrap().state, ContainerState::Running);
    c.client().signal(9).unwrap();
    assert_eq!(c.wait().signal, Some(9));

    let mut t = Ctr::new(&["sh", "-c", "tty; echo to-stderr >&2; [ -t 0 ] && echo stdin-is-tty"]);
    t.cfg.tty = true;
    t.cfg.write(&t.dir).unwrap();
    t.start().unwrap();
    assert_eq!(t.wait().exit_code, 0);
    let recs = records(&t.log_text());
    assert!(
        recs.contains(&rec("stdout", "F", "/dev/pts/0")) || recs.iter().any(|r| r.2.starts_with("/dev/")),
        "{recs:?}"
    );
    assert!(recs.contains(&rec("stdout", "F", "to-stderr")), "{recs:?}");
    assert!(recs.contains(&rec("stdout", "F", "stdin-is-tty")), "{recs:?}");
    assert!(recs.iter().all(|r| r.0 == "stdout"), "{recs:?}");
}

#[test]
fn container_dies_with_its_monitor() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::with(&["sleep", "1000"], |s| {
        s["process"]["user"] = json!({"uid": 65534, "gid": 65534});
    });
    let s = c.start().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.monitor_pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let t = Instant::now();
    let gone = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|st| st.rsplit(") ").next().unwrap_or("").starts_with('Z'))
            .unwrap_or(true)
    };
    while !gone(s.pid) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(s.pid), "the container outlived its monitor");
    c.started = None;
}

#[test]
fn recursive_readonly_bind() {
    if !have_busybox() {
        return;
    }
    // A host dir with a tmpfs below it, bound with rbind+ro+rro: the submount is read-only too.
    let src = tempfile::Builder::new().prefix("skmon-rro-").tempdir_in("/tmp").unwrap();
    let sub = src.path().join("tmpfs");
    std::fs::create_dir(&sub).unwrap();
    nix::mount::mount(Some("tmpfs"), &sub, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m")).unwrap();
    let sub2 = sub.clone();
    let srcp = src.path().to_path_buf();
    let mut c = Ctr::with(
        &["sh", "-c", "touch /mnt/tmpfs/f 2>&1; touch /mnt/f 2>&1; touch /rw/tmpfs/f && echo rw-ok"],
        |s| {
            let m = s["mounts"].as_array_mut().unwrap();
            m.push(json!({"destination": "/mnt", "type": "bind", "source": srcp, "options": ["rbind", "ro", "rro", "rprivate"]}));
            m.push(
                json!({"destination": "/rw", "type": "bind", "source": srcp, "options": ["rbind", "rw", "rprivate"]}),
            );
        },
    );
    c.cleanups.push(Box::new(move || {
        let _ = nix::mount::umount2(&sub2, nix::mount::MntFlags::MNT_DETACH);
    }));
    c.start().unwrap();
    assert_eq!(c.wait().exit_code, 0);
    let log = c.log_text();
    assert_eq!(log.matches("Read-only file system").count(), 2, "{log}");
    assert!(log.contains("stdout F rw-ok"), "{log}");
}

/// Zombies whose pid namespace is `pidns` (waits up to 10 s for them to go).
fn zombies_in(pidns: &str) -> Vec<String> {
    let t = Instant::now();
    loop {
        let z: Vec<String> = procs_matching(|_, stat| stat.rsplit(") ").next().unwrap_or("").starts_with('Z'))
            .into_iter()
            .filter(|z| {
                let pid = z.split(':').next().unwrap_or("");
                std::fs::read_link(format!("/proc/{pid}/ns/pid")).map(|l| l.to_string_lossy() == pidns).unwrap_or(false)
            })
            .collect();
        if z.is_empty() || t.elapsed() > Duration::from_secs(10) {
            return z;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn host_pid_namespace_orphans_reaped_by_the_monitor() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::with(&["sh", "-c", "sleep 0.3 & echo pid=$$"], |s| {
        s["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "pid");
    });
    let s = c.start().unwrap();
    let r = c.wait();
    assert_eq!(r.exit_code, 0);
    assert!(c.log_text().contains(&format!("stdout F pid={}", s.pid)), "{}", c.log_text());
    // The orphaned sleep went to the monitor (child subreaper), which reaped it before exiting.
    let t = Instant::now();
    let z = loop {
        let z = procs_matching(|cmd, stat| {
            cmd.starts_with("sleep 0.3") || stat.contains(&format!(" {} ", s.monitor_pid)) && stat.contains(") Z")
        });
        if z.is_empty() || t.elapsed() > Duration::from_secs(3) {
            break z;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(z.is_empty(), "{z:?}");
}

#[test]
fn capabilities_outside_what_we_hold_do_not_fail_the_start() {
    if !have_busybox() {
        return;
    }
    // Drop ALL (empty bounding set) with a leftover inheritable set, and a privileged-style
    // permitted set naming every capability (this node lacks CAP_SYS_RESOURCE).
    let all: Vec<String> = (0..41)
        .map(|n| {
            [
                "CHOWN",
                "DAC_OVERRIDE",
                "DAC_READ_SEARCH",
                "FOWNER",
                "FSETID",
                "KILL",
                "SETGID",
                "SETUID",
                "SETPCAP",
                "LINUX_IMMUTABLE",
                "NET_BIND_SERVICE",
                "NET_BROADCAST",
                "NET_ADMIN",
                "NET_RAW",
                "IPC_LOCK",
                "IPC_OWNER",
                "SYS_MODULE",
                "SYS_RAWIO",
                "SYS_CHROOT",
                "SYS_PTRACE",
                "SYS_PACCT",
                "SYS_ADMIN",
                "SYS_BOOT",
                "SYS_NICE",
                "SYS_RESOURCE",
                "SYS_TIME",
                "SYS_TTY_CONFIG",
                "MKNOD",
                "LEASE",
                "AUDIT_WRITE",
                "AUDIT_CONTROL",
                "SETFCAP",
                "MAC_OVERRIDE",
                "MAC_ADMIN",
                "SYSLOG",
                "WAKE_ALARM",
                "BLOCK_SUSPEND",
                "AUDIT_READ",
                "PERFMON",
                "BPF",
                "CHECKPOINT_RESTORE",
            ][n]
                .to_string()
        })
        .map(|c| format!("CAP_{c}"))
        .collect();
    let mut c = Ctr::with(&["grep", "-E", "^Cap(Bnd|Inh)", "/proc/self/status"], |s| {
        s["process"]["capabilities"] = json!({"bounding": [], "effective": [], "permitted": [], "inheritable": CAPS});
    });
    c.start().unwrap();
    assert_eq!(c.wait().exit_code, 0);
    assert!(c.log_text().contains("CapBnd:\t0000000000000000"), "{}", c.log_text());
    let all2 = all.clone();
    let mut p = Ctr::with(&["grep", "^CapEff", "/proc/self/status"], move |s| {
        s["process"]["capabilities"] =
            json!({"bounding": all2, "effective": all2, "permitted": all2, "inheritable": all2, "ambient": all2});
    });
    p.start().unwrap();
    assert_eq!(p.wait().exit_code, 0);
    assert!(p.log_text().contains("CapEff:"), "{}", p.log_text());
    let _ = all;
}

fn sh(cmd: &str) {
    let ok = std::process::Command::new("sh").arg("-c").arg(cmd).status().unwrap().success();
    assert!(ok, "{cmd}");
}

#[test]
fn mount_propagation_rslave_and_rshared() {
    if !have_busybox() {
        return;
    }
    for (prop, root_prop) in [("rslave", "rslave"), ("rshared", "rshared"), ("rprivate", "rslave")] {
        let src = tempfile::Builder::new().prefix("skmon-prop-").tempdir_in("/tmp").unwrap();
        let s = src.path().display().to_string();
        sh(&format!("mount --bind {s} {s} && mount --make-rshared {s} && mkdir {s}/host {s}/ctr"));
        let s2 = s.clone();
        let mut c = Ctr::with(&["sleep", "1000"], |spec| {
            spec["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/vol", "type": "bind", "source": s, "options": ["rbind", prop]
            }));
            spec["linux"]["rootfsPropagation"] = json!(root_prop);
            let caps = spec["process"]["capabilities"]["effective"].as_array().unwrap().clone();
            let mut caps: Vec<Value> = caps;
            caps.push(json!("CAP_SYS_ADMIN"));
            for set in ["bounding", "effective", "permitted"] {
                spec["process"]["capabilities"][set] = json!(caps);
            }
        });
        c.cleanups.push(Box::new(move || {
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("umount -R {s2}/host {s2}/ctr 2>/dev/null; umount -l {s2}"))
                .status();
        }));
        c.start().unwrap();
        // Host → container.
        let sp = src.path().display();
        sh(&format!("mount -t tmpfs tmpfs {sp}/host && touch {sp}/host/from-host"));
        let o = c.exec(&["ls", "/vol/host"], None).unwrap();
        let seen = String::from_utf8_lossy(&o.stdout).contains("from-host");
        assert_eq!(seen, prop != "rprivate", "{prop}: host mount seen in the container: {seen}");
        // Container → host.
        let o = c.exec(&["sh", "-c", "mount -t tmpfs tmpfs /vol/ctr && touch /vol/ctr/from-ctr"], None).unwrap();
        assert_eq!(o.exit_code, 0, "{prop}: {}", String::from_utf8_lossy(&o.stderr));
        let back = src.path().join("ctr/from-ctr").exists();
        assert_eq!(back, prop == "rshared", "{prop}: container mount seen on the host: {back}");
        drop(c);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tty_for_a_non_root_user() {
    if !have_busybox() {
        return;
    }
    let mut t = Ctr::with(&["sh", "-c", "echo via-tty > /dev/tty && echo ok"], |s| {
        s["process"]["user"] = json!({"uid": 65534, "gid": 65534});
    });
    t.cfg.tty = true;
    t.cfg.write(&t.dir).unwrap();
    t.start().unwrap();
    assert_eq!(t.wait().exit_code, 0, "{}", t.log_text());
    let log = t.log_text();
    assert!(log.contains("stdout F via-tty") && log.contains("stdout F ok"), "{log}");
}

// ---- streaming exec and attach ----

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Reads `fd` until `pred(output so far)` holds, EOF or the timeout; returns what was read
/// and whether EOF was seen.
fn read_until(fd: &std::os::fd::OwnedFd, timeout: Duration, pred: impl Fn(&str) -> bool) -> (String, bool) {
    use std::os::fd::AsFd;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if pred(&String::from_utf8_lossy(&out)) {
            return (String::from_utf8_lossy(&out).into_owned(), false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&out).into_owned(), false);
        }
        let mut p = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = nix::poll::PollTimeout::try_from(left.as_millis().clamp(1, 60_000) as i32).unwrap();
        if nix::poll::poll(&mut p, ms).unwrap_or(0) == 0 {
            continue;
        }
        match nix::unistd::read(fd.as_fd(), &mut chunk) {
            Ok(0) | Err(nix::errno::Errno::EIO) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn read_all(fd: &std::os::fd::OwnedFd) -> String {
    let (s, eof) = read_until(fd, Duration::from_secs(10), |_| false);
    assert!(eof, "no EOF; got {s:?}");
    s
}

fn write_fd(fd: &std::os::fd::OwnedFd, data: &str) {
    use std::os::fd::AsFd;
    let mut d = data.as_bytes();
    while !d.is_empty() {
        let n = nix::unistd::write(fd.as_fd(), d).unwrap();
        d = &d[n..];
    }
}

fn exec_helpers_of(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    procs_matching(|cmd, _| cmd.contains("skiff-monitor exec") && cmd.contains(&d))
}

/// Zombie children of this test process (unreaped helpers have an empty cmdline).
fn our_zombies() -> Vec<String> {
    let me = std::process::id().to_string();
    procs_matching(|_, stat| {
        let f: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split(' ').collect();
        f.first() == Some(&"Z") && f.get(1) == Some(&me.as_str())
    })
}

/// Waits (bounded) until no exec helper of `dir` is left, not even unreaped.
fn no_exec_helpers(dir: &Path) {
    // Checked in one go until it holds: tests running alongside start monitors of their own,
    // whose short-lived first processes are zombies of this process until they are reaped.
    let t = Instant::now();
    loop {
        let (helpers, zombies) = (exec_helpers_of(dir), our_zombies());
        if helpers.is_empty() && zombies.is_empty() {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "helpers {helpers:?}, zombies {zombies:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn all_io() -> monitor::ExecStreamOptions {
    monitor::ExecStreamOptions { tty: false, stdin: true, stdout: true, stderr: true, size: None }
}

#[test]
fn exec_stream_pipes_stdin_exit_code() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::new(&["sleep", "1000"]);
    c.start().unwrap();
    let bin = Path::new(BIN);
    // echo: stdout, exit 0.
    let o = monitor::ExecStreamOptions { stdin: false, ..all_io() };
    let mut s = monitor::exec_stream(bin, &c.dir, &strings(&["echo", "hi"]), &o).unwrap();
    assert!(s.take_stdin().is_none());
    let out = s.take_stdout().unwrap();
    let err = s.take_stderr().unwrap();
    assert_eq!(read_all(&out), "hi\n");
    assert_eq!(read_all(&err), "");
    assert_eq!(s.wait().unwrap(), 0);
    assert_eq!(s.wait().unwrap(), 0);
    drop(s);
    // Exit code and stderr.
    let mut s = monitor::exec_stream(bin, &c.dir, &strings(&["sh", "-c", "echo oops >&2; exit 3"]), &o).unwrap();
    let err = s.take_stderr().unwrap();
    assert_eq!(read_all(&err), "oops\n");
    assert_eq!(s.wait().unwrap(), 3);
    drop(s);
    // cat: what is written comes back; closing stdin ends it.
    let mut s = monitor::exec_stream(bin, &c.dir, &strings(&["cat"]), &all_io()).unwrap();
    let inp = s.take_stdin().unwrap();
    let out = s.take_stdout().unwrap();
    write_fd(&inp, "hello\n");
    let (got, _) = read_until(&out, Duration::from_secs(10), |s| s.contains("hello\n"));
    assert_eq!(got, "hello\n");
    write_fd(&inp, "again\n");
    drop(inp);
    assert_eq!(read_all(&out), "again\n");
    assert_eq!(s.wait().unwrap(), 0);
    drop(s);
    // A background child holding stdout does not hold the session: EOF about 1 s after the
    // exit, output intact.
    let t = Instant::now();
    let mut s =
        monitor::exec_stream(bin, &c.dir, &strings(&["sh", "-c", "sleep 3 & seq 1 20000; exit 2"]), &o).unwrap();
    let out = s.take_stdout().unwrap();
    let got = read_all(&out);
    assert!(got.starts_with("1\n2\n") && got.ends_with("\n19999\n20000\n"), "{}", got.len());
    assert_eq!(s.wait().unwrap(), 2);
    assert!(t.elapsed() < Duration::from_millis(2500), "{:?}", t.elapsed());
    drop(s);
    // Bulk output (kubectl cp reads a tar this way) arrives whole.
    let mut s = monitor::exec_stream(bin, &c.dir, &strings(&["head", "-c", "50000000", "/dev/zero"]), &o).unwrap();
    let out = s.take_stdout().unwrap();
    let (mut n, mut chunk) = (0usize, vec![0u8; 1 << 16]);
    loop {
        match nix::unistd::read(&out, &mut chunk).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    assert_eq!(n, 50_000_000);
    assert_eq!(s.wait().unwrap(), 0);
    drop(s);
    // Streams not asked for are /dev/null for the command.
    let o = monitor::ExecStreamOptions { tty: false, stdin: false, stdout: false, stderr: false, size: None };
    let mut s =
        monitor::exec_stream(bin, &c.dir, &strings(&["sh", "-c", "read x; echo $? out; echo err >&2"]), &o).unwrap();
    assert!(s.take_stdout().is_none() && s.take_stderr().is_none());
    assert_eq!(s.wait().unwrap(), 0);
    drop(s);
    // Not found: a start error.
    match monitor::exec_stream(bin, &c.dir, &strings(&["no-such-cmd"]), &all_io()) {
        Err(MonitorError::StartError(m)) => assert!(m.contains("no-such-cmd"), "{m}"),
        other => panic!("{other:?}"),
    }
    no_exec_helpers(&c.dir);
}

#[test]
fn exec_stream_tty_and_resize() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::with(&["sleep", "1000"], |s| {
        s["process"]["user"] = json!({"uid": 65534, "gid": 65534});
    });
    c.start().unwrap();
    let o = monitor::ExecStreamOptions { tty: true, size: Some((100, 30)), ..all_io() };
    let mut s = monitor::exec_stream(Path::new(BIN), &c.dir, &strings(&["sh"]), &o).unwrap();
    assert!(s.take_stderr().is_none());
    let inp = s.take_stdin().unwrap();
    let out = s.take_stdout().unwrap();
    write_fd(&inp, "stty size; tty; id -u; echo to-err >&2\n");
    let (got, _) = read_until(&out, Duration::from_secs(10), |s| s.contains("to-err\r\n") && s.contains("30 100\r\n"));
    assert!(got.contains("30 100\r\n"), "{got:?}");
    assert!(got.contains("/dev/pts/"), "{got:?}");
    assert!(got.contains("65534\r\n"), "{got:?}");
    // Resize from another thread's handle, as the streaming server does.
    let h = s.handle();
    std::thread::spawn(move || h.resize(120, 40).unwrap()).join().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    write_fd(&inp, "stty size\n");
    let (got, _) = read_until(&out, Duration::from_secs(10), |s| s.contains("40 120\r\n"));
    assert!(got.contains("40 120\r\n"), "{got:?}");
    s.resize(90, 20).unwrap();
    write_fd(&inp, "stty size; exit 7\n");
    let (got, eof) = read_until(&out, Duration::from_secs(10), |_| false);
    assert!(eof && got.contains("20 90\r\n"), "{got:?}");
    assert_eq!(s.wait().unwrap(), 7);
    drop(s);
    // Output printed right before the exit is not lost.
    let o = monitor::ExecStreamOptions { tty: true, stdin: false, stdout: true, stderr: true, size: None };
    let mut s =
        monitor::exec_stream(Path::new(BIN), &c.dir, &strings(&["sh", "-c", "stty size; seq 1 2000"]), &o).unwrap();
    let out = s.take_stdout().unwrap();
    let got = read_all(&out);
    assert!(got.starts_with("24 80\r\n") && got.ends_with("\r\n2000\r\n"), "{}", &got[..got.len().min(200)]);
    assert_eq!(s.wait().unwrap(), 0);
    drop(s);
    no_exec_helpers(&c.dir);
}

#[test]
fn exec_stream_kill_and_drop_kill_the_tree() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::new(&["sleep", "1000"]);
    let s0 = c.start().unwrap();
    let bin = Path::new(BIN);
    for tty in [false, true] {
        let o = monitor::ExecStreamOptions { tty, ..all_io() };
        let mut s =
            monitor::exec_stream(bin, &c.dir, &strings(&["sh", "-c", "setsid sleep 1011 & sleep 1012"]), &o).unwrap();
        let out = s.take_stdout().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(!procs_matching(|cmd, _| cmd.starts_with("sleep 1012")).is_empty());
        s.kill().unwrap();
        s.kill().unwrap();
        assert_eq!(s.wait().unwrap(), 137);
        s.kill().unwrap();
        s.handle().kill().unwrap();
        let _ = read_until(&out, Duration::from_secs(5), |_| false);
        std::thread::sleep(Duration::from_millis(300));
        let left = procs_matching(|cmd, _| cmd.starts_with("sleep 1011") || cmd.starts_with("sleep 1012"));
        assert!(left.is_empty(), "tty {tty}: left behind: {left:?}");
    }
    // A helper killed outright (SIGKILL) takes the command's tree with it.
    let mut s =
        monitor::exec_stream(bin, &c.dir, &strings(&["sh", "-c", "sleep 1015 & sleep 1016"]), &all_io()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let me = std::process::id().to_string();
    let d = c.dir.display().to_string();
    let helper: Vec<i32> = procs_matching(|cmd, stat| {
        cmd.contains("skiff-monitor exec")
            && cmd.contains(&d)
            && stat.rsplit(") ").next().unwrap_or("").split(' ').nth(1) == Some(&me)
    })
    .iter()
    .map(|l| l.split(':').next().unwrap().parse().unwrap())
    .collect();
    assert_eq!(helper.len(), 1, "{helper:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(helper[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(s.wait().is_err());
    drop(s);
    let t = Instant::now();
    let left = loop {
        let left = procs_matching(|cmd, _| cmd.starts_with("sleep 1015") || cmd.starts_with("sleep 1016"));
        if left.is_empty() || t.elapsed() > Duration::from_secs(5) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(left.is_empty(), "left behind after the helper's death: {left:?}");
    // Dropping the session without waiting kills the command too.
    let s = monitor::exec_stream(bin, &c.dir, &strings(&["sh", "-c", "sleep 1013 & sleep 1014"]), &all_io()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    let t = Instant::now();
    let left = loop {
        let left = procs_matching(|cmd, _| cmd.starts_with("sleep 1013") || cmd.starts_with("sleep 1014"));
        if left.is_empty() || t.elapsed() > Duration::from_secs(5) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(left.is_empty(), "left behind after drop: {left:?}");
    no_exec_helpers(&c.dir);
    let z = zombies_in(&ns_of(&s0.pid.to_string(), "pid"));
    assert!(z.is_empty(), "zombies: {z:?}");
    assert_eq!(c.client().status().unwrap().state, ContainerState::Running);
}

fn attach_opts(stdin: bool) -> monitor::AttachOptions {
    monitor::AttachOptions { stdin, stdout: true, stderr: true }
}

#[test]
fn attach_gets_live_output_two_at_once() {
    if !have_busybox() {
        return;
    }
    let mut c =
        Ctr::new(&["sh", "-c", "i=0; while true; do echo line$i; echo eline$i >&2; i=$((i+1)); sleep 0.1; done"]);
    c.start().unwrap();
    c.wait_log("line5");
    let mut a = monitor::attach(&c.dir, &attach_opts(true)).unwrap();
    let mut b = monitor::attach(&c.cfg.socket_path, &attach_opts(false)).unwrap();
    assert!(!a.tty());
    // No stdin for a container without CRI stdin.
    assert!(a.take_stdin().is_none() && b.take_stdin().is_none());
    let (ao, ae, bo) = (a.take_stdout().unwrap(), a.take_stderr().unwrap(), b.take_stdout().unwrap());
    let (x, _) = read_until(&ao, Duration::from_secs(5), |s| s.matches('\n').count() >= 3);
    let (y, _) = read_until(&bo, Duration::from_secs(5), |s| s.matches('\n').count() >= 3);
    let (e, _) = read_until(&ae, Duration::from_secs(5), |s| s.matches('\n').count() >= 3);
    for got in [&x, &y] {
        assert!(got.lines().count() >= 3 && got.lines().all(|l| l.starts_with("line")), "{got:?}");
        // Live output, not the history.
        assert!(!got.contains("line0\n"), "{got:?}");
    }
    assert!(e.lines().all(|l| l.starts_with("eline")), "{e:?}");
    a.resize(10, 10).unwrap();
    // Detaching does not stop the container; the log goes on.
    drop((a, ao, ae));
    let n = records(&c.log_text()).len();
    std::thread::sleep(Duration::from_millis(500));
    assert!(records(&c.log_text()).len() > n);
    assert_eq!(c.client().status().unwrap().state, ContainerState::Running);
    let (y, _) = read_until(&bo, Duration::from_secs(5), |s| s.matches('\n').count() >= 2);
    assert!(y.lines().count() >= 2, "{y:?}");
    // The container's exit is EOF for attachers.
    c.client().signal(9).unwrap();
    let (_, eof) = read_until(&bo, Duration::from_secs(10), |_| false);
    assert!(eof);
    drop(b);
    assert_eq!(c.wait().signal, Some(9));
    // Attaching to a gone monitor.
    let t = Instant::now();
    while c.cfg.socket_path.exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(matches!(monitor::attach(&c.dir, &attach_opts(false)), Err(MonitorError::MonitorGone)));
}

#[test]
fn attach_stdin_echoes_and_stdin_once_closes() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::new(&["cat"]);
    c.cfg.stdin = true;
    c.cfg.write(&c.dir).unwrap();
    let st = c.start().unwrap();
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", st.monitor_pid)).unwrap().count();
    let fds_before = fds();
    let mut a = monitor::attach(&c.dir, &attach_opts(true)).unwrap();
    let mut b = monitor::attach(&c.dir, &attach_opts(false)).unwrap();
    let (ai, ao, bo) = (a.take_stdin().unwrap(), a.take_stdout().unwrap(), b.take_stdout().unwrap());
    write_fd(&ai, "ping\n");
    let (x, _) = read_until(&ao, Duration::from_secs(5), |s| s.contains("ping\n"));
    let (y, _) = read_until(&bo, Duration::from_secs(5), |s| s.contains("ping\n"));
    assert_eq!((x.as_str(), y.as_str()), ("ping\n", "ping\n"));
    assert!(c.wait_log("stdout F ping").contains("stdout F ping"));
    // Without stdin_once, an attacher's EOF does not close the container's stdin.
    drop(ai);
    drop(a);
    let mut a2 = monitor::attach(&c.dir, &attach_opts(true)).unwrap();
    let ai2 = a2.take_stdin().unwrap();
    write_fd(&ai2, "pong\n");
    let (y, _) = read_until(&bo, Duration::from_secs(5), |s| s.contains("pong\n"));
    assert_eq!(y, "pong\n");
    assert_eq!(c.client().status().unwrap().state, ContainerState::Running);
    drop((ai2, a2, b, bo, ao));
    // Detached: the monitor holds no fd of them any more (the count taken at start may have
    // held a transient one too).
    let t = Instant::now();
    while fds() > fds_before && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(fds() <= fds_before, "the monitor holds {} fds, {fds_before} before the attachers", fds());

    // stdin_once: the first attacher's EOF is the container's EOF.
    let mut c = Ctr::new(&["sh", "-c", "cat; echo done"]);
    c.cfg.stdin = true;
    c.cfg.stdin_once = true;
    c.cfg.write(&c.dir).unwrap();
    c.start().unwrap();
    let mut a = monitor::attach(&c.dir, &attach_opts(true)).unwrap();
    let (ai, ao) = (a.take_stdin().unwrap(), a.take_stdout().unwrap());
    write_fd(&ai, "once\n");
    drop(ai);
    let (x, eof) = read_until(&ao, Duration::from_secs(10), |_| false);
    assert!(eof && x == "once\ndone\n", "{x:?}");
    assert_eq!(c.wait().exit_code, 0);
}

#[test]
fn attach_tty_stdin_and_resize() {
    if !have_busybox() {
        return;
    }
    let mut c = Ctr::new(&["sh"]);
    c.cfg.tty = true;
    c.cfg.stdin = true;
    c.cfg.stdin_once = true;
    c.cfg.write(&c.dir).unwrap();
    c.start().unwrap();
    let mut a = monitor::attach(&c.dir, &attach_opts(true)).unwrap();
    assert!(a.tty());
    assert!(a.take_stderr().is_none());
    let (ai, ao) = (a.take_stdin().unwrap(), a.take_stdout().unwrap());
    a.resize(50, 20).unwrap();
    write_fd(&ai, "stty size; echo to-err >&2\n");
    let (x, _) = read_until(&ao, Duration::from_secs(10), |s| s.contains("20 50\r\n") && s.contains("to-err\r\n"));
    assert!(x.contains("20 50\r\n") && x.contains("to-err\r\n"), "{x:?}");
    // With a tty, stdin_once closes nothing: a later attacher still types into the shell.
    drop(ai);
    std::thread::sleep(Duration::from_millis(200));
    let mut a2 = monitor::attach(&c.dir, &attach_opts(true)).unwrap();
    let ai = a2.take_stdin().expect("stdin after the first attacher's EOF");
    write_fd(&ai, "exit 4\n");
    let (_, eof) = read_until(&ao, Duration::from_secs(10), |_| false);
    assert!(eof);
    assert_eq!(c.wait().exit_code, 4);
    assert!(records(&c.log_text()).contains(&rec("stdout", "F", "20 50")), "{}", c.log_text());
}

#[test]
fn attacher_reading_nothing_blocks_nothing() {
    if !have_busybox() {
        return;
    }
    // ~1 MB/s of output: more than any pipe holds within a few seconds.
    let mut c = Ctr::new(&["sh", "-c", "while true; do head -c 50000 /dev/zero | tr '\\0' x; echo; sleep 0.05; done"]);
    c.start().unwrap();
    let mut a = monitor::attach(&c.dir, &attach_opts(false)).unwrap();
    let stuck = a.take_stdout().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let len = |c: &Ctr| std::fs::metadata(&c.log).map(|m| m.len()).unwrap_or(0);
    let l1 = len(&c);
    assert!(l1 > 2_000_000, "{l1}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(len(&c) > l1 + 100_000, "log does not grow");
    assert_eq!(c.client().status().unwrap().state, ContainerState::Running);
    // Another attacher still gets live output; the stuck one is still attached.
    let mut b = monitor::attach(&c.dir, &attach_opts(false)).unwrap();
    let bo = b.take_stdout().unwrap();
    let (x, _) = read_until(&bo, Duration::from_secs(5), |s| s.len() > 100_000);
    assert!(x.len() > 100_000);
    let (y, _) = read_until(&stuck, Duration::from_secs(5), |s| s.len() > 100_000);
    assert!(y.len() > 100_000);
    drop((a, b, stuck, bo));
}

#[test]
fn joins_a_pod_user_namespace() {
    if !have_busybox() {
        return;
    }
    use runtime::namespaces::{self, IdMap, NsType};
    let pins = tempfile::tempdir().unwrap();
    let nsdir = pins.path().join("ns");
    let map = IdMap { container_id: 0, host_id: 2_000_000, length: 65536 };
    let (user, pinned) = namespaces::pin_in_user_namespace(&nsdir, &[NsType::Net], None, map, map).unwrap();
    let net = pinned.net.clone().unwrap();
    let script =
        "cat /proc/self/uid_map; echo uid=$(id -u); echo pid=$$; ls /sys/class/net | grep -q lo && echo sysok; \
                  unshare -U true && echo unshare-ok; echo go > /tmp/go-$$ ; sleep 4";
    let (u2, n2) = (user.clone(), net.clone());
    let mut c = Ctr::with(&["sh", "-c", script], move |s| {
        let ns = s["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        ns.push(json!({"type": "user", "path": u2}));
        ns.push(json!({"type": "network", "path": n2}));
        // no sysctl: the netns is the pod's
        s["linux"].as_object_mut().unwrap().remove("sysctl");
    });
    let nsdir2 = nsdir.clone();
    c.cleanups.push(Box::new(move || {
        let _ = namespaces::unpin(&nsdir2);
    }));
    // the test rootfs is the host's root's: the container's root (host 2000000) writes to /tmp
    std::fs::set_permissions(c.rootfs.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let s = c.start().unwrap();
    let log = c.wait_log("unshare-ok");
    // seen from the host, the container's process runs as the mapped id
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid)).unwrap_or_default();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("").to_string();
    // exec enters the user namespace too
    let e = c.exec(&["sh", "-c", "cat /proc/self/uid_map; id -u"], Some(Duration::from_secs(10))).unwrap();
    let text = String::from_utf8_lossy(&e.stdout).to_string();
    assert_eq!(text.split_whitespace().collect::<Vec<_>>(), ["0", "2000000", "65536", "0"], "exec: {text}");
    let r = c.wait();
    assert_eq!(r.exit_code, 0, "{log}");
    let out: Vec<String> = records(&log).into_iter().map(|r| r.2).collect();
    assert!(out.iter().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["0", "2000000", "65536"]), "{out:?}");
    assert!(out.contains(&"uid=0".to_string()), "{out:?}");
    assert!(out.contains(&"pid=1".to_string()), "{out:?}");
    assert!(out.contains(&"sysok".to_string()), "{out:?}");
    assert!(out.contains(&"unshare-ok".to_string()), "{out:?}");
    assert_eq!(uid_line.split_whitespace().nth(1), Some("2000000"), "{status}");
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::read_dir(c.rootfs.join("tmp"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("go-"));
    assert_eq!(f.map(|e| e.metadata().unwrap().uid()), Some(2_000_000), "file written by the container's root");
}

#[test]
fn gated_start_runs_when_opened_and_nothing_when_called_off() {
    if !have_busybox() {
        return;
    }
    // Opened: as `spawn`.
    let mut c = Ctr::new(&["sh", "-c", "echo gated; exit 4"]);
    let gate = monitor::spawn_gated(Path::new(BIN), &c.dir).unwrap();
    let s = gate.open().unwrap();
    c.started = Some(s);
    assert_eq!(c.wait().exit_code, 4);
    assert!(records(&c.log_text()).contains(&rec("stdout", "F", "gated")));

    // Dropped unopened: the monitor exits having started nothing.
    let marker = format!("/tmp/skiff-gate-{}", rand_suffix());
    let c = Ctr::new(&["sh", "-c", &format!("echo ran > {marker}")]);
    let gate = monitor::spawn_gated(Path::new(BIN), &c.dir).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(gate);
    let t = Instant::now();
    let gone =
        |dir: &Path| procs_matching(|cmd, _| cmd.contains("skiff-monitor") && cmd.contains(&*dir.to_string_lossy()));
    while !gone(&c.dir).is_empty() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(&c.dir).is_empty(), "the called-off monitor exited");
    assert!(!c.cfg.socket_path.exists());
    assert!(!c.dir.join("monitor.pid").exists());
    assert!(monitor::read_exit_record(&c.cfg.exit_record_path).is_none());
    assert!(!Path::new(&marker).exists(), "nothing ran");
}
