//! Version, Status, RuntimeConfig and UpdateRuntimeConfig: what the runtime is and whether it
//! is ready.

use std::collections::HashMap;

use proto::cri::*;
use tonic::Status;

use super::RuntimeSvc;

/// The runtime name reported by `Version`.
pub const RUNTIME_NAME: &str = "skiff";

/// The reason of a RuntimeReady condition that is false because the metadata journal failed.
pub const JOURNAL_UNUSABLE: &str = "MetadataJournalUnusable";

/// The name of the only runtime handler, also reachable as the default (empty) handler.
pub const DEFAULT_HANDLER_NAME: &str = "skiff";

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
        // Once the metadata journal failed (a write, `fdatasync` or checkpoint), no change can
        // be made durable: every mutating RPC fails, and the kubelet learns it here (it marks
        // the node NotReady) rather than from one failure after another. Only a restart of
        // skiffd (on a working disk) clears it.
        let runtime_ready = match self.ctx.pod_store.journal().unusable() {
            None => RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Some(why) => RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: false,
                reason: JOURNAL_UNUSABLE.into(),
                message: format!("the metadata journal cannot be written ({why}); restart skiffd once the disk works"),
            },
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
            info.insert("config".to_owned(), self.resolved_config()?.to_string());
            if let Some(addr) = self.ctx.streaming.address() {
                info.insert(
                    "streamingServer".to_owned(),
                    serde_json::json!({ "address": addr.to_string(), "tls": self.ctx.streaming.tls() }).to_string(),
                );
            }
        }
        // Probed once (cached): forks and mounts, so on the blocking pool.
        let (root, state) = (self.ctx.config.root.clone(), self.ctx.config.state.clone());
        let userns = tokio::task::spawn_blocking(move || runtime::features::user_namespaces(&root, &state).is_ok())
            .await
            .unwrap_or(false);
        Ok(StatusResponse {
            status: Some(RuntimeStatus { conditions: vec![runtime_ready, network_ready] }),
            info,
            // The default handler has the empty name (CRI); `skiff` names the same handler.
            runtime_handlers: [String::new(), DEFAULT_HANDLER_NAME.to_owned()]
                .into_iter()
                .map(|name| RuntimeHandler {
                    name,
                    features: Some(RuntimeHandlerFeatures {
                        recursive_read_only_mounts: runtime::features::mount_setattr(),
                        user_namespaces: userns,
                    }),
                })
                .collect(),
            // Strict and Merge are applied at CreateContainer and the identity is reported in
            // ContainerStatus.user.
            // A pod with a user namespace may share the node's network: sysfs and the pod's
            // files are set up by the host's root before the container joins its user namespace.
            features: Some(RuntimeFeatures { supplemental_groups_policy: true, user_namespaces_host_network: userns }),
        })
    }

    /// The configuration as JSON with the values skiffd derived filled in: the socket it
    /// listens on, the monitor it runs, and the pod ranges in force (with where they came from).
    fn resolved_config(&self) -> Result<serde_json::Value, Status> {
        let config = &self.ctx.config;
        let mut v = serde_json::to_value(&**config)
            .map_err(|e| Status::internal(format!("cannot encode the configuration: {e}")))?;
        v["listen"] = config.socket_path().to_string_lossy().into_owned().into();
        v["runtime"]["monitor_path"] = config.monitor_path().to_string_lossy().into_owned().into();
        v["runtime"]["default_runtime_handler"] = DEFAULT_HANDLER_NAME.into();
        let (cidrs, source) = self.ctx.network.pod_cidrs().unwrap_or_default();
        v["network"]["pod_cidr_in_use"] = cidrs.into();
        v["network"]["pod_cidr_source"] = source.into();
        Ok(v)
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

    /// The kubelet hands over the node's pod CIDR(s) (`10.244.1.0/24[,fd00:1::/64]`); the
    /// built-in bridge takes them when `network.pod_cidr` is empty. Runs in a task of its own so
    /// that a client deadline cannot stop the change half-way.
    pub(super) async fn update_runtime_config_impl(&self, req: UpdateRuntimeConfigRequest) -> Result<(), Status> {
        let cidr = req.runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr).unwrap_or_default();
        tracing::info!(pod_cidr = %cidr, "runtime config update from the kubelet");
        if cidr.trim().is_empty() {
            return Ok(());
        }
        let network = self.ctx.network.clone();
        let changed = tokio::spawn(async move { network.set_pod_cidrs(&cidr).await })
            .await
            .map_err(crate::error::join_error)?
            .map_err(|e| crate::error::status_of("set the pod CIDR", &e))?;
        if changed {
            self.ctx.network.status().await.ok();
        }
        Ok(())
    }
}
