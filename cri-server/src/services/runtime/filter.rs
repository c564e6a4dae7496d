//! The filters of the List RPCs (ID prefix, pod ID prefix, label selector), in one place for
//! ListPodSandbox, ListContainers, the stats and metrics lists and their streaming forms.

use std::collections::HashMap;

use super::pod::labels_match;
use super::RuntimeSvc;
use crate::services::runtime::container::{refresh, ContainerEntry};
use crate::store::{ContainerRecord, ContainerState, PodRecord};

impl RuntimeSvc {
    /// Records of the containers matching a filter (creating ones excluded).
    pub(in crate::services::runtime) async fn containers_matching(
        &self,
        id: &str,
        pod_id: &str,
        labels: &HashMap<String, String>,
    ) -> Vec<ContainerRecord> {
        let mut out = Vec::new();
        for (cid, entry) in self.ctx.containers.all() {
            if !id.is_empty() && !cid.starts_with(id) {
                continue;
            }
            let c = entry.get();
            if c.state == ContainerState::Creating
                || (!pod_id.is_empty() && !c.pod_id.starts_with(pod_id))
                || !labels_match(&c.config.labels, labels)
            {
                continue;
            }
            out.push(refresh(&self.ctx, &entry).await);
        }
        out
    }

    /// Entries of the containers matching a filter (creating ones excluded), as they are: the
    /// caller notices exits itself (the stats lists do, in their batched reads).
    pub(in crate::services::runtime) fn container_entries_matching(
        &self,
        id: &str,
        pod_id: &str,
        labels: &HashMap<String, String>,
    ) -> Vec<ContainerEntry> {
        let mut out = Vec::new();
        for (cid, entry) in self.ctx.containers.all() {
            if !id.is_empty() && !cid.starts_with(id) {
                continue;
            }
            let skip = entry.read(|c| {
                c.state == ContainerState::Creating
                    || (!pod_id.is_empty() && !c.pod_id.starts_with(pod_id))
                    || !labels_match(&c.config.labels, labels)
            });
            if !skip {
                out.push(entry);
            }
        }
        out
    }

    /// Records of the pods matching an ID prefix and a label selector.
    pub(in crate::services::runtime) fn pods_matching(
        &self,
        id: &str,
        labels: &HashMap<String, String>,
    ) -> Vec<PodRecord> {
        self.ctx
            .pods
            .all()
            .into_iter()
            .filter(|(pid, _)| id.is_empty() || pid.starts_with(id))
            .map(|(_, e)| e.get())
            .filter(|p| labels_match(&p.config.labels, labels))
            .collect()
    }
}
