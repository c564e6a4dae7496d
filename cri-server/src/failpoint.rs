//! Failpoints for rollback and cancellation tests: `SKIFF_FAILPOINTS=pod:after_network,container:after_spec`
//! makes the named steps of skiffd's flows fail with an injected error, so that tests can check
//! that every step before them is undone (as containerd's CRI tests do with their failpoints);
//! `name=sleep:MS` (e.g. `pod:after_setup=sleep:2000`) makes the step wait MS milliseconds
//! instead, so that a test can let a client's deadline pass at that point; `name=fail-after:MS`
//! waits, then fails.
//! Read once at start; with the variable unset a check costs one comparison.
//!
//! Compiled in only with the `failpoints` cargo feature (the tests' build: `test.sh` builds
//! skiffd with `--features skiff-cri-server/failpoints`); a release build ignores the variable
//! and says so in its log.

#[cfg(feature = "failpoints")]
use std::sync::OnceLock;
use std::time::Duration;

use tonic::Status;

/// The failpoints skiffd knows, in flow order (for the tests and the docs). Each can fail or
/// delay.
pub const ALL: &[&str] = &[
    "pod:after_setup",
    "pod:after_network",
    "container:after_rootfs",
    "container:after_spec",
    "start:after_mount",
    "start:after_cgroup",
];

/// Points that can only delay (failing there would leave a started process, or has nothing
/// to undo), for the cancellation and race tests.
pub const DELAY_ONLY: &[&str] = &["start:after_monitor", "stop:before_signal", "remove:before_release"];

/// Points in work done after the answer, whose failure is kept for a later RPC to retry (not
/// rolled back, so not in [`ALL`], whose points `tests/tests/rollback.rs` tests):
/// `pod:background_teardown` fails the network teardown StopPodSandbox leaves to a background
/// task, `pod:background_removal` the end of a removal RemovePodSandbox leaves to one (the
/// pod's namespace pins, shm, files, cgroup and record; `tests/tests/remove_background.rs`).
pub const BACKGROUND: &[&str] = &["pod:background_teardown", "pod:background_removal"];

#[cfg_attr(not(any(feature = "failpoints", test)), allow(dead_code))]
enum Action {
    Fail,
    Sleep(Duration),
    FailAfter(Duration),
}

#[cfg(feature = "failpoints")]
fn enabled() -> &'static [(String, Action)] {
    static POINTS: OnceLock<Vec<(String, Action)>> = OnceLock::new();
    POINTS.get_or_init(|| std::env::var("SKIFF_FAILPOINTS").map(|v| parse(&v)).unwrap_or_default())
}

#[cfg(not(feature = "failpoints"))]
fn enabled() -> &'static [(String, Action)] {
    &[]
}

/// Reads `SKIFF_FAILPOINTS` at start and logs what it enables (or that this build has none).
pub fn init() {
    let requested = std::env::var_os("SKIFF_FAILPOINTS").is_some_and(|v| !v.is_empty());
    if cfg!(feature = "failpoints") {
        if requested {
            tracing::warn!(count = enabled().len(), "failpoints enabled (SKIFF_FAILPOINTS)");
        }
    } else if requested {
        tracing::warn!("SKIFF_FAILPOINTS ignored: this skiffd was built without the failpoints feature");
    }
}

#[cfg_attr(not(any(feature = "failpoints", test)), allow(dead_code))]
fn parse(v: &str) -> Vec<(String, Action)> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('=') {
            Some((name, action)) => {
                let ms = |prefix: &str| action.strip_prefix(prefix).and_then(|m| m.parse::<u64>().ok());
                match (ms("sleep:"), ms("fail-after:")) {
                    (Some(ms), _) => (name.to_owned(), Action::Sleep(Duration::from_millis(ms))),
                    (_, Some(ms)) => (name.to_owned(), Action::FailAfter(Duration::from_millis(ms))),
                    _ => (name.to_owned(), Action::Fail),
                }
            }
            None => (s.to_owned(), Action::Fail),
        })
        .collect()
}

/// Fails with an injected error when `name` is enabled to fail.
pub fn check(name: &str) -> Result<(), Status> {
    if enabled().iter().any(|(p, a)| p == name && matches!(a, Action::Fail | Action::FailAfter(_))) {
        tracing::warn!(failpoint = name, "injected failure");
        return Err(Status::internal(format!("injected failure at failpoint {name}")));
    }
    Ok(())
}

/// Waits when `name` is enabled to sleep, then fails when it is enabled to fail.
pub async fn hit(name: &str) -> Result<(), Status> {
    delay(name).await;
    check(name)
}

/// [`hit`] on a blocking thread (the delay sleeps the thread): for points inside a blocking
/// task.
pub fn hit_blocking(name: &str) -> Result<(), Status> {
    for (p, a) in enabled() {
        if let (true, Action::Sleep(d) | Action::FailAfter(d)) = (p == name, a) {
            tracing::warn!(failpoint = name, ms = d.as_millis() as u64, "injected delay");
            std::thread::sleep(*d);
        }
    }
    check(name)
}

/// Only the delay of `name` (for points where failing is not possible).
pub async fn delay(name: &str) {
    for (p, a) in enabled() {
        if let (true, Action::Sleep(d) | Action::FailAfter(d)) = (p == name, a) {
            tracing::warn!(failpoint = name, ms = d.as_millis() as u64, "injected delay");
            tokio::time::sleep(*d).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_failures_and_sleeps() {
        let p = parse("a, b=sleep:250,c=bogus,d=fail-after:40");
        assert_eq!(p.len(), 4);
        assert!(matches!(&p[3], (n, Action::FailAfter(d)) if n == "d" && d.as_millis() == 40));
        assert!(matches!(&p[0], (n, Action::Fail) if n == "a"));
        assert!(matches!(&p[1], (n, Action::Sleep(d)) if n == "b" && d.as_millis() == 250));
        assert!(matches!(&p[2], (n, Action::Fail) if n == "c"));
    }
}
