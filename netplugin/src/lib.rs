//! Pod networking for skiff: a bridge set up through netlink, IPAM, port mappings, and the
//! execution of standard CNI plugins.
//!
//! cri-server talks to one [`NetworkPlugin`] made by [`open`] from the `[network]` section:
//! - RunPodSandbox (pods not on the host network): [`NetworkPlugin::setup`] with the pinned netns
//!   `STATE/pods/<id>/ns/net`; the returned IPs (IPv4 first) go to `PodSandboxStatus`;
//! - StopPodSandbox / RemovePodSandbox: [`NetworkPlugin::teardown`] (idempotent, tolerant of a
//!   netns, veth or lease that is already gone);
//! - Status: [`NetworkPlugin::status`] for the `NetworkReady` condition;
//! - startup: [`NetworkPlugin::recover`] with the ids of the pods that are still alive.
//!
//! Implementations: [`BridgeNetwork`] (built in, default) and [`CniNetwork`] (`plugin = "cni"`).
//! hostNetwork pods never call into this crate.
//!
//! Wiring in cri-server (sketch):
//! ```ignore
//! let net: Arc<dyn NetworkPlugin> = netplugin::open(&config.network, &config.root)?;
//! net.recover(&live_pod_ids).await?;             // at startup, before serving
//! let req = PodNetworkRequest {
//!     id: pod_id.clone(),
//!     name: meta.name.clone(), namespace: meta.namespace.clone(), uid: meta.uid.clone(),
//!     netns_path: state.join("pods").join(&pod_id).join("ns/net"),
//!     port_mappings: cfg.port_mappings.iter()
//!         .map(|p| PortMapping::from_cri(p.protocol, p.container_port, p.host_port, &p.host_ip))
//!         .collect::<Result<_, _>>()?,
//!     hostname: cfg.hostname.clone(),
//!     dns: None, cgroup_parent: String::new(), annotations: cfg.annotations.clone().into_iter().collect(),
//! };
//! let st = net.setup(&req).await?;               // rollback guard: net.teardown(&req)
//! // PodSandboxNetworkStatus { ip: st.primary_ip(), additional_ips: st.additional_ips() }
//! net.teardown(&req).await?;                     // StopPodSandbox / RemovePodSandbox
//! match net.status().await { Ok(()) => ready, Err(nr) => (nr.reason, nr.message) }
//! ```
//! Everything must run inside a tokio runtime with IO enabled.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod bridge;
pub mod cidr;
pub mod cni;
pub mod config;
pub mod error;
mod fsutil;
pub mod ipam;
mod nfnl;
pub mod nft;
pub mod podcidr;
mod rtnl;
mod sysctl;
pub mod types;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;

pub use bridge::BridgeNetwork;
pub use cni::CniNetwork;
pub use config::{NetworkConfig, PluginKind};
pub use error::{NetworkError, Result};
pub use types::{DnsConfig, NotReady, PodNetworkRequest, PodNetworkStatus, PortMapping, Protocol};

/// A pod network implementation. Object safe: cri-server holds an `Arc<dyn NetworkPlugin>`
/// (and tests may substitute a fake). All methods are safe to call concurrently for different pods.
pub trait NetworkPlugin: Send + Sync {
    /// `bridge` or `cni`.
    fn name(&self) -> &'static str;

    /// Wire the pod's netns to the network. On failure everything acquired is rolled back.
    fn setup<'a>(&'a self, req: &'a PodNetworkRequest) -> BoxFuture<'a, Result<PodNetworkStatus>>;

    /// Undo `setup`. Idempotent: succeeds when the netns, interface, rules or lease are already
    /// gone (also after a failed or partial setup). An error means something is still held and the
    /// call should be retried (the lease is kept until then).
    fn teardown<'a>(&'a self, req: &'a PodNetworkRequest) -> BoxFuture<'a, Result<()>>;

    /// The part of `teardown` that must be done before StopPodSandbox answers (a pod's
    /// port mappings stop at once); `Ok(true)` when the rest (interface, lease) is left to a
    /// later `teardown` (which the caller must run: until then the pod keeps its address),
    /// `Ok(false)` when it is all done. By default the whole `teardown`.
    fn teardown_front<'a>(&'a self, req: &'a PodNetworkRequest) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.teardown(req).await.map(|()| false) })
    }

    /// `Ok` when pods can be set up (NetworkReady = true), else the reason.
    fn status(&self) -> BoxFuture<'_, Result<(), NotReady>>;

    /// At startup: release what pods not in `live_pod_ids` still hold (leases, rules, veths, CNI
    /// attachments) and make sure the host side is in place. Pods in `live_pod_ids` keep their
    /// addresses.
    fn recover<'a>(&'a self, live_pod_ids: &'a HashSet<String>) -> BoxFuture<'a, Result<()>>;

    /// The addresses currently recorded for a pod (IPv4 first); empty when none.
    fn pod_ips<'a>(&'a self, pod_id: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>>>;

    /// The node's pod ranges from the kubelet (`UpdateRuntimeConfig`: `10.244.1.0/24` or
    /// `10.244.1.0/24,fd00:1::/64`). `Ok(true)` when the ranges changed; plugins that do not
    /// manage addresses themselves (CNI: the conflist decides) ignore it.
    fn set_pod_cidrs<'a>(&'a self, cidrs: &'a str) -> BoxFuture<'a, Result<bool>> {
        let _ = cidrs;
        Box::pin(async { Ok(false) })
    }

    /// The pod ranges in force and where they came from (`config`, `kubelet`, `fallback`), if
    /// the plugin manages them and knows them.
    fn pod_cidrs(&self) -> Option<(String, &'static str)> {
        None
    }
}

/// The plugin selected by `config.plugin`; state (leases, CNI result cache) lives under
/// `root/network/`. Does not touch the host network yet.
pub fn open(config: &NetworkConfig, root: &Path) -> Result<Arc<dyn NetworkPlugin>> {
    Ok(match config.plugin {
        PluginKind::Bridge => Arc::new(BridgeNetwork::new(config, root)?),
        PluginKind::Cni => Arc::new(CniNetwork::new(config, root)?),
    })
}

/// Pod ids key files, interface names and rule comments: keep them plain.
pub(crate) fn validate_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 100
        || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        || id.starts_with('.')
    {
        return Err(NetworkError::InvalidArgument(format!(
            "pod id {id:?}: must be 1-100 characters of letters, digits, '_', '-', '.'"
        )));
    }
    Ok(())
}

pub(crate) fn validate_request(req: &PodNetworkRequest) -> Result<()> {
    validate_id(&req.id)?;
    if req.netns_path.as_os_str().is_empty() {
        return Err(NetworkError::InvalidArgument(format!("pod {}: no network namespace path", req.id)));
    }
    let mut seen = HashSet::new();
    for m in &req.port_mappings {
        if m.container_port == 0 && m.host_port != 0 {
            return Err(NetworkError::InvalidArgument(format!(
                "port mapping {}/{}: container port 0",
                m.protocol, m.host_port
            )));
        }
        if m.host_port != 0 && !seen.insert((m.protocol, m.host_port, m.host_ip)) {
            return Err(NetworkError::InvalidArgument(format!(
                "host port {}/{} mapped twice",
                m.protocol, m.host_port
            )));
        }
    }
    Ok(())
}
