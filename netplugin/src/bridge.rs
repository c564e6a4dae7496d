//! The built-in bridge network: a Linux bridge, one veth pair per pod, host-local IPAM and
//! nftables rules for masquerade and host ports. Everything is done in-process through rtnetlink.
//!
//! Per pod (`setup`):
//! 1. ensure the host side: bridge (`bridge`, MTU, fixed MAC, gateway = first address of each pod
//!    range), `ip_forward` (and IPv6 forwarding for dual stack), `route_localnet` on the bridge, the
//!    nftables table;
//! 2. lease one address per range (IPAM, persisted under `ROOT/network/`);
//! 3. create the veth pair: host end `skv<12 hex of sha256(bridge, pod id)>` on the bridge with
//!    hairpin mode, peer created directly inside the pod netns as `eth0`;
//! 4. inside the pod netns (netlink socket opened by a short-lived thread): `lo` up, `eth0` up,
//!    addresses, default route(s) via the gateway(s);
//! 5. host-port DNAT rules tagged with the pod id, recorded in `ROOT/network/hostports/<id>.json`.
//!
//! Each step registers its undo; a failure runs the undos in reverse order. `teardown` removes the
//! rules (and their record), deletes the host veth (which destroys the pod end) and releases the
//! leases; each step tolerates "already gone". `recover` removes leases, rules, records and veths
//! of pods that are not alive. When the host side has to be made again (at start, or because the
//! bridge or the table was deleted behind skiff's back, noticed by `status` or `setup`), the veths
//! of pods holding leases go back on the bridge and their recorded host ports back in the table.
//! hostNetwork pods never reach this module (cri-server does not call setup for them).

use std::collections::HashSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};

use crate::cidr::Cidr;
use crate::config::NetworkConfig;
use crate::error::{NetworkError, Result};
use crate::fsutil::{remove_durable, write_atomic};
use crate::ipam::Ipam;
use crate::nft::{nft_binary, BaseRules, Nft};
use crate::podcidr::{PodCidr, Ranges, Source};
use crate::rtnl::{self, Rtnl, EEXIST};
use crate::sysctl;
use crate::types::{NotReady, PodNetworkRequest, PodNetworkStatus, PortMapping};
use crate::{validate_request, NetworkPlugin};

/// Name of the pod's interface.
pub const POD_IFNAME: &str = "eth0";
/// Prefix of the host ends of skiff's veth pairs.
pub const VETH_PREFIX: &str = "skv";

/// Where a test can make `setup` fail (to check rollback and teardown after partial failure).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    AfterLease,
    AfterVeth,
    AfterPodConfig,
    AfterPortMappings,
}

/// The built-in bridge plugin.
pub struct BridgeNetwork {
    bridge: String,
    /// The pod ranges (configured, from the kubelet, or the fallback).
    cidr: Arc<PodCidr>,
    /// Held shared by `setup`, exclusively while the pod ranges change.
    range_lock: tokio::sync::RwLock<()>,
    mtu: u32,
    masquerade: bool,
    ipam: Arc<Ipam>,
    nft: Nft,
    /// Serializes changes of the nftables rules.
    nft_lock: tokio::sync::Mutex<()>,
    /// Serializes host setup; true once the host side was set up.
    host_ready: tokio::sync::Mutex<bool>,
    fail_point: Mutex<Option<FailPoint>>,
    /// `root/network/hostports/`: the host ports of each pod, to restore its rules when the
    /// nftables table was deleted behind skiff's back (e.g. a firewall reload's `flush ruleset`).
    ports_dir: PathBuf,
}

/// What `ports_dir/<pod id>.json` holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct HostPortsRecord {
    version: u32,
    ips: Vec<IpAddr>,
    port_mappings: Vec<PortMapping>,
}

const HOST_PORTS_VERSION: u32 = 1;

enum Undo {
    Lease,
    Veth(String),
    Rules,
}

impl BridgeNetwork {
    /// A bridge network from the `[network]` section; leases live under `root/network/`.
    /// Nothing on the host is changed until `status`, `recover` or `setup` is called.
    pub fn new(config: &NetworkConfig, root: &Path) -> Result<Self> {
        let bridge = config.bridge.clone();
        if bridge.is_empty()
            || bridge.len() > 15
            || !bridge.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(NetworkError::Config(format!(
                "bridge {bridge:?}: must be 1-15 characters of letters, digits, '_' and '-'"
            )));
        }
        let configured = if config.pod_cidr.trim().is_empty() {
            if !config.pod_cidr_v6.trim().is_empty() {
                return Err(NetworkError::Config("pod_cidr_v6 needs pod_cidr (an IPv4 range) too".into()));
            }
            None
        } else {
            let v4: Cidr = config.pod_cidr.parse().map_err(|e| NetworkError::Config(format!("pod_cidr: {e}")))?;
            if v4.is_ipv6() {
                return Err(NetworkError::Config(format!("pod_cidr {v4} must be an IPv4 range")));
            }
            v4.pod_offsets().ok_or_else(|| NetworkError::Config(format!("pod_cidr {v4} is too small")))?;
            Some(Ranges { v4, v6: Self::configured_v6(config)? })
        };
        if !(576..=65535).contains(&config.mtu) {
            return Err(NetworkError::Config(format!("mtu {} out of range 576..65535", config.mtu)));
        }
        let cidr = PodCidr::open(configured, &root.join("network"), config.pod_cidr_fallback_secs)?;
        let ranges = cidr.get().map(|(r, _)| r.list()).unwrap_or_default();
        Ok(Self {
            bridge,
            cidr: Arc::new(cidr),
            range_lock: tokio::sync::RwLock::new(()),
            mtu: config.mtu,
            masquerade: config.masquerade,
            ipam: Arc::new(Ipam::new(&root.join("network"), ranges)),
            nft: Nft::new(&config.nft_table_name())?,
            nft_lock: tokio::sync::Mutex::new(()),
            host_ready: tokio::sync::Mutex::new(false),
            fail_point: Mutex::new(None),
            ports_dir: root.join("network").join("hostports"),
        })
    }

    fn configured_v6(config: &NetworkConfig) -> Result<Option<Cidr>> {
        Ok(if config.pod_cidr_v6.trim().is_empty() {
            None
        } else {
            let c: Cidr = config.pod_cidr_v6.parse().map_err(|e| NetworkError::Config(format!("pod_cidr_v6: {e}")))?;
            if !c.is_ipv6() {
                return Err(NetworkError::Config(format!("pod_cidr_v6 {c} must be an IPv6 range")));
            }
            c.pod_offsets().ok_or_else(|| NetworkError::Config(format!("pod_cidr_v6 {c} is too small")))?;
            Some(c)
        })
    }

    /// The pod ranges in force (falling back once the wait is over), or why there are none.
    async fn ranges(&self) -> Result<Ranges> {
        if let Some((r, _)) = self.cidr.get() {
            return Ok(r);
        }
        let cidr = self.cidr.clone();
        let r = tokio::task::spawn_blocking(move || cidr.resolve())
            .await
            .map_err(|e| NetworkError::Internal(format!("pod range task failed: {e}")))?
            .map_err(NetworkError::NotReady)?;
        self.ipam.set_ranges(r.list());
        Ok(r)
    }

    /// The pod ranges in force and where they came from (`None` = none yet).
    pub fn pod_ranges(&self) -> Option<(Ranges, Source)> {
        self.cidr.get()
    }

    /// Takes the node's pod ranges from the kubelet (`10.244.1.0/24[,fd00:1::/64]`). Ignored
    /// (`Ok(false)`) when the configuration sets `pod_cidr` or the ranges are unchanged. A change
    /// while any pod holds an address is refused (the old ranges stay). On a change the bridge
    /// and the nftables table are made again with the new ranges.
    pub async fn set_pod_ranges(&self, cidrs: &str) -> Result<bool> {
        let new = Ranges::parse_kubelet(cidrs)?;
        let _excl = self.range_lock.write().await;
        match self.cidr.get() {
            Some((r, Source::Config)) => {
                if r != new {
                    tracing::info!(
                        configured = %r.to_kubelet_string(), kubelet = %cidrs,
                        "network.pod_cidr is set: the kubelet's pod CIDR is not used"
                    );
                }
                return Ok(false);
            }
            Some((r, Source::Kubelet)) if r == new => return Ok(false),
            Some((r, Source::Fallback)) if r == new => {
                // The kubelet confirms the fallback range: record where it now comes from, the
                // host side and the pods stay as they are.
                let cidr = self.cidr.clone();
                tokio::task::spawn_blocking(move || cidr.set(new))
                    .await
                    .map_err(|e| NetworkError::Internal(format!("pod range task failed: {e}")))??;
                return Ok(false);
            }
            _ => {}
        }
        let leases = self.ipam_call(|i| i.leases()).await?;
        if !leases.is_empty() {
            let old = self.cidr.get().map(|(r, _)| r.to_kubelet_string()).unwrap_or_default();
            return Err(NetworkError::RangeInUse(format!(
                "cannot change the pod range from {old} to {cidrs}: {} pod(s) hold addresses (e.g. pod {});                  the old range stays until they are removed",
                leases.iter().map(|l| &l.pod_id).collect::<HashSet<_>>().len(),
                leases[0].pod_id
            )));
        }
        let cidr = self.cidr.clone();
        let old = tokio::task::spawn_blocking(move || cidr.set(new))
            .await
            .map_err(|e| NetworkError::Internal(format!("pod range task failed: {e}")))??;
        let Some(old) = old else { return Ok(false) };
        self.ipam.set_ranges(new.list());
        tracing::info!(
            old = %old.map(|r| r.to_kubelet_string()).unwrap_or_else(|| "none".into()),
            new = %new.to_kubelet_string(),
            "pod range set from the kubelet"
        );
        if old.is_some() {
            // The bridge's gateway addresses and the table's rules name the old ranges.
            self.remove_host_network().await?;
        }
        self.ensure_host().await?;
        Ok(true)
    }

    /// The lease store (for diagnostics and tests).
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// The nftables table (for diagnostics and tests).
    pub fn nft(&self) -> &Nft {
        &self.nft
    }

    /// Name of the bridge.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Name of the host end of a pod's veth pair (derived from bridge name and pod id).
    pub fn host_veth_name(&self, pod_id: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.bridge.as_bytes());
        h.update([0u8]);
        h.update(pod_id.as_bytes());
        let hex = hex::encode(h.finalize());
        format!("{VETH_PREFIX}{}", &hex[..12])
    }

    #[doc(hidden)]
    pub fn set_fail_point(&self, fp: Option<FailPoint>) {
        if let Ok(mut g) = self.fail_point.lock() {
            *g = fp;
        }
    }

    fn check_fail_point(&self, here: FailPoint) -> Result<()> {
        let hit = self.fail_point.lock().map(|g| *g == Some(here)).unwrap_or(false);
        if hit {
            return Err(NetworkError::Internal(format!("injected failure at {here:?}")));
        }
        Ok(())
    }

    async fn ipam_call<T: Send + 'static>(&self, f: impl FnOnce(&Ipam) -> Result<T> + Send + 'static) -> Result<T> {
        let ipam = self.ipam.clone();
        tokio::task::spawn_blocking(move || f(&ipam))
            .await
            .map_err(|e| NetworkError::Internal(format!("IPAM task failed: {e}")))?
    }

    /// Make sure the bridge, sysctls and nftables base rules exist (cheap when they do).
    pub async fn ensure_host(&self) -> Result<()> {
        let mut ready = self.host_ready.lock().await;
        let nl = Rtnl::host()?;
        if *ready && nl.link(&self.bridge).await?.is_some() && self.nft.table_exists().await? {
            return Ok(());
        }
        *ready = false;
        let ranges = self.ranges().await?;
        self.setup_host(&nl, &ranges).await?;
        *ready = true;
        drop(ready);
        // The bridge or the table may have been deleted and made again: pods holding addresses
        // get their veths back on the bridge and their host ports back in the table.
        let pods: HashSet<String> = self.ipam_call(|i| i.leases()).await?.into_iter().map(|l| l.pod_id).collect();
        self.reattach_veths(&pods).await?;
        self.restore_host_ports(&pods).await;
        Ok(())
    }

    fn ports_path(&self, pod_id: &str) -> PathBuf {
        self.ports_dir.join(format!("{pod_id}.json"))
    }

    /// Re-adds the host-port rules of the pods in `pods` that have a record but no rules
    /// (failures are logged: the pods keep working from inside the cluster).
    async fn restore_host_ports(&self, pods: &HashSet<String>) {
        let dir = self.ports_dir.clone();
        let records = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_suffix(".json") else { continue };
                match std::fs::read(e.path()).map(|b| serde_json::from_slice::<HostPortsRecord>(&b)) {
                    Ok(Ok(r)) => out.push((id.to_string(), r)),
                    Ok(Err(err)) => {
                        tracing::warn!(file = %e.path().display(), error = %err, "unreadable host-port record")
                    }
                    Err(err) => tracing::warn!(file = %e.path().display(), error = %err, "unreadable host-port record"),
                }
            }
            out
        })
        .await
        .unwrap_or_default();
        let _g = self.nft_lock.lock().await;
        for (id, rec) in records {
            // Teardown removes the record under the same lock: gone now = torn down meanwhile.
            if !pods.contains(&id) || !self.ports_path(&id).exists() {
                continue;
            }
            match self.nft.pod_rule_count(&id).await {
                Ok(0) => match self.nft.add_pod(&id, &rec.port_mappings, &rec.ips).await {
                    Ok(()) => tracing::info!(pod = %id, "restored the host-port rules of a pod"),
                    Err(e) => tracing::warn!(pod = %id, error = %e, "cannot restore the host-port rules of a pod"),
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(pod = %id, error = %e, "cannot list the host-port rules of a pod"),
            }
        }
    }

    /// Records (or, with `None`, forgets) the host ports of a pod.
    async fn save_host_ports(&self, pod_id: &str, rec: Option<HostPortsRecord>) -> Result<()> {
        let path = self.ports_path(pod_id);
        tokio::task::spawn_blocking(move || match rec {
            Some(rec) => {
                let data =
                    serde_json::to_vec(&rec).map_err(|e| NetworkError::Internal(format!("encode host ports: {e}")))?;
                write_atomic(&path, &data)
            }
            None => remove_durable(&path),
        })
        .await
        .map_err(|e| NetworkError::Internal(format!("host-port record task failed: {e}")))?
    }

    async fn setup_host(&self, nl: &Rtnl, ranges: &Ranges) -> Result<()> {
        let br = &self.bridge;
        let link = match nl.link(br).await? {
            Some(l) => l,
            None => {
                match nl.handle.link().add(LinkBridge::new(br).mtu(self.mtu).build()).execute().await {
                    Ok(()) => tracing::info!(bridge = %br, "created bridge"),
                    Err(e) => {
                        let e = NetworkError::netlink(format!("create bridge {br}"), e);
                        if e.errno() != Some(EEXIST) {
                            return Err(e);
                        }
                    }
                }
                let l = nl.link(br).await?.ok_or_else(|| NetworkError::Internal(format!("bridge {br} vanished")))?;
                // Pin the MAC address: otherwise the bridge takes the lowest MAC of its ports and
                // changes it as pods come and go, confusing the pods' ARP caches.
                if let Some(mac) = rtnl::link_address(&l) {
                    let _ = nl
                        .handle
                        .link()
                        .set(LinkUnspec::new_with_index(l.header.index).address(mac.to_vec()).build())
                        .execute()
                        .await;
                }
                l
            }
        };
        if rtnl::link_kind(&link) != Some(&InfoKind::Bridge) {
            return Err(NetworkError::Config(format!("link {br} exists and is not a bridge")));
        }
        let idx = link.header.index;
        if rtnl::link_mtu(&link) != Some(self.mtu) {
            nl.handle
                .link()
                .set(LinkUnspec::new_with_index(idx).mtu(self.mtu).build())
                .execute()
                .await
                .map_err(|e| NetworkError::netlink(format!("set mtu of {br}"), e))?;
        }
        for range in &ranges.list() {
            let gw = range.gateway().ok_or_else(|| NetworkError::Config(format!("{range} has no gateway")))?;
            nl.add_address(idx, gw, range.prefix(), br).await?;
        }
        nl.set_up(idx, br).await?;
        sysctl::set("net.ipv4.ip_forward", "1")?;
        sysctl::set(&format!("net.ipv4.conf.{br}.route_localnet"), "1")?;
        if ranges.v6.is_some() {
            sysctl::set("net.ipv6.conf.all.forwarding", "1")?;
        }
        let _g = self.nft_lock.lock().await;
        self.nft
            .ensure_base(&BaseRules { bridge: br.clone(), v4: ranges.v4, v6: ranges.v6, masquerade: self.masquerade })
            .await
    }

    async fn do_setup(&self, req: &PodNetworkRequest, undo: &mut Vec<Undo>) -> Result<PodNetworkStatus> {
        self.ensure_host().await?;
        let ranges = self.ranges().await?;
        let (id, name, ns) = (req.id.clone(), req.name.clone(), req.namespace.clone());
        undo.push(Undo::Lease);
        let ips = self.ipam_call(move |i| i.allocate(&id, &name, &ns)).await?;
        self.check_fail_point(FailPoint::AfterLease)?;

        let nl = Rtnl::host()?;
        let host_if = self.host_veth_name(&req.id);
        if nl.delete_link(&host_if).await? {
            tracing::warn!(pod = %req.id, veth = %host_if, "removed a leftover veth");
        }
        let netns = File::open(&req.netns_path).map_err(|e| NetworkError::io("open netns", &req.netns_path, e))?;
        let bridge_idx = nl.index(&self.bridge).await?;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(POD_IFNAME)
            .mtu(self.mtu)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let veth = LinkVeth::new(&host_if, POD_IFNAME)
            .mtu(self.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        undo.push(Undo::Veth(host_if.clone()));
        nl.handle
            .link()
            .add(veth)
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(format!("create veth {host_if}"), e))?;
        drop(netns);
        let host_idx = nl.index(&host_if).await?;
        nl.handle
            .link()
            .set(LinkUnspec::new_with_index(host_idx).controller(bridge_idx).up().build())
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(format!("attach {host_if} to {}", self.bridge), e))?;
        nl.handle
            .link()
            .set_port(LinkBridgePort::new(host_idx).hairpin(true).build())
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(format!("hairpin mode on {host_if}"), e))?;
        self.check_fail_point(FailPoint::AfterVeth)?;

        self.configure_pod(&req.netns_path, &ips, &ranges).await?;
        self.check_fail_point(FailPoint::AfterPodConfig)?;

        if req.port_mappings.iter().any(|m| m.host_port != 0) {
            undo.push(Undo::Rules);
            let rec = HostPortsRecord {
                version: HOST_PORTS_VERSION,
                ips: ips.clone(),
                port_mappings: req.port_mappings.clone(),
            };
            self.save_host_ports(&req.id, Some(rec)).await?;
            let _g = self.nft_lock.lock().await;
            if let Err(e) = self.nft.add_pod(&req.id, &req.port_mappings, &ips).await {
                // The table may have been removed behind our back: recreate it once and retry.
                if self.nft.table_exists().await? {
                    return Err(e);
                }
                drop(_g);
                *self.host_ready.lock().await = false;
                self.ensure_host().await?;
                let _g = self.nft_lock.lock().await;
                self.nft.add_pod(&req.id, &req.port_mappings, &ips).await?;
            }
        }
        self.check_fail_point(FailPoint::AfterPortMappings)?;
        Ok(PodNetworkStatus { ips, interface: POD_IFNAME.to_string() })
    }

    /// Inside the pod's netns: lo and eth0 up, addresses, default routes.
    async fn configure_pod(&self, netns: &Path, ips: &[IpAddr], ranges: &Ranges) -> Result<()> {
        let pod = Rtnl::in_netns(netns).await?;
        let lo = pod.index("lo").await?;
        pod.set_up(lo, "lo").await?;
        let eth0 = pod.index(POD_IFNAME).await?;
        for ip in ips {
            let prefix = if ip.is_ipv6() { ranges.v6.map(|c| c.prefix()).unwrap_or(64) } else { ranges.v4.prefix() };
            pod.add_address(eth0, *ip, prefix, POD_IFNAME).await?;
        }
        pod.set_up(eth0, POD_IFNAME).await?;
        for ip in ips {
            let res = match ip {
                IpAddr::V4(_) => {
                    let Some(IpAddr::V4(gw)) = ranges.v4.gateway() else { continue };
                    let r = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).output_interface(eth0).build();
                    pod.handle.route().add(r).execute().await
                }
                IpAddr::V6(_) => {
                    let Some(IpAddr::V6(gw)) = ranges.v6.and_then(|c| c.gateway()) else { continue };
                    let r = RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw).output_interface(eth0).build();
                    pod.handle.route().add(r).execute().await
                }
            };
            if let Err(e) = res {
                let e = NetworkError::netlink(format!("add default route for {ip}"), e);
                if e.errno() != Some(EEXIST) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn rollback(&self, req: &PodNetworkRequest, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            let res = match &step {
                Undo::Rules => {
                    let _g = self.nft_lock.lock().await;
                    match self.nft.remove_pod(&req.id).await {
                        Ok(_) => self.save_host_ports(&req.id, None).await,
                        Err(e) => Err(e),
                    }
                }
                Undo::Veth(name) => match Rtnl::host() {
                    Ok(nl) => nl.delete_link(name).await.map(|_| ()),
                    Err(e) => Err(e),
                },
                Undo::Lease => {
                    let id = req.id.clone();
                    self.ipam_call(move |i| i.release(&id)).await.map(|_| ())
                }
            };
            if let Err(e) = res {
                // Left for teardown/recover to retry: the lease stays recorded, so nothing is lost.
                tracing::error!(pod = %req.id, error = %e, "network setup rollback step failed");
            }
        }
    }

    /// The host-port rules of a pod and their record (under the nft lock).
    async fn teardown_rules(&self, req: &PodNetworkRequest) -> Result<()> {
        let _g = self.nft_lock.lock().await;
        let path = self.ports_path(&req.id);
        let has_ports = tokio::task::spawn_blocking(move || path.try_exists().unwrap_or(true)).await.unwrap_or(true);
        if has_ports {
            self.nft.remove_pod(&req.id).await?;
        }
        self.save_host_ports(&req.id, None).await
    }

    async fn do_teardown(&self, req: &PodNetworkRequest) -> Result<()> {
        let mut errors = Vec::new();
        // Rules are added only after their record is written and the record is removed only
        // after the rules (both under the nft lock), so a pod without a record has no rules: no
        // `nft` run for it (startup recovery still removes strays of any pod).
        if let Err(e) = self.teardown_rules(req).await {
            errors.push(e);
        }
        let host_if = self.host_veth_name(&req.id);
        match Rtnl::host() {
            Ok(nl) => match nl.delete_link(&host_if).await {
                Ok(true) => tracing::debug!(pod = %req.id, veth = %host_if, "deleted veth"),
                Ok(false) => {}
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(e),
        }
        if errors.is_empty() {
            // Only release the addresses once the pod can no longer be using them.
            let id = req.id.clone();
            let released = self.ipam_call(move |i| i.release(&id)).await?;
            tracing::debug!(pod = %req.id, ?released, "released addresses");
            Ok(())
        } else if errors.len() == 1 {
            Err(errors.remove(0))
        } else {
            Err(NetworkError::Multiple(errors))
        }
    }

    async fn do_recover(&self, live: &HashSet<String>) -> Result<()> {
        let mut errors = Vec::new();
        // veths of dead pods on our bridge
        let keep: HashSet<String> = live.iter().map(|id| self.host_veth_name(id)).collect();
        match self.stale_veths(&keep).await {
            Ok(stale) => {
                if let Ok(nl) = Rtnl::host() {
                    for name in stale {
                        match nl.delete_link(&name).await {
                            Ok(_) => tracing::info!(veth = %name, "removed veth of a dead pod"),
                            Err(e) => errors.push(e),
                        }
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        {
            let _g = self.nft_lock.lock().await;
            match self.nft.remove_pods_except(live).await {
                Ok(n) if n > 0 => tracing::info!(rules = n, "removed host-port rules of dead pods"),
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        // Host-port records of pods that no longer exist.
        let (dir, keep) = (self.ports_dir.clone(), live.clone());
        let _ = tokio::task::spawn_blocking(move || {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.strip_suffix(".json").is_some_and(|id| !keep.contains(id)) {
                    if let Err(err) = remove_durable(&e.path()) {
                        tracing::warn!(error = %err, "cannot remove the host-port record of a dead pod");
                    }
                }
            }
        })
        .await;
        if errors.is_empty() {
            let live = live.clone();
            match self.ipam_call(move |i| i.release_except(&live)).await {
                Ok(gone) => {
                    for l in gone {
                        tracing::info!(pod = %l.pod_id, ip = %l.ip, "released lease of a dead pod");
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        // Also puts the veths of the live pods back on a bridge made again (see ensure_host).
        // No pod range yet (waiting for the kubelet) is not an error here.
        match self.ensure_host().await {
            Ok(()) | Err(NetworkError::NotReady(_)) => {}
            Err(e) => errors.push(e),
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(NetworkError::Multiple(errors)),
        }
    }

    /// Pods' host veths that are on no bridge (the bridge was deleted, while skiffd was down or
    /// behind its back, and has just been made again): attach them again, so that the pods are
    /// reachable. Failures are logged.
    async fn reattach_veths(&self, pods: &HashSet<String>) -> Result<()> {
        let nl = Rtnl::host()?;
        let bridge_idx = nl.index(&self.bridge).await?;
        for id in pods {
            let name = self.host_veth_name(id);
            let Some(link) = nl.link(&name).await? else { continue };
            if rtnl::link_controller(&link) == Some(bridge_idx) {
                continue;
            }
            let idx = link.header.index;
            let attached = nl
                .handle
                .link()
                .set(LinkUnspec::new_with_index(idx).controller(bridge_idx).up().build())
                .execute()
                .await;
            let hairpin = match attached {
                Ok(()) => nl.handle.link().set_port(LinkBridgePort::new(idx).hairpin(true).build()).execute().await,
                Err(e) => Err(e),
            };
            // A veth going away meanwhile (its pod torn down) is no reason to fail.
            match hairpin {
                Ok(()) => {
                    tracing::info!(pod = %id, veth = %name, bridge = %self.bridge, "attached a pod's veth to the bridge again")
                }
                Err(e) => {
                    tracing::warn!(pod = %id, veth = %name, error = %e, "cannot attach a pod's veth to the bridge again")
                }
            }
        }
        Ok(())
    }

    async fn stale_veths(&self, keep: &HashSet<String>) -> Result<Vec<String>> {
        let nl = Rtnl::host()?;
        let Some(br) = nl.link(&self.bridge).await? else { return Ok(Vec::new()) };
        let mut links = nl.handle.link().get().execute();
        let mut stale = Vec::new();
        while let Some(l) = links.try_next().await.map_err(|e| NetworkError::netlink("list links", e))? {
            let Some(name) = rtnl::link_name(&l) else { continue };
            if rtnl::link_controller(&l) == Some(br.header.index)
                && name.starts_with(VETH_PREFIX)
                && !keep.contains(name)
            {
                stale.push(name.to_string());
            }
        }
        Ok(stale)
    }

    /// Remove the bridge and the nftables table (uninstall, tests). Pods still attached lose
    /// their network; leases are kept.
    pub async fn remove_host_network(&self) -> Result<()> {
        let mut ready = self.host_ready.lock().await;
        *ready = false;
        let nl = Rtnl::host()?;
        nl.delete_link(&self.bridge).await?;
        let _g = self.nft_lock.lock().await;
        self.nft.delete_table().await
    }
}

impl NetworkPlugin for BridgeNetwork {
    fn name(&self) -> &'static str {
        "bridge"
    }

    fn setup<'a>(&'a self, req: &'a PodNetworkRequest) -> BoxFuture<'a, Result<PodNetworkStatus>> {
        Box::pin(async move {
            validate_request(req)?;
            let _shared = self.range_lock.read().await;
            let mut undo = Vec::new();
            match self.do_setup(req, &mut undo).await {
                Ok(st) => {
                    tracing::info!(pod = %req.id, ips = ?st.ips, "pod network set up");
                    Ok(st)
                }
                Err(e) => {
                    tracing::warn!(pod = %req.id, error = %e, "pod network setup failed, rolling back");
                    self.rollback(req, undo).await;
                    Err(e)
                }
            }
        })
    }

    fn teardown<'a>(&'a self, req: &'a PodNetworkRequest) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            crate::validate_id(&req.id)?;
            self.do_teardown(req).await
        })
    }

    /// The host-port rules only: deleting the veth waits for an RCU grace period (about 20 ms),
    /// left to the later `teardown`, which also releases the lease.
    fn teardown_front<'a>(&'a self, req: &'a PodNetworkRequest) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            crate::validate_id(&req.id)?;
            self.teardown_rules(req).await.map(|()| true)
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<(), NotReady>> {
        Box::pin(async move {
            if nft_binary().is_none() {
                return Err(NotReady::new(
                    "NftablesMissing",
                    "the nft command (Debian package nftables) was not found",
                ));
            }
            self.ensure_host().await.map_err(|e| match e {
                NetworkError::NotReady(nr) => nr,
                e => NotReady::new("BridgeSetupFailed", format!("bridge {}: {e}", self.bridge)),
            })
        })
    }

    fn recover<'a>(&'a self, live_pod_ids: &'a HashSet<String>) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.do_recover(live_pod_ids))
    }

    fn pod_ips<'a>(&'a self, pod_id: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>>> {
        let id = pod_id.to_string();
        Box::pin(async move { self.ipam_call(move |i| i.leases_of(&id)).await })
    }

    fn set_pod_cidrs<'a>(&'a self, cidrs: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.set_pod_ranges(cidrs))
    }

    fn pod_cidrs(&self) -> Option<(String, &'static str)> {
        self.cidr.get().map(|(r, src)| {
            let src = match src {
                Source::Config => "config",
                Source::Kubelet => "kubelet",
                Source::Fallback => "fallback",
            };
            (r.to_kubelet_string(), src)
        })
    }
}
