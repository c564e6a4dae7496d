//! Measures (not a test): the time of one full pod lifecycle (RunPodSandbox → CreateContainer
//! → StartContainer → StopContainer → RemoveContainer → StopPodSandbox → RemovePodSandbox)
//! and the memory (PSS, from /proc/<pid>/smaps_rollup) of the per-container monitors with
//! 10 running containers.
//!
//! Build the release binaries first (`SKIFF_BIN_DIR` overrides where they are looked for):
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p skiff-tests --example pod_bench [-- ROUNDS]
//! ```
//!
//! Needs root and the test registry (shared/testimages/registry-up), like the tests.

use std::time::{Duration, Instant};

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, Daemon};

fn kib(pid: i64, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    format!("min {:.1}  median {:.1}  mean {:.1}  max {:.1}", v[0], v[v.len() / 2], mean, v[v.len() - 1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var_os("SKIFF_BIN_DIR").is_none() {
        // target/<profile>/examples/pod_bench → target/<profile>
        if let Some(dir) = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.to_owned())) {
            std::env::set_var("SKIFF_BIN_DIR", dir);
        }
    }
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    println!("skiffd from {}", skiff_tests::bin_dir().display());
    let d = Daemon::start_with_config("log_level = \"info\"").await;
    d.pull(BUSYBOX).await;
    let mut rt = d.runtime();

    // One full pod lifecycle, `rounds` times (one warm-up round first).
    let mut totals = Vec::new();
    let mut steps: Vec<Vec<f64>> = vec![Vec::new(); 7];
    for round in 0..=rounds {
        let pc = pod_config(&d, &format!("bench{round}"));
        let cc = container_config("c", &["sleep", "1000"]);
        let mut t = [Instant::now(); 8];
        let pod = d.run_pod(&pc).await;
        t[1] = Instant::now();
        let id = d.create(&pod, &pc, cc).await.unwrap();
        t[2] = Instant::now();
        rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap();
        t[3] = Instant::now();
        rt.stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 0 }).await.unwrap();
        t[4] = Instant::now();
        rt.remove_container(cri::RemoveContainerRequest { container_id: id }).await.unwrap();
        t[5] = Instant::now();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
        t[6] = Instant::now();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
        t[7] = Instant::now();
        if round == 0 {
            continue;
        }
        totals.push((t[7] - t[0]).as_secs_f64() * 1000.0);
        for i in 0..7 {
            steps[i].push((t[i + 1] - t[i]).as_secs_f64() * 1000.0);
        }
    }
    println!("pod lifecycle over {rounds} rounds (ms): {}", stats(totals));
    for (name, v) in ["runp", "create", "start", "stop", "rm", "stopp", "rmp"].iter().zip(steps) {
        println!("  {name:7} {}", stats(v));
    }

    // Monitor memory with 10 running containers.
    let pc = pod_config(&d, "mem");
    let pod = d.run_pod(&pc).await;
    let mut monitors = Vec::new();
    for i in 0..10 {
        let id = d.create_and_start(&pod, &pc, container_config(&format!("c{i}"), &["sleep", "1000"])).await;
        let st = rt
            .container_status(cri::ContainerStatusRequest { container_id: id, verbose: true })
            .await
            .unwrap()
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
        monitors.push(info["monitorPid"].as_i64().expect("monitor pid"));
    }
    // Let them settle (log files opened, first writes done).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pss: Vec<f64> = monitors.iter().map(|&p| kib(p, "Pss:").unwrap_or(0) as f64).collect();
    let rss: Vec<f64> = monitors.iter().map(|&p| kib(p, "Rss:").unwrap_or(0) as f64).collect();
    let total: f64 = pss.iter().sum();
    println!("monitor PSS (KiB) of 10 monitors: {}  total {total:.0}", stats(pss));
    println!("monitor RSS (KiB) of 10 monitors: {}", stats(rss));
    d.remove_pod(&pod).await;
}
