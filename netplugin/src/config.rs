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
    /// IPv4 pod range; the gateway is its first address. "" = the node's range from the kubelet
    /// (UpdateRuntimeConfig), persisted under `ROOT/network/` (see [`crate::podcidr`]).
    pub pod_cidr: String,
    /// Optional IPv6 pod range for dual stack ("" = none).
    pub pod_cidr_v6: String,
    /// With `pod_cidr` empty: seconds to wait for the kubelet's range before using
    /// [`crate::podcidr::FALLBACK_POD_CIDR`] (0 = wait forever).
    pub pod_cidr_fallback_secs: u64,
    /// MTU of the bridge and the pods' interfaces.
    pub mtu: u32,
    /// Masquerade pod traffic that leaves the pod range.
    pub masquerade: bool,
    /// nftables table (family `inet`) of the built-in bridge; must start with `skiff`. Only this
    /// table is ever created, changed or deleted. "" = derived from the bridge name: `skiff` for
    /// `skiff0`, else `skiff_<bridge>` (so that two skiffd instances with different bridges, e.g.
    /// in tests, never share rules). See [`NetworkConfig::nft_table_name`].
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
            pod_cidr: String::new(),
            pod_cidr_v6: String::new(),
            pod_cidr_fallback_secs: 60,
            mtu: 1500,
            masquerade: true,
            nft_table: String::new(),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dirs: vec![PathBuf::from("/opt/cni/bin")],
            cni_timeout_secs: 60,
        }
    }
}

impl NetworkConfig {
    /// The nftables table actually used (`nft_table`, or derived from `bridge` when empty).
    pub fn nft_table_name(&self) -> String {
        if !self.nft_table.is_empty() {
            return self.nft_table.clone();
        }
        if self.bridge == "skiff0" {
            return "skiff".into();
        }
        let b: String = self.bridge.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        format!("skiff_{b}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_table_name() {
        let mut c = NetworkConfig::default();
        assert_eq!(c.nft_table_name(), "skiff");
        c.bridge = "skt-12ab".into();
        assert_eq!(c.nft_table_name(), "skiff_skt_12ab");
        c.nft_table = "skiff_x".into();
        assert_eq!(c.nft_table_name(), "skiff_x");
    }
}
