//! CRI container logs: long lines split at 16 KiB with P/F tags, a last line without newline
//! (tagged P, as containerd does),
//! ReopenContainerLog after the log was rotated (renamed) with no line lost.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use skiff_tests::pods::{container_config, pod_config, read_log, BUSYBOX};
use skiff_tests::{cri, Daemon};
use tonic::Code;

/// Reads the log until `done` holds or 10 s pass.
async fn wait_log(
    path: &std::path::Path,
    done: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = read_log(path);
        if done(&lines) || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_split_with_partial_tags() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "longlines");
    let pod = d.run_pod(&pc).await;
    let script = "head -c 40000 /dev/zero | tr '\\0' a; echo; echo short; \
                  head -c 20000 /dev/zero | tr '\\0' b >&2; echo >&2; printf no-newline";
    let id = d.create_and_start(&pod, &pc, container_config("long", &["sh", "-c", script])).await;
    let st = d.wait_exited(&id, Duration::from_secs(20)).await;
    assert_eq!(st.exit_code, 0);
    let lines = read_log(&PathBuf::from(&st.log_path));
    let summary: Vec<(String, String, usize, char)> =
        lines.iter().map(|(s, t, x)| (s.clone(), t.clone(), x.len(), x.chars().next().unwrap_or(' '))).collect();
    let out: Vec<_> = summary.iter().filter(|l| l.0 == "stdout").cloned().collect();
    let err: Vec<_> = summary.iter().filter(|l| l.0 == "stderr").cloned().collect();
    let s = |t: &str, n: usize, c: char| ("stdout".to_owned(), t.to_owned(), n, c);
    assert_eq!(
        out,
        vec![s("P", 16384, 'a'), s("P", 16384, 'a'), s("F", 40000 - 2 * 16384, 'a'), s("F", 5, 's'), s("P", 10, 'n')],
        "{summary:?}"
    );
    let e = |t: &str, n: usize| ("stderr".to_owned(), t.to_owned(), n, 'b');
    assert_eq!(err, vec![e("P", 16384), e("F", 20000 - 16384)], "{summary:?}");
    // The last output had no newline: partial, as containerd writes it.
    // Reassembled, the lines are what the container wrote.
    let full: String = lines.iter().filter(|l| l.0 == "stdout").take(3).map(|l| l.2.as_str()).collect();
    assert_eq!(full, "a".repeat(40000));
    assert_eq!(lines.iter().find(|l| l.2 == "short").map(|l| l.1.as_str()), Some("F"));
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_log_after_rotation() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "reopen");
    let pod = d.run_pod(&pc).await;
    let id = d
        .create_and_start(
            &pod,
            &pc,
            container_config(
                "ticker",
                &["sh", "-c", "i=0; while true; do echo line-$i; i=$((i+1)); usleep 20000; done"],
            ),
        )
        .await;
    let log = PathBuf::from(d.container_status(&id).await.log_path);
    let first = wait_log(&log, |l| l.len() >= 5).await;
    assert!(first.len() >= 5, "{first:?}");

    // Rotate as the kubelet does: rename, then ReopenContainerLog.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    d.runtime().reopen_container_log(cri::ReopenContainerLogRequest { container_id: id.clone() }).await.unwrap();
    let second = wait_log(&log, |l| l.len() >= 5).await;
    assert!(second.len() >= 5, "the new log file gets no lines: {second:?}");
    // The old file is no longer written to.
    let old_len = read_log(&rotated).len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(read_log(&rotated).len(), old_len, "the rotated file still grows");

    // Not a line lost or repeated across the two files.
    let numbers: Vec<u64> = read_log(&rotated)
        .into_iter()
        .chain(read_log(&log))
        .map(|(s, t, x)| {
            assert_eq!((s.as_str(), t.as_str()), ("stdout", "F"));
            x.strip_prefix("line-").unwrap().parse().unwrap()
        })
        .collect();
    let expected: Vec<u64> = (0..numbers.len() as u64).collect();
    assert_eq!(numbers, expected);

    // Reopen of a stopped container: FailedPrecondition; of an unknown one: NotFound.
    d.runtime().stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 0 }).await.unwrap();
    let err = d
        .runtime()
        .reopen_container_log(cri::ReopenContainerLogRequest { container_id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = d
        .runtime()
        .reopen_container_log(cri::ReopenContainerLogRequest { container_id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_and_stdin_containers() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "tty");
    let pod = d.run_pod(&pc).await;
    // A tty: the process sees a terminal; everything is logged as stdout, CRLF turned to LF.
    let mut cfg = container_config("tty", &["sh", "-c", "test -t 1 && echo is-a-tty; echo to-stderr >&2"]);
    cfg.tty = true;
    let id = d.create_and_start(&pod, &pc, cfg).await;
    let st = d.wait_exited(&id, Duration::from_secs(20)).await;
    assert_eq!(st.exit_code, 0);
    let lines = read_log(&PathBuf::from(&st.log_path));
    assert_eq!(
        lines,
        vec![
            ("stdout".to_owned(), "F".to_owned(), "is-a-tty".to_owned()),
            ("stdout".to_owned(), "F".to_owned(), "to-stderr".to_owned())
        ]
    );
    // stdin open (nobody attached): `cat` waits instead of seeing EOF at once.
    let mut cfg = container_config("stdin", &["cat"]);
    cfg.stdin = true;
    let id = d.create_and_start(&pod, &pc, cfg).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.container_status(&id).await.state, cri::ContainerState::ContainerRunning as i32);
    // Without stdin, `cat` reads /dev/null and ends at once.
    let id = d.create_and_start(&pod, &pc, container_config("nostdin", &["cat"])).await;
    let st = d.wait_exited(&id, Duration::from_secs(20)).await;
    assert_eq!(st.exit_code, 0);
    d.remove_pod(&pod).await;
}
