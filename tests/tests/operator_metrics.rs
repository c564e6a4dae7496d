//! skiffd's own Prometheus endpoint (`[metrics] address`): RPC counts and latency histograms by
//! method and code, pulls, pods and containers by state, network setup latency, process metrics.

use std::io::{Read, Write};
use std::net::TcpStream;

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, Daemon};

fn metrics_addr(d: &Daemon) -> String {
    let log = d.log();
    let line =
        log.lines().rev().find(|l| l.contains("metrics served at /metrics")).expect("no metrics line in the log");
    let rest = &line[line.find("address=").expect("address field") + "address=".len()..];
    rest.split_whitespace().next().unwrap().to_owned()
}

fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// The value of the sample named exactly `series` (name with labels).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint() {
    let d = Daemon::start_with_config("[metrics]\naddress = \"127.0.0.1:0\"\n").await;
    let addr = metrics_addr(&d);
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "m");
    let pod = d.run_pod(&pc).await;
    let _c = d.create_and_start(&pod, &pc, container_config("sleep", &["sleep", "1000"])).await;
    // A failing call is counted under its code.
    let e = d
        .runtime()
        .container_status(cri::ContainerStatusRequest { container_id: "nope".into(), verbose: false })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    let (head, body) = get(&addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert_eq!(sample(&body, "skiff_grpc_requests_total{method=\"RunPodSandbox\",code=\"Ok\"}"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "skiff_grpc_requests_total{method=\"ContainerStatus\",code=\"NotFound\"}"), Some(1.0));
    assert_eq!(
        sample(&body, "skiff_grpc_request_duration_seconds_count{method=\"RunPodSandbox\",code=\"Ok\"}"),
        Some(1.0)
    );
    assert!(
        body.contains("skiff_grpc_request_duration_seconds_bucket{method=\"RunPodSandbox\",code=\"Ok\",le=\"+Inf\"} 1")
    );
    assert_eq!(sample(&body, "skiff_image_pulls_total{result=\"success\"}"), Some(1.0));
    assert!(sample(&body, "skiff_image_pulled_bytes_total").unwrap() > 0.0);
    assert_eq!(sample(&body, "skiff_pods{state=\"ready\"}"), Some(1.0));
    assert_eq!(sample(&body, "skiff_containers{state=\"running\"}"), Some(1.0));
    assert_eq!(
        sample(&body, "skiff_network_operation_duration_seconds_count{operation=\"setup\",result=\"success\"}"),
        Some(1.0)
    );
    // The pod's READY record and the container's CREATED one waited for the journal at least.
    let entries = sample(&body, "skiff_metadata_journal_entries_total").unwrap();
    let syncs = sample(&body, "skiff_metadata_journal_sync_duration_seconds_count").unwrap();
    assert!(entries >= 3.0 && syncs >= 2.0 && syncs <= entries, "{entries} {syncs}\n{body}");
    assert_eq!(sample(&body, "skiff_metadata_journal_sync_duration_seconds_bucket{le=\"+Inf\"}"), Some(syncs));
    assert_eq!(sample(&body, "skiff_metadata_journal_usable"), Some(1.0));
    assert!(sample(&body, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(sample(&body, "process_open_fds").unwrap() > 3.0);
    assert!(sample(&body, "process_threads").unwrap() >= 2.0);
    if let Ok(p) = std::env::var("SKIFF_METRICS_SAMPLE") {
        std::fs::write(p, &body).unwrap();
    }

    d.remove_pod(&pod).await;
    let (_, body) = get(&addr, "/metrics");
    assert_eq!(sample(&body, "skiff_pods{state=\"ready\"}"), Some(0.0));
    assert_eq!(
        sample(&body, "skiff_network_operation_duration_seconds_count{operation=\"teardown\",result=\"success\"}"),
        Some(1.0),
        "{body}"
    );
    let (head, _) = get(&addr, "/other");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}
