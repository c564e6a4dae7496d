//! StopContainer: the stop signal, SIGKILL after the timeout, then the whole cgroup.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use proto::cri::*;
use runtime::monitor::{self, MonitorError};
use tokio::sync::Mutex;
use tonic::Status;
use tracing::Instrument;

use super::exit::refresh;
use super::monitor_status;
use crate::context::Context;
use crate::error::join_error;
use crate::services::runtime::RuntimeSvc;
use crate::store::{ContainerRecord, ContainerState};

/// How long to wait for the exit after SIGKILL before killing the whole cgroup.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl RuntimeSvc {
    pub(in crate::services::runtime) async fn stop_container_impl(
        &self,
        req: StopContainerRequest,
    ) -> Result<StopContainerResponse, Status> {
        // Idempotent: stopping a container that does not exist (any more) is not an error.
        let Some(entry) = self.find_container(&req.container_id)? else {
            return Ok(StopContainerResponse {});
        };
        let id = entry.lock().await.id.clone();
        let span = tracing::info_span!("stop_container", container_id = %id);
        stop_container(&self.ctx, &entry, Duration::from_secs(req.timeout.max(0) as u64)).instrument(span).await?;
        Ok(StopContainerResponse {})
    }

    /// Stops every container of a pod at once (no grace period), as StopPodSandbox does.
    pub(in crate::services::runtime) async fn stop_pod_containers(&self, pod_id: &str) -> Result<(), Status> {
        for (_, c) in self.ctx.containers.all() {
            if c.lock().await.pod_id == pod_id {
                stop_container(&self.ctx, &c, Duration::ZERO).await?;
            }
        }
        Ok(())
    }
}

/// Stops a container: its stop signal, then SIGKILL after `timeout` (at once for 0), then the
/// whole cgroup if even that does not end it. Idempotent.
pub(crate) async fn stop_container(
    ctx: &Arc<Context>,
    entry: &Arc<Mutex<ContainerRecord>>,
    timeout: Duration,
) -> Result<(), Status> {
    let (socket, signal, cgroup) = {
        let mut c = entry.lock().await;
        refresh(ctx, &mut c).await;
        // Never started, or already exited: nothing to stop (containerd leaves a created
        // container CREATED too).
        if c.state != ContainerState::Running {
            return Ok(());
        }
        (ctx.container_dir(&c.id).join(monitor::SOCKET_FILE), c.stop_signal, c.cgroup_path.clone())
    };
    // The record is not locked while we wait, so that status calls keep answering.
    let ctx2 = ctx.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<(), MonitorError> {
        let mut client = match monitor::Client::connect(&socket) {
            Ok(c) => c,
            Err(MonitorError::MonitorGone) => return Ok(()),
            Err(e) => return Err(e),
        };
        let kill = Signal::SIGKILL as i32;
        if !timeout.is_zero() && signal != kill {
            client.signal(signal)?;
            match client.wait_exit(Some(timeout)) {
                Ok(_) | Err(MonitorError::MonitorGone) => return Ok(()),
                Err(MonitorError::Timeout) => {}
                Err(e) => return Err(e),
            }
        }
        match client.signal(kill) {
            Ok(()) => {}
            Err(MonitorError::MonitorGone) => return Ok(()),
            Err(e) => return Err(e),
        }
        // Every other process of the container too (containerd's `kill --all`): in a shared
        // (pod or node) PID namespace they outlive the main process and hold its output open,
        // so the exit would be recorded only after the monitor's drain grace.
        let _ = ctx2.cgroups.kill_all(&cgroup);
        match client.wait_exit(Some(KILL_WAIT)) {
            Ok(_) | Err(MonitorError::MonitorGone) => Ok(()),
            Err(MonitorError::Timeout) => {
                // Something holds on (a process stuck in the kernel?): kill the whole cgroup.
                let _ = ctx2.cgroups.kill_all(&cgroup);
                match client.wait_exit(Some(KILL_WAIT)) {
                    Ok(_) | Err(MonitorError::MonitorGone) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(join_error)?;
    res.map_err(|e| monitor_status(e, "stop the container"))?;
    let mut c = entry.lock().await;
    // The monitor writes the record before it exits; give it a moment if it is still at it.
    for _ in 0..50 {
        refresh(ctx, &mut c).await;
        if c.state != ContainerState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(exit_code = c.exit_code, "container stopped");
    Ok(())
}
