//! The `[network]` section of skiffd's configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which implementation wires pods to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// The built-in netlink bridge.
    Bridge,
    /// Standard CNI plugins from `cni_bin_dirs`, configured by the first conflist in `cni_conf_dir`.
    Cni,
}

/// Network settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// `bridge` (built in) or `cni`.
    pub plugin: PluginKind,
    /// Name of the bridge the built-in plugin creates.
    pub bridge: String,
    /// IPv4 pod range; the gateway is its first address.
    pub pod_cidr: String,
    /// Optional IPv6 pod range for dual stack ("" = none).
    pub pod_cidr_v6: String,
    /// MTU of the bridge and the pods' interfaces.
    pub mtu: u32,
    /// Masquerade pod traffic that leaves the pod range.
    pub masquerade: bool,
    /// nftables table (family `inet`) of the built-in bridge; must start with `skiff`. Only this
    /// table is ever created, changed or deleted.
    pub nft_table: String,
    /// Directory holding CNI network configurations.
    pub cni_conf_dir: PathBuf,
    /// Directories searched for CNI plugin binaries, in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Time limit for one CNI plugin call, in seconds.
    pub cni_timeout_secs: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            plugin: PluginKind::Bridge,
            bridge: "skiff0".into(),
            pod_cidr: "10.88.0.0/16".into(),
            pod_cidr_v6: String::new(),
            mtu: 1500,
            masquerade: true,
            nft_table: "skiff".into(),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dirs: vec![PathBuf::from("/opt/cni/bin")],
            cni_timeout_secs: 60,
        }
    }
}
