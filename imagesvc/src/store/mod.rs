//! [`ImageStore`]: pulls, lists, resolves and removes images; owns the content store, the
//! snapshots, the metadata and the containers' holds on snapshots.
//!
//! Concurrency: per-blob and per-snapshot async locks make two concurrent pulls of the same
//! image share the work (the second waits and finds the blob/snapshot present). In-flight pulls
//! hold leases on what they create; garbage collection (after a remove, a failed pull, and at
//! startup) deletes every blob and snapshot that no image, container or lease references, so a
//! failed pull leaves the store as it was.
//!
//! This module holds the store's state, [`ImageStore::open`] and the public types; the rest is
//! split by concern:
//! - `records`: image records (find by ID or reference, list, status, resolve, remove, and
//!   how a pull's result merges into the records);
//! - `pull`: pull orchestration (manifests, config, parallel layer download and unpack,
//!   cancellation of a failed pull's other downloads, the flush before the record);
//! - `gc`: leases of in-flight pulls and garbage collection;
//! - `holds`: containers' writable layers and their holds on snapshots;
//! - `usage`: disk usage for ImageFsInfo and container stats.

mod gc;
mod holds;
mod pull;
mod records;
mod usage;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_spec::image::ImageConfiguration;
use tokio::sync::Semaphore;

use crate::config::RegistryConfig;
use crate::content::ContentStore;
use crate::error::{ImageError, Result};
use crate::meta::{ImageRecord, MetaStore};
use crate::reference::Digest;
use crate::registry::RegistryClient;
use crate::snapshot::{ContainerRootfs, Snapshots};

pub use holds::RootfsPrep;
pub use usage::usage;

/// Settings for [`ImageStore::open`].
#[derive(Debug, Clone)]
pub struct ImageStoreConfig {
    /// The root dir (`/var/lib/skiff`).
    pub root: PathBuf,
    /// The `[registry]` section.
    pub registry: RegistryConfig,
}

/// An image as the rest of skiffd sees it: its record plus its OCI image config.
#[derive(Debug, Clone)]
pub struct Image {
    pub record: ImageRecord,
    /// The OCI image config (entrypoint, cmd, env, working_dir, user, stop_signal, labels,
    /// volumes via `config.config()`).
    pub config: Arc<ImageConfiguration>,
}

impl Image {
    /// Image ID (`sha256:…`, the config digest).
    pub fn id(&self) -> &str {
        self.record.id.as_str()
    }
    /// The first repo digest (what ContainerStatus reports as `image_ref`), else the ID.
    pub fn repo_digest(&self) -> &str {
        self.record.repo_digests.first().map(String::as_str).unwrap_or(self.record.id.as_str())
    }
}

/// An image mounted as a volume: its ID and layer directories (topmost first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageVolume {
    pub image_id: Digest,
    pub layers: Vec<PathBuf>,
}

/// Usage of one filesystem tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// What ImageFsInfo reports.
#[derive(Debug, Clone)]
pub struct FsInfo {
    /// Unix nanoseconds of the measurement.
    pub timestamp: i64,
    /// `ROOT/snapshots`.
    pub image: FsUsage,
    /// `ROOT/containers` (writable layers).
    pub container: FsUsage,
}

#[derive(Default)]
struct KeyedLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    async fn lock(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, v| Arc::strong_count(v) > 1);
            map.entry(key).or_default().clone()
        };
        m.lock_owned().await
    }
}

struct State {
    images: BTreeMap<Digest, ImageRecord>,
    /// container id → its hold.
    holds: BTreeMap<String, ContainerRootfs>,
}

struct Inner {
    root: PathBuf,
    containers_dir: PathBuf,
    /// Makes the holds (`rootfs.json`) durable (see [`holds`]).
    journal: common::journal::Journal,
    /// Wait for each hold's entry to be on disk (own journal), or leave that to the next
    /// durable change of the sharing caller ([`ImageStore::open_with_journal`]).
    holds_durable: bool,
    content: ContentStore,
    snapshots: Snapshots,
    meta: MetaStore,
    client: RegistryClient,
    state: tokio::sync::Mutex<State>,
    /// "blob:<digest>" / "snap:<chain>" → number of in-flight pulls using it.
    leases: Mutex<HashMap<String, usize>>,
    locks: KeyedLocks,
    configs: Mutex<HashMap<Digest, Arc<ImageConfiguration>>>,
    max_downloads: usize,
    /// Flush (syncfs) before an image record is committed (`sync_after_unpack`).
    sync_before_record: bool,
    /// Background flushes while pulls run (with `sync_after_unpack`).
    flusher: Option<crate::durable::Flusher>,
    /// The store's syncfs covered every commit up to this `durable::generation()`.
    synced: std::sync::atomic::AtomicU64,
    /// Layer unpack workers, shared by all pulls: one per core.
    unpack_slots: Arc<Semaphore>,
    /// Usage of committed snapshots (immutable once renamed into place), by directory name, so
    /// that ImageFsInfo walks each layer once instead of on every call.
    snapshot_usage: Arc<Mutex<HashMap<String, FsUsage>>>,
}

/// The image store. Cheap to clone.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ImageError::Metadata(format!("blocking task failed: {e}")))?
}

impl ImageStore {
    /// Opens the store under `cfg.root`: cleans interrupted downloads and unpacks, loads the
    /// metadata and the containers' holds, and collects garbage.
    pub async fn open(cfg: ImageStoreConfig) -> Result<Self> {
        Self::open_inner(cfg, None).await
    }

    /// [`ImageStore::open`] with a journal the caller shares (its base must be `cfg.root`,
    /// replayed already): the containers' holds (`rootfs.json`) are then written through it
    /// without waiting for the disk, and are durable with the caller's next durable change
    /// in it (skiffd's CREATED or RUNNING record, which follows every change of a hold).
    pub async fn open_with_journal(cfg: ImageStoreConfig, journal: common::journal::Journal) -> Result<Self> {
        Self::open_inner(cfg, Some(journal)).await
    }

    async fn open_inner(cfg: ImageStoreConfig, shared: Option<common::journal::Journal>) -> Result<Self> {
        let root = cfg.root.clone();
        let registry = cfg.registry.clone();
        let inner = blocking(move || {
            std::fs::create_dir_all(&root).map_err(|e| ImageError::io("create root dir", &root, e))?;
            let content = ContentStore::open(&root)?;
            let snapshots = Snapshots::open(&root)?;
            let meta = MetaStore::open(&root)?;
            let images = meta.load()?;
            let containers_dir = root.join("containers");
            std::fs::create_dir_all(&containers_dir)
                .map_err(|e| ImageError::io("create containers dir", &containers_dir, e))?;
            let holds_durable = shared.is_none();
            let journal = match shared {
                Some(j) if j.base() == root.as_path() => j,
                Some(j) => {
                    return Err(ImageError::Metadata(format!(
                        "the shared journal's base {} is not the image store's root {}",
                        j.base().display(),
                        root.display()
                    )))
                }
                None => holds::open_journal(&root)?,
            };
            let holds = holds::load_holds(&containers_dir)?;
            let client = RegistryClient::new(registry.clone())?;
            // Only a head start for the pulls' own syncfs: the store works without it.
            let flusher = if registry.sync_after_unpack {
                crate::durable::Flusher::start(&[content.path_dir(), snapshots.dir()])
                    .inspect_err(|e| tracing::warn!("no background flushes of pulled data: {e}"))
                    .ok()
            } else {
                None
            };
            Ok(Inner {
                root,
                containers_dir,
                journal,
                holds_durable,
                content,
                snapshots,
                meta,
                client,
                state: tokio::sync::Mutex::new(State { images, holds }),
                leases: Mutex::new(HashMap::new()),
                locks: KeyedLocks::default(),
                configs: Mutex::new(HashMap::new()),
                max_downloads: registry.max_concurrent_downloads.max(1),
                sync_before_record: registry.sync_after_unpack,
                flusher,
                // What was committed before this store opened and survived its GC is referenced
                // by a record, hence was flushed before that record was written.
                synced: std::sync::atomic::AtomicU64::new(crate::durable::generation()),
                unpack_slots: Arc::new(Semaphore::new(
                    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                )),
                snapshot_usage: Arc::new(Mutex::new(HashMap::new())),
            })
        })
        .await?;
        let store = ImageStore { inner: Arc::new(inner) };
        store.gc().await?;
        let n = store.inner.state.lock().await.images.len();
        tracing::info!(root = %store.inner.root.display(), images = n, "image store opened");
        Ok(store)
    }

    /// The root dir.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The content store (blobs).
    pub fn content(&self) -> &ContentStore {
        &self.inner.content
    }

    /// The snapshots.
    pub fn snapshots(&self) -> &Snapshots {
        &self.inner.snapshots
    }
}
