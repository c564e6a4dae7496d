//! The `[registry]` section of skiffd's configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Registry settings: mirrors, plain-HTTP hosts, download parallelism and stall detection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry host (as in the normalised reference, e.g. `docker.io`, `registry.k8s.io`) to the
    /// endpoints tried in order before the registry itself, e.g. `["http://127.0.0.1:5000"]`.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Hosts (`host[:port]`) that may be reached over plain HTTP. Loopback registries always may.
    pub insecure: Vec<String>,
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
    /// A pull whose bytes stop flowing for this many seconds fails.
    pub stall_timeout_secs: u64,
    /// Flush what a pull wrote (one syncfs per pull, plus background ones while it runs) before
    /// its image record is committed, so that a power loss cannot leave a recorded image with
    /// truncated files.
    pub sync_after_unpack: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            mirrors: BTreeMap::new(),
            insecure: Vec::new(),
            max_concurrent_downloads: 3,
            stall_timeout_secs: 60,
            sync_after_unpack: true,
        }
    }
}
