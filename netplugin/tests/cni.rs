//! CNI integration tests with Debian's containernetworking-plugins (/usr/lib/cni): bridge +
//! host-local + portmap, CNI 1.0.0 and 0.4.0. Each test writes its conflist into a temp dir, uses
//! its own bridge (`skb<hex>`), subnet (10.89.128+x.0/24) and host-local data dir, and removes the
//! bridge at the end. portmap's shared top-level chains CNI-HOSTPORT-* in `ip nat` go with the
//! last CNI test when the nat tables did not exist before ([`NatTables`]); the per-pod chains and
//! rules are checked to be gone.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use netplugin::{CniNetwork, NetworkConfig, NetworkPlugin, PluginKind, PodNetworkRequest, PortMapping, Protocol};

struct Env {
    // field order = drop order: pods are torn down before the bridge goes and the dirs are removed
    pods: PodsGuard,
    _cleanup: HostCleanup,
    cfg: NetworkConfig,
    bridge: String,
    slot: u32,
    dir: tempfile::TempDir,
    /// Last: portmap's shared nat chains go with the last CNI test of this binary.
    _nat: NatTables,
}

/// Tears down (CNI DEL) every pod registered with it when dropped, also when a test panics, so
/// that no plugin state (portmap rules, host-local leases) is left behind.
struct PodsGuard {
    cfg: NetworkConfig,
    root: PathBuf,
    reqs: std::sync::Mutex<Vec<PodNetworkRequest>>,
}

impl PodsGuard {
    fn add(&self, r: &PodNetworkRequest) {
        self.reqs.lock().unwrap().push(r.clone());
    }
}

impl Drop for PodsGuard {
    fn drop(&mut self) {
        let reqs = std::mem::take(&mut *self.reqs.lock().unwrap());
        let (cfg, root) = (self.cfg.clone(), self.root.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let net = CniNetwork::new(&cfg, &root).unwrap();
                for r in reqs {
                    let _ = net.teardown(&r).await;
                }
            })
        })
        .join();
    }
}

impl Env {
    fn new(version: &str, extra_plugin: Option<&str>) -> Self {
        let slot = 128 + (base() + next_slot()) % 128;
        let dir = tempfile::tempdir().unwrap();
        let bridge = format!("skb{}", unique());
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir_all(&conf_dir).unwrap();
        let mut plugins = vec![
            serde_json::json!({
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": format!("10.89.{slot}.0/24")}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.path().join("ipam"),
                }
            }),
            serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
        ];
        if let Some(p) = extra_plugin {
            plugins.push(serde_json::json!({"type": p}));
        }
        let conflist = serde_json::json!({"cniVersion": version, "name": format!("skt-{slot}"), "plugins": plugins});
        std::fs::write(conf_dir.join("10-test.conflist"), serde_json::to_vec_pretty(&conflist).unwrap()).unwrap();
        // a later file (lexical order) that must be ignored
        std::fs::write(conf_dir.join("99-ignored.conflist"), "{ not json").unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        write_script(&bin.join("skiff-fail"), FAIL_PLUGIN);
        write_script(&bin.join("skiff-slow"), SLOW_PLUGIN);
        let cfg = NetworkConfig {
            plugin: PluginKind::Cni,
            cni_conf_dir: conf_dir,
            cni_bin_dirs: vec![bin, PathBuf::from("/usr/lib/cni")],
            cni_timeout_secs: 2,
            ..Default::default()
        };
        let pods = PodsGuard { cfg: cfg.clone(), root: dir.path().join("root"), reqs: Default::default() };
        Self {
            pods,
            _cleanup: HostCleanup { bridge: bridge.clone(), nft_table: None },
            cfg,
            bridge,
            slot,
            dir,
            _nat: NatTables::hold(),
        }
    }

    fn net(&self) -> CniNetwork {
        CniNetwork::new(&self.cfg, &self.dir.path().join("root")).unwrap()
    }

    /// A request registered for cleanup.
    fn req(&self, id: &str, ns: &Netns, ports: Vec<PortMapping>) -> PodNetworkRequest {
        let r = req(id, ns, ports);
        self.pods.add(&r);
        r
    }

    fn host_port(&self, i: u16) -> u16 {
        31000 + ((self.slot - 128) as u16) * 20 + i
    }

    fn ipam_files(&self) -> Vec<String> {
        let d = self.dir.path().join("ipam").join(format!("skt-{}", self.slot));
        std::fs::read_dir(d)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn cache_files(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("root/network/cni"))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }
}

const FAIL_PLUGIN: &str = r#"#!/bin/sh
cat >/dev/null
case "$CNI_COMMAND" in
  ADD) echo '{"cniVersion":"1.0.0","code":100,"msg":"injected failure","details":"from skiff-fail"}'; exit 1;;
  VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}';;
esac
exit 0
"#;

const SLOW_PLUGIN: &str = r#"#!/bin/sh
cat >/dev/null
case "$CNI_COMMAND" in
  ADD) exec sleep 30;;
esac
exit 0
"#;

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn req(id: &str, ns: &Netns, ports: Vec<PortMapping>) -> PodNetworkRequest {
    PodNetworkRequest {
        id: id.to_string(),
        name: format!("name-{id}"),
        namespace: "default".into(),
        uid: format!("uid-{id}"),
        netns_path: ns.path.clone(),
        port_mappings: ports,
        ..Default::default()
    }
}

fn nat_rules_mentioning(id: &str) -> Vec<String> {
    let out = sh("iptables-save", &["-t", "nat"]);
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(id)).map(String::from).collect()
}

async fn run_two_pods(version: &str) {
    let env = Env::new(version, None);
    let net = env.net();
    net.status().await.expect("CNI ready");
    let (a, b) = (Netns::new(), Netns::new());
    let hp = env.host_port(0);
    let ida = format!("cnia{}", unique());
    let idb = format!("cnib{}", unique());
    let pm = vec![PortMapping { protocol: Protocol::Tcp, container_port: 8080, host_port: hp, host_ip: None }];
    let sa = net.setup(&env.req(&ida, &a, vec![])).await.unwrap();
    let sb = net.setup(&env.req(&idb, &b, pm.clone())).await.unwrap();
    assert_eq!(sa.interface, "eth0");
    let (ipa, ipb) = (sa.ips[0], sb.ips[0]);
    for ip in [ipa, ipb] {
        assert!(ip.to_string().starts_with(&format!("10.89.{}.", env.slot)), "{ip}");
    }
    assert_eq!(net.pod_ips(&idb).await.unwrap(), vec![ipb]);
    assert_eq!(env.ipam_files().len(), 2);
    // CHECK of the pod without host ports (portmap 1.1.1's CHECK with an IPv4-only pod that has
    // host ports fails looking for IPv6 rules: containernetworking/plugins#819).
    net.check(&req(&ida, &a, vec![])).await.expect("CNI CHECK");
    let _srv = Server::start(&b.path, "0.0.0.0:8080".parse().unwrap(), "cni-b");
    let r = tcp_get(Some(&a.path), SocketAddr::new(ipb, 8080)).unwrap();
    assert!(r.contains("cni-b"), "{r}");
    let r = tcp_get(None, SocketAddr::new("127.0.0.1".parse().unwrap(), hp)).unwrap();
    assert!(r.contains("cni-b"), "{r}");
    assert!(!nat_rules_mentioning(&idb).is_empty(), "portmap rules expected");

    net.teardown(&req(&ida, &a, vec![])).await.unwrap();
    net.teardown(&req(&idb, &b, pm.clone())).await.unwrap();
    net.teardown(&req(&idb, &b, pm)).await.unwrap(); // idempotent
    assert!(bridge_ports(&env.bridge).is_empty(), "{:?}", bridge_ports(&env.bridge));
    assert!(env.ipam_files().is_empty(), "{:?}", env.ipam_files());
    assert!(env.cache_files().is_empty(), "{:?}", env.cache_files());
    assert!(nat_rules_mentioning(&idb).is_empty(), "{:?}", nat_rules_mentioning(&idb));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_1_0_0_bridge_hostlocal_portmap() {
    run_two_pods("1.0.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_0_4_0_bridge_hostlocal_portmap() {
    run_two_pods("0.4.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_restart_recover_releases_dead_pods() {
    let env = Env::new("1.0.0", None);
    let (a, b) = (Netns::new(), Netns::new());
    let (ida, idb) = (format!("live{}", unique()), format!("dead{}", unique()));
    let ipa = {
        let net = env.net();
        let ip = net.setup(&env.req(&ida, &a, vec![])).await.unwrap().ips[0];
        net.setup(&env.req(&idb, &b, vec![])).await.unwrap();
        ip
    };
    let net = env.net();
    net.recover(&HashSet::from([ida.clone()])).await.unwrap();
    assert_eq!(net.pod_ips(&ida).await.unwrap(), vec![ipa]);
    assert!(net.pod_ips(&idb).await.unwrap().is_empty());
    assert_eq!(env.ipam_files().len(), 1);
    let out = String::from_utf8_lossy(&b.exec(&["ip", "-o", "link"]).stdout).into_owned();
    assert!(!out.contains("eth0"), "dead pod still wired: {out}");
    let c = Netns::new();
    let idc = format!("new{}", unique());
    let ipc = net.setup(&env.req(&idc, &c, vec![])).await.unwrap().ips[0];
    assert_ne!(ipc, ipa);
    let _srv = Server::start(&a.path, "0.0.0.0:8080".parse().unwrap(), "live-a");
    let r = tcp_get(Some(&c.path), SocketAddr::new(ipa, 8080)).unwrap();
    assert!(r.contains("live-a"), "{r}");
    net.teardown(&req(&ida, &a, vec![])).await.unwrap();
    net.teardown(&req(&idc, &c, vec![])).await.unwrap();
    net.teardown(&req(&idb, &b, vec![])).await.unwrap();
    assert!(bridge_ports(&env.bridge).is_empty());
    assert!(env.ipam_files().is_empty());
    assert!(env.cache_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_failed_add_is_rolled_back() {
    for (plugin, expect) in [("skiff-fail", "injected failure"), ("skiff-slow", "timed out")] {
        let env = Env::new("1.0.0", Some(plugin));
        let net = env.net();
        let a = Netns::new();
        let id = format!("fail{}", unique());
        let err = net.setup(&env.req(&id, &a, vec![])).await.unwrap_err();
        assert!(err.to_string().contains(expect), "{err}");
        assert!(bridge_ports(&env.bridge).is_empty(), "{:?}", bridge_ports(&env.bridge));
        assert!(env.ipam_files().is_empty(), "{:?}", env.ipam_files());
        assert!(env.cache_files().is_empty(), "{:?}", env.cache_files());
        net.teardown(&req(&id, &a, vec![])).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_missing_or_invalid_config_is_not_ready() {
    let env = Env::new("1.0.0", None);
    let mut cfg = env.cfg.clone();
    cfg.cni_conf_dir = env.dir.path().join("nonexistent");
    let net = CniNetwork::new(&cfg, env.dir.path()).unwrap();
    let nr = net.status().await.unwrap_err();
    assert_eq!(nr.reason, "NoCniConfig");
    assert!(nr.message.contains("nonexistent"), "{nr}");
    let ns = Netns::new();
    let err = net.setup(&env.req("nocfg", &ns, vec![])).await.unwrap_err();
    assert!(matches!(err, netplugin::NetworkError::NotReady(_)), "{err}");
    // teardown of a pod never set up, without any config: fine
    net.teardown(&req("nocfg", &ns, vec![])).await.unwrap();

    std::fs::write(env.cfg.cni_conf_dir.join("00-broken.conflist"), r#"{"cniVersion":"1.0.0","plugins":[]}"#).unwrap();
    let net = env.net();
    let nr = net.status().await.unwrap_err();
    assert_eq!(nr.reason, "InvalidCniConfig");
    assert!(nr.message.contains("00-broken.conflist"), "{nr}");
    // a fixed config is picked up without a restart
    std::fs::remove_file(env.cfg.cni_conf_dir.join("00-broken.conflist")).unwrap();
    net.status().await.unwrap();
}
