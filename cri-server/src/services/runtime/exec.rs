//! ExecSync: a command inside a running container (all its namespaces, cgroup, user and
//! security settings) through `skiff-monitor exec` (`Monitors::exec_sync`), with a timeout and
//! capped output.

use std::time::Duration;

use proto::cri::{ExecSyncRequest, ExecSyncResponse};
use runtime::monitor::MonitorError;
use tonic::Status;
use tracing::Instrument;

use super::container::refresh;
use super::RuntimeSvc;
use crate::error::join_error;
use crate::store::ContainerState;

/// Output kept per stream.
const MAX_OUTPUT: usize = 16 * 1024 * 1024;
/// Output kept in all: the response must stay under the gRPC message limit (16 MiB, the
/// kubelet's too), or the caller would get an encoding error instead of the (capped) output.
const MAX_RESPONSE_OUTPUT: usize = 16 * 1024 * 1024 - 1024;

/// Trims stdout and stderr to [`MAX_RESPONSE_OUTPUT`] together; stderr keeps up to 64 KiB of
/// its head, stdout gets the rest.
fn fit_response(stdout: &mut Vec<u8>, stderr: &mut Vec<u8>) {
    if stdout.len() + stderr.len() <= MAX_RESPONSE_OUTPUT {
        return;
    }
    let err_room = stderr.len().min(64 * 1024).max(MAX_RESPONSE_OUTPUT.saturating_sub(stdout.len()));
    stderr.truncate(err_room);
    stdout.truncate(MAX_RESPONSE_OUTPUT - stderr.len());
}

impl RuntimeSvc {
    pub(super) async fn exec_sync_impl(&self, req: ExecSyncRequest) -> Result<ExecSyncResponse, Status> {
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("ExecSync: cmd is required"));
        }
        let entry = self.container_or_not_found(&req.container_id)?;
        let (id, cdir) = {
            let c = refresh(&self.ctx, &entry).await;
            if c.state != ContainerState::Running {
                return Err(Status::failed_precondition(format!("container {} is not running", c.id)));
            }
            (c.id.clone(), self.ctx.container_dir(&c.id))
        };
        let span = tracing::info_span!("exec_sync", container_id = %id);
        let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
        let ctx = self.ctx.clone();
        let cmd = req.cmd.clone();
        let out = tokio::task::spawn_blocking(move || ctx.monitors.exec_sync(&cdir, &cmd, timeout, MAX_OUTPUT))
            .instrument(span)
            .await
            .map_err(join_error)?;
        match out {
            Ok(mut o) => {
                fit_response(&mut o.stdout, &mut o.stderr);
                Ok(ExecSyncResponse { stdout: o.stdout, stderr: o.stderr, exit_code: o.exit_code })
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_fits_the_message_limit() {
        let (mut out, mut err) = (vec![b'o'; MAX_OUTPUT], b"done\n".to_vec());
        fit_response(&mut out, &mut err);
        assert_eq!(err, b"done\n");
        assert_eq!(out.len() + err.len(), MAX_RESPONSE_OUTPUT);
        let (mut out, mut err) = (vec![b'o'; MAX_OUTPUT], vec![b'e'; MAX_OUTPUT]);
        fit_response(&mut out, &mut err);
        assert_eq!(err.len(), 64 * 1024);
        assert_eq!(out.len() + err.len(), MAX_RESPONSE_OUTPUT);
        let (mut out, mut err) = (b"x".to_vec(), vec![b'e'; MAX_OUTPUT]);
        fit_response(&mut out, &mut err);
        assert_eq!(out, b"x");
        assert_eq!(out.len() + err.len(), MAX_RESPONSE_OUTPUT);
        let (mut out, mut err) = (b"small".to_vec(), b"small".to_vec());
        fit_response(&mut out, &mut err);
        assert_eq!((out.len(), err.len()), (5, 5));
    }
}
