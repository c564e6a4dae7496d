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

impl PortMapping {
    /// From the fields of a CRI `PortMapping` (`protocol`: the CRI enum value TCP=0, UDP=1,
    /// SCTP=2; ports as i32; `host_ip` "" = all addresses). Bad values are `InvalidArgument`.
    pub fn from_cri(protocol: i32, container_port: i32, host_port: i32, host_ip: &str) -> crate::Result<Self> {
        let bad = |what: String| crate::NetworkError::InvalidArgument(format!("port mapping: {what}"));
        let protocol = match protocol {
            0 => Protocol::Tcp,
            1 => Protocol::Udp,
            2 => Protocol::Sctp,
            p => return Err(bad(format!("unknown protocol {p}"))),
        };
        let container_port =
            u16::try_from(container_port).map_err(|_| bad(format!("container port {container_port} out of range")))?;
        let host_port = u16::try_from(host_port).map_err(|_| bad(format!("host port {host_port} out of range")))?;
        let host_ip = match host_ip.trim() {
            "" => None,
            s => Some(s.parse::<IpAddr>().map_err(|_| bad(format!("host IP {s:?} is not an IP address")))?),
        };
        Ok(Self { protocol, container_port, host_port, host_ip })
    }
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

impl PodNetworkStatus {
    /// CRI `PodSandboxNetworkStatus.ip` (the first address, IPv4 when there is one).
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.ips.first().copied()
    }

    /// CRI `PodSandboxNetworkStatus.additional_ips`.
    pub fn additional_ips(&self) -> &[IpAddr] {
        self.ips.get(1..).unwrap_or(&[])
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mapping_from_cri() {
        let m = PortMapping::from_cri(1, 53, 5353, "127.0.0.1").unwrap();
        assert_eq!(m.protocol, Protocol::Udp);
        assert_eq!((m.container_port, m.host_port), (53, 5353));
        assert_eq!(m.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(PortMapping::from_cri(0, 80, 0, "").unwrap().host_ip, None);
        assert!(PortMapping::from_cri(7, 80, 80, "").is_err());
        assert!(PortMapping::from_cri(0, 70000, 80, "").is_err());
        assert!(PortMapping::from_cri(0, 80, -1, "").is_err());
        assert!(PortMapping::from_cri(0, 80, 80, "nope").is_err());
        let st = PodNetworkStatus {
            ips: vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
            interface: "eth0".into(),
        };
        assert_eq!(st.primary_ip(), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(st.additional_ips().len(), 1);
        assert!(PodNetworkStatus { ips: vec![], interface: String::new() }.additional_ips().is_empty());
    }
}
