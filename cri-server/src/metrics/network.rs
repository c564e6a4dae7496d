//! A [`NetworkPlugin`] wrapper that times `setup` and `teardown` into
//! `skiff_network_operation_duration_seconds`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use netplugin::{NetworkPlugin, NotReady, PodNetworkRequest, PodNetworkStatus, Result};

use super::METRICS;

/// See the module doc.
pub struct Timed(pub Arc<dyn NetworkPlugin>);

/// Wraps a plugin so that its calls are timed.
pub fn wrap(inner: Arc<dyn NetworkPlugin>) -> Arc<dyn NetworkPlugin> {
    Arc::new(Timed(inner))
}

impl NetworkPlugin for Timed {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn setup<'a>(&'a self, req: &'a PodNetworkRequest) -> BoxFuture<'a, Result<PodNetworkStatus>> {
        Box::pin(async move {
            let start = Instant::now();
            let r = self.0.setup(req).await;
            METRICS.network("setup", r.is_ok(), start.elapsed());
            r
        })
    }

    fn teardown<'a>(&'a self, req: &'a PodNetworkRequest) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let start = Instant::now();
            let r = self.0.teardown(req).await;
            METRICS.network("teardown", r.is_ok(), start.elapsed());
            r
        })
    }

    fn teardown_front<'a>(&'a self, req: &'a PodNetworkRequest) -> BoxFuture<'a, Result<bool>> {
        self.0.teardown_front(req)
    }

    fn status(&self) -> BoxFuture<'_, std::result::Result<(), NotReady>> {
        self.0.status()
    }

    fn recover<'a>(&'a self, live_pod_ids: &'a HashSet<String>) -> BoxFuture<'a, Result<()>> {
        self.0.recover(live_pod_ids)
    }

    fn pod_ips<'a>(&'a self, pod_id: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>>> {
        self.0.pod_ips(pod_id)
    }

    fn set_pod_cidrs<'a>(&'a self, cidrs: &'a str) -> BoxFuture<'a, Result<bool>> {
        self.0.set_pod_cidrs(cidrs)
    }

    fn pod_cidrs(&self) -> Option<(String, &'static str)> {
        self.0.pod_cidrs()
    }
}
