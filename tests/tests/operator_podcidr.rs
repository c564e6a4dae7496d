//! The node's pod range from the kubelet: with `network.pod_cidr = ""` skiffd reports
//! NetworkReady false (NoPodCIDR) until UpdateRuntimeConfig hands it a range, then pods get
//! addresses from that range (the bridge's gateway is its first address); a change while a pod
//! holds an address is refused with FailedPrecondition and the old range kept; the range
//! survives a restart (ROOT/network/pod-cidr.json); with no pod left a new range is taken.
//! `crictl info` (Status verbose) shows the range in force and where it came from. (The fallback
//! after `pod_cidr_fallback_secs` is tested in netplugin's `podcidr` unit tests: on a real
//! bridge 10.88.0.0/16 could clash with a node's skiff0.)

use skiff_tests::pods::pod_config;
use skiff_tests::{cri, Daemon};

/// A random /24 in 10.216.0.0/13 (the harness uses 10.200.0.0/13 for configured ranges).
fn random_range() -> (String, String) {
    let n = rand::random::<u16>() & 0x7ff;
    let prefix = format!("10.{}.{}.", 216 + (n >> 8), n & 0xff);
    (format!("{prefix}0/24"), prefix)
}

async fn network_condition(d: &Daemon) -> cri::RuntimeCondition {
    let st = d.runtime().status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    st.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap()
}

async fn update(d: &Daemon, cidr: &str) -> Result<(), tonic::Status> {
    d.runtime()
        .update_runtime_config(cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig { pod_cidr: cidr.into() }),
            }),
        })
        .await
        .map(|_| ())
}

fn bridge_has_address(bridge: &str, addr: &str) -> bool {
    let out = std::process::Command::new("ip").args(["-4", "-o", "addr", "show", "dev", bridge]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet {addr}/"))
}

async fn verbose_config(d: &Daemon) -> serde_json::Value {
    let st = d.runtime().status(cri::StatusRequest { verbose: true }).await.unwrap().into_inner();
    serde_json::from_str(&st.info["config"]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_range_comes_from_the_kubelet() {
    let mut d = Daemon::start_with_config("[network]\npod_cidr = \"\"\npod_cidr_fallback_secs = 0\n").await;
    let c = network_condition(&d).await;
    assert!(!c.status && c.reason == "NoPodCIDR", "{c:?}");
    // A pod cannot get a network yet: a clear FailedPrecondition, nothing left behind.
    let err = d
        .runtime()
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config(&d, "early")),
            runtime_handler: "".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("pod range"), "{err:?}");

    // Bad ranges are InvalidArgument.
    for bad in ["nonsense", "fd00:1::/64", "10.1.0.0/31"] {
        let e = update(&d, bad).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
    }

    let (range, prefix) = random_range();
    update(&d, &range).await.unwrap();
    update(&d, &range).await.unwrap(); // the kubelet repeats it: a no-op
    let st = d.runtime().status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    let names: Vec<&str> = st.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["", "skiff"]);
    let c = network_condition(&d).await;
    assert!(c.status, "{c:?}");
    assert!(bridge_has_address(&d.bridge, &format!("{prefix}1")));
    let cfg = verbose_config(&d).await;
    assert_eq!(cfg["network"]["pod_cidr_in_use"], range.as_str(), "{cfg}");
    assert_eq!(cfg["network"]["pod_cidr_source"], "kubelet", "{cfg}");
    // Resolved values, not "".
    assert_eq!(cfg["listen"], d.socket().to_string_lossy().as_ref(), "{cfg}");
    assert!(cfg["runtime"]["monitor_path"].as_str().unwrap().ends_with("/skiff-monitor"), "{cfg}");

    // The named handler is the default one.
    let pod = d
        .runtime()
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config(&d, "a")),
            runtime_handler: "skiff".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let ip = d.pod_ip(&pod).await;
    assert!(ip.starts_with(&prefix), "{ip} not in {range}");

    // A change with a pod holding an address is refused; the old range stays.
    let (other, other_prefix) = random_range();
    let e = update(&d, &other).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&range) && e.message().contains("hold"), "{e:?}");
    assert_eq!(verbose_config(&d).await["network"]["pod_cidr_in_use"], range.as_str());

    // Persisted across a restart: the pod keeps its address, new pods use the same range.
    d.restart().await;
    assert!(network_condition(&d).await.status);
    assert_eq!(d.pod_ip(&pod).await, ip);
    let record = std::fs::read_to_string(d.root().join("network/pod-cidr.json")).unwrap();
    assert!(record.contains(&range), "{record}");

    // No pod left: the new range is taken, the bridge moves to its gateway.
    d.remove_pod(&pod).await;
    if other_prefix != prefix {
        update(&d, &other).await.unwrap();
        assert!(bridge_has_address(&d.bridge, &format!("{other_prefix}1")));
        assert!(!bridge_has_address(&d.bridge, &format!("{prefix}1")));
        let pod = d.run_pod(&pod_config(&d, "b")).await;
        assert!(d.pod_ip(&pod).await.starts_with(&other_prefix));
        d.remove_pod(&pod).await;
    }
}

/// A configured `pod_cidr` wins: the kubelet's range is ignored (and the call succeeds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_range_wins() {
    let d = Daemon::start().await;
    let before = verbose_config(&d).await["network"]["pod_cidr_in_use"].clone();
    let (range, _) = random_range();
    update(&d, &range).await.unwrap();
    let cfg = verbose_config(&d).await;
    assert_eq!(cfg["network"]["pod_cidr_in_use"], before);
    assert_eq!(cfg["network"]["pod_cidr_source"], "config");
}
