//! skiffd under systemd and without it: `READY=1` on `$NOTIFY_SOCKET` (Type=notify) once the CRI
//! socket serves, `STOPPING=1` on SIGTERM; with `log_file` set, SIGHUP makes skiffd open the
//! file again (what logrotate's postrotate does), so a rotated log does not grow forever.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use skiff_tests::{cri, Daemon};

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_ready_once_the_socket_serves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut d = Daemon::start_with_config_and_env("", &[("NOTIFY_SOCKET", path.to_str().unwrap())]).await;
    let msg = recv(&sock);
    assert_eq!(msg, "READY=1");
    // Ready means serving: an RPC answers now.
    d.runtime().version(cri::VersionRequest::default()).await.unwrap();
    let status = d.stop().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(recv(&sock), "STOPPING=1");
    d.start_again().await;
    assert_eq!(recv(&sock), "READY=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skiffd.log");
    let d = Daemon::start_with_config(&format!("log_file = {:?}\n", log.to_str().unwrap())).await;
    let first = std::fs::read_to_string(&log).unwrap();
    assert!(first.contains("skiffd serving"), "{first}");
    let rotated = dir.path().join("skiffd.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    kill(Pid::from_raw(d.pid().unwrap() as i32), Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("log file reopened") {
        assert!(Instant::now() < deadline, "no new log file after SIGHUP:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Later lines go to the new file, not the rotated one.
    let rotated_len = std::fs::metadata(&rotated).unwrap().len();
    d.runtime().status(cri::StatusRequest { verbose: false }).await.unwrap();
    d.runtime().update_runtime_config(cri::UpdateRuntimeConfigRequest { runtime_config: None }).await.unwrap();
    assert_eq!(std::fs::metadata(&rotated).unwrap().len(), rotated_len);
    assert!(std::fs::read_to_string(&log).unwrap().contains("runtime config update"));
}
