//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats from the cgroups.

use proto::cri::runtime_service_server::RuntimeService;
use proto::cri::*;
use runtime::cgroups::CgroupStats;
use tonic::{Code, Request};

use super::{Node, BUSYBOX};

fn usage(cpu_ns: u64, working_set: u64) -> CgroupStats {
    CgroupStats {
        cpu_usage_ns: Some(cpu_ns),
        memory_usage_bytes: Some(working_set + 4096),
        memory_working_set_bytes: Some(working_set),
        memory_rss_bytes: Some(working_set / 2),
        pids_current: Some(3),
        ..Default::default()
    }
}

impl Node {
    async fn container_stats(&self, id: &str) -> Result<ContainerStats, tonic::Status> {
        let req = ContainerStatsRequest { container_id: id.into() };
        Ok(self.rt.container_stats(Request::new(req)).await?.into_inner().stats.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_stats_come_from_its_cgroup() {
    let n = Node::new();
    let (pod, c) = n.running("web").await;
    let cg = format!("{}/{c}", n.pod_cgroup(&pod));
    n.fakes.cgroups.set_stats(&cg, usage(1_000_000, 10 << 20));
    let s = n.container_stats(&c).await.unwrap();
    assert_eq!(s.attributes.as_ref().unwrap().id, c);
    let cpu = s.cpu.unwrap();
    assert_eq!(cpu.usage_core_nano_seconds.unwrap().value, 1_000_000);
    assert!(cpu.usage_nano_cores.is_none(), "a rate needs two samples");
    let mem = s.memory.unwrap();
    assert_eq!(mem.working_set_bytes.unwrap().value, 10 << 20);
    assert_eq!(mem.rss_bytes.unwrap().value, 5 << 20);
    assert!(s.writable_layer.is_some());
    // The second sample gives a rate.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    n.fakes.cgroups.set_stats(&cg, usage(500_000_000, 10 << 20));
    let cpu = n.container_stats(&c).await.unwrap().cpu.unwrap();
    assert!(cpu.usage_nano_cores.unwrap().value > 0);
    // Not running: no CPU or memory figures.
    let idle = n.create(&pod, "idle", BUSYBOX).await.unwrap();
    let s = n.container_stats(&idle).await.unwrap();
    assert!(s.cpu.is_none() && s.memory.is_none());
    assert_eq!(n.container_stats("0123456789abcdef").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_container_stats_filters_by_pod() {
    let n = Node::new();
    let (p1, c1) = n.running("one").await;
    let (_p2, _c2) = n.running("two").await;
    let all = ListContainerStatsRequest { filter: None };
    assert_eq!(n.rt.list_container_stats(Request::new(all)).await.unwrap().into_inner().stats.len(), 2);
    let f = ContainerStatsFilter { pod_sandbox_id: p1, ..Default::default() };
    let stats = n.rt.list_container_stats(Request::new(ListContainerStatsRequest { filter: Some(f) })).await.unwrap();
    let ids: Vec<String> = stats.into_inner().stats.into_iter().map(|s| s.attributes.unwrap().id).collect();
    assert_eq!(ids, vec![c1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_stats_come_from_the_pod_cgroup_with_its_containers() {
    let n = Node::new();
    let (pod, c) = n.running("web").await;
    n.fakes.cgroups.set_stats(&n.pod_cgroup(&pod), usage(7_000, 20 << 20));
    let req = PodSandboxStatsRequest { pod_sandbox_id: pod.clone() };
    let s = n.rt.pod_sandbox_stats(Request::new(req)).await.unwrap().into_inner().stats.unwrap();
    assert_eq!(s.attributes.unwrap().id, pod);
    let linux = s.linux.unwrap();
    assert_eq!(linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value, 7_000);
    assert_eq!(linux.memory.unwrap().working_set_bytes.unwrap().value, 20 << 20);
    assert_eq!(linux.process.unwrap().process_count.unwrap().value, 3);
    assert_eq!(linux.containers.len(), 1);
    assert_eq!(linux.containers[0].attributes.as_ref().unwrap().id, c);
    // A stopped pod has no usage; an unknown one is NOT_FOUND.
    n.stop_pod(&pod).await.unwrap();
    let req = PodSandboxStatsRequest { pod_sandbox_id: pod.clone() };
    let s = n.rt.pod_sandbox_stats(Request::new(req)).await.unwrap().into_inner().stats.unwrap();
    assert!(s.linux.unwrap().cpu.is_none());
    let req = PodSandboxStatsRequest { pod_sandbox_id: "0123456789abcdef".into() };
    assert_eq!(n.rt.pod_sandbox_stats(Request::new(req)).await.unwrap_err().code(), Code::NotFound);
    let other = n.run_pod("other").await;
    let f = PodSandboxStatsFilter { id: other.clone(), ..Default::default() };
    let list = n.rt.list_pod_sandbox_stats(Request::new(ListPodSandboxStatsRequest { filter: Some(f) })).await;
    let ids: Vec<String> = list.unwrap().into_inner().stats.into_iter().map(|s| s.attributes.unwrap().id).collect();
    assert_eq!(ids, vec![other]);
}
