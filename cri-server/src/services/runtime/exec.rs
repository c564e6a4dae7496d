//! ExecSync: a command inside a running container (all its namespaces, cgroup, user and
//! security settings) through `skiff-monitor exec`, with a timeout and capped output.

use std::time::Duration;

use proto::cri::{ExecSyncRequest, ExecSyncResponse};
use runtime::monitor::{self, MonitorError};
use tonic::Status;
use tracing::Instrument;

use super::container::refresh;
use super::RuntimeSvc;
use crate::error::join_error;
use crate::store::ContainerState;

/// Output kept per stream.
const MAX_OUTPUT: usize = 16 * 1024 * 1024;

impl RuntimeSvc {
    pub(super) async fn exec_sync_impl(&self, req: ExecSyncRequest) -> Result<ExecSyncResponse, Status> {
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("ExecSync: cmd is required"));
        }
        let entry = self.container_or_not_found(&req.container_id)?;
        let (id, cdir) = {
            let mut c = entry.lock().await;
            refresh(&self.ctx, &mut c).await;
            if c.state != ContainerState::Running {
                return Err(Status::failed_precondition(format!("container {} is not running", c.id)));
            }
            (c.id.clone(), self.ctx.container_dir(&c.id))
        };
        let span = tracing::info_span!("exec_sync", container_id = %id);
        let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
        let bin = self.ctx.monitor_path.clone();
        let cmd = req.cmd.clone();
        let out = tokio::task::spawn_blocking(move || monitor::exec_sync(&bin, &cdir, &cmd, timeout, MAX_OUTPUT))
            .instrument(span)
            .await
            .map_err(join_error)?;
        match out {
            Ok(o) => Ok(ExecSyncResponse { stdout: o.stdout, stderr: o.stderr, exit_code: o.exit_code }),
            Err(MonitorError::Timeout) => Err(Status::deadline_exceeded(format!(
                "ExecSync: command {:?} timed out after {}s and was killed",
                req.cmd, req.timeout
            ))),
            // The command could not be started (not found...): like runc, report it as a
            // failed exec with the message on stderr and exit code 126/127 semantics.
            Err(MonitorError::StartError(m)) => Err(Status::unknown(format!("ExecSync: {m}"))),
            Err(e) => Err(Status::internal(format!("ExecSync: {e}"))),
        }
    }
}
