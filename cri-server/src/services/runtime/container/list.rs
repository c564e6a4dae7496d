//! ListContainers.

use proto::cri::*;
use tonic::Status;

use super::container_state;
use super::status::image_spec;
use crate::services::runtime::RuntimeSvc;

impl RuntimeSvc {
    pub(in crate::services::runtime) async fn list_containers_impl(
        &self,
        req: ListContainersRequest,
    ) -> Result<ListContainersResponse, Status> {
        let filter = req.filter.unwrap_or_default();
        let mut out = Vec::new();
        for c in self.containers_matching(&filter.id, &filter.pod_sandbox_id, &filter.label_selector).await {
            let state = container_state(c.state);
            if filter.state.as_ref().is_some_and(|s| s.state != state as i32) {
                continue;
            }
            out.push(Container {
                id: c.id.clone(),
                pod_sandbox_id: c.pod_id.clone(),
                metadata: c.config.metadata.clone(),
                image: Some(image_spec(&c)),
                image_ref: c.image_ref.clone(),
                state: state as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.image_id.clone(),
            });
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        Ok(ListContainersResponse { containers: out })
    }
}
