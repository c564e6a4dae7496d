//! CRI 1.36 metrics and stats through skiffd: ListMetricDescriptors, ListPodSandboxMetrics
//! (cAdvisor names, labels matching the descriptors, values that follow the container) and
//! PSI/IoUsage in the stats RPCs where the kernel has PSI.

use std::collections::HashMap;

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, Daemon};

fn value(ms: &[cri::Metric], name: &str) -> Option<u64> {
    ms.iter().find(|m| m.name == name).and_then(|m| m.value.as_ref()).map(|v| v.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_metrics_follow_the_containers() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "metrics");
    let pod = d.run_pod(&pc).await;
    let mut cc = container_config("m", &["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=3; sleep 1000"]);
    cc.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_period: 100000,
            cpu_quota: 20000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let ctr = d.create_and_start(&pod, &pc, cc).await;
    // let dd finish
    for _ in 0..50 {
        if d.exec(&ctr, &["test", "-s", "/big"], 5).await.map(|r| r.exit_code == 0).unwrap_or(false) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut rt = d.runtime();

    let descs =
        rt.list_metric_descriptors(cri::ListMetricDescriptorsRequest {}).await.unwrap().into_inner().descriptors;
    let by_name: HashMap<&str, &cri::MetricDescriptor> = descs.iter().map(|d| (d.name.as_str(), d)).collect();
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_rss",
        "container_memory_usage_bytes",
        "container_fs_usage_bytes",
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
        "container_processes",
        "container_oom_events_total",
        "container_start_time_seconds",
        "container_last_seen",
    ] {
        let desc = by_name.get(name).unwrap_or_else(|| panic!("{name} not described"));
        assert!(!desc.help.is_empty());
        assert_eq!(&desc.label_keys[..3], ["id", "name", "image"]);
    }
    assert_eq!(by_name["container_network_receive_bytes_total"].label_keys.last().unwrap(), "interface");

    let all = rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}).await.unwrap().into_inner().pod_metrics;
    let pm = all.iter().find(|p| p.pod_sandbox_id == pod).expect("the pod's metrics");
    // every metric's labels match its descriptor
    let every = pm.metrics.iter().chain(pm.container_metrics.iter().flat_map(|c| c.metrics.iter()));
    for m in every {
        let desc = by_name.get(m.name.as_str()).unwrap_or_else(|| panic!("{} has no descriptor", m.name));
        assert_eq!(desc.label_keys.len(), m.label_values.len(), "{}", m.name);
    }
    // the pod's interface (eth0 in its netns; lo left out)
    let rx: Vec<&cri::Metric> =
        pm.metrics.iter().filter(|m| m.name == "container_network_receive_bytes_total").collect();
    assert!(rx.iter().any(|m| m.label_values.last().map(String::as_str) == Some("eth0")), "{rx:?}");
    assert!(!rx.iter().any(|m| m.label_values.last().map(String::as_str) == Some("lo")));

    let cm = pm.container_metrics.iter().find(|c| c.container_id == ctr).expect("the container's metrics");
    let ms = &cm.metrics;
    let cpu = ms.iter().find(|m| m.name == "container_cpu_usage_seconds_total").unwrap();
    assert_eq!(cpu.label_values[0], ctr);
    assert_eq!(cpu.label_values[1], "m");
    assert_eq!(cpu.label_values[2], BUSYBOX);
    assert_eq!(cpu.metric_type, cri::MetricType::Counter as i32);
    assert!(value(ms, "container_memory_usage_bytes").unwrap() > 0);
    assert!(value(ms, "container_memory_working_set_bytes").is_some());
    assert!(value(ms, "container_processes").unwrap() >= 1);
    assert_eq!(value(ms, "container_oom_events_total"), Some(0));
    assert_eq!(value(ms, "container_spec_memory_limit_bytes"), Some(64 << 20));
    assert_eq!(value(ms, "container_spec_cpu_quota"), Some(20000));
    assert_eq!(value(ms, "container_spec_cpu_period"), Some(100000));
    assert_eq!(value(ms, "container_spec_cpu_shares"), Some(512));
    // the 3 MiB file in the writable layer
    let fs = value(ms, "container_fs_usage_bytes").expect("writable layer usage");
    assert!(fs >= 3 << 20, "{fs}");
    let start = value(ms, "container_start_time_seconds").unwrap();
    let seen = value(ms, "container_last_seen").unwrap();
    assert!(start <= seen && seen - start < 600, "{start} {seen}");
    assert!(value(ms, "container_file_descriptors").unwrap() >= 1);

    // a second call (cached writable-layer usage) answers the same
    let again =
        rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}).await.unwrap().into_inner().pod_metrics;
    let cm2 = again.iter().find(|p| p.pod_sandbox_id == pod).unwrap();
    let ms2 = &cm2.container_metrics.iter().find(|c| c.container_id == ctr).unwrap().metrics;
    assert_eq!(value(ms2, "container_fs_usage_bytes"), Some(fs));

    // PSI and IoUsage: present exactly when the kernel exposes pressure files for the cgroup
    let st = rt
        .container_stats(cri::ContainerStatsRequest { container_id: ctr.clone() })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let psi_host = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        && std::path::Path::new("/sys/fs/cgroup/cpu.pressure").exists();
    assert_eq!(st.cpu.as_ref().unwrap().psi.is_some(), psi_host);
    assert_eq!(st.memory.as_ref().unwrap().psi.is_some(), psi_host);
    assert_eq!(st.io.is_some(), psi_host);
    d.remove_pod(&pod).await;

    // a removed pod has no metrics any more
    let all = rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}).await.unwrap().into_inner().pod_metrics;
    assert!(all.iter().all(|p| p.pod_sandbox_id != pod));
}
