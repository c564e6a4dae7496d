//! Exits pushed by the monitors: a container's exit is recorded (on disk, and as a
//! ContainerStoppedEvent) as it happens, with nobody asking about the container, also for a
//! container skiffd adopted at a restart. (The fallback sweep runs only every ten seconds.)

use std::time::{Duration, Instant};

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, Daemon};

/// Waits for the ContainerStoppedEvent of `id`; returns when it came.
async fn stopped_event(events: &mut tonic::Streaming<cri::ContainerEventResponse>, id: &str) -> Instant {
    let deadline = Duration::from_secs(5);
    tokio::time::timeout(deadline, async {
        loop {
            let ev = events.message().await.expect("event stream").expect("stream ended");
            if ev.container_id == id && ev.container_event_type == cri::ContainerEventType::ContainerStoppedEvent as i32
            {
                let st = ev.containers_statuses.iter().find(|c| c.id == id).expect("its status in the event");
                assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
                return Instant::now();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no stopped event of {id} within {deadline:?}"))
}

fn record_says_exited(d: &Daemon, id: &str) -> bool {
    skiff_tests::read_record(d.root(), &format!("metadata/containers/{id}.json"))
        .is_some_and(|s| String::from_utf8_lossy(&s).contains("\"state\":\"exited\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_are_recorded_as_they_happen() {
    let mut d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let trigger = d.dir().join("trigger");
    std::fs::create_dir_all(&trigger).unwrap();
    let pc = pod_config(&d, "exits");
    let pod = d.run_pod(&pc).await;
    let mut events = d.runtime().get_container_events(cri::GetEventsRequest {}).await.unwrap().into_inner();

    let quick = d.create_and_start(&pod, &pc, container_config("quick", &["sh", "-c", "sleep 0.3; exit 3"])).await;
    let started = Instant::now();
    let at = stopped_event(&mut events, &quick).await;
    println!("exit recorded {:?} after the start (the container ran 0.3 s)", at - started);
    assert!(at - started < Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !record_says_exited(&d, &quick) {
        assert!(Instant::now() < deadline, "the record on disk still says running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Adopted at a restart: still watched.
    let mut cfg =
        container_config("waiter", &["sh", "-c", "while [ ! -e /trigger/go ]; do usleep 20000; done; exit 5"]);
    cfg.mounts.push(cri::Mount {
        container_path: "/trigger".into(),
        host_path: trigger.display().to_string(),
        ..Default::default()
    });
    let waiter = d.create_and_start(&pod, &pc, cfg).await;
    d.kill();
    d.start_again().await;
    let mut events = d.runtime().get_container_events(cri::GetEventsRequest {}).await.unwrap().into_inner();
    std::fs::write(trigger.join("go"), b"").unwrap();
    let t = Instant::now();
    let at = stopped_event(&mut events, &waiter).await;
    println!("adopted container's exit recorded {:?} after its trigger", at - t);
    assert!(at - t < Duration::from_secs(3));
    let st = d.container_status(&waiter).await;
    assert_eq!(st.exit_code, 5, "{st:?}");
    d.remove_pod(&pod).await;
}
