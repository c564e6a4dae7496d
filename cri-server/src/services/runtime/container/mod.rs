//! Containers: CreateContainer (`create`), StartContainer (`start`), StopContainer (`stop`),
//! RemoveContainer (`remove`), ContainerStatus (`status`), ListContainers (`list`),
//! ReopenContainerLog (`log`), one module per RPC as containerd's `internal/cri/server` has them.
//!
//! A container's process runs under its own `skiff-monitor`; skiffd learns about its exit from
//! the exit record the monitor writes (`STATE/containers/<id>/exit.json`), on every read of the
//! container and from a background sweep that also releases the rootfs mount and cgroup of
//! exited containers (`exit`).

mod create;
mod exit;
mod list;
mod log;
mod remove;
mod start;
mod status;
mod stop;

use std::sync::Arc;

use nix::sys::signal::Signal;
use runtime::monitor::MonitorError;
use tokio::sync::Mutex;
use tonic::Status;

use super::RuntimeSvc;
use crate::store::{ContainerRecord, ContainerState, Lookup};

pub(crate) use exit::{process_alive, refresh, release_runtime_resources, spawn_exit_sweeper};
pub(crate) use status::container_status;

fn container_state(s: ContainerState) -> proto::cri::ContainerState {
    match s {
        ContainerState::Creating | ContainerState::Created => proto::cri::ContainerState::ContainerCreated,
        ContainerState::Running => proto::cri::ContainerState::ContainerRunning,
        ContainerState::Exited => proto::cri::ContainerState::ContainerExited,
        ContainerState::Unknown => proto::cri::ContainerState::ContainerUnknown,
    }
}

fn monitor_status(e: MonitorError, doing: &str) -> Status {
    match e {
        MonitorError::StartError(m) => Status::unknown(format!("{doing}: {m}")),
        MonitorError::Timeout => Status::deadline_exceeded(format!("{doing}: timed out")),
        other => Status::internal(format!("{doing}: {other}")),
    }
}

/// Parses an image's StopSignal ("SIGQUIT", "QUIT", "3"); SIGTERM when empty or unknown.
pub(crate) fn parse_signal(s: &str) -> i32 {
    let s = s.trim();
    if s.is_empty() {
        return Signal::SIGTERM as i32;
    }
    if let Ok(n) = s.parse::<i32>() {
        return n;
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().map(|s| s as i32).unwrap_or(Signal::SIGTERM as i32)
}

impl RuntimeSvc {
    pub(crate) fn find_container(&self, id: &str) -> Result<Option<Arc<Mutex<ContainerRecord>>>, Status> {
        match self.ctx.containers.lookup(id) {
            Lookup::Found(c) => Ok(Some(c)),
            Lookup::NotFound => Ok(None),
            Lookup::Ambiguous => Err(Status::invalid_argument(format!("container ID prefix {id:?} is ambiguous"))),
        }
    }

    pub(crate) fn container_or_not_found(&self, id: &str) -> Result<Arc<Mutex<ContainerRecord>>, Status> {
        self.find_container(id)?.ok_or_else(|| Status::not_found(format!("container {id:?} not found")))
    }
}
