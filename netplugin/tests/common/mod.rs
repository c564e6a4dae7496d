//! Helpers of the netplugin integration tests: network namespaces made by the test (`ip netns`,
//! tests only), code run inside them on dedicated threads, tiny TCP servers and clients, and a
//! guard that removes everything a test created even when it panics.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short random hex string.
pub fn unique() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A per-process-unique small number (for CIDRs and ports of parallel tests).
pub fn next_slot() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A random base so that test binaries running at the same time pick different slots.
pub fn base() -> u32 {
    static BASE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| rand::random::<u32>() % 64)
}

pub fn sh(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("run {cmd}: {e}"))
}

pub fn sh_ok(cmd: &str, args: &[&str]) -> String {
    let out = sh(cmd, args);
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace created by the test (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    pub fn new() -> Self {
        let name = format!("sknt-{}", unique());
        sh_ok("ip", &["netns", "add", &name]);
        let path = PathBuf::from("/run/netns").join(&name);
        Self { name, path }
    }

    /// Run a command inside the netns.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(args);
        sh("ip", &a)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.name]);
    }
}

/// Run `f` on a fresh thread that entered the netns at `path` (None = stay in the host netns).
pub fn in_netns<T: Send + 'static>(path: Option<&Path>, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = path.map(Path::to_path_buf);
    std::thread::spawn(move || {
        if let Some(p) = path {
            let f = std::fs::File::open(&p).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        }
        f()
    })
    .join()
    .unwrap()
}

/// A TCP server in a netns answering every connection with `reply` and closing it.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(netns: &Path, bind: SocketAddr, reply: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let path = netns.to_path_buf();
        let reply = reply.to_string();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = TcpListener::bind(bind).unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, peer)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.write_all(format!("{reply} from-peer={peer}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv().unwrap();
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connect to `addr` from the netns at `from` (None = host) and read the reply.
pub fn tcp_get(from: Option<&Path>, addr: SocketAddr) -> std::io::Result<String> {
    in_netns(from, move || {
        let mut last = None;
        // a few tries: a fresh veth/bridge port may need a moment before forwarding
        for _ in 0..30 {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(3)))?;
                    let mut buf = String::new();
                    s.read_to_string(&mut buf)?;
                    return Ok(buf);
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Err(last.unwrap())
    })
}

/// Whether a link exists in the host netns.
pub fn link_exists(name: &str) -> bool {
    sh("ip", &["link", "show", "dev", name]).status.success()
}

/// Names of the links enslaved to `bridge`.
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    let out = sh("ip", &["-o", "link", "show", "master", bridge]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
        .collect()
}

/// Removes a bridge and an nft table on drop (test cleanup also when a test panics).
pub struct HostCleanup {
    pub bridge: String,
    pub nft_table: Option<String>,
}

impl Drop for HostCleanup {
    fn drop(&mut self) {
        for p in bridge_ports(&self.bridge) {
            let _ = sh("ip", &["link", "del", &p]);
        }
        let _ = sh("ip", &["link", "del", &self.bridge]);
        if let Some(t) = &self.nft_table {
            if sh("nft", &["list", "table", "inet", t]).status.success() {
                let _ = sh("nft", &["delete", "table", "inet", t]);
            }
        }
    }
}

/// Held by tests that run Debian's CNI `portmap`: it (through iptables-nft) makes shared
/// top-level chains in the `ip nat`/`ip6 nat` tables that no single test may remove while others
/// use them. When those tables did not exist before the first such test of this process, the
/// last one to finish deletes them. (The daemon tests have the same guard in skiff_tests.)
#[allow(dead_code)]
pub struct NatTables(());

static NAT_TABLES: std::sync::Mutex<(usize, Option<bool>)> = std::sync::Mutex::new((0, None));

#[allow(dead_code)]
impl NatTables {
    pub fn hold() -> Self {
        let mut g = NAT_TABLES.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 == 0 {
            g.1 = Some(["ip", "ip6"].iter().any(|f| sh("nft", &["list", "table", f, "nat"]).status.success()));
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
            for f in ["ip", "ip6"] {
                let _ = sh("nft", &["delete", "table", f, "nat"]);
            }
        }
    }
}
