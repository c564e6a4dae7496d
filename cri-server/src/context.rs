//! What every service shares: the configuration, the stores of pods and containers, and the
//! library objects (images, cgroups, pod setup, monitors, networking) behind the traits of
//! [`crate::backends`]; unit tests put fakes there (`crate::testing`).

use std::path::PathBuf;
use std::sync::Arc;

use runtime::cgroups::CgroupManager;

use crate::backends::{Cgroups, HostMonitors, HostSandboxes, Images, Monitors, Sandboxes};

use crate::config::Config;
use crate::store::{ContainerRecord, PodRecord, RecordDir, StoreError, Table};

/// Why the daemon's state cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("metadata store: {0}")]
    Store(#[from] StoreError),
    #[error("cgroups: {0}")]
    Cgroups(#[from] runtime::cgroups::CgroupError),
    #[error("image store: {0}")]
    Images(#[from] imagesvc::ImageError),
    #[error("network: {0}")]
    Network(#[from] netplugin::NetworkError),
}

/// See the module doc.
pub struct Context {
    pub config: Arc<Config>,
    pub pods: Table<PodRecord>,
    pub containers: Table<ContainerRecord>,
    pub pod_store: RecordDir,
    pub container_store: RecordDir,
    pub cgroups: Arc<dyn Cgroups>,
    pub images: Arc<dyn Images>,
    pub network: Arc<dyn netplugin::NetworkPlugin>,
    /// The host side of pods (namespaces, pod files, shm, pod cgroup).
    pub sandboxes: Arc<dyn Sandboxes>,
    /// The containers' monitors and the pods' PID namespace holders.
    pub monitors: Arc<dyn Monitors>,
    /// The `skiff-monitor` binary (the streaming server and ExecSync run it).
    pub monitor_path: PathBuf,
    /// skiffd's own oom_score_adj: without CAP_SYS_RESOURCE no container may go below it.
    pub oom_score_adj_min: i32,
    /// Container and pod life-cycle events for GetContainerEvents.
    pub events: crate::services::runtime::events::Events,
    /// The streaming server's tokens and address (Exec, Attach, PortForward).
    pub streaming: Arc<crate::streaming::Streaming>,
    /// The images' `/etc/passwd` and `/etc/group`, read once per layer stack (CreateContainer).
    pub user_files: Arc<runtime::user::LayerUserFiles>,
}

impl Context {
    pub async fn open(config: Arc<Config>) -> Result<Self, ContextError> {
        let root = config.root.clone();
        let opened = tokio::task::spawn_blocking(move || crate::store::open(&root))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        let (pod_store, container_store) = (opened.pods, opened.containers);
        let cgroups = Arc::new(CgroupManager::detect(Some(config.state.join("cgroups.json")))?);
        let monitor_path = config.monitor_path();
        let images = imagesvc::ImageStore::open_with_journal(
            imagesvc::ImageStoreConfig { root: config.root.clone(), registry: config.registry.clone() },
            opened.journal,
        )
        .await?;
        let network = crate::metrics::network::wrap(netplugin::open(&config.network, &config.root)?);
        let oom_score_adj_min = crate::spec::current_oom_score_adj();
        if oom_score_adj_min > -1000 {
            tracing::info!(
                oom_score_adj_min,
                "containers' oom_score_adj is clamped to skiffd's own value (lowering it needs CAP_SYS_RESOURCE)"
            );
        }
        let streaming = crate::streaming::Streaming::new(
            monitor_path.clone(),
            std::time::Duration::from_secs(config.streaming.idle_timeout_secs),
        );
        let monitors = Arc::new(HostMonitors::new(
            monitor_path.clone(),
            config.state.join("containers"),
            config.runtime.monitor_zygote,
        ));
        Ok(Self {
            config,
            pods: Table::default(),
            containers: Table::default(),
            pod_store,
            container_store,
            sandboxes: Arc::new(HostSandboxes(cgroups.clone())),
            cgroups,
            images: Arc::new(images),
            network,
            monitors,
            monitor_path,
            oom_score_adj_min,
            events: Default::default(),
            streaming,
            user_files: Default::default(),
        })
    }

    /// `STATE/pods/<id>`.
    pub fn pod_paths(&self, id: &str) -> runtime::podfiles::PodPaths {
        runtime::podfiles::PodPaths::new(&self.config.state, id)
    }

    /// `STATE/trash`: state dirs of removed containers, waiting for their deletion in the
    /// background (swept at startup).
    pub fn trash_dir(&self) -> PathBuf {
        self.config.state.join("trash")
    }

    /// `STATE/containers/<id>`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.config.state.join("containers").join(id)
    }
}
