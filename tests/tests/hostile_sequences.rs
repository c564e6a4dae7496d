//! A property test: random sequences of CRI calls (create, start, stop, remove, exec, status of
//! a few container names in one pod) sent with random short client deadlines, so that many
//! handlers are dropped half-way. After every step skiffd must be alive and its lists must
//! agree with the per-object status calls: every listed container has a status with the same
//! state, names are unique, the pod is listed. At the end everything is removed and the
//! harness checks that nothing was left behind. Server-side errors (INTERNAL, UNKNOWN) are
//! printed with their step.
//!
//! Bounded and seeded: `SKIFF_PROPTEST_STEPS` (default 2000, about a minute) steps from `SKIFF_PROPTEST_SEED`
//! (default: random, printed, so that a failure can be replayed).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, Daemon};

const NAMES: &[&str] = &["a", "b", "c"];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// The ID of the listed container called `name`, if any.
async fn id_of(d: &Daemon, name: &str) -> Option<String> {
    let list = d.runtime().list_containers(cri::ListContainersRequest::default()).await.ok()?.into_inner();
    list.containers.into_iter().find(|c| c.metadata.as_ref().map(|m| m.name.as_str()) == Some(name)).map(|c| c.id)
}

/// skiffd is alive and its lists agree with the status calls.
async fn check_consistent(d: &Daemon, pod: &str, step: usize, seed: u64) {
    let ctx = format!("step {step} (seed {seed})");
    let mut rt = d.runtime();
    rt.version(cri::VersionRequest::default()).await.unwrap_or_else(|e| panic!("{ctx}: skiffd not answering: {e:?}"));
    let pods = rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert!(pods.iter().any(|p| p.id == pod), "{ctx}: the pod is not listed");
    let list = rt.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    let mut names: Vec<String> = list.iter().map(|c| c.metadata.clone().unwrap_or_default().name).collect();
    names.sort();
    let n = names.len();
    names.dedup();
    assert_eq!(names.len(), n, "{ctx}: duplicate container names listed: {list:?}");
    for c in &list {
        assert_eq!(c.pod_sandbox_id, pod, "{ctx}");
        let st =
            match rt.container_status(cri::ContainerStatusRequest { container_id: c.id.clone(), verbose: false }).await
            {
                Ok(st) => st.into_inner().status.unwrap(),
                // Removed between the list and the status call by a handler still running.
                Err(e) if e.code() == tonic::Code::NotFound => continue,
                Err(e) => panic!("{ctx}: status of listed container {}: {e:?}", c.id),
            };
        assert_eq!(st.id, c.id, "{ctx}");
        // The state may only move forward between the two calls (a container may exit).
        assert!(st.state >= c.state, "{ctx}: list says {} but status says {}", c.state, st.state);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_call_sequences_keep_skiffd_consistent() {
    let seed = env_u64("SKIFF_PROPTEST_SEED").unwrap_or_else(rand::random);
    let steps = env_u64("SKIFF_PROPTEST_STEPS").unwrap_or(2000) as usize;
    eprintln!("hostile_sequences: seed {seed}, {steps} steps (SKIFF_PROPTEST_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "seq");
    let pod = d.run_pod(&pc).await;

    // Per operation: (succeeded, refused, cut by the deadline).
    let mut tally = [(0u32, 0u32, 0u32); 8];
    let mut server_errors = 0u32;
    for step in 0..steps {
        let name = NAMES[rng.random_range(0..NAMES.len())];
        // Deadlines from 1 ms (dropped at once) to 3 s (usually done).
        let deadline = Duration::from_millis(match rng.random_range(0..4) {
            0 => rng.random_range(1..10),
            1 => rng.random_range(20..300),
            _ => 3000,
        });
        // create, start, stop, remove, exec, status, update, reopen log (create, start and exec
        // twice as often)
        let op = [0, 0, 1, 1, 2, 3, 4, 4, 5, 6, 7][rng.random_range(0..11)];
        // Updates: valid and invalid values alike.
        let resources = cri::LinuxContainerResources {
            memory_limit_in_bytes: [0, 1, 16 << 20, 256 << 20][rng.random_range(0..4)],
            cpu_period: [0, 1, 100_000][rng.random_range(0..3)],
            cpu_quota: [0, -1, 50_000][rng.random_range(0..3)],
            cpu_shares: [0, 2, 1024, 1 << 30][rng.random_range(0..4)],
            oom_score_adj: [0, 500, 5000][rng.random_range(0..3)],
            ..Default::default()
        };
        let mut rt = d.runtime();
        let id = id_of(&d, name).await.unwrap_or_else(|| format!("missing-{name}"));
        let fut = async {
            let r: Result<(), tonic::Status> = match op {
                0 => {
                    let cmd = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"];
                    d.create(&pod, &pc, container_config(name, &cmd)).await.map(|_| ())
                }
                1 => rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.map(|_| ()),
                2 => {
                    let timeout = rng_timeout(step);
                    rt.stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout }).await.map(|_| ())
                }
                3 => rt.remove_container(cri::RemoveContainerRequest { container_id: id.clone() }).await.map(|_| ()),
                4 => d.exec(&id, &["true"], 2).await.map(|_| ()),
                6 => rt
                    .update_container_resources(cri::UpdateContainerResourcesRequest {
                        container_id: id.clone(),
                        linux: Some(resources.clone()),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ()),
                7 => rt
                    .reopen_container_log(cri::ReopenContainerLogRequest { container_id: id.clone() })
                    .await
                    .map(|_| ()),
                _ => rt
                    .container_status(cri::ContainerStatusRequest { container_id: id.clone(), verbose: true })
                    .await
                    .map(|_| ()),
            };
            r
        };
        let outcome = tokio::time::timeout(deadline, fut).await;
        match &outcome {
            Ok(Ok(())) => tally[op].0 += 1,
            Ok(Err(_)) => tally[op].1 += 1,
            Err(_) => tally[op].2 += 1,
        }
        if let Ok(Err(e)) = &outcome {
            // Refusals are expected. Server-side errors are reported, not asserted: a handler
            // cut by its deadline keeps running and may race the next call (StartContainer vs
            // RemoveContainer is a known race of the lifecycle code).
            if matches!(e.code(), tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::Unavailable) {
                server_errors += 1;
                eprintln!("step {step} (seed {seed}): op {op} on {name} ({id}): {e:?}");
            }
        }
        check_consistent(&d, &pod, step, seed).await;
    }

    let ops = ["create", "start", "stop", "remove", "exec", "status", "update", "reopen log"];
    for (op, (ok, refused, cut)) in ops.iter().zip(tally) {
        eprintln!("  {op}: {ok} done, {refused} refused, {cut} cut by the deadline");
    }
    eprintln!("  server-side errors: {server_errors}");
    // Let dropped handlers finish, then clean up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    check_consistent(&d, &pod, steps, seed).await;
    d.remove_pod(&pod).await;
    let left = d.runtime().list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner();
    assert!(left.containers.is_empty(), "{:?}", left.containers);
}

/// StopContainer timeouts: mostly 0 or 1 s, sometimes huge or negative.
fn rng_timeout(step: usize) -> i64 {
    match step % 5 {
        0 => i64::MAX,
        1 => -1,
        2 => 1,
        _ => 0,
    }
}
