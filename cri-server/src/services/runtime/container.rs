//! Containers: CreateContainer, StartContainer, StopContainer, RemoveContainer,
//! ContainerStatus, ListContainers, ReopenContainerLog.

use tonic::Status;

use super::RuntimeSvc;

impl RuntimeSvc {
    /// Stops every container of a pod at once (no grace period), as StopPodSandbox does.
    pub(super) async fn stop_pod_containers(&self, _pod_id: &str) -> Result<(), Status> {
        Ok(())
    }

    /// Removes every container of a pod.
    pub(super) async fn remove_pod_containers(&self, _pod_id: &str) -> Result<(), Status> {
        Ok(())
    }
}
