//! Exec, Attach and PortForward: validate the request and hand out a single-use URL on the
//! streaming server (`crate::streaming`), where the session itself runs.

use proto::cri::*;
use tonic::Status;

use super::container::refresh;
use super::RuntimeSvc;
use crate::store::{ContainerState, PodState};
use crate::streaming::{AttachTarget, ExecTarget, PortForwardTarget, StreamRequest, StreamingError};

fn url_error(rpc: &str, e: StreamingError) -> Status {
    match e {
        StreamingError::NotServing => Status::unavailable(format!("{rpc}: {e}")),
        StreamingError::TooMany(_) => Status::resource_exhausted(format!("{rpc}: {e}")),
    }
}

/// At least one stream; with a tty, stderr is merged into stdout (the CRI contract).
fn check_streams(rpc: &str, stdin: bool, stdout: bool, stderr: bool) -> Result<(), Status> {
    if !stdin && !stdout && !stderr {
        return Err(Status::invalid_argument(format!("{rpc}: one of stdin, stdout and stderr must be set")));
    }
    Ok(())
}

impl RuntimeSvc {
    /// The running container's id and state directory.
    async fn running_container(&self, rpc: &str, id: &str) -> Result<(String, std::path::PathBuf, bool), Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument(format!("{rpc}: container_id is required")));
        }
        let entry = self.container_or_not_found(id)?;
        let c = refresh(&self.ctx, &entry).await;
        if c.state != ContainerState::Running {
            return Err(Status::failed_precondition(format!("{rpc}: container {} is not running", c.id)));
        }
        let dir = self.ctx.container_dir(&c.id);
        Ok((c.id, dir, c.config.tty))
    }

    pub(super) async fn exec_impl(&self, req: ExecRequest) -> Result<ExecResponse, Status> {
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("Exec: cmd is required"));
        }
        check_streams("Exec", req.stdin, req.stdout, req.stderr)?;
        let (container_id, container_dir, _) = self.running_container("Exec", &req.container_id).await?;
        let target = ExecTarget {
            container_id,
            container_dir,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr && !req.tty,
        };
        let url = self.ctx.streaming.url_for(StreamRequest::Exec(target)).map_err(|e| url_error("Exec", e))?;
        Ok(ExecResponse { url })
    }

    pub(super) async fn attach_impl(&self, req: AttachRequest) -> Result<AttachResponse, Status> {
        check_streams("Attach", req.stdin, req.stdout, req.stderr)?;
        let (container_id, container_dir, _tty) = self.running_container("Attach", &req.container_id).await?;
        let target = AttachTarget {
            container_id,
            container_dir,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr && !req.tty,
        };
        let url = self.ctx.streaming.url_for(StreamRequest::Attach(target)).map_err(|e| url_error("Attach", e))?;
        Ok(AttachResponse { url })
    }

    pub(super) async fn port_forward_impl(&self, req: PortForwardRequest) -> Result<PortForwardResponse, Status> {
        if req.pod_sandbox_id.is_empty() {
            return Err(Status::invalid_argument("PortForward: pod_sandbox_id is required"));
        }
        if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Status::invalid_argument(format!("PortForward: port {p} is out of range")));
        }
        let entry = self.pod_or_not_found(&req.pod_sandbox_id)?;
        let (pod_id, netns) = {
            let p = entry.get();
            if p.state != PodState::Ready {
                return Err(Status::failed_precondition(format!("PortForward: pod sandbox {} is not ready", p.id)));
            }
            (p.id, p.namespaces.net)
        };
        let target = PortForwardTarget { pod_id, netns };
        let url =
            self.ctx.streaming.url_for(StreamRequest::PortForward(target)).map_err(|e| url_error("PortForward", e))?;
        Ok(PortForwardResponse { url })
    }
}
