//! The integration-test harness: runs the real `skiffd` (and its `skiff-monitor`) from the
//! cargo target directory on temporary root/state dirs and a temporary socket, hands the test
//! tonic CRI clients, and on drop stops the daemon and checks that nothing was left behind.
//!
//! The binaries are those of `cargo build --workspace --bins` (the README's test command runs
//! it first); `SKIFF_BIN_DIR` points elsewhere. Each daemon gets its own bridge name, pod range
//! and cgroup parent so that tests can run in parallel. The registry mirrors of
//! `registry.k8s.io`, `gcr.io` and `docker.io` point at the test registry
//! (`SKIFF_TEST_REGISTRY`, default 127.0.0.1:5000, started by `shared/testimages/registry-up`).
//!
//! Use `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`: stopping the daemon (in
//! [`Daemon::stop`] and on drop) blocks the test's thread, and on a current-thread runtime the
//! client connection could not be closed meanwhile, so every shutdown would wait out its grace
//! period.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use proto::cri::image_service_client::ImageServiceClient;
use proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub use proto::cri;

pub mod pods;
pub mod streaming;

/// The test registry's address.
pub fn registry() -> String {
    std::env::var("SKIFF_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

/// The directory holding skiffd and skiff-monitor.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SKIFF_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test binary> → target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test binary dir").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A unique short suffix for names that live in kernel-wide namespaces (links, cgroups).
pub fn unique_suffix() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Merges `over` into `base` (tables recursively, other values replaced).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// A running skiffd for one test.
pub struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
    channel: Option<Channel>,
    /// The bridge this daemon's pods use.
    pub bridge: String,
    /// The cgroup parent (cgroupfs form) of this daemon's pods.
    pub cgroup_parent: String,
    /// Extra environment of skiffd (e.g. `SKIFF_FAILPOINTS`), kept across restarts.
    pub env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts skiffd with the harness's defaults.
    pub async fn start() -> Daemon {
        Self::start_with_config("").await
    }

    /// Starts skiffd with failpoints enabled (see cri-server's `failpoint` module).
    pub async fn start_with_failpoints(points: &str) -> Daemon {
        let d = Self::start_with_config_and_env("", &[("SKIFF_FAILPOINTS", points)]).await;
        assert!(
            !d.log().contains("SKIFF_FAILPOINTS ignored"),
            "skiffd was built without failpoints: build it with `cargo build --workspace --bins --features skiff-cri-server/failpoints` (test.sh does)"
        );
        d
    }

    /// Starts skiffd with `extra` TOML merged over the harness's defaults.
    pub async fn start_with_config(extra: &str) -> Daemon {
        Self::start_with_config_and_env(extra, &[]).await
    }

    /// Starts skiffd with `extra` TOML and extra environment variables.
    pub async fn start_with_config_and_env(extra: &str, env: &[(&str, &str)]) -> Daemon {
        let mut d = Self::unstarted(extra, env);
        d.spawn().await;
        d
    }

    /// Starts skiffd once `prepare` has been given its root directory, which does not exist yet
    /// (e.g. to mount a file system of the test's there).
    pub async fn start_with_root(extra: &str, prepare: impl FnOnce(&Path)) -> Daemon {
        let mut d = Self::unstarted(extra, &[]);
        prepare(&d.root());
        d.spawn().await;
        d
    }

    fn unstarted(extra: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::Builder::new().prefix("skiff-test-").tempdir_in("/tmp").expect("tempdir");
        let suffix = unique_suffix();
        let bridge = format!("skt{suffix}");
        let cgroup_parent = format!("/skiff-test-{suffix}");
        // A /24 in 10.200.0.0/13 chosen at random: parallel daemons need disjoint pod ranges.
        let n = rand::random::<u16>() & 0x7ff;
        let registry = format!("http://{}", registry());
        let base = format!(
            r#"
log_level = "debug"
shutdown_timeout_secs = 5
[runtime]
default_cgroup_parent = "{cgroup_parent}"
[registry.mirrors]
"registry.k8s.io" = ["{registry}"]
"gcr.io" = ["{registry}"]
"docker.io" = ["{registry}"]
[network]
bridge = "{bridge}"
pod_cidr = "10.{}.{}.0/24"
"#,
            200 + (n >> 8),
            n & 0xff
        );
        let mut config: toml::Table = base.parse().expect("harness config");
        let extra: toml::Table = extra.parse().expect("the test's extra TOML does not parse");
        merge(&mut config, extra);
        fs::write(dir.path().join("config.toml"), toml::to_string(&config).expect("toml")).expect("write config");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Daemon { dir, child: None, channel: None, bridge, cgroup_parent, env }
    }

    /// The temporary directory holding everything of this daemon.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("skiff.sock")
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }
    /// skiffd's stderr, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("skiffd.log")).unwrap_or_default()
    }
    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone().expect("daemon not running")).max_decoding_message_size(32 << 20)
    }
    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone().expect("daemon not running")).max_decoding_message_size(32 << 20)
    }

    async fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("skiffd.log"))
            .expect("log file");
        let bin = bin_dir().join("skiffd");
        assert!(
            bin.is_file(),
            "{} not found: build the binaries first (cargo build --workspace --bins)",
            bin.display()
        );
        let child = Command::new(&bin)
            .arg("--config")
            .arg(self.config_path())
            .arg("--root")
            .arg(self.root())
            .arg("--state")
            .arg(self.state())
            .arg("--listen")
            .arg(self.socket())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn skiffd");
        self.child = Some(child);
        self.channel = Some(self.wait_ready().await);
    }

    async fn wait_ready(&mut self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("skiffd exited during start ({status}):\n{}", self.log());
            }
            if self.socket().exists() {
                if let Ok(ch) = connect(&self.socket()).await {
                    let mut rt = RuntimeServiceClient::new(ch.clone());
                    if rt.version(cri::VersionRequest::default()).await.is_ok() {
                        return ch;
                    }
                }
            }
            assert!(Instant::now() < deadline, "skiffd not ready after 30s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.channel = None;
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills skiffd with SIGKILL (no cleanup of any kind).
    pub fn kill(&mut self) {
        self.channel = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts skiffd again on the same directories and configuration.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "skiffd still running");
        self.spawn().await;
    }

    /// SIGTERM, then start again.
    pub async fn restart(&mut self) {
        let status = self.stop();
        assert!(status.map(|s| s.success()).unwrap_or(false), "skiffd exit {status:?}:\n{}", self.log());
        self.start_again().await;
    }

    /// What this daemon left on the machine after it stopped: mounts under its directory,
    /// processes naming its directory, its cgroups, veths on its bridge.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let dir = self.dir.path().to_string_lossy().into_owned();
        for line in fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines() {
            if let Some(mp) = line.split_whitespace().nth(4) {
                if mp.starts_with(&dir) {
                    out.push(format!("mount {mp}"));
                }
            }
        }
        for pid in processes_mentioning(&dir) {
            out.push(format!("process {pid}: {}", cmdline(pid)));
        }
        for hierarchy in cgroup_v1_hierarchies() {
            let path = hierarchy.join(self.cgroup_parent.trim_start_matches('/'));
            if path.exists() {
                out.push(format!("cgroup {}", path.display()));
            }
        }
        let leases = self.root().join("network/leases.json");
        if let Ok(text) = fs::read_to_string(&leases) {
            if text.contains("\"pod\"") || text.contains("\"pod_id\"") {
                out.push(format!("IP leases in {}: {text}", leases.display()));
            }
        }
        let brif = PathBuf::from("/sys/class/net").join(&self.bridge).join("brif");
        if let Ok(entries) = fs::read_dir(&brif) {
            for e in entries.flatten() {
                out.push(format!("veth {} on {}", e.file_name().to_string_lossy(), self.bridge));
            }
        }
        out
    }

    /// What a reboot does to a killed daemon's pods: every process of this daemon and of its
    /// containers dies, every mount under the state dir goes, the state dir (a tmpfs) comes back
    /// empty, and the cgroups are gone. The root dir stays. Call it after [`Daemon::kill`].
    pub fn simulate_reboot(&self) {
        assert!(self.child.is_none(), "kill the daemon first");
        for pid in processes_mentioning(&self.dir.path().to_string_lossy()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let state = self.state().to_string_lossy().into_owned();
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
            .filter(|mp| mp.starts_with(&state))
            .collect();
        mounts.reverse();
        for mp in mounts {
            nix::mount::umount2(mp.as_str(), nix::mount::MntFlags::MNT_DETACH).expect("unmount");
        }
        fs::remove_dir_all(self.state()).expect("empty the state dir");
        for hierarchy in cgroup_v1_hierarchies() {
            remove_cgroup_tree(&hierarchy.join(self.cgroup_parent.trim_start_matches('/')));
        }
    }

    /// Best-effort removal of whatever [`Daemon::leftovers`] reports, and of the bridge.
    fn clean_up_machine(&self) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        for pid in processes_mentioning(&dir) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
            .filter(|mp| mp.starts_with(&dir))
            .collect();
        mounts.reverse();
        for mp in mounts {
            let _ = nix::mount::umount2(mp.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for hierarchy in cgroup_v1_hierarchies() {
            let top = hierarchy.join(self.cgroup_parent.trim_start_matches('/'));
            remove_cgroup_tree(&top);
        }
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
        }
        // The bridge plugin's nftables table is named after the bridge.
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &format!("skiff_{}", self.bridge)])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let status = self.stop();
        // Give monitors a moment to finish writing exit records and exit.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left = self.leftovers();
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            left = self.leftovers();
        }
        self.clean_up_machine();
        if std::thread::panicking() {
            eprintln!("---- skiffd log ----\n{}", self.log());
            return;
        }
        if let Some(status) = status {
            assert!(status.success(), "skiffd exited with {status}:\n{}", self.log());
        }
        assert!(
            left.is_empty(),
            "the test left these behind (cleaned up now):\n  {}\n---- skiffd log ----\n{}",
            left.join("\n  "),
            self.log()
        );
    }
}

/// Connects a tonic channel to a unix socket.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_owned();
    Endpoint::try_from("http://[::]:50051")?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_owned())
        .unwrap_or_default()
}

/// Processes (other than this one) whose command line mentions `needle`.
/// A record file under skiffd's `root` (`metadata/pods/ID.json`, `containers/ID/rootfs.json`,
/// ...) as skiffd has it: the latest change its metadata journal holds, else the file (skiffd
/// writes the files from the journal at its checkpoints and clean stop). `None`: no record.
pub fn read_record(root: impl AsRef<Path>, rel: &str) -> Option<Vec<u8>> {
    let root = root.as_ref();
    match common::journal::latest(root, "metadata/journal", Path::new(rel)) {
        Ok(Some(change)) => change,
        _ => fs::read(root.join(rel)).ok(),
    }
}

pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
                .filter(|&pid| pid != me && cmdline(pid).contains(needle))
                .collect()
        })
        .unwrap_or_default()
}

/// The monitors (`skiff-monitor run <dir of id>`) running for container `id`.
pub fn monitors_of(id: &str) -> Vec<i32> {
    processes_mentioning(id)
        .into_iter()
        .filter(|pid| {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.len() >= 3 && args[1] == b"run"
        })
        .collect()
}

/// Mount points of the v1 cgroup hierarchies (and the v2 root when unified).
pub fn cgroup_v1_hierarchies() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mp = left.split_whitespace().nth(4)?;
            (fstype == "cgroup" || (fstype == "cgroup2" && mp == "/sys/fs/cgroup")).then(|| PathBuf::from(mp))
        })
        .collect()
}

/// The v1 hierarchy with the memory controller (panics where there is none).
pub fn memory_hierarchy() -> PathBuf {
    cgroup_v1_hierarchies()
        .into_iter()
        .find(|h| h.file_name().is_some_and(|n| n.to_string_lossy().split(',').any(|c| c == "memory")))
        .expect("v1 memory hierarchy")
}

/// Builds a minimal busybox root filesystem in `root` (the host's `/bin/busybox` and its
/// applets; `etc/passwd` with root and alice 1000:1000, `etc/group` with staff 50 holding alice).
pub fn busybox_rootfs(root: &Path) {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "root", "home/alice"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let out = std::process::Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n")
        .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nalice:x:1000:\nstaff:x:50:alice\n").unwrap();
}

fn remove_cgroup_tree(path: &Path) {
    // Container processes do not name the daemon's directory: kill what the cgroups hold.
    if let Ok(procs) = fs::read_to_string(path.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if !procs.trim().is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    // Killed processes leave their cgroup a moment after the signal.
    for _ in 0..100 {
        if fs::remove_dir(path).is_ok() || !path.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Tests that run Debian's CNI `portmap` plugin hold one of these: portmap (through
/// iptables-nft) creates shared top-level chains (`CNI-HOSTPORT-*`) in the `ip nat` and
/// `ip6 nat` tables, which no single test may remove while others use them. When those tables
/// did not exist before the first such test of this process, the last one to finish deletes
/// them, so that the machine is left as it was found.
pub struct NatTables(());

static NAT_TABLES: std::sync::Mutex<(usize, Option<bool>)> = std::sync::Mutex::new((0, None));

fn nat_tables_exist() -> bool {
    ["ip", "ip6"].iter().any(|family| {
        Command::new("nft")
            .args(["list", "table", family, "nat"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

impl NatTables {
    pub fn hold() -> Self {
        let mut g = NAT_TABLES.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 == 0 {
            g.1 = Some(nat_tables_exist());
        }
        g.0 += 1;
        NatTables(())
    }
}

impl Drop for NatTables {
    fn drop(&mut self) {
        let mut g = NAT_TABLES.lock().unwrap_or_else(|p| p.into_inner());
        g.0 -= 1;
        if g.0 == 0 && g.1 == Some(false) {
            for family in ["ip", "ip6"] {
                let _ = Command::new("nft").args(["delete", "table", family, "nat"]).stderr(Stdio::null()).status();
            }
        }
    }
}
