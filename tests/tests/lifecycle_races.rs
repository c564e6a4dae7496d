//! Concurrent operations on one container or pod from several clients: Start, Stop and Remove
//! at once end in a consistent state (no deadlock: every call runs under a timeout), a removed
//! container never comes back (not even after a restart), and reads answer while a long stop
//! is under way.

use std::time::{Duration, Instant};

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, monitors_of, Daemon};
use tonic::Code;

/// Every call of these tests must finish within this, or it is a deadlock.
const DEADLOCK: Duration = Duration::from_secs(60);

fn mounts_of(id: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|m| m.contains(id))
        .collect()
}

async fn status(d: &Daemon, id: &str) -> Result<cri::ContainerStatus, tonic::Status> {
    d.runtime()
        .container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: false })
        .await
        .map(|r| r.into_inner().status.unwrap())
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Start,
    Stop,
    Remove,
    Status,
    List,
}

/// Runs `op` on container `id` after `delay`, under the deadlock timeout.
fn spawn_op(d: &Daemon, id: &str, op: Op, delay: Duration) -> tokio::task::JoinHandle<(Op, Result<(), tonic::Status>)> {
    let mut rt = d.runtime();
    let id = id.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let call = async {
            match op {
                Op::Start => rt.start_container(cri::StartContainerRequest { container_id: id }).await.map(|_| ()),
                Op::Stop => {
                    rt.stop_container(cri::StopContainerRequest { container_id: id, timeout: 0 }).await.map(|_| ())
                }
                Op::Remove => rt.remove_container(cri::RemoveContainerRequest { container_id: id }).await.map(|_| ()),
                Op::Status => rt
                    .container_status(cri::ContainerStatusRequest { container_id: id, verbose: true })
                    .await
                    .map(|_| ()),
                Op::List => rt.list_containers(cri::ListContainersRequest::default()).await.map(|_| ()),
            }
        };
        let res = tokio::time::timeout(DEADLOCK, call).await.unwrap_or_else(|_| panic!("{op:?} deadlocked"));
        (op, res)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_remove_at_once_end_consistent_and_removed_stays_removed() {
    // A slow start (its rootfs mount held 300 ms) so that the others overlap it.
    let mut d = Daemon::start_with_failpoints("start:after_mount=sleep:300").await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "racer");
    let pod = d.run_pod(&pc).await;
    let ms = Duration::from_millis;
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for round in 0..6u64 {
        let id = d.create(&pod, &pc, container_config(&format!("c{round}"), &["sleep", "3600"])).await.unwrap();
        let with_remove = round % 3 != 2;
        // Different interleavings each round.
        let mut ops = vec![
            (Op::Start, ms(0)),
            (Op::Start, ms(10 * round)),
            (Op::Stop, ms(40 * round)),
            (Op::Status, ms(20)),
            (Op::List, ms(100)),
            (Op::Stop, ms(350)),
        ];
        if with_remove {
            ops.push((Op::Remove, ms(60 * round)));
        }
        let handles: Vec<_> = ops.iter().map(|(op, delay)| spawn_op(&d, &id, *op, *delay)).collect();
        for h in handles {
            let (op, res) = h.await.unwrap();
            match (op, res) {
                (_, Ok(())) => {}
                // A start after the stop or removal: the container is no longer CREATED, or gone.
                (Op::Start, Err(e)) if matches!(e.code(), Code::FailedPrecondition | Code::NotFound) => {}
                (Op::Status, Err(e)) if e.code() == Code::NotFound && with_remove => {}
                (op, Err(e)) => panic!("round {round}: {op:?} failed: {e:?}"),
            }
        }
        if with_remove {
            let err = status(&d, &id).await.unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "round {round}");
            assert!(monitors_of(&id).is_empty(), "round {round}: a monitor of a removed container");
            assert!(mounts_of(&id).is_empty(), "round {round}: mounts {:?}", mounts_of(&id));
            assert!(!d.state().join("containers").join(&id).exists(), "round {round}: state dir left");
            assert!(
                skiff_tests::read_record(d.root(), &format!("metadata/containers/{id}.json")).is_none(),
                "round {round}"
            );
            removed.push(id);
        } else {
            // The last stop came after both starts: EXITED, nothing running, or the starts
            // both lost: CREATED.
            let st = status(&d, &id).await.unwrap();
            let monitors = monitors_of(&id).len();
            match st.state {
                s if s == cri::ContainerState::ContainerExited as i32 => assert_eq!(monitors, 0, "round {round}"),
                s if s == cri::ContainerState::ContainerRunning as i32 => assert_eq!(monitors, 1, "round {round}"),
                s => assert_eq!(s, cri::ContainerState::ContainerCreated as i32, "round {round}"),
            }
            kept.push(id);
        }
    }
    // A RemoveContainer racing a (slow) StartContainer: removal waits for the start, and the
    // start never writes the record back.
    let id = d.create(&pod, &pc, container_config("late", &["sleep", "3600"])).await.unwrap();
    let start = spawn_op(&d, &id, Op::Start, ms(0));
    let remove = spawn_op(&d, &id, Op::Remove, ms(100));
    let _ = start.await.unwrap();
    remove.await.unwrap().1.expect("remove");
    removed.push(id);

    let before = d.container_ids(None).await;
    for id in &removed {
        assert!(!before.contains(id));
    }
    d.restart().await;
    let after = d.container_ids(None).await;
    assert_eq!(after, before, "the containers after the restart");
    for id in &removed {
        let err = status(&d, id).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{id} came back after the restart");
    }
    assert_eq!(kept.len(), 2);
    d.remove_pod(&pod).await;
    d.restart().await;
    assert!(d.container_ids(None).await.is_empty(), "containers of a removed pod came back");
    let pods = d.runtime().list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner();
    assert!(pods.items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answer_during_a_long_stop() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "slowstop");
    let pod = d.run_pod(&pc).await;
    // Ignores SIGTERM: the stop waits its full timeout, then kills.
    let stubborn = d
        .create_and_start(
            &pod,
            &pc,
            container_config("stubborn", &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]),
        )
        .await;
    let other = d.create_and_start(&pod, &pc, container_config("other", &["sleep", "3600"])).await;
    let mut rt = d.runtime();
    let id = stubborn.clone();
    let t0 = Instant::now();
    let stop = tokio::spawn(async move {
        rt.stop_container(cri::StopContainerRequest { container_id: id, timeout: 4 }).await.map(|_| t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let ids = d.container_ids(None).await;
        let list = t.elapsed();
        assert_eq!(ids.len(), 2);
        let t = Instant::now();
        let st = status(&d, &stubborn).await.unwrap();
        let status_time = t.elapsed();
        assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
        let t = Instant::now();
        d.pod_status(&pod).await;
        d.runtime().list_container_stats(cri::ListContainerStatsRequest::default()).await.unwrap();
        let pod_time = t.elapsed();
        println!(
            "during the stop: ListContainers {list:?}, ContainerStatus {status_time:?}, \
             PodSandboxStatus+ListContainerStats {pod_time:?}"
        );
        worst = worst.max(list).max(status_time).max(pod_time);
    }
    assert!(!stop.is_finished(), "the stop should still wait for the SIGTERM timeout");
    // The verbose status shows the operation under way.
    let st = d
        .runtime()
        .container_status(cri::ContainerStatusRequest { container_id: stubborn.clone(), verbose: true })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    assert_eq!(info["transition"], "Stopping", "{info}");
    // Generous: the point is not waiting for the stop (seconds), not speed.
    assert!(worst < Duration::from_millis(1000), "a read took {worst:?} during the stop");

    // Another client's StopContainer with no grace kills it at once, alongside the first.
    let t = Instant::now();
    d.runtime().stop_container(cri::StopContainerRequest { container_id: stubborn.clone(), timeout: 0 }).await.unwrap();
    println!("a second stop (timeout 0) took {:?}", t.elapsed());
    let took = tokio::time::timeout(DEADLOCK, stop).await.unwrap().unwrap().unwrap();
    assert!(took < Duration::from_secs(4), "the first stop still waited its timeout: {took:?}");
    let st = status(&d, &stubborn).await.unwrap();
    assert_eq!((st.state, st.exit_code), (cri::ContainerState::ContainerExited as i32, 137), "{st:?}");

    // PodSandboxStatus carries its containers' statuses (for the evented PLEG).
    let ps = d
        .runtime()
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<String> = ps.containers_statuses.iter().map(|c| c.id.clone()).collect();
    ids.sort();
    let mut want = vec![stubborn.clone(), other.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert!(ps.timestamp > 0);
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_removal_waits_for_a_container_creation_under_way() {
    let d = Daemon::start_with_failpoints("container:after_spec=sleep:800").await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "gone");
    let pod = d.run_pod(&pc).await;
    let (mut rt, p2, pc2) = (d.runtime(), pod.clone(), pc.clone());
    let create = tokio::spawn(async move {
        rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: p2,
            config: Some(container_config("late", &["sleep", "3600"])),
            sandbox_config: Some(pc2),
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    tokio::time::timeout(DEADLOCK, d.remove_pod(&pod)).await.expect("remove deadlocked");
    println!("RemovePodSandbox waited {:?} for the creation", t.elapsed());
    // The creation finished first (its container was then removed with the pod).
    let created = tokio::time::timeout(DEADLOCK, create).await.unwrap().unwrap();
    assert!(created.is_ok(), "{created:?}");
    assert!(d.container_ids(None).await.is_empty());
    assert!(std::fs::read_dir(d.root().join("metadata/containers")).unwrap().next().is_none());
    // A creation in the removed pod: not found.
    let err = d.create(&pod, &pc, container_config("after", &["true"])).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}
