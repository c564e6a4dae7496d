//! ReopenContainerLog: the monitor reopens the CRI log file (after the kubelet rotated it).

use proto::cri::*;
use runtime::monitor;
use tonic::Status;

use super::exit::refresh;
use super::{container_or_not_found, detached, monitor_status};
use crate::error::join_error;
use crate::services::runtime::RuntimeSvc;
use crate::store::ContainerState;

impl RuntimeSvc {
    pub(in crate::services::runtime) async fn reopen_container_log_impl(
        &self,
        req: ReopenContainerLogRequest,
    ) -> Result<ReopenContainerLogResponse, Status> {
        let ctx = self.ctx.clone();
        detached(async move {
            let entry = container_or_not_found(&ctx, &req.container_id)?;
            let c = refresh(&ctx, &entry).await;
            if c.state != ContainerState::Running {
                return Err(Status::failed_precondition(format!("container {} is not running", c.id)));
            }
            let socket = ctx.container_dir(&c.id).join(monitor::SOCKET_FILE);
            let ctx2 = ctx.clone();
            tokio::task::spawn_blocking(move || ctx2.monitors.connect(&socket)?.reopen_log())
                .await
                .map_err(join_error)?
                .map_err(|e| monitor_status(e, "reopen the log"))?;
            Ok(ReopenContainerLogResponse {})
        })
        .await
    }
}
