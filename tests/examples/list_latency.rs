//! Measures (not a test): how long ListContainers, ContainerStatus and ListContainerStats take
//! while long operations run on other objects — a 10 s StopContainer of a container that
//! ignores SIGTERM, and a StopPodSandbox of a pod with 10 such containers. The reads must never
//! wait behind those operations; this prints median, p90 and max of each.
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p skiff-tests --example list_latency
//! ```
//!
//! Needs root and the test registry (shared/testimages/registry-up), like the tests.

use std::time::{Duration, Instant};

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, Daemon};

const STUBBORN: &[&str] = &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"];

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "  {name:<22} n={:<4} median {:>6.2} ms  p90 {:>6.2} ms  max {:>6.2} ms",
        v.len(),
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[v.len() - 1])
    );
}

/// Samples the three reads every 50 ms until `done` finishes.
async fn sample_while<T>(d: &Daemon, probe: &str, done: tokio::task::JoinHandle<T>) -> T {
    let (mut list, mut status, mut stats) = (Vec::new(), Vec::new(), Vec::new());
    let mut rt = d.runtime();
    while !done.is_finished() {
        let t = Instant::now();
        rt.list_containers(cri::ListContainersRequest::default()).await.unwrap();
        list.push(t.elapsed());
        let t = Instant::now();
        rt.container_status(cri::ContainerStatusRequest { container_id: probe.into(), verbose: false }).await.unwrap();
        status.push(t.elapsed());
        let t = Instant::now();
        rt.list_container_stats(cri::ListContainerStatsRequest::default()).await.unwrap();
        stats.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    summary("ListContainers", list);
    summary("ContainerStatus", status);
    summary("ListContainerStats", stats);
    done.await.unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var_os("SKIFF_BIN_DIR").is_none() {
        if let Some(dir) = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.to_owned())) {
            std::env::set_var("SKIFF_BIN_DIR", dir);
        }
    }
    println!("skiffd from {}", skiff_tests::bin_dir().display());
    let d = Daemon::start_with_config("log_level = \"info\"").await;
    d.pull(BUSYBOX).await;

    let pc = pod_config(&d, "probe");
    let probe_pod = d.run_pod(&pc).await;
    let probe = d.create_and_start(&probe_pod, &pc, container_config("probe", &["sleep", "3600"])).await;
    let stubborn = d.create_and_start(&probe_pod, &pc, container_config("stubborn", STUBBORN)).await;

    println!("during a 10 s StopContainer of a container ignoring SIGTERM:");
    let mut rt = d.runtime();
    let stop = tokio::spawn(async move {
        let t = Instant::now();
        rt.stop_container(cri::StopContainerRequest { container_id: stubborn, timeout: 10 }).await.unwrap();
        t.elapsed()
    });
    let took = sample_while(&d, &probe, stop).await;
    println!("  (the stop took {took:?})");

    let pc10 = pod_config(&d, "ten");
    let pod10 = d.run_pod(&pc10).await;
    for i in 0..10 {
        d.create_and_start(&pod10, &pc10, container_config(&format!("s{i}"), STUBBORN)).await;
    }
    println!("during a StopPodSandbox of a pod with 10 containers ignoring SIGTERM:");
    let mut rt = d.runtime();
    let stopp = tokio::spawn(async move {
        let t = Instant::now();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod10 }).await.unwrap();
        t.elapsed()
    });
    let took = sample_while(&d, &probe, stopp).await;
    println!("  (the pod stop took {took:?})");

    let pods = d.runtime().list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    for p in pods {
        d.remove_pod(&p.id).await;
    }
}
