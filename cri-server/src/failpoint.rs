//! Failpoints for rollback tests: `SKIFF_FAILPOINTS=pod:after_network,container:after_spec`
//! makes the named steps of skiffd's flows fail with an injected error, so that tests can check
//! that every step before them is undone (as containerd's CRI tests do with their failpoints).
//! Read once at start; with the variable unset a check costs one comparison.

use std::sync::OnceLock;

use tonic::Status;

/// The failpoints skiffd knows, in flow order (for the tests and the docs).
pub const ALL: &[&str] = &[
    "pod:after_setup",
    "pod:after_network",
    "container:after_rootfs",
    "container:after_spec",
    "start:after_mount",
    "start:after_cgroup",
];

fn enabled() -> &'static [String] {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("SKIFF_FAILPOINTS")
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    })
}

/// Fails with an injected error when `name` is enabled.
pub fn check(name: &str) -> Result<(), Status> {
    if enabled().iter().any(|p| p == name) {
        tracing::warn!(failpoint = name, "injected failure");
        return Err(Status::internal(format!("injected failure at failpoint {name}")));
    }
    Ok(())
}
