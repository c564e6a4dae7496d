//! Pod networking through the real daemon with the built-in bridge: pods reach each other and
//! the nginx test image's page by IP, PodSandboxStatus reports the IP, host ports answer from
//! 127.0.0.1 and from another network namespace, hostNetwork pods see the node's interfaces,
//! 50 pods leave nothing behind, and a skiffd killed with SIGKILL keeps the addresses of
//! running pods. Traffic stays on loopback, the daemon's test bridge and namespaces the tests make.

mod net_support;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use net_support::*;
use skiff_tests::pods::{container_config, pod_config, pod_namespaces, BUSYBOX, NGINX};
use skiff_tests::{cri, Daemon};

fn sa(ip: impl AsRef<str>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.as_ref().parse::<IpAddr>().unwrap(), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_each_other_and_host_ports_answer() {
    let d = Daemon::start().await;
    let mut rt = d.runtime();
    let net = network_ready(&d).await;
    assert!(net.status, "{net:?}");
    d.pull(BUSYBOX).await;
    d.pull(NGINX).await;
    let (prefix, gateway) = pod_range(&d);
    let hp = random_host_port();

    let pa = pod_config(&d, "client");
    let a = d.run_pod(&pa).await;
    let pb = pod_with_ports(&d, "web", &[(80, hp as i32)]);
    let b = d.run_pod(&pb).await;
    let (state, ip_a, extra) = pod_state_and_ips(&d, &a).await;
    assert_eq!(state, cri::PodSandboxState::SandboxReady as i32);
    assert!(ip_a.starts_with(&prefix), "{ip_a} not in {prefix}0/24");
    assert!(extra.is_empty(), "{extra:?}");
    let ip_b = d.pod_ip(&b).await;
    assert!(ip_b.starts_with(&prefix) && ip_b != ip_a, "{ip_b}");
    assert_eq!(bridge_ports(&d.bridge).len(), 2);
    assert_eq!(leases(&d).len(), 2);
    assert_eq!(nft_pod_rules(&d), vec![format!("skiff:pod={b}")]);

    let ca = d.create_and_start(&a, &pa, container_config("sh", &["sleep", "1000"])).await;
    let cb = d.create_and_start(&b, &pb, nginx_config("nginx")).await;

    // Inside the pod: eth0 with the reported address, default route via the gateway, and the
    // pod's /etc/hosts names it.
    let (_, addr) = exec(&d, &ca, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).await;
    assert!(addr.contains(&format!("inet {ip_a}/24")), "{addr}");
    let (_, route) = exec(&d, &ca, &["ip", "route"]).await;
    assert!(route.contains(&format!("default via {gateway}")), "{route}");
    let (_, hosts) = exec(&d, &ca, &["cat", "/etc/hosts"]).await;
    assert!(hosts.lines().any(|l| l.starts_with(&ip_a) && l.contains("client")), "{hosts}");

    // Pod to pod: ping (CAP_NET_RAW is in the default set) and the nginx page. (Debian's
    // busybox 1.35 wget segfaults with -T: `timeout` limits it instead.)
    exec_until_ok(&d, &ca, &["ping", "-c1", "-W2", &ip_b]).await;
    let page = exec_until_ok(&d, &ca, &["timeout", "5", "wget", "-q", "-O-", &format!("http://{ip_b}/")]).await;
    assert!(page.contains(WELCOME), "{page}");

    // The host port from the node itself: 127.0.0.1 and the gateway address.
    let r = http_get(None, sa("127.0.0.1", hp)).await.unwrap();
    assert!(r.contains(WELCOME), "{r}");
    let r = http_get(None, SocketAddr::new(gateway, hp)).await.unwrap();
    assert!(r.contains(WELCOME), "{r}");
    // From another network namespace ("another host" behind a veth), to a node address.
    let client = Client::new();
    let r = http_get(Some(&client.ns.path), SocketAddr::new(gateway, hp)).await.unwrap();
    assert!(r.contains(WELCOME), "{r}");
    // From a pod through the host port (through the node), and the pod itself (hairpin).
    let page = exec_until_ok(&d, &ca, &["timeout", "5", "wget", "-q", "-O-", &format!("http://{gateway}:{hp}/")]).await;
    assert!(page.contains(WELCOME), "{page}");
    let page = exec_until_ok(&d, &cb, &["timeout", "5", "wget", "-q", "-O-", &format!("http://{gateway}:{hp}/")]).await;
    assert!(page.contains(WELCOME), "{page}");
    drop(client);

    // Stop releases the network (the IP stays in the status, as with containerd); remove
    // leaves nothing.
    // The port mappings go before the answer; the veth and then the lease just after it (in
    // the background: the veth's deletion waits for an RCU grace period).
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: b.clone() }).await.unwrap();
    assert!(nft_pod_rules(&d).is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while bridge_ports(&d.bridge).len() != 1 || leases(&d).contains_key(&b) {
        assert!(std::time::Instant::now() < deadline, "{:?} {:?}", bridge_ports(&d.bridge), leases(&d));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(http_once(sa("127.0.0.1", hp)).map(|r| !r.contains(WELCOME)).unwrap_or(true));
    d.remove_pod(&b).await;
    d.remove_pod(&a).await;
    settled(&d).await;
    assert!(bridge_ports(&d.bridge).is_empty());
    assert!(leases(&d).is_empty(), "{:?}", leases(&d));
    assert_eq!(netns_pins(&d), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pods_see_the_node() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let mut pc = pod_config(&d, "hostnet");
    pc.hostname = String::new();
    pc.linux = pod_namespaces(cri::NamespaceOption { network: cri::NamespaceMode::Node as i32, ..Default::default() });
    let before = host_interfaces();
    let pod = d.run_pod(&pc).await;
    let (state, ip, _) = pod_state_and_ips(&d, &pod).await;
    assert_eq!(state, cri::PodSandboxState::SandboxReady as i32);
    assert!(ip.is_empty(), "a hostNetwork pod has no pod IP: {ip}");
    assert!(bridge_ports(&d.bridge).is_empty());
    assert!(leases(&d).is_empty());
    assert_eq!(netns_pins(&d), 0);

    let ctr = d.create_and_start(&pod, &pc, container_config("sh", &["sleep", "1000"])).await;
    let seen = container_interfaces(&d, &ctr).await;
    let after = host_interfaces();
    // The node's own interfaces: links of parallel tests (bridges, veths, all named sk*) come
    // and go, even between two snapshots that both show them; this daemon's bridge is checked
    // on its own below.
    let stable: Vec<&String> = before.iter().filter(|i| after.contains(i) && !i.starts_with("sk")).collect();
    for i in &stable {
        assert!(seen.contains(i), "host interface {i} not seen in the pod: {seen:?}");
    }
    assert!(seen.contains(&d.bridge), "{seen:?}");
    let (_, hostname) = exec(&d, &ctr, &["hostname"]).await;
    assert_eq!(hostname.trim(), nix::unistd::gethostname().unwrap().to_str().unwrap());

    // An ordinary pod next to it sees only lo and eth0.
    let po = pod_config(&d, "ordinary");
    let other = d.run_pod(&po).await;
    let octr = d.create_and_start(&other, &po, container_config("sh", &["sleep", "1000"])).await;
    let mut seen: Vec<String> = container_interfaces(&d, &octr).await;
    seen.sort();
    assert_eq!(seen, vec!["eth0".to_string(), "lo".into()]);
    assert_eq!(leases(&d).len(), 1);

    d.remove_pod(&pod).await;
    d.remove_pod(&other).await;
    settled(&d).await;
    assert!(leases(&d).is_empty());
    assert!(bridge_ports(&d.bridge).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pods_leave_nothing_behind() {
    let d = Daemon::start().await;
    const N: usize = 50;
    const BATCH: usize = 10;
    let base_port = 40000 + (rand::random::<u16>() % 8000);
    let mut pods: Vec<String> = Vec::new();
    for batch in 0..N / BATCH {
        let runs = (0..BATCH).map(|i| {
            let n = batch * BATCH + i;
            // Every other pod with a host port.
            let pc = if n.is_multiple_of(2) {
                pod_with_ports(&d, &format!("p{n}"), &[(80, (base_port + n as u16) as i32)])
            } else {
                pod_config(&d, &format!("p{n}"))
            };
            let d = &d;
            async move { d.run_pod(&pc).await }
        });
        pods.extend(join_all(runs).await);
    }
    let ips: HashSet<String> = {
        let mut s = HashSet::new();
        for p in &pods {
            s.insert(d.pod_ip(p).await);
        }
        s
    };
    assert_eq!(ips.len(), N, "every pod has its own address");
    assert_eq!(bridge_ports(&d.bridge).len(), N);
    assert_eq!(leases(&d).len(), N);
    assert_eq!(nft_pod_rules(&d).len(), N / 2);
    assert_eq!(netns_pins(&d), N);

    for chunk in pods.chunks(BATCH) {
        join_all(chunk.iter().map(|p| d.remove_pod(p))).await;
    }
    settled(&d).await;
    assert!(bridge_ports(&d.bridge).is_empty(), "{:?}", bridge_ports(&d.bridge));
    assert!(leases(&d).is_empty(), "{:?}", leases(&d));
    assert!(nft_pod_rules(&d).is_empty(), "{:?}", nft_pod_rules(&d));
    assert!(host_port_records(&d).is_empty(), "{:?}", host_port_records(&d));
    assert_eq!(netns_pins(&d), 0);
    assert_eq!(std::fs::read_dir(d.state().join("pods")).map(|r| r.count()).unwrap_or(0), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_addresses_of_running_pods() {
    let mut d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    d.pull(NGINX).await;
    let hp = random_host_port();
    let pa = pod_config(&d, "a");
    let a = d.run_pod(&pa).await;
    let pb = pod_with_ports(&d, "b", &[(80, hp as i32)]);
    let b = d.run_pod(&pb).await;
    let ca = d.create_and_start(&a, &pa, container_config("sh", &["sleep", "1000"])).await;
    d.create_and_start(&b, &pb, nginx_config("nginx")).await;
    // A stopped pod: its lease is gone and stays gone across the restart.
    let pstopped = pod_config(&d, "stopped");
    let stopped = d.run_pod(&pstopped).await;
    d.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: stopped.clone() }).await.unwrap();
    let (ip_a, ip_b) = (d.pod_ip(&a).await, d.pod_ip(&b).await);
    let page = exec_until_ok(&d, &ca, &["timeout", "5", "wget", "-q", "-O-", &format!("http://{ip_b}/")]).await;
    assert!(page.contains(WELCOME));

    d.kill();
    // The pods keep working while skiffd is down.
    let r = http_get(None, sa("127.0.0.1", hp)).await.unwrap();
    assert!(r.contains(WELCOME), "{r}");
    d.start_again().await;

    assert_eq!(d.pod_ip(&a).await, ip_a);
    assert_eq!(d.pod_ip(&b).await, ip_b);
    let state = d.pod_status(&a).await.state;
    assert_eq!(state, cri::PodSandboxState::SandboxReady as i32);
    let l = leases(&d);
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(l[&a], vec![ip_a.clone()]);
    assert_eq!(l[&b], vec![ip_b.clone()]);
    let page = exec_until_ok(&d, &ca, &["timeout", "5", "wget", "-q", "-O-", &format!("http://{ip_b}/")]).await;
    assert!(page.contains(WELCOME));
    let r = http_get(None, sa("127.0.0.1", hp)).await.unwrap();
    assert!(r.contains(WELCOME), "{r}");
    assert_eq!(nft_pod_rules(&d).len(), 1);

    // New pods get fresh addresses, never those of the running pods.
    let mut new_ips = HashSet::new();
    let mut new_pods = Vec::new();
    for i in 0..3 {
        let pc = pod_config(&d, &format!("new{i}"));
        let p = d.run_pod(&pc).await;
        let ip = d.pod_ip(&p).await;
        assert!(ip != ip_a && ip != ip_b, "{ip} handed out twice");
        assert!(new_ips.insert(ip));
        new_pods.push(p);
    }
    // The new pods reach the old ones.
    let pc = pod_config(&d, "late");
    let late = d.run_pod(&pc).await;
    let cl = d.create_and_start(&late, &pc, container_config("sh", &["sleep", "1000"])).await;
    let page = exec_until_ok(&d, &cl, &["timeout", "5", "wget", "-q", "-O-", &format!("http://{ip_b}/")]).await;
    assert!(page.contains(WELCOME));
    exec_until_ok(&d, &cl, &["ping", "-c1", "-W2", &ip_a]).await;

    for p in new_pods.iter().chain([&late, &a, &b, &stopped]) {
        d.remove_pod(p).await;
    }
    settled(&d).await;
    assert!(leases(&d).is_empty(), "{:?}", leases(&d));
    assert!(nft_pod_rules(&d).is_empty());
    assert!(bridge_ports(&d.bridge).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_port_mappings_roll_back_and_host_ip_is_honoured() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    d.pull(NGINX).await;
    let (_, gateway) = pod_range(&d);
    let hp = random_host_port();
    let mut pa = pod_with_ports(&d, "a", &[(80, hp as i32)]);
    pa.port_mappings[0].host_ip = "127.0.0.1".into();
    let a = d.run_pod(&pa).await;
    d.create_and_start(&a, &pa, nginx_config("nginx")).await;
    let r = http_get(None, sa("127.0.0.1", hp)).await.unwrap();
    assert!(r.contains(WELCOME), "{r}");
    // Bound to 127.0.0.1 only: the gateway address does not forward it.
    assert!(http_once(SocketAddr::new(gateway, hp)).map(|r| !r.contains(WELCOME)).unwrap_or(true));

    let refused = |config: cri::PodSandboxConfig| {
        let d = &d;
        async move { try_run_pod(d, config).await.unwrap_err() }
    };
    // The same host port (all addresses overlaps 127.0.0.1): refused, everything rolled back.
    let err = refused(pod_with_ports(&d, "b", &[(80, hp as i32)])).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // Bad mappings: a host port out of range, an unknown protocol, a host IP that is no IP.
    let err = refused(pod_with_ports(&d, "b", &[(80, 70000)])).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let mut bad = pod_with_ports(&d, "b", &[(80, hp as i32 + 1)]);
    bad.port_mappings[0].protocol = 9;
    let err = refused(bad).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let mut bad = pod_with_ports(&d, "b", &[(80, hp as i32 + 1)]);
    bad.port_mappings[0].host_ip = "localhost:1".into();
    let err = refused(bad).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(bridge_ports(&d.bridge).len(), 1);
    assert_eq!(leases(&d).len(), 1, "{:?}", leases(&d));
    assert_eq!(nft_pod_rules(&d).len(), 1);
    assert_eq!(host_port_records(&d), vec![format!("{a}.json")]);
    assert_eq!(netns_pins(&d), 1);
    assert_eq!(std::fs::read_dir(d.state().join("pods")).unwrap().count(), 1);

    // The name is free again; another port works.
    let pb = pod_with_ports(&d, "b", &[(80, hp as i32 + 1)]);
    let b = d.run_pod(&pb).await;
    assert_eq!(nft_pod_rules(&d).len(), 2);

    // Two pods asking for the same host port at the same time: exactly one gets it.
    let race = |name: &'static str| try_run_pod(&d, pod_with_ports(&d, name, &[(80, hp as i32 + 2)]));
    let results = join_all([race("r1"), race("r2")]).await;
    let won: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    let lost = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert_eq!(lost.code(), tonic::Code::InvalidArgument, "{lost:?}");
    assert_eq!(nft_pod_rules(&d).len(), 3);
    assert_eq!(leases(&d).len(), 3);
    assert_eq!(bridge_ports(&d.bridge).len(), 3);
    d.remove_pod(won[0]).await;
    d.remove_pod(&a).await;
    d.remove_pod(&b).await;
    settled(&d).await;
    assert!(nft_pod_rules(&d).is_empty());
    assert!(leases(&d).is_empty());
}

/// A reboot loses the state dir (tmpfs) and the cgroups: the namespace pins, and with them the
/// pods' veths, are gone.
/// The next start marks the pods NOTREADY and releases their leases and host ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_state_dir_releases_leases_and_rules() {
    let mut d = Daemon::start().await;
    let hp = random_host_port();
    let pa = pod_with_ports(&d, "a", &[(80, hp as i32)]);
    let a = d.run_pod(&pa).await;
    let pb = pod_config(&d, "b");
    let b = d.run_pod(&pb).await;
    assert_eq!(leases(&d).len(), 2);
    d.kill();
    d.simulate_reboot();
    // The netns are gone, so are the pod ends of the veths and with them the host ends.
    for _ in 0..50 {
        if bridge_ports(&d.bridge).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    d.start_again().await;
    for p in [&a, &b] {
        let state = d.pod_status(p).await.state;
        assert_eq!(state, cri::PodSandboxState::SandboxNotready as i32);
    }
    assert!(leases(&d).is_empty(), "{:?}", leases(&d));
    assert!(nft_pod_rules(&d).is_empty(), "{:?}", nft_pod_rules(&d));
    assert!(host_port_records(&d).is_empty(), "{:?}", host_port_records(&d));
    assert!(bridge_ports(&d.bridge).is_empty());
    // New pods work and removal of the old ones is clean.
    let pc = pod_config(&d, "c");
    let c = d.run_pod(&pc).await;
    assert!(!d.pod_ip(&c).await.is_empty());
    for p in [&a, &b, &c] {
        d.remove_pod(p).await;
    }
    settled(&d).await;
    assert!(leases(&d).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pods() {
    let v6 = format!("fd00:200:{:x}::", rand::random::<u16>());
    let d = Daemon::start_with_config(&format!("[network]\npod_cidr_v6 = \"{v6}/64\"\n")).await;
    d.pull(BUSYBOX).await;
    d.pull(NGINX).await;
    let pa = pod_config(&d, "a");
    let a = d.run_pod(&pa).await;
    let pb = pod_config(&d, "b");
    let b = d.run_pod(&pb).await;
    let (_, ip_a, extra_a) = pod_state_and_ips(&d, &a).await;
    let (_, ip_b, extra_b) = pod_state_and_ips(&d, &b).await;
    assert!(ip_a.parse::<IpAddr>().unwrap().is_ipv4(), "{ip_a}");
    assert_eq!(extra_a.len(), 1, "{extra_a:?}");
    assert_eq!(extra_b.len(), 1, "{extra_b:?}");
    let (v6_a, v6_b) = (&extra_a[0], &extra_b[0]);
    assert!(v6_a.starts_with(&v6) && v6_b.starts_with(&v6), "{v6_a} {v6_b}");
    assert_eq!(leases(&d)[&a].len(), 2);

    let ca = d.create_and_start(&a, &pa, container_config("sh", &["sleep", "1000"])).await;
    d.create_and_start(&b, &pb, nginx_config("nginx")).await;
    let (_, hosts) = exec(&d, &ca, &["cat", "/etc/hosts"]).await;
    assert!(hosts.contains(&ip_a) && hosts.contains(v6_a.as_str()), "{hosts}");
    let page = exec_until_ok(&d, &ca, &["timeout", "5", "wget", "-q", "-O-", &format!("http://[{v6_b}]/")]).await;
    assert!(page.contains(WELCOME), "{page}");
    let page = exec_until_ok(&d, &ca, &["timeout", "5", "wget", "-q", "-O-", &format!("http://{ip_b}/")]).await;
    assert!(page.contains(WELCOME), "{page}");
    d.remove_pod(&a).await;
    d.remove_pod(&b).await;
    settled(&d).await;
    assert!(leases(&d).is_empty());
}

/// skiffd killed in the middle of RunPodSandbox, after the network was set up but before the
/// pod was recorded READY (simulated by rewriting the record as it is on disk at that point):
/// the next start rolls the pod back completely (lease, veth, host port, netns, holder process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_run_pod_sandbox_is_rolled_back() {
    let mut d = Daemon::start().await;
    let hp = random_host_port();
    let pc = pod_with_ports(&d, "half", &[(80, hp as i32)]);
    let pod = d.run_pod(&pc).await;
    let keep = d.run_pod(&pod_config(&d, "keep")).await;
    d.kill();
    let file = d.root().join("metadata/pods").join(format!("{pod}.json"));
    let rec = skiff_tests::read_record(d.root(), &format!("metadata/pods/{pod}.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&rec).unwrap();
    let r = &mut v["record"];
    r["state"] = "creating".into();
    r["namespaces"] =
        serde_json::json!({ "net": null, "ipc": null, "uts": null, "infra_pid": null, "infra_start_time": null });
    r["ips"] = serde_json::json!([]);
    r["network_set_up"] = false.into();
    r["shm_mounted"] = false.into();
    std::fs::write(&file, serde_json::to_vec(&v).unwrap()).unwrap();
    d.start_again().await;

    let err = d
        .runtime()
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let l = leases(&d);
    assert_eq!(l.keys().collect::<Vec<_>>(), vec![&keep], "{l:?}");
    assert!(nft_pod_rules(&d).is_empty(), "{:?}", nft_pod_rules(&d));
    assert!(host_port_records(&d).is_empty(), "{:?}", host_port_records(&d));
    assert_eq!(bridge_ports(&d.bridge).len(), 1);
    assert_eq!(netns_pins(&d), 1);
    let pod_dir = d.state().join("pods").join(&pod);
    assert!(!pod_dir.exists());
    let procs = skiff_tests::processes_mentioning(&pod_dir.to_string_lossy());
    assert!(procs.is_empty(), "processes of the rolled-back pod: {procs:?}");
    // The name is free again.
    let again = d.run_pod(&pc).await;
    d.remove_pod(&again).await;
    d.remove_pod(&keep).await;
}

/// A link with the bridge's name that is no bridge: NetworkReady false with the reason, pods
/// refused with FailedPrecondition and rolled back; once the link is gone the network heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_not_ready_when_the_bridge_cannot_be_made() {
    struct Link(String);
    impl Drop for Link {
        fn drop(&mut self) {
            let _ = sh("ip", &["link", "del", &self.0]);
            let _ = sh("nft", &["delete", "table", "inet", &format!("skiff_{}", self.0)]);
        }
    }
    let link = Link(format!("skt{}", skiff_tests::unique_suffix()));
    sh_ok("ip", &["link", "add", &link.0, "type", "veth", "peer", "name", &format!("{}p", link.0)]);
    let d = Daemon::start_with_config(&format!("[network]\nbridge = \"{}\"\n", link.0)).await;
    let nr = network_ready(&d).await;
    assert!(!nr.status);
    assert_eq!(nr.reason, "BridgeSetupFailed", "{nr:?}");
    assert!(nr.message.contains(&link.0), "{nr:?}");
    let err = try_run_pod(&d, pod_config(&d, "x")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not a bridge"), "{err:?}");
    assert_eq!(std::fs::read_dir(d.state().join("pods")).map(|r| r.count()).unwrap_or(0), 0);
    assert_eq!(netns_pins(&d), 0);
    assert!(leases(&d).is_empty());

    sh_ok("ip", &["link", "del", &link.0]);
    let nr = network_ready(&d).await;
    assert!(nr.status, "{nr:?}");
    let pod = d.run_pod(&pod_config(&d, "x")).await;
    assert!(!d.pod_ip(&pod).await.is_empty());
    d.remove_pod(&pod).await;
    drop(d);
}

/// The bridge deleted while skiffd was down (or while it runs): the next start (or Status) makes
/// it again and attaches the running pods' veths to it, so they are reachable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_bridge_is_made_again_with_the_pods_on_it() {
    let mut d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    d.pull(NGINX).await;
    let hp = random_host_port();
    let pa = pod_config(&d, "a");
    let a = d.run_pod(&pa).await;
    let pb = pod_with_ports(&d, "b", &[(80, hp as i32)]);
    let b = d.run_pod(&pb).await;
    let ca = d.create_and_start(&a, &pa, container_config("sh", &["sleep", "1000"])).await;
    d.create_and_start(&b, &pb, nginx_config("nginx")).await;
    let ip_b = d.pod_ip(&b).await;
    d.kill();
    sh_ok("ip", &["link", "del", &d.bridge]);
    d.start_again().await;
    assert_eq!(bridge_ports(&d.bridge).len(), 2);
    let page = exec_until_ok(&d, &ca, &["timeout", "5", "wget", "-q", "-O-", &format!("http://{ip_b}/")]).await;
    assert!(page.contains(WELCOME), "{page}");
    let r = http_get(None, sa("127.0.0.1", hp)).await.unwrap();
    assert!(r.contains(WELCOME), "{r}");

    // Deleted while skiffd runs: the next Status (the kubelet asks every few seconds) heals it.
    sh_ok("ip", &["link", "del", &d.bridge]);
    let nr = network_ready(&d).await;
    assert!(nr.status, "{nr:?}");
    assert_eq!(bridge_ports(&d.bridge).len(), 2);
    let page = exec_until_ok(&d, &ca, &["timeout", "5", "wget", "-q", "-O-", &format!("http://{ip_b}/")]).await;
    assert!(page.contains(WELCOME), "{page}");
    let r = http_get(None, sa("127.0.0.1", hp)).await.unwrap();
    assert!(r.contains(WELCOME), "{r}");
    d.remove_pod(&a).await;
    d.remove_pod(&b).await;
}

/// Pod traffic leaving the pod range is masqueraded (`network.masquerade`, default on): a
/// server in another network namespace sees the node's address, not the pod's; with
/// masquerade off it sees the pod's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_traffic_is_masqueraded() {
    for masquerade in [true, false] {
        let d = Daemon::start_with_config(&format!("[network]\nmasquerade = {masquerade}\n")).await;
        d.pull(BUSYBOX).await;
        let pc = pod_config(&d, "out");
        let pod = d.run_pod(&pc).await;
        let ctr = d.create_and_start(&pod, &pc, container_config("sh", &["sleep", "1000"])).await;
        let ip = d.pod_ip(&pod).await;
        let client = Client::new();
        if !masquerade {
            // Unmasqueraded replies go to the pod's address: the node answers ARP for it on the
            // client's veth (only there).
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{}/proxy_arp", client.host_if), "1").unwrap();
        }
        let _srv = PeerEcho::start(&client.ns.path, SocketAddr::new(client.ip, 8080));
        let url = format!("http://{}:8080/", client.ip);
        let out = exec_until_ok(&d, &ctr, &["timeout", "5", "wget", "-q", "-O-", &url]).await;
        let peer = out.trim().strip_prefix("peer=").unwrap_or_else(|| panic!("{out}")).to_owned();
        if masquerade {
            assert_ne!(peer, ip, "not masqueraded");
        } else {
            assert_eq!(peer, ip);
        }
        drop(client);
        d.remove_pod(&pod).await;
    }
}

/// skiff's nftables table deleted behind its back (a firewall reload's `flush ruleset` does
/// that): the next Status, or the next start, makes it again with the running pods' host ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_nft_table_is_restored_with_host_ports() {
    let mut d = Daemon::start().await;
    d.pull(NGINX).await;
    let hp = random_host_port();
    let pb = pod_with_ports(&d, "b", &[(80, hp as i32)]);
    let b = d.run_pod(&pb).await;
    d.create_and_start(&b, &pb, nginx_config("nginx")).await;
    let r = http_get(None, sa("127.0.0.1", hp)).await.unwrap();
    assert!(r.contains(WELCOME), "{r}");
    assert_eq!(host_port_records(&d), vec![format!("{b}.json")]);
    let table = format!("skiff_{}", d.bridge);

    sh_ok("nft", &["delete", "table", "inet", &table]);
    assert!(http_once(sa("127.0.0.1", hp)).map(|r| !r.contains(WELCOME)).unwrap_or(true));
    let nr = network_ready(&d).await;
    assert!(nr.status, "{nr:?}");
    assert_eq!(nft_pod_rules(&d).len(), 1);
    let r = http_get(None, sa("127.0.0.1", hp)).await.unwrap();
    assert!(r.contains(WELCOME), "{r}");

    d.kill();
    sh_ok("nft", &["delete", "table", "inet", &table]);
    d.start_again().await;
    assert_eq!(nft_pod_rules(&d).len(), 1);
    let r = http_get(None, sa("127.0.0.1", hp)).await.unwrap();
    assert!(r.contains(WELCOME), "{r}");

    d.remove_pod(&b).await;
    assert!(nft_pod_rules(&d).is_empty());
    assert!(host_port_records(&d).is_empty(), "{:?}", host_port_records(&d));
}
