//! Types shared by skiffd (client side) and the monitor binary.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File names inside a container directory.
pub const CONFIG_FILE: &str = "config.json";
pub const MONITOR_CONFIG_FILE: &str = "monitor.json";
pub const SOCKET_FILE: &str = "monitor.sock";
pub const PID_FILE: &str = "monitor.pid";
pub const EXIT_FILE: &str = "exit.json";
/// The monitor's own diagnostics (one line per event); skiffd may show it on errors.
pub const MONITOR_LOG_FILE: &str = "monitor.log";

/// Version of `monitor.json` written by this code.
pub const MONITOR_CONFIG_VERSION: u32 = 1;
/// Version of `exit.json` written by this code.
pub const EXIT_RECORD_VERSION: u32 = 1;

/// Settings of one monitor, `<container-dir>/monitor.json`, written by skiffd before
/// [`spawn`](super::spawn). All paths absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorConfig {
    pub version: u32,
    pub container_id: String,
    /// CRI log file (kubelet format). `None`: output is discarded.
    #[serde(default)]
    pub log_path: Option<PathBuf>,
    /// The pod's log directory, which `log_path` must stay beneath: the monitor opens the log
    /// relative to it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`. `None`: only the
    /// last component is opened without following a symlink.
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// Where the exit record is written (normally `<dir>/exit.json`).
    pub exit_record_path: PathBuf,
    /// The monitor's unix socket (normally `<dir>/monitor.sock`).
    pub socket_path: PathBuf,
    /// Monitor pid file (normally `<dir>/monitor.pid`); written at start, removed at exit.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// Monitor diagnostics (normally `<dir>/monitor.log`). `None`: discarded.
    #[serde(default)]
    pub debug_log_path: Option<PathBuf>,
    /// CRI `tty`: the container gets a pseudo terminal as stdin/stdout/stderr (its
    /// controlling terminal); everything it prints is logged as `stdout`.
    #[serde(default)]
    pub tty: bool,
    /// CRI `stdin`: the container's stdin is a pipe the monitor holds open (reads block, as
    /// with containerd when nobody is attached); otherwise /dev/null.
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    /// The host's cgroup hierarchies as skiffd found them at its start (the ones it made the
    /// container's cgroup in). `None`: the monitor reads `/proc/self/mountinfo`, whose size
    /// grows with every mount on the node (1.2 ms for 1000 mounts on the development VM), on
    /// the way to starting the container or an exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_hierarchies: Option<crate::cgroups::Hierarchies>,
}

impl MonitorConfig {
    /// Defaults for a container directory: every file inside `container_dir`.
    pub fn new(container_dir: &Path, container_id: &str, log_path: Option<PathBuf>) -> Self {
        MonitorConfig {
            version: MONITOR_CONFIG_VERSION,
            container_id: container_id.to_string(),
            log_path,
            log_dir: None,
            exit_record_path: container_dir.join(EXIT_FILE),
            socket_path: container_dir.join(SOCKET_FILE),
            pid_file: Some(container_dir.join(PID_FILE)),
            debug_log_path: Some(container_dir.join(MONITOR_LOG_FILE)),
            tty: false,
            stdin: false,
            stdin_once: false,
            cgroup_hierarchies: None,
        }
    }

    /// Reads `<container_dir>/monitor.json`.
    pub fn load(container_dir: &Path) -> Result<Self, MonitorError> {
        let path = container_dir.join(MONITOR_CONFIG_FILE);
        let data = std::fs::read(&path).map_err(|e| MonitorError::Config(format!("read {}: {e}", path.display())))?;
        let cfg: MonitorConfig = serde_json::from_slice(&data)
            .map_err(|e| MonitorError::Config(format!("parse {}: {e}", path.display())))?;
        if cfg.version == 0 || cfg.version > MONITOR_CONFIG_VERSION {
            return Err(MonitorError::Config(format!("{}: unsupported version {}", path.display(), cfg.version)));
        }
        Ok(cfg)
    }

    /// Writes `<container_dir>/monitor.json` atomically (temp file, fsync, rename, fsync dir).
    pub fn write(&self, container_dir: &Path) -> Result<(), MonitorError> {
        let data =
            serde_json::to_vec_pretty(self).map_err(|e| MonitorError::Config(format!("encode monitor.json: {e}")))?;
        write_atomic(&container_dir.join(MONITOR_CONFIG_FILE), &data)?;
        Ok(())
    }
}

/// The durable record of a container's end, `exit.json`, written atomically by the monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub version: u32,
    pub container_id: String,
    /// Exit status; 128+signal when killed by a signal; 128 for a start error.
    pub exit_code: i32,
    /// The signal that killed the process, if any.
    #[serde(default)]
    pub signal: Option<i32>,
    /// The kernel OOM killer fired in the container's cgroup while it ran.
    #[serde(default)]
    pub oom_killed: bool,
    /// Unix nanos of the exec (None when the start failed).
    #[serde(default)]
    pub started_at: Option<i64>,
    /// Unix nanos of the exit (or of the start failure).
    pub finished_at: i64,
    /// Kubelet-style reason: `Completed`, `Error`, `OOMKilled`, `StartError`.
    #[serde(default)]
    pub reason: Option<String>,
    /// Details, e.g. the start error message.
    #[serde(default)]
    pub message: Option<String>,
}

/// A successful start: the container process (host pid) and the monitor's pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub pid: i32,
    pub monitor_pid: i32,
}

/// State reported by a monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    Running,
    /// The process has exited; the monitor is finishing (draining output, writing the record).
    Exited,
}

/// Answer to [`Client::status`](super::Client::status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pid: i32,
    pub state: ContainerState,
    /// Unix nanos.
    pub started_at: i64,
    /// Present once the process has exited.
    #[serde(default)]
    pub exit: Option<ExitRecord>,
}

/// Result of [`exec_sync`](super::exec_sync).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Exit status, 128+signal when killed by a signal.
    pub exit_code: i32,
    /// Output beyond `max_output` was dropped.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// A started pod infra process (PID 1 of a pod-level PID namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfraStarted {
    /// Host pid; containers join `/proc/<pid>/ns/pid`.
    pub pid: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The monitor binary could not be started.
    #[error("cannot run monitor {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The container process (or exec'd command) could not be started: command not found,
    /// bad mount, namespace join failure… The message is meant for the user.
    #[error("{0}")]
    StartError(String),
    /// Bad or unreadable monitor.json / config.json.
    #[error("monitor config: {0}")]
    Config(String),
    /// The monitor answered with an error.
    #[error("monitor: {0}")]
    Remote(String),
    /// Malformed message or unexpected answer.
    #[error("monitor protocol: {0}")]
    Protocol(String),
    /// The monitor is not running (socket missing, refused or closed): read the exit record.
    #[error("monitor is gone")]
    MonitorGone,
    #[error("timed out")]
    Timeout,
    #[error("monitor i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Replaces `path` atomically (temp file, rename), mode 0644. Every file the monitor writes
/// (monitor.json, its pid file, the exit record) lives in the container's dir under the
/// volatile state dir, so nothing is fsynced: a crash of any process leaves the old or the new
/// content, and a reboot empties the directory (see `common::fs::write_replace`).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    common::fs::write_replace(path, data, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_config_carries_the_cgroup_hierarchies() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = MonitorConfig::new(d.path(), "c1", None);
        cfg.write(d.path()).unwrap();
        // Without them (as written before they were handed over): the monitor finds them.
        assert!(!std::fs::read_to_string(d.path().join(MONITOR_CONFIG_FILE)).unwrap().contains("cgroup_hierarchies"));
        assert_eq!(MonitorConfig::load(d.path()).unwrap().cgroup_hierarchies, None);
        let h = crate::cgroups::Hierarchies::from_mountinfo(
            "30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n\
             31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n",
        );
        assert_eq!(h.v1.len(), 2);
        cfg.cgroup_hierarchies = Some(h.clone());
        cfg.write(d.path()).unwrap();
        assert_eq!(MonitorConfig::load(d.path()).unwrap().cgroup_hierarchies, Some(h));
    }
}
