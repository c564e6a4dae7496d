//! Plain request/response types of the network plugin API (independent of the CRI protobufs).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Lower-case name as used by nftables and CNI (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One CRI `PortMapping`: traffic to `host_port` on the node (optionally only on `host_ip`)
/// is forwarded to `container_port` of the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: u16,
    /// 0 = no host port (the mapping is then ignored, like containerd does).
    pub host_port: u16,
    /// `None` = every local address of the node.
    pub host_ip: Option<IpAddr>,
}

/// DNS settings of the pod (passed to CNI plugins that declare the `dns` capability).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Everything the plugin needs to wire one pod to the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNetworkRequest {
    /// Pod sandbox id (CRI id). Keys leases, veth names, rules and CNI caches.
    pub id: String,
    /// Pod metadata name, namespace and uid (for CNI_ARGS `K8S_POD_*`).
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The pinned network namespace of the pod (`STATE/pods/<id>/ns/net`).
    pub netns_path: PathBuf,
    pub port_mappings: Vec<PortMapping>,
    pub hostname: String,
    pub dns: Option<DnsConfig>,
    /// Pod cgroup parent (CNI `cgroupPath` capability).
    pub cgroup_parent: String,
    pub annotations: BTreeMap<String, String>,
}

/// Result of a successful setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetworkStatus {
    /// The pod's addresses: IPv4 first, then IPv6. The first is the CRI `PodSandboxNetworkStatus.ip`,
    /// the rest go to `additional_ips`.
    pub ips: Vec<IpAddr>,
    /// Name of the pod's interface inside its netns (`eth0`).
    pub interface: String,
}

/// Why the network is not ready (CRI `RuntimeCondition` NetworkReady = false).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    /// Short CamelCase reason, e.g. `NoCniConfig`, `InvalidCniConfig`, `BridgeSetupFailed`.
    pub reason: String,
    /// Human-readable detail (names the file and the problem).
    pub message: String,
}

impl NotReady {
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { reason: reason.into(), message: message.into() }
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for NotReady {}
