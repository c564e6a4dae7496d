//! Pod networking through the real daemon with `[network] plugin = "cni"` and Debian's
//! containernetworking-plugins (/usr/lib/cni: bridge + host-local + portmap): the same
//! end-to-end scenario as network.rs (pod to pod, nginx page, host port from 127.0.0.1 and from
//! another netns, SIGKILL + restart keeps addresses, nothing left behind), and NetworkReady
//! false with a reason while the config dir is empty or invalid.
//!
//! Each test writes its conflist into a temp dir, with its own bridge (`skn<hex>`), subnet
//! (10.216.x.0/24) and host-local `dataDir`; [`CniEnv`] removes the bridge and any iptables rule
//! and per-pod chain of its network (should a test fail before DEL ran). portmap's shared
//! chains `CNI-HOSTPORT-*` go with the last CNI test when the nat tables did not exist before
//! ([`skiff_tests::NatTables`]).

mod net_support;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use net_support::*;
use skiff_tests::pods::{container_config, pod_config, BUSYBOX, NGINX};
use skiff_tests::{cri, Daemon};

/// A CNI network of one test: config dir, host-local data dir, bridge, iptables cleanup.
struct CniEnv {
    dir: tempfile::TempDir,
    name: String,
    bridge: String,
    prefix: String,
    /// Dropped last: portmap's shared nat chains go with the last CNI test.
    _nat: skiff_tests::NatTables,
}

impl CniEnv {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("skiff-cni-").tempdir_in("/tmp").unwrap();
        let u = skiff_tests::unique_suffix();
        let x = rand::random::<u8>();
        let env = Self {
            name: format!("sktcni-{u}"),
            bridge: format!("skn{u}"),
            prefix: format!("10.216.{x}."),
            dir,
            _nat: skiff_tests::NatTables::hold(),
        };
        std::fs::create_dir_all(env.conf_dir()).unwrap();
        env
    }

    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn gateway(&self) -> IpAddr {
        format!("{}1", self.prefix).parse().unwrap()
    }

    fn write_conflist(&self) {
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": format!("{}0/24", self.prefix) }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": self.ipam_dir(),
                    }
                },
                { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
            ]
        });
        let tmp = self.conf_dir().join(".10-skiff.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&conflist).unwrap()).unwrap();
        std::fs::rename(&tmp, self.conf_dir().join("10-skiff.conflist")).unwrap();
    }

    /// `[network]` for skiffd.
    fn daemon_config(&self) -> String {
        format!(
            "[network]\nplugin = \"cni\"\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"/usr/lib/cni\"]\ncni_timeout_secs = 20\n",
            self.conf_dir().display()
        )
    }

    /// Addresses host-local holds (files named after IPs).
    fn ipam_leases(&self) -> Vec<String> {
        std::fs::read_dir(self.ipam_dir().join(&self.name))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// iptables rules (nat and filter) that mention this network.
    fn iptables_rules(&self) -> Vec<String> {
        ["nat", "filter"]
            .iter()
            .flat_map(|t| {
                let out = sh("iptables-save", &["-t", t]);
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.contains(&self.name))
                    .map(|l| format!("{t}: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Deletes this network's iptables rules and the per-pod chains they jump to.
    fn remove_iptables_leftovers(&self) {
        for table in ["nat", "filter"] {
            let out = sh("iptables-save", &["-t", table]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mine: Vec<&str> = text.lines().filter(|l| l.starts_with("-A ") && l.contains(&self.name)).collect();
            let chains: HashSet<&str> = mine
                .iter()
                .filter_map(|l| l.split(" -j ").nth(1)?.split_whitespace().next())
                .filter(|c| c.starts_with("CNI-") && !c.starts_with("CNI-HOSTPORT-"))
                .collect();
            let mut deletes = format!("*{table}\n");
            for l in &mine {
                let chain = l.split_whitespace().nth(1).unwrap_or_default();
                if !chains.contains(chain) {
                    deletes += &format!("-D {}\n", &l[3..]);
                }
            }
            deletes += "COMMIT\n";
            restore(&deletes);
            let mut drop_chains = format!("*{table}\n");
            for c in &chains {
                drop_chains += &format!(":{c} - [0:0]\n");
            }
            for c in &chains {
                drop_chains += &format!("-X {c}\n");
            }
            drop_chains += "COMMIT\n";
            restore(&drop_chains);
        }
    }
}

fn restore(input: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let _ = child.wait();
}

impl Drop for CniEnv {
    fn drop(&mut self) {
        self.remove_iptables_leftovers();
        for p in bridge_ports(&self.bridge) {
            let _ = sh("ip", &["link", "del", &p]);
        }
        let _ = sh("ip", &["link", "del", &self.bridge]);
    }
}

fn cni_cache_files(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(d.root().join("network/cni"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn sa(ip: impl AsRef<str>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.as_ref().parse::<IpAddr>().unwrap(), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_pods_reach_each_other_host_ports_and_restart() {
    // Dropped after the daemon (reverse order of declaration).
    let env = CniEnv::new();
    env.write_conflist();
    let mut d = Daemon::start_with_config(&env.daemon_config()).await;
    let ready = network_ready(&d).await;
    assert!(ready.status, "{ready:?}");
    d.pull(BUSYBOX).await;
    d.pull(NGINX).await;
    let hp = random_host_port();

    let pa = pod_config(&d, "a");
    let a = d.run_pod(&pa).await;
    let pb = pod_with_ports(&d, "b", &[(80, hp as i32)]);
    let b = d.run_pod(&pb).await;
    let (ip_a, ip_b) = (d.pod_ip(&a).await, d.pod_ip(&b).await);
    for ip in [&ip_a, &ip_b] {
        assert!(ip.starts_with(&env.prefix), "{ip} not in {}0/24", env.prefix);
    }
    assert_ne!(ip_a, ip_b);
    assert_eq!(bridge_ports(&env.bridge).len(), 2);
    let mut held = env.ipam_leases();
    held.sort();
    let mut want = vec![ip_a.clone(), ip_b.clone()];
    want.sort();
    assert_eq!(held, want);
    assert!(!env.iptables_rules().is_empty(), "portmap rules expected");
    assert_eq!(cni_cache_files(&d).len(), 2, "{:?}", cni_cache_files(&d));

    let ca = d.create_and_start(&a, &pa, container_config("sh", &["sleep", "1000"])).await;
    let cb = d.create_and_start(&b, &pb, nginx_config("nginx")).await;
    exec_until_ok(&d, &ca, &["ping", "-c1", "-W2", &ip_b]).await;
    let page = exec_until_ok(&d, &ca, &["timeout", "5", "wget", "-q", "-O-", &format!("http://{ip_b}/")]).await;
    assert!(page.contains(WELCOME), "{page}");
    let r = http_get(None, sa("127.0.0.1", hp)).await.unwrap();
    assert!(r.contains(WELCOME), "{r}");
    {
        let client = Client::new();
        let r = http_get(Some(&client.ns.path), SocketAddr::new(env.gateway(), hp)).await.unwrap();
        assert!(r.contains(WELCOME), "{r}");
    }
    // Through the host port from the other pod and from the pod itself (hairpin).
    let url = format!("http://{}:{hp}/", env.gateway());
    for ctr in [&ca, &cb] {
        let page = exec_until_ok(&d, ctr, &["timeout", "5", "wget", "-q", "-O-", &url]).await;
        assert!(page.contains(WELCOME), "{page}");
    }

    // SIGKILL and restart: the running pods keep their addresses and stay reachable.
    d.kill();
    d.start_again().await;
    assert_eq!(d.pod_ip(&a).await, ip_a);
    assert_eq!(d.pod_ip(&b).await, ip_b);
    assert_eq!(env.ipam_leases().len(), 2);
    let page = exec_until_ok(&d, &ca, &["timeout", "5", "wget", "-q", "-O-", &format!("http://{ip_b}/")]).await;
    assert!(page.contains(WELCOME), "{page}");
    let r = http_get(None, sa("127.0.0.1", hp)).await.unwrap();
    assert!(r.contains(WELCOME), "{r}");
    // A new pod gets a fresh address.
    let pc = pod_config(&d, "c");
    let c = d.run_pod(&pc).await;
    let ip_c = d.pod_ip(&c).await;
    assert!(ip_c.starts_with(&env.prefix) && ip_c != ip_a && ip_c != ip_b, "{ip_c}");
    let cc = d.create_and_start(&c, &pc, container_config("sh", &["sleep", "1000"])).await;
    exec_until_ok(&d, &cc, &["ping", "-c1", "-W2", &ip_a]).await;

    // Stop runs DEL (the host port goes); remove leaves nothing.
    d.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: b.clone() }).await.unwrap();
    assert!(env.iptables_rules().is_empty(), "{:?}", env.iptables_rules());
    assert!(!env.ipam_leases().contains(&ip_b));
    for p in [&a, &b, &c] {
        d.remove_pod(p).await;
    }
    assert!(bridge_ports(&env.bridge).is_empty(), "{:?}", bridge_ports(&env.bridge));
    assert!(env.ipam_leases().is_empty(), "{:?}", env.ipam_leases());
    assert!(env.iptables_rules().is_empty(), "{:?}", env.iptables_rules());
    assert!(cni_cache_files(&d).is_empty(), "{:?}", cni_cache_files(&d));
    assert_eq!(netns_pins(&d), 0);
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_network_not_ready_without_config() {
    let env = CniEnv::new();
    let d = Daemon::start_with_config(&env.daemon_config()).await;
    // Empty config dir: not ready, with the reason and the directory.
    let nr = network_ready(&d).await;
    assert!(!nr.status);
    assert_eq!(nr.reason, "NoCniConfig", "{nr:?}");
    assert!(nr.message.contains(env.conf_dir().to_str().unwrap()), "{nr:?}");
    // A pod cannot get a network: a clear error, and nothing is left.
    let err = try_run_pod(&d, pod_config(&d, "x")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("NoCniConfig") || err.message().contains("no network config"), "{err:?}");
    assert_eq!(std::fs::read_dir(d.state().join("pods")).map(|r| r.count()).unwrap_or(0), 0);
    assert_eq!(netns_pins(&d), 0);

    // An invalid file: not ready, naming the file.
    let bad = env.conf_dir().join("10-bad.conflist");
    std::fs::write(&bad, "{ not json").unwrap();
    let nr = network_ready(&d).await;
    assert!(!nr.status);
    assert_eq!(nr.reason, "InvalidCniConfig", "{nr:?}");
    assert!(nr.message.contains(bad.to_str().unwrap()), "{nr:?}");

    // A valid config written while skiffd runs is picked up.
    std::fs::remove_file(&bad).unwrap();
    env.write_conflist();
    let nr = network_ready(&d).await;
    assert!(nr.status, "{nr:?}");
    let pc = pod_config(&d, "x");
    let pod = d.run_pod(&pc).await;
    assert!(d.pod_ip(&pod).await.starts_with(&env.prefix));
    d.remove_pod(&pod).await;
    assert!(env.ipam_leases().is_empty());
}

/// A reboot loses the state dir and the cgroups (the pods' netns with them), but host-local's
/// data dir and portmap's rules are persistent: the next start runs DEL for the lost pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_lost_state_dir_releases_addresses_and_rules() {
    let env = CniEnv::new();
    env.write_conflist();
    let mut d = Daemon::start_with_config(&env.daemon_config()).await;
    let hp = random_host_port();
    let pa = pod_with_ports(&d, "a", &[(80, hp as i32)]);
    let a = d.run_pod(&pa).await;
    assert_eq!(env.ipam_leases().len(), 1);
    assert!(!env.iptables_rules().is_empty());
    d.kill();
    d.simulate_reboot();
    d.start_again().await;
    let state = d.pod_status(&a).await.state;
    assert_eq!(state, cri::PodSandboxState::SandboxNotready as i32);
    assert!(env.ipam_leases().is_empty(), "{:?}", env.ipam_leases());
    assert!(env.iptables_rules().is_empty(), "{:?}", env.iptables_rules());
    assert!(cni_cache_files(&d).is_empty(), "{:?}", cni_cache_files(&d));
    d.remove_pod(&a).await;
}

/// Pods set up and torn down in parallel (the kubelet starts many at once): every one gets its
/// own address and host port, and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_parallel_pods_leave_nothing_behind() {
    let env = CniEnv::new();
    env.write_conflist();
    let d = Daemon::start_with_config(&env.daemon_config()).await;
    const N: usize = 20;
    let base_port = 48000 + (rand::random::<u16>() % 8000);
    let mut pods = Vec::new();
    for batch in 0..N / 10 {
        let runs = (0..10).map(|i| {
            let n = batch * 10 + i;
            let pc = pod_with_ports(&d, &format!("p{n}"), &[(80, (base_port + n as u16) as i32)]);
            let d = &d;
            async move { d.run_pod(&pc).await }
        });
        pods.extend(join_all(runs).await);
    }
    let mut ips = HashSet::new();
    for p in &pods {
        assert!(ips.insert(d.pod_ip(p).await));
    }
    assert_eq!(env.ipam_leases().len(), N);
    assert_eq!(bridge_ports(&env.bridge).len(), N);
    for chunk in pods.chunks(10) {
        join_all(chunk.iter().map(|p| d.remove_pod(p))).await;
    }
    assert!(env.ipam_leases().is_empty(), "{:?}", env.ipam_leases());
    assert!(bridge_ports(&env.bridge).is_empty());
    assert!(env.iptables_rules().is_empty(), "{:?}", env.iptables_rules());
    assert!(cni_cache_files(&d).is_empty());
    assert_eq!(netns_pins(&d), 0);
}
