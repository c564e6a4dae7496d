//! The records skiffd keeps of pods and containers.

use std::path::PathBuf;

use proto::cri::{ContainerConfig, PodSandboxConfig};
use serde::{Deserialize, Serialize};

/// Nanoseconds since the Unix epoch, as the CRI reports times.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// A new random 64-hex-digit ID.
pub fn new_id() -> String {
    let a: u128 = rand::random();
    let b: u128 = rand::random();
    format!("{a:032x}{b:032x}")
}

/// Life cycle of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    /// RunPodSandbox is under way (or was interrupted: recovery rolls it back).
    Creating,
    Ready,
    NotReady,
}

/// How a pod's namespaces were set up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNamespaces {
    /// Pin files; `None` = the node's namespace.
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// The pod's user namespace pin (CRI `userns_options` mode POD); the pinned net, ipc and
    /// uts namespaces are owned by it. `None` = the node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<PathBuf>,
    /// PID 1 of the pod's own PID namespace (only for pods that ask for one).
    pub infra_pid: Option<i32>,
    /// Start time of `infra_pid` (from /proc/<pid>/stat), to notice pid reuse.
    pub infra_start_time: Option<u64>,
}

/// What skiffd knows of a pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    /// `name_namespace_uid_attempt`, reserved while the pod exists.
    pub name: String,
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
    pub state: PodState,
    pub created_at: i64,
    /// The pod cgroup in cgroupfs form.
    pub cgroup_parent: String,
    pub namespaces: PodNamespaces,
    /// Pod IPs, the primary first.
    pub ips: Vec<String>,
    /// Whether the network plugin holds resources for this pod (torn down at stop).
    pub network_set_up: bool,
    /// Whether /dev/shm of the pod is a tmpfs skiff mounted.
    pub shm_mounted: bool,
    /// Set when a cleanup step failed: what is left and why. The pod stays visible.
    pub error: Option<String>,
    /// RemovePodSandbox answered while the pod's network teardown was under way in the
    /// background, and left the end of the removal to it: the pod is out of the index (every
    /// call finds no such pod), its name stays reserved, and this record is kept until the
    /// veth and the lease are gone (then deleted). A failure puts the pod back, NOTREADY with
    /// its `error`. Recovery finishes such a removal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removing: bool,
    /// A background network teardown ([`spawn_network_teardown`]) is under way (never stored).
    ///
    /// [`spawn_network_teardown`]: crate::services::runtime::pod_extras::spawn_network_teardown
    #[serde(skip)]
    pub teardown_in_flight: bool,
}

/// Life cycle of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// CreateContainer under way (or interrupted: recovery rolls it back).
    Creating,
    Created,
    Running,
    Exited,
    Unknown,
}

/// What skiffd knows of a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    /// `name_podname_namespace_uid_attempt`, reserved while the container exists.
    pub name: String,
    pub config: ContainerConfig,
    /// The image as the request named it.
    pub image: String,
    /// The image ID (config digest).
    pub image_id: String,
    /// The image reference the container runs (a repo digest when known).
    pub image_ref: String,
    pub state: ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`… (empty while running).
    pub reason: String,
    pub message: String,
    /// The container's init process on the host, while running.
    pub pid: Option<i32>,
    /// The monitor's pid, while it runs.
    pub monitor_pid: Option<i32>,
    /// The container cgroup in cgroupfs form.
    pub cgroup_path: String,
    /// Full path of the CRI log file ("" = no log).
    pub log_path: String,
    /// The signal the image asks for on stop (0 = SIGTERM).
    pub stop_signal: i32,
    /// Set when a cleanup step failed: what is left and why.
    pub error: Option<String>,
    /// The process identity resolved at create (reported in `ContainerStatus.user`); absent in
    /// records written before it was kept.
    #[serde(default)]
    pub user: Option<ContainerUserIds>,
    /// The cleanup after the exit ran in this skiffd (rootfs unmounted, cgroup removed, record
    /// persisted): a later cleanup has nothing to do. Not persisted: recovery cleans up again.
    #[serde(skip)]
    pub cleaned_up: bool,
    /// A StartContainer of this CREATED container began (written durably before the monitor
    /// may start it): the RUNNING record written next is not waited for, so after a power cut
    /// this mark is what tells recovery that the start may have been acknowledged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starting: bool,
}

/// The effective uid, gid and supplemental groups of a container's process (inside its user
/// namespace, when it has one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerUserIds {
    pub uid: u32,
    pub gid: u32,
    /// All the process' groups, the primary gid first (as `id -G` shows them).
    pub supplemental_groups: Vec<u32>,
}
