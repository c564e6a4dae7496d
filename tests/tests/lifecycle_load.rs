//! Many clients at once: 8 clients each run 25 whole pod lifecycles (RunPodSandbox,
//! CreateContainer, StartContainer, ExecSync, StopContainer, RemoveContainer, StopPodSandbox,
//! RemovePodSandbox) against one skiffd, while StopPodSandbox and StartContainer race in other
//! pods. Every call succeeds, nothing deadlocks (each client under a timeout), and nothing is
//! left: no pod, container, mount, process, cgroup or veth (the harness checks on drop).

use std::time::Duration;

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, Daemon};

const CLIENTS: usize = 8;
const ROUNDS: usize = 25;
/// Per client: far beyond what 25 lifecycles take, short enough that a deadlock fails the test.
const DEADLOCK: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_clients_run_twenty_five_pod_lifecycles_each() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let d = std::sync::Arc::new(d);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let d = d.clone();
        clients.push(tokio::spawn(async move {
            let mut rt = d.runtime();
            for r in 0..ROUNDS {
                let pc = pod_config(&d, &format!("load-{c}-{r}"));
                let pod = rt
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(pc.clone()),
                        runtime_handler: String::new(),
                    })
                    .await
                    .map_err(|e| format!("client {c} round {r}: runp: {e}"))?
                    .into_inner()
                    .pod_sandbox_id;
                let id = rt
                    .create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: pod.clone(),
                        config: Some(container_config("c", &["sleep", "1000"])),
                        sandbox_config: Some(pc.clone()),
                    })
                    .await
                    .map_err(|e| format!("client {c} round {r}: create: {e}"))?
                    .into_inner()
                    .container_id;
                rt.start_container(cri::StartContainerRequest { container_id: id.clone() })
                    .await
                    .map_err(|e| format!("client {c} round {r}: start: {e}"))?;
                let out = rt
                    .exec_sync(cri::ExecSyncRequest {
                        container_id: id.clone(),
                        cmd: vec!["echo".into(), r.to_string()],
                        timeout: 30,
                    })
                    .await
                    .map_err(|e| format!("client {c} round {r}: exec: {e}"))?
                    .into_inner();
                if out.exit_code != 0 || String::from_utf8_lossy(&out.stdout).trim() != r.to_string() {
                    return Err(format!("client {c} round {r}: exec answered {out:?}"));
                }
                rt.stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 0 })
                    .await
                    .map_err(|e| format!("client {c} round {r}: stop: {e}"))?;
                rt.remove_container(cri::RemoveContainerRequest { container_id: id })
                    .await
                    .map_err(|e| format!("client {c} round {r}: rm: {e}"))?;
                rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() })
                    .await
                    .map_err(|e| format!("client {c} round {r}: stopp: {e}"))?;
                rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod })
                    .await
                    .map_err(|e| format!("client {c} round {r}: rmp: {e}"))?;
            }
            Ok::<_, String>(())
        }));
    }
    for (c, h) in clients.into_iter().enumerate() {
        match tokio::time::timeout(DEADLOCK, h).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("{e}"),
            Ok(Err(e)) => panic!("client {c} panicked: {e}"),
            Err(_) => panic!("client {c} did not finish within {DEADLOCK:?}: a deadlock"),
        }
    }
    let mut rt = d.runtime();
    let pods = rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    let ctrs = rt.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    assert!(pods.is_empty() && ctrs.is_empty(), "left: {} pods, {} containers", pods.len(), ctrs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_pod_sandbox_races_container_starts_in_the_pod() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    for round in 0..3 {
        let pc = pod_config(&d, &format!("race{round}"));
        let pod = d.run_pod(&pc).await;
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(d.create(&pod, &pc, container_config(&format!("c{i}"), &["sleep", "1000"])).await.unwrap());
        }
        let mut ops = Vec::new();
        for id in &ids {
            let (mut rt, id) = (d.runtime(), id.clone());
            ops.push(tokio::spawn(async move {
                rt.start_container(cri::StartContainerRequest { container_id: id }).await.map(|_| ())
            }));
        }
        for _ in 0..3 {
            let (mut rt, pod) = (d.runtime(), pod.clone());
            ops.push(tokio::spawn(async move {
                rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod }).await.map(|_| ())
            }));
        }
        for op in ops {
            // A start may lose to the stop (FailedPrecondition); nothing may hang or fail otherwise.
            match tokio::time::timeout(Duration::from_secs(120), op).await.expect("deadlock").unwrap() {
                Ok(()) => {}
                Err(e) => assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}"),
            }
        }
        // The pod is stopped: no container of it runs, whatever won.
        for id in &ids {
            let st = d.container_status(id).await;
            assert_ne!(st.state, cri::ContainerState::ContainerRunning as i32, "{id} runs in a stopped pod: {st:?}");
        }
        d.remove_pod(&pod).await;
    }
}
