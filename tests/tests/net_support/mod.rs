//! Helpers of the networking tests: pod IPs, HTTP from the host or from a network namespace the
//! test creates (entered on a dedicated thread), a "client" netns wired to the host through a
//! veth (its address exists only inside that netns), and counters of what a daemon holds
//! (veths on its bridge, leases, nftables rules, namespace pins).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skiff_tests::pods::{container_config, pod_config, NGINX};
use skiff_tests::{cri, Daemon};

pub fn sh(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("run {cmd}: {e}"))
}

pub fn sh_ok(cmd: &str, args: &[&str]) -> String {
    let out = sh(cmd, args);
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A host port unlikely to be used by a parallel test (netplugin's own tests use 20000-33999,
/// the 50-pod test a block in 40000-47999).
pub fn random_host_port() -> u16 {
    34000 + (rand::random::<u16>() % 6000)
}

/// The daemon's pod range as written in its config: (prefix "10.a.b.", gateway).
pub fn pod_range(d: &Daemon) -> (String, IpAddr) {
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    let cfg: toml::Table = text.parse().unwrap();
    let cidr = cfg["network"]["pod_cidr"].as_str().unwrap().to_owned();
    let prefix = cidr.trim_end_matches("0/24").to_owned();
    let gw = format!("{prefix}1").parse().unwrap();
    (prefix, gw)
}

/// A pod config with port mappings (TCP container port → host port).
pub fn pod_with_ports(d: &Daemon, name: &str, ports: &[(i32, i32)]) -> cri::PodSandboxConfig {
    let mut pc = pod_config(d, name);
    pc.port_mappings = ports
        .iter()
        .map(|&(container_port, host_port)| cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port,
            host_port,
            host_ip: String::new(),
        })
        .collect();
    pc
}

/// The nginx test image's web server (its own command), as a container config.
pub fn nginx_config(name: &str) -> cri::ContainerConfig {
    let mut c = container_config(name, &[]);
    c.image = Some(cri::ImageSpec { image: NGINX.into(), ..Default::default() });
    c
}

/// PodSandboxStatus: (state, ip, additional ips).
pub async fn pod_state_and_ips(d: &Daemon, id: &str) -> (i32, String, Vec<String>) {
    let st = d.pod_status(id).await;
    let net = st.network.unwrap_or_default();
    (st.state, net.ip, net.additional_ips.into_iter().map(|p| p.ip).collect())
}

/// Runs `f` on a fresh thread, inside the netns at `path` when given.
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

/// One HTTP GET of `/` (HTTP/1.0), the whole answer.
pub fn http_once(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf)
}

/// GET `/` from the netns at `from` (None = the host), retrying for a few seconds while the
/// server starts.
pub async fn http_get(from: Option<&Path>, addr: SocketAddr) -> std::io::Result<String> {
    let from = from.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || {
        in_netns(from.as_deref(), move || {
            let mut last = None;
            for _ in 0..50 {
                match http_once(addr) {
                    Ok(r) if r.starts_with("HTTP/1.1 200") => return Ok(r),
                    Ok(r) => last = Some(std::io::Error::other(format!("answer: {r:?}"))),
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(last.unwrap())
        })
    })
    .await
    .unwrap()
}

/// The nginx test image's page.
pub const WELCOME: &str = "Welcome to nginx!";

/// A network namespace made by the test (`ip netns`), deleted on drop.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    pub fn new() -> Self {
        let name = format!("sktn-{}", skiff_tests::unique_suffix());
        sh_ok("ip", &["netns", "add", &name]);
        Self { path: PathBuf::from("/run/netns").join(&name), name }
    }

    pub fn exec_ok(&self, args: &[&str]) {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(args);
        sh_ok("ip", &a);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.name]);
    }
}

/// "Another host": a netns with a veth to the host. Its address (172.30.x.y/32) exists only
/// inside the netns; the host end has no address, just a /32 route back to the client, and the
/// client's default route goes straight out of its veth, so it reaches the node's addresses.
pub struct Client {
    pub ns: Netns,
    pub host_if: String,
    pub ip: IpAddr,
}

impl Client {
    pub fn new() -> Self {
        let ns = Netns::new();
        let host_if = format!("skc{}", skiff_tests::unique_suffix());
        let r = rand::random::<u16>();
        let ip: IpAddr = format!("172.30.{}.{}", r >> 8, 1 + (r & 0xff) % 254).parse().unwrap();
        let client = Self { ns, host_if, ip };
        sh_ok(
            "ip",
            &["link", "add", &client.host_if, "type", "veth", "peer", "name", "eth0", "netns", &client.ns.name],
        );
        sh_ok("ip", &["link", "set", &client.host_if, "up"]);
        sh_ok("ip", &["route", "add", &format!("{ip}/32"), "dev", &client.host_if]);
        client.ns.exec_ok(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        client.ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        client.ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        client.ns.exec_ok(&["ip", "route", "add", "default", "dev", "eth0"]);
        client
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Deleting the link also removes the route.
        let _ = sh("ip", &["link", "del", &self.host_if]);
    }
}

/// Names of the links attached to `bridge`.
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    std::fs::read_dir(PathBuf::from("/sys/class/net").join(bridge).join("brif"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// The leases recorded by the built-in bridge: pod id → IPs.
pub fn leases(d: &Daemon) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let Ok(text) = std::fs::read_to_string(d.root().join("network/leases.json")) else { return out };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for l in v["leases"].as_array().into_iter().flatten() {
        out.entry(l["pod_id"].as_str().unwrap().to_owned()).or_default().push(l["ip"].as_str().unwrap().to_owned());
    }
    out
}

/// The rules tagged with a pod (`skiff:pod=…`) in the daemon's nftables table.
pub fn nft_pod_rules(d: &Daemon) -> Vec<String> {
    let out = sh("nft", &["-j", "list", "table", "inet", &format!("skiff_{}", d.bridge)]);
    if !out.status.success() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("rule"))
        .filter_map(|r| r.get("comment").and_then(|c| c.as_str()))
        .filter(|c| c.starts_with("skiff:pod="))
        .map(str::to_owned)
        .collect()
}

/// Network namespace pins (nsfs mounts) under the daemon's directory.
pub fn netns_pins(d: &Daemon) -> usize {
    let dir = d.dir().to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - nsfs "))
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|mp| mp.starts_with(&dir) && mp.ends_with("/ns/net"))
        .count()
}

/// The interface names a container sees (from /proc/net/dev, i.e. of its own netns).
pub async fn container_interfaces(d: &Daemon, ctr: &str) -> Vec<String> {
    let out = d.exec(ctr, &["cat", "/proc/net/dev"], 10).await.unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_owned()))
        .collect()
}

/// Host interface names.
pub fn host_interfaces() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Runs a command in a container; (exit code, stdout+stderr).
pub async fn exec(d: &Daemon, ctr: &str, cmd: &[&str]) -> (i32, String) {
    let out = d.exec(ctr, cmd, 20).await.unwrap_or_else(|e| panic!("exec {cmd:?}: {e:?}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text += &String::from_utf8_lossy(&out.stderr);
    (out.exit_code, text)
}

/// Runs a command in a container until it exits 0 (a fresh veth may need a moment).
pub async fn exec_until_ok(d: &Daemon, ctr: &str, cmd: &[&str]) -> String {
    let mut last = (0, String::new());
    for _ in 0..20 {
        last = exec(d, ctr, cmd).await;
        if last.0 == 0 {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{cmd:?} failed: exit {}: {}", last.0, last.1);
}

/// A tiny HTTP server in a netns: answers every request with `peer=<client address>`; stops on
/// drop.
pub struct PeerEcho {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeerEcho {
    pub fn start(netns: &Path, bind: SocketAddr) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (path, s) = (netns.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = std::net::TcpListener::bind(bind).unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, peer)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 1024];
                        let _ = c.read(&mut buf);
                        let body = format!("peer={}\n", peer.ip());
                        let _ = c.write_all(
                            format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv().unwrap();
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Host-port records of the built-in bridge (`root/network/hostports/<pod id>.json`).
pub fn host_port_records(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(d.root().join("network/hostports"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Runs futures concurrently on the test's task (the daemon does the work in parallel).
pub async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut pending: Vec<(usize, std::pin::Pin<Box<F>>)> = futs.into_iter().enumerate().collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => {
                out[*i] = Some(v);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

/// The NetworkReady condition of `Status`.
pub async fn network_ready(d: &Daemon) -> cri::RuntimeCondition {
    let s = d.runtime().status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    s.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap()
}

/// RunPodSandbox, returning the error instead of panicking.
pub async fn try_run_pod(d: &Daemon, config: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    d.runtime()
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

/// RemovePodSandbox may answer before the background deletion of the pod's veth has ended (the
/// pod's address and name stay reserved until then): waits (at most 10 s) until every lease
/// belongs to a pod that still exists. A lease is released only once its veth is gone.
pub async fn settled(d: &Daemon) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let pods = d.pod_ids(None).await;
        let leases = leases(d);
        if leases.keys().all(|id| pods.contains(id)) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "leases of removed pods left: {leases:?}, pods {pods:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
