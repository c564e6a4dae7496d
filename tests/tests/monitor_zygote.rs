//! The monitors' zygote (`skiff-monitor zygote`, `runtime.monitor_zygote`): skiffd starts it
//! once and it forks the monitor of every container start. A monitor it forked is named by its
//! container's directory (`skiff-monitor run <dir> --gated`) like a spawned one; a killed
//! zygote is replaced at the next start; the zygote ends with skiffd, the monitors it forked
//! live on (and are adopted by the next skiffd); with `monitor_zygote = false` every start
//! spawns its monitor.

use std::time::{Duration, Instant};

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, processes_mentioning, Daemon};

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_owned())
        .unwrap_or_default()
}

fn ppid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// The zygote of this daemon, if one runs.
fn zygotes(d: &Daemon) -> Vec<i32> {
    let containers = d.state().join("containers");
    processes_mentioning(&format!("zygote {}", containers.display()))
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn monitor_pid(d: &Daemon, id: &str) -> i32 {
    d.container_info(id).await["monitorPid"].as_i64().unwrap_or_else(|| panic!("no monitorPid")) as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_are_forked_by_the_zygote_and_named_by_their_container() {
    let mut d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let zygote = zygotes(&d);
    assert_eq!(zygote.len(), 1, "no zygote: {zygote:?}");
    let zygote = zygote[0];
    let pc = pod_config(&d, "zyg");
    let pod = d.run_pod(&pc).await;
    let id = d.create_and_start(&pod, &pc, container_config("c", &["sleep", "1000"])).await;
    let monitor = monitor_pid(&d, &id).await;
    assert_eq!(ppid(monitor), zygote, "the monitor is not the zygote's child");
    let dir = d.state().join("containers").join(&id);
    assert_eq!(
        cmdline(monitor).split_whitespace().skip(1).collect::<Vec<_>>(),
        ["run", &dir.to_string_lossy(), "--gated"]
    );
    assert!(processes_mentioning(&id).contains(&monitor));
    let out = d.exec(&id, &["echo", "hi"], 10).await.unwrap();
    assert_eq!(out.stdout, b"hi\n");

    // The zygote ends with skiffd (SIGKILL); the monitor lives on and the next skiffd (with a
    // zygote of its own) adopts the running container.
    d.kill();
    wait_until("the zygote's end", || cmdline(zygote).is_empty()).await;
    assert!(!cmdline(monitor).is_empty(), "the monitor died with the zygote");
    d.start_again().await;
    assert_eq!(zygotes(&d).len(), 1);
    assert_eq!(d.container_status(&id).await.state, cri::ContainerState::ContainerRunning as i32);
    d.runtime().stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 0 }).await.unwrap();
    wait_until("the monitor's end", || cmdline(monitor).is_empty()).await;
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_zygote_is_replaced_at_the_next_start() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let first = zygotes(&d);
    assert_eq!(first.len(), 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until("the zygote's end", || zygotes(&d).is_empty()).await;
    let pc = pod_config(&d, "zyg-killed");
    let pod = d.run_pod(&pc).await;
    let id = d.create_and_start(&pod, &pc, container_config("c", &["sleep", "1000"])).await;
    assert_eq!(d.container_status(&id).await.state, cri::ContainerState::ContainerRunning as i32);
    let second = zygotes(&d);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first);
    assert_eq!(ppid(monitor_pid(&d, &id).await), second[0]);
    assert!(d.log().contains("the monitors' zygote is gone; starting another"), "{}", d.log());
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_zygote_every_start_spawns_its_monitor() {
    let d = Daemon::start_with_config("[runtime]\nmonitor_zygote = false\n").await;
    d.pull(BUSYBOX).await;
    assert!(zygotes(&d).is_empty());
    let pc = pod_config(&d, "nozyg");
    let pod = d.run_pod(&pc).await;
    let id = d.create_and_start(&pod, &pc, container_config("c", &["sleep", "1000"])).await;
    let monitor = monitor_pid(&d, &id).await;
    let dir = d.state().join("containers").join(&id);
    assert_eq!(
        cmdline(monitor).split_whitespace().skip(1).collect::<Vec<_>>(),
        ["run", &dir.to_string_lossy(), "--gated"]
    );
    assert_ne!(ppid(monitor), std::process::id() as i32);
    d.remove_pod(&pod).await;
}
