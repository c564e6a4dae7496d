//! ListContainers.

use proto::cri::*;
use tonic::Status;

use super::container_state;
use super::exit::refresh;
use super::status::image_spec;
use crate::services::runtime::pod::labels_match;
use crate::services::runtime::RuntimeSvc;
use crate::store::ContainerState;

impl RuntimeSvc {
    pub(in crate::services::runtime) async fn list_containers_impl(
        &self,
        req: ListContainersRequest,
    ) -> Result<ListContainersResponse, Status> {
        let filter = req.filter.unwrap_or_default();
        let mut out = Vec::new();
        for (id, entry) in self.ctx.containers.all() {
            if !filter.id.is_empty() && !id.starts_with(&filter.id) {
                continue;
            }
            let c = entry.get();
            if c.state == ContainerState::Creating {
                continue;
            }
            if !filter.pod_sandbox_id.is_empty() && !c.pod_id.starts_with(&filter.pod_sandbox_id) {
                continue;
            }
            let c = refresh(&self.ctx, &entry).await;
            let state = container_state(c.state);
            if let Some(s) = &filter.state {
                if s.state != state as i32 {
                    continue;
                }
            }
            if !labels_match(&c.config.labels, &filter.label_selector) {
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
