//! Integration tests of the built-in bridge (run as root). Each test uses its own bridge
//! (`skt<hex>`), pod range (10.89.x.0/24), nftables table (`skiff_t<hex>`) and network namespaces,
//! and removes all of them. Traffic stays inside namespaces the test creates and on the host's
//! test bridge/veth addresses.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use common::*;
use netplugin::bridge::FailPoint;
use netplugin::{BridgeNetwork, NetworkConfig, NetworkPlugin, PodNetworkRequest, PortMapping, Protocol};

struct Env {
    root: tempfile::TempDir,
    cfg: NetworkConfig,
    slot: u32,
    _cleanup: HostCleanup,
}

impl Env {
    fn new(v6: bool) -> Self {
        let slot = (base() + next_slot()) % 128;
        let u = unique();
        let bridge = format!("skt{u}");
        let table = format!("skiff_t{u}");
        let cfg = NetworkConfig {
            bridge: bridge.clone(),
            pod_cidr: format!("10.89.{slot}.0/24"),
            pod_cidr_v6: if v6 { format!("fd00:89:{slot:x}::/64") } else { String::new() },
            // the dual-stack test uses the table name derived from the bridge (skiff_<bridge>)
            nft_table: if v6 { String::new() } else { table },
            mtu: 1400,
            ..Default::default()
        };
        let table = cfg.nft_table_name();
        assert!(table.starts_with("skiff_"), "{table}");
        Self { root: tempfile::tempdir().unwrap(), cfg, slot, _cleanup: HostCleanup { bridge, nft_table: Some(table) } }
    }

    fn net(&self) -> BridgeNetwork {
        BridgeNetwork::new(&self.cfg, self.root.path()).unwrap()
    }

    fn gateway(&self) -> IpAddr {
        format!("10.89.{}.1", self.slot).parse().unwrap()
    }

    fn host_port(&self, i: u16) -> u16 {
        20000 + (self.slot as u16) * 40 + i
    }
}

fn req(id: &str, ns: &Netns, ports: Vec<PortMapping>) -> PodNetworkRequest {
    PodNetworkRequest {
        id: id.to_string(),
        name: format!("name-{id}"),
        namespace: "default".into(),
        uid: format!("uid-{id}"),
        netns_path: ns.path.clone(),
        port_mappings: ports,
        hostname: id.to_string(),
        ..Default::default()
    }
}

fn tcp(container_port: u16, host_port: u16) -> PortMapping {
    PortMapping { protocol: Protocol::Tcp, container_port, host_port, host_ip: None }
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

async fn assert_clean(net: &BridgeNetwork, ids: &[&str]) {
    assert!(bridge_ports(net.bridge()).is_empty(), "veths left: {:?}", bridge_ports(net.bridge()));
    assert!(net.ipam().leases().unwrap().is_empty(), "leases left: {:?}", net.ipam().leases().unwrap());
    for id in ids {
        assert_eq!(net.nft().pod_rule_count(id).await.unwrap(), 0, "rules left for {id}");
        assert!(!link_exists(&net.host_veth_name(id)));
    }
    let rules = sh_ok("nft", &["-j", "list", "chain", "inet", net.nft().table(), "hostports"]);
    assert!(!rules.contains("\"rule\""), "rules left: {rules}");
}

/// A netns with a veth to the host (a stand-in for "another host"): host side `addr.1/30`.
struct Client {
    ns: Netns,
    host_if: String,
    host_ip: IpAddr,
}

impl Client {
    fn new(slot: u32) -> Self {
        let ns = Netns::new();
        let host_if = format!("skc{}", unique());
        let host_ip: IpAddr = format!("172.29.{slot}.1").parse().unwrap();
        sh_ok("ip", &["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name]);
        sh_ok("ip", &["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        sh_ok("ip", &["link", "set", &host_if, "up"]);
        for args in [
            vec!["ip", "addr", "add", &format!("172.29.{slot}.2/30"), "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "route", "add", "default", "via", &format!("172.29.{slot}.1")],
        ] {
            let out = ns.exec(&args.iter().map(|s| s.as_ref()).collect::<Vec<&str>>());
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Self { ns, host_if, host_ip }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = sh("ip", &["link", "del", &self.host_if]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_each_other_and_host_ports_answer() {
    let env = Env::new(false);
    let net = env.net();
    net.status().await.expect("network ready");
    let (a, b) = (Netns::new(), Netns::new());
    let hp = env.host_port(0);
    let sa_ = net.setup(&req("pod-a", &a, vec![])).await.unwrap();
    let sb = net.setup(&req("pod-b", &b, vec![tcp(8080, hp)])).await.unwrap();
    assert_eq!(sa_.interface, "eth0");
    assert_eq!(sa_.ips.len(), 1);
    let (ipa, ipb) = (sa_.ips[0], sb.ips[0]);
    assert_ne!(ipa, ipb);
    for ip in [ipa, ipb] {
        assert!(ip.to_string().starts_with(&format!("10.89.{}.", env.slot)), "{ip}");
        assert_ne!(ip, env.gateway());
    }
    assert_eq!(net.pod_ips("pod-b").await.unwrap(), vec![ipb]);

    // the pod side: eth0 with the address and MTU, default route via the gateway, lo up
    let out = String::from_utf8_lossy(&b.exec(&["ip", "-o", "addr", "show", "dev", "eth0"]).stdout).into_owned();
    assert!(out.contains(&format!("{ipb}/24")), "{out}");
    let out = String::from_utf8_lossy(&b.exec(&["ip", "link", "show", "eth0"]).stdout).into_owned();
    assert!(out.contains("mtu 1400"), "{out}");
    let out = String::from_utf8_lossy(&b.exec(&["ip", "route", "show", "default"]).stdout).into_owned();
    assert!(out.contains(&format!("via {}", env.gateway())), "{out}");
    let out = String::from_utf8_lossy(&b.exec(&["ip", "link", "show", "lo"]).stdout).into_owned();
    assert!(out.contains("UP"), "{out}");

    let _srv = Server::start(&b.path, "0.0.0.0:8080".parse().unwrap(), "hello-b");
    // pod to pod
    let r = tcp_get(Some(&a.path), sa(ipb, 8080)).unwrap();
    assert!(r.contains("hello-b") && r.contains(&ipa.to_string()), "{r}");
    // host port from the node itself: 127.0.0.1 and another local address (the gateway)
    let r = tcp_get(None, sa("127.0.0.1".parse().unwrap(), hp)).unwrap();
    assert!(r.contains("hello-b"), "{r}");
    let r = tcp_get(None, sa(env.gateway(), hp)).unwrap();
    assert!(r.contains("hello-b"), "{r}");
    // from another "host": a netns connected to the node through a veth
    let client = Client::new(env.slot);
    let r = tcp_get(Some(&client.ns.path), sa(client.host_ip, hp)).unwrap();
    assert!(r.contains("hello-b"), "{r}");
    // hairpin: pod b reaches itself through its host port; pod a reaches b through it
    let r = tcp_get(Some(&b.path), sa(env.gateway(), hp)).unwrap();
    assert!(r.contains("hello-b"), "{r}");
    let r = tcp_get(Some(&a.path), sa(client.host_ip, hp)).unwrap();
    assert!(r.contains("hello-b"), "{r}");
    // the rules are tagged with the pod
    assert_eq!(net.nft().pod_rule_count("pod-b").await.unwrap(), 1);

    net.teardown(&req("pod-a", &a, vec![])).await.unwrap();
    net.teardown(&req("pod-b", &b, vec![tcp(8080, hp)])).await.unwrap();
    assert_clean(&net, &["pod-a", "pod-b"]).await;
    // the port no longer answers
    assert!(tcp_get_once(sa("127.0.0.1".parse().unwrap(), hp)).is_err());
    drop(_srv);
    net.remove_host_network().await.unwrap();
    assert!(!link_exists(net.bridge()));
}

fn tcp_get_once(addr: SocketAddr) -> std::io::Result<()> {
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)).map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_and_host_ip_mappings() {
    let env = Env::new(false);
    let net = env.net();
    let a = Netns::new();
    let (hp_udp, hp_ip) = (env.host_port(1), env.host_port(2));
    let ports = vec![
        PortMapping { protocol: Protocol::Udp, container_port: 5353, host_port: hp_udp, host_ip: None },
        PortMapping {
            protocol: Protocol::Tcp,
            container_port: 8080,
            host_port: hp_ip,
            host_ip: Some("127.0.0.1".parse().unwrap()),
        },
        PortMapping { protocol: Protocol::Sctp, container_port: 9999, host_port: env.host_port(3), host_ip: None },
    ];
    let st = net.setup(&req("pod-u", &a, ports.clone())).await.unwrap();
    assert_eq!(net.nft().pod_rule_count("pod-u").await.unwrap(), 3);
    // another pod cannot take the same host port (TCP on all addresses vs. 127.0.0.1 overlaps)
    let other = Netns::new();
    let err = net.setup(&req("pod-x", &other, vec![tcp(80, hp_ip)])).await.unwrap_err();
    assert!(err.to_string().contains("already mapped by pod pod-u"), "{err}");
    assert!(net.pod_ips("pod-x").await.unwrap().is_empty());
    // same port number, other protocol: fine
    net.setup(&req("pod-x", &other, vec![PortMapping { protocol: Protocol::Udp, ..tcp(80, hp_ip) }])).await.unwrap();
    net.teardown(&req("pod-x", &other, vec![])).await.unwrap();
    let _srv = Server::start(&a.path, "0.0.0.0:8080".parse().unwrap(), "hello-ip");
    let r = tcp_get(None, sa("127.0.0.1".parse().unwrap(), hp_ip)).unwrap();
    assert!(r.contains("hello-ip"), "{r}");
    // the hostIP mapping does not answer on other local addresses
    assert!(tcp_get_once(sa(env.gateway(), hp_ip)).is_err());
    // UDP echo through the host port
    let path = a.path.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let echo = std::thread::spawn(move || {
        in_netns(Some(&path), move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:5353").unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            if let Ok((n, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], peer);
            }
        })
    });
    rx.recv().unwrap();
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(3))).unwrap();
    c.send_to(b"ping", ("127.0.0.1", hp_udp)).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = c.recv_from(&mut buf).expect("udp reply through the host port");
    assert_eq!(&buf[..n], b"ping");
    echo.join().unwrap();
    assert!(!st.ips.is_empty());
    net.teardown(&req("pod-u", &a, ports)).await.unwrap();
    assert_clean(&net, &["pod-u"]).await;
    net.remove_host_network().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pods_leave_nothing_behind() {
    let env = Env::new(false);
    let net = env.net();
    let nss: Vec<Netns> = (0..50).map(|_| Netns::new()).collect();
    let ids: Vec<String> = (0..50).map(|i| format!("many-{i}")).collect();
    let reqs: Vec<PodNetworkRequest> = nss
        .iter()
        .enumerate()
        .map(|(i, ns)| req(&ids[i], ns, vec![tcp(80, env.host_port(10 + (i % 20) as u16) + (i as u16 / 20) * 1000)]))
        .collect();
    for chunk in reqs.chunks(10) {
        let res = futures::future::join_all(chunk.iter().map(|r| net.setup(r))).await;
        for r in res {
            r.unwrap();
        }
    }
    let ips: HashSet<IpAddr> = net.ipam().leases().unwrap().into_iter().map(|l| l.ip).collect();
    assert_eq!(ips.len(), 50);
    assert_eq!(bridge_ports(net.bridge()).len(), 50);
    for chunk in reqs.chunks(10) {
        let res = futures::future::join_all(chunk.iter().map(|r| net.teardown(r))).await;
        for r in res {
            r.unwrap();
        }
    }
    let idr: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_clean(&net, &idr).await;
    // and once more: teardown is idempotent
    for r in &reqs[..5] {
        net.teardown(r).await.unwrap();
    }
    net.remove_host_network().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_leases_of_live_pods() {
    let env = Env::new(false);
    let (a, b) = (Netns::new(), Netns::new());
    let hp = env.host_port(4);
    let (ipa, ipb) = {
        let net = env.net();
        let sa_ = net.setup(&req("live", &a, vec![tcp(8080, hp)])).await.unwrap();
        let sb = net.setup(&req("dead", &b, vec![tcp(8080, hp + 1)])).await.unwrap();
        (sa_.ips[0], sb.ips[0])
    }; // "skiffd" goes away without tearing anything down
    let net = env.net(); // a new instance over the same root
    let live: HashSet<String> = ["live".to_string()].into();
    net.recover(&live).await.unwrap();
    assert_eq!(net.pod_ips("live").await.unwrap(), vec![ipa]);
    assert!(net.pod_ips("dead").await.unwrap().is_empty());
    assert!(!link_exists(&net.host_veth_name("dead")), "veth of the dead pod was not removed");
    assert!(link_exists(&net.host_veth_name("live")));
    assert_eq!(net.nft().pod_rule_count("dead").await.unwrap(), 0);
    assert_eq!(net.nft().pod_rule_count("live").await.unwrap(), 1);
    // the live pod still works through its host port
    let _srv = Server::start(&a.path, "0.0.0.0:8080".parse().unwrap(), "still-here");
    let r = tcp_get(None, sa("127.0.0.1".parse().unwrap(), hp)).unwrap();
    assert!(r.contains("still-here"), "{r}");
    // fresh pods get fresh addresses, never the live pod's
    let c = Netns::new();
    let sc = net.setup(&req("new", &c, vec![])).await.unwrap();
    assert_ne!(sc.ips[0], ipa);
    assert_ne!(sc.ips[0], ipb, "a just released address should not be reused at once");
    let r = tcp_get(Some(&c.path), sa(ipa, 8080)).unwrap();
    assert!(r.contains("still-here"), "{r}");
    net.teardown(&req("live", &a, vec![])).await.unwrap();
    net.teardown(&req("new", &c, vec![])).await.unwrap();
    net.teardown(&req("dead", &b, vec![])).await.unwrap();
    assert_clean(&net, &["live", "dead", "new"]).await;
    net.remove_host_network().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_setup_rolls_back_and_teardown_is_tolerant() {
    let env = Env::new(false);
    let net = env.net();
    let ns = Netns::new();
    let ports = vec![tcp(80, env.host_port(5))];
    for fp in [FailPoint::AfterLease, FailPoint::AfterVeth, FailPoint::AfterPodConfig, FailPoint::AfterPortMappings] {
        net.set_fail_point(Some(fp));
        let err = net.setup(&req("fp", &ns, ports.clone())).await.unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert_clean(&net, &["fp"]).await;
        let out = String::from_utf8_lossy(&ns.exec(&["ip", "-o", "link"]).stdout).into_owned();
        assert!(!out.contains("eth0"), "pod end left after {fp:?}: {out}");
        net.teardown(&req("fp", &ns, ports.clone())).await.unwrap();
        net.teardown(&req("fp", &ns, ports.clone())).await.unwrap();
    }
    net.set_fail_point(None);
    // a real setup works afterwards in the same netns
    net.setup(&req("fp", &ns, ports.clone())).await.unwrap();
    // the veth vanished behind our back: teardown still succeeds and releases the lease
    sh_ok("ip", &["link", "del", &net.host_veth_name("fp")]);
    net.teardown(&req("fp", &ns, ports.clone())).await.unwrap();
    assert_clean(&net, &["fp"]).await;
    // the netns is gone before teardown
    {
        let ns2 = Netns::new();
        net.setup(&req("gone", &ns2, vec![])).await.unwrap();
    } // ns2 deleted here; the kernel destroys its veth pair asynchronously
    net.teardown(&req("gone", &ns, vec![])).await.unwrap();
    net.teardown(&req("gone", &ns, vec![])).await.unwrap();
    // never set up at all
    net.teardown(&req("never", &ns, vec![])).await.unwrap();
    assert_clean(&net, &["fp", "gone", "never"]).await;
    // bad input
    assert!(matches!(
        net.setup(&req("bad id/..", &ns, vec![])).await,
        Err(netplugin::NetworkError::InvalidArgument(_))
    ));
    assert!(matches!(
        net.setup(&req("dup", &ns, vec![tcp(80, 30000), tcp(81, 30000)])).await,
        Err(netplugin::NetworkError::InvalidArgument(_))
    ));
    let missing = PodNetworkRequest { netns_path: "/nonexistent/netns".into(), ..req("nons", &ns, vec![]) };
    assert!(net.setup(&missing).await.is_err());
    assert_clean(&net, &["nons"]).await;
    net.remove_host_network().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack() {
    let env = Env::new(true);
    let net = env.net();
    let (a, b) = (Netns::new(), Netns::new());
    let sa_ = net.setup(&req("v6a", &a, vec![])).await.unwrap();
    let sb = net.setup(&req("v6b", &b, vec![tcp(8080, env.host_port(6))])).await.unwrap();
    assert_eq!(sa_.ips.len(), 2);
    assert!(sa_.ips[0].is_ipv4() && sa_.ips[1].is_ipv6(), "{:?}", sa_.ips);
    let _srv = Server::start(&b.path, "[::]:8080".parse().unwrap(), "hello-v6");
    let r = tcp_get(Some(&a.path), sa(sb.ips[1], 8080)).unwrap();
    assert!(r.contains("hello-v6"), "{r}");
    let r = tcp_get(Some(&a.path), sa(sb.ips[0], 8080)).unwrap();
    assert!(r.contains("hello-v6"), "{r}");
    let out = String::from_utf8_lossy(&b.exec(&["ip", "-6", "route", "show", "default"]).stdout).into_owned();
    // as ip prints it: slot 0 is "fd00:89::1"
    let gw: std::net::Ipv6Addr = format!("fd00:89:{:x}::1", env.slot).parse().unwrap();
    assert!(out.contains(&format!("via {gw} ")), "{out}");
    assert_eq!(net.nft().pod_rule_count("v6b").await.unwrap(), 2);
    net.teardown(&req("v6a", &a, vec![])).await.unwrap();
    net.teardown(&req("v6b", &b, vec![])).await.unwrap();
    assert_clean(&net, &["v6a", "v6b"]).await;
    net.remove_host_network().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_config_errors() {
    let env = Env::new(false);
    // a link with the bridge's name that is not a bridge: NotReady with the reason
    let peer = format!("{}p", env.cfg.bridge);
    sh_ok("ip", &["link", "add", &env.cfg.bridge, "type", "veth", "peer", "name", &peer]);
    let net = env.net();
    let nr = net.status().await.unwrap_err();
    assert_eq!(nr.reason, "BridgeSetupFailed");
    assert!(nr.message.contains("not a bridge"), "{nr}");
    sh_ok("ip", &["link", "del", &env.cfg.bridge]);
    net.status().await.unwrap();
    assert!(link_exists(&env.cfg.bridge));
    // the bridge is recreated when it disappears
    sh_ok("ip", &["link", "del", &env.cfg.bridge]);
    net.status().await.unwrap();
    assert!(link_exists(&env.cfg.bridge));
    net.remove_host_network().await.unwrap();

    let bad = |f: &dyn Fn(&mut NetworkConfig)| {
        let mut c = env.cfg.clone();
        f(&mut c);
        BridgeNetwork::new(&c, Path::new("/nonexistent")).err().map(|e| e.to_string())
    };
    assert!(bad(&|c| c.pod_cidr = "10.89.0.0".into()).unwrap().contains("pod_cidr"));
    assert!(bad(&|c| c.pod_cidr = "fd00::/64".into()).is_some());
    assert!(bad(&|c| c.pod_cidr_v6 = "10.0.0.0/8".into()).is_some());
    assert!(bad(&|c| c.bridge = "way-too-long-bridge-name".into()).is_some());
    assert!(bad(&|c| c.nft_table = "filter".into()).unwrap().contains("nft_table"));
    assert!(bad(&|c| c.mtu = 100).is_some());
}

/// `pod_cidr = ""`: not ready until the kubelet's ranges arrive (dual stack here), then pods
/// get addresses from them; a change is refused while a pod holds an address; the fallback
/// range confirmed by the kubelet is kept without touching the host; after teardown a new
/// range moves the bridge's gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_ranges_from_the_kubelet() {
    let mut env = Env::new(false);
    env.cfg.pod_cidr = String::new();
    env.cfg.pod_cidr_fallback_secs = 0;
    let net = env.net();
    let nr = net.status().await.unwrap_err();
    assert_eq!(nr.reason, "NoPodCIDR", "{nr}");
    let slot = env.slot;
    let kubelet = format!("10.89.{slot}.0/24,fd00:89:{slot:x}::/64");
    assert!(net.set_pod_cidrs(&kubelet).await.unwrap());
    assert!(!net.set_pod_cidrs(&kubelet).await.unwrap(), "the same ranges again are a no-op");
    net.status().await.unwrap();
    let addrs = sh_ok("ip", &["-o", "addr", "show", "dev", &env.cfg.bridge]);
    assert!(
        addrs.contains(&format!("10.89.{slot}.1/24")) && addrs.contains(&format!("fd00:89:{slot:x}::1/64")),
        "{addrs}"
    );

    let ns = Netns::new();
    let r = req("kube1", &ns, vec![]);
    let st = net.setup(&r).await.unwrap();
    assert_eq!(st.ips.len(), 2, "{:?}", st.ips);
    assert!(st.ips[0].to_string().starts_with(&format!("10.89.{slot}.")), "{:?}", st.ips);
    // 10.91.x.0/24: a range no other test uses, in the same slot.
    let other = format!("10.91.{slot}.0/24");
    let e = net.set_pod_cidrs(&other).await.unwrap_err();
    assert!(e.to_string().contains("kube1"), "{e}");
    assert!(matches!(e, netplugin::NetworkError::RangeInUse(_)), "{e:?}");
    net.teardown(&r).await.unwrap();

    assert!(net.set_pod_cidrs(&other).await.unwrap());
    let addrs = sh_ok("ip", &["-o", "addr", "show", "dev", &env.cfg.bridge]);
    assert!(addrs.contains(&format!("10.91.{slot}.1/24")), "{addrs}");
    assert!(!addrs.contains(&format!("10.89.{slot}.1/24")), "{addrs}");
    assert!(net.pod_cidrs().unwrap().0 == other && net.pod_cidrs().unwrap().1 == "kubelet");
    // A new instance on the same root has the range at once.
    drop(net);
    let again = env.net();
    assert_eq!(again.pod_cidrs().unwrap().0, other);
    again.remove_host_network().await.unwrap();
}
