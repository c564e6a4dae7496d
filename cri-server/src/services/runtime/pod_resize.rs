//! UpdatePodSandboxResources (in-place pod resize, CRI 1.33+): the kubelet reports the pod's
//! new pod-level resources (the sum of its containers' and the pod overhead) after it has
//! reconfigured the pod cgroup itself. skiff records them in the pod's config (so that
//! `crictl inspectp` shows them and a restart keeps them) and, for a pod cgroup that skiff
//! created (a pod with no cgroup_parent, under `runtime.default_cgroup_parent`), applies them:
//! memory and CPU quota as resources + overhead, shares summed, the rest from `resources`.
//! A cgroup that the kubelet made is never written: it is the kubelet's. The CRI calls this
//! best effort; an unknown pod is NotFound, bad values InvalidArgument.

use proto::cri::{LinuxContainerResources, UpdatePodSandboxResourcesRequest, UpdatePodSandboxResourcesResponse};
use tonic::Status;
use tracing::Instrument;

use super::container::detached;
use super::RuntimeSvc;
use crate::error::{from_kind, join_error, StatusExt};
use crate::store::{Mode, PodState, Transition};

/// The pod-level limits: `resources` plus `overhead` where both are limits, shares summed.
pub(crate) fn pod_limits(
    resources: Option<&LinuxContainerResources>,
    overhead: Option<&LinuxContainerResources>,
) -> LinuxContainerResources {
    let mut out = resources.cloned().unwrap_or_default();
    let Some(o) = overhead else { return out };
    // A limit of 0 is "none": overhead does not turn an unlimited pod into a limited one.
    if out.memory_limit_in_bytes > 0 && o.memory_limit_in_bytes > 0 {
        out.memory_limit_in_bytes = out.memory_limit_in_bytes.saturating_add(o.memory_limit_in_bytes);
    }
    if out.cpu_quota > 0 && o.cpu_quota > 0 {
        let period = if out.cpu_period > 0 { out.cpu_period } else { 100_000 };
        let o_period = if o.cpu_period > 0 { o.cpu_period } else { 100_000 };
        // overhead's quota scaled to the pod's period
        let extra =
            (i128::from(o.cpu_quota) * i128::from(period) / i128::from(o_period)).clamp(0, i128::from(i64::MAX));
        out.cpu_quota = out.cpu_quota.saturating_add(extra as i64);
        out.cpu_period = period;
    }
    if out.cpu_shares > 0 && o.cpu_shares > 0 {
        out.cpu_shares = out.cpu_shares.saturating_add(o.cpu_shares);
    }
    out
}

impl RuntimeSvc {
    pub(super) async fn update_pod_sandbox_resources_impl(
        &self,
        req: UpdatePodSandboxResourcesRequest,
    ) -> Result<UpdatePodSandboxResourcesResponse, Status> {
        let entry = self.pod_or_not_found(&req.pod_sandbox_id)?;
        let limits = pod_limits(req.resources.as_ref(), req.overhead.as_ref());
        let oci = crate::spec::resources_from_cri(&limits)
            .map_err(|e| from_kind(e.kind(), format!("UpdatePodSandboxResources: resources: {e}")))?;
        let ctx = self.ctx.clone();
        // A task of its own: a cancelled call still records what it applied.
        detached(async move {
            let id = entry.get().id;
            let span = tracing::info_span!("update_pod_sandbox_resources", pod_id = %id);
            async {
                let _t = entry
                    .begin(Transition::Updating, Mode::Exclusive)
                    .await
                    .map_err(|_| Status::not_found(format!("pod sandbox {id:?} not found")))?;
                let pod = entry.get();
                if pod.state == PodState::Ready && !pod.cgroup_parent.is_empty() {
                    let (ctx, cg) = (ctx.clone(), pod.cgroup_parent.clone());
                    let applied = tokio::task::spawn_blocking(move || -> Result<bool, runtime::Error> {
                        if !ctx.cgroups.created_by_skiff(&cg)? {
                            return Ok(false);
                        }
                        ctx.cgroups.apply(&cg, &oci)?;
                        Ok(true)
                    })
                    .await
                    .map_err(join_error)?
                    .status("apply the pod resources")?;
                    tracing::info!(applied, "pod resources updated");
                }
                entry.update(|r| {
                    let linux = r.config.linux.get_or_insert_with(Default::default);
                    linux.resources = req.resources;
                    linux.overhead = req.overhead;
                });
                ctx.pod_store.save_entry(&id, &entry).await.status("persist the pod")?;
                Ok(UpdatePodSandboxResourcesResponse {})
            }
            .instrument(span)
            .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_adds_to_limits_only() {
        let r = LinuxContainerResources {
            memory_limit_in_bytes: 100 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpu_shares: 512,
            ..Default::default()
        };
        let o = LinuxContainerResources {
            memory_limit_in_bytes: 10 << 20,
            cpu_quota: 5_000,
            cpu_period: 50_000,
            cpu_shares: 10,
            ..Default::default()
        };
        let p = pod_limits(Some(&r), Some(&o));
        assert_eq!(p.memory_limit_in_bytes, 110 << 20);
        assert_eq!((p.cpu_quota, p.cpu_period), (60_000, 100_000));
        assert_eq!(p.cpu_shares, 522);
        // unlimited stays unlimited
        let p = pod_limits(Some(&LinuxContainerResources::default()), Some(&o));
        assert_eq!((p.memory_limit_in_bytes, p.cpu_quota), (0, 0));
        assert_eq!(pod_limits(None, None), LinuxContainerResources::default());
        let huge = LinuxContainerResources { memory_limit_in_bytes: i64::MAX, ..Default::default() };
        assert_eq!(pod_limits(Some(&huge), Some(&o)).memory_limit_in_bytes, i64::MAX);
    }
}
