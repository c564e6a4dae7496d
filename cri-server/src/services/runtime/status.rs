//! Version, Status, RuntimeConfig and UpdateRuntimeConfig: what the runtime is and whether it
//! is ready.

use std::collections::HashMap;

use proto::cri::*;
use tonic::Status;

use super::RuntimeSvc;

/// The runtime name reported by `Version`.
pub const RUNTIME_NAME: &str = "skiff";

impl RuntimeSvc {
    pub(super) fn version_impl(&self) -> VersionResponse {
        VersionResponse {
            // The kubelet's "version" here is the API version of the message set, "0.1.0".
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: proto::CRI_API_VERSION.into(),
        }
    }

    pub(super) async fn status_impl(&self, req: StatusRequest) -> Result<StatusResponse, Status> {
        let runtime_ready = RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        let (net_ok, net_reason, net_message) = self.network_ready().await;
        let network_ready = RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: net_ok,
            reason: net_reason,
            message: net_message,
        };
        let mut info = HashMap::new();
        if req.verbose {
            let config = serde_json::to_string(&*self.ctx.config)
                .map_err(|e| Status::internal(format!("cannot encode the configuration: {e}")))?;
            info.insert("config".to_owned(), config);
            if let Some(addr) = self.ctx.streaming.address() {
                info.insert(
                    "streamingServer".to_owned(),
                    serde_json::json!({ "address": addr.to_string(), "tls": self.ctx.streaming.tls() }).to_string(),
                );
            }
        }
        Ok(StatusResponse {
            status: Some(RuntimeStatus { conditions: vec![runtime_ready, network_ready] }),
            info,
            runtime_handlers: vec![RuntimeHandler {
                // The default handler has the empty name.
                name: String::new(),
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: runtime::features::mount_setattr(),
                    user_namespaces: false,
                }),
            }],
            // Strict and Merge are applied at CreateContainer and the identity is reported in
            // ContainerStatus.user.
            features: Some(RuntimeFeatures { supplemental_groups_policy: true, user_namespaces_host_network: false }),
        })
    }

    /// Whether pods can get a network: (ready, reason, message).
    async fn network_ready(&self) -> (bool, String, String) {
        match self.ctx.network.status().await {
            Ok(()) => (true, String::new(), String::new()),
            Err(nr) => (false, nr.reason, nr.message),
        }
    }

    pub(super) fn runtime_config_impl(&self) -> RuntimeConfigResponse {
        RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration { cgroup_driver: CgroupDriver::Cgroupfs as i32 }),
        }
    }

    pub(super) fn update_runtime_config_impl(&self, req: UpdateRuntimeConfigRequest) {
        // The kubelet hands over the node's pod CIDR; the built-in bridge uses its own
        // configured range, so this is only recorded in the log.
        let cidr = req.runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr);
        tracing::info!(pod_cidr = ?cidr, "runtime config update from the kubelet");
    }
}
