//! [`ImageStore`]: pulls, lists, resolves and removes images; owns the content store, the
//! snapshots, the metadata and the containers' holds on snapshots.
//!
//! Concurrency: per-blob and per-snapshot async locks make two concurrent pulls of the same
//! image share the work (the second waits and finds the blob/snapshot present). In-flight pulls
//! hold leases on what they create; garbage collection (after a remove, a failed pull, and at
//! startup) deletes every blob and snapshot that no image, container or lease references, so a
//! failed pull leaves the store as it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oci_spec::image::ImageConfiguration;
use tokio::sync::Semaphore;

use crate::config::RegistryConfig;
use crate::content::ContentStore;
use crate::error::{ImageError, Result};
use crate::manifest::{self, Descriptor, Document};
use crate::meta::{self, ImageRecord, MetaStore};
use crate::reference::{Digest, Reference};
use crate::registry::{Auth, RegistryClient, Session};
use crate::snapshot::{self, ContainerRootfs, RootfsMount, Snapshots};

const MAX_MANIFEST: usize = 4 << 20;
const MAX_CONFIG: usize = 8 << 20;

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

struct Lease {
    inner: Arc<Inner>,
    keys: Vec<String>,
}

impl Lease {
    fn add(&mut self, key: String) {
        *self.inner.leases.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_default() += 1;
        self.keys.push(key);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut l = self.inner.leases.lock().unwrap_or_else(|p| p.into_inner());
        for k in self.keys.drain(..) {
            if let Some(n) = l.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    l.remove(&k);
                }
            }
        }
    }
}

fn blob_key(d: &Digest) -> String {
    format!("blob:{d}")
}
fn snap_key(d: &Digest) -> String {
    format!("snap:{d}")
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ImageError::Metadata(format!("blocking task failed: {e}")))?
}

fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl ImageStore {
    /// Opens the store under `cfg.root`: cleans interrupted downloads and unpacks, loads the
    /// metadata and the containers' holds, and collects garbage.
    pub async fn open(cfg: ImageStoreConfig) -> Result<Self> {
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
            let holds = load_holds(&containers_dir)?;
            let client = RegistryClient::new(registry.clone())?;
            Ok(Inner {
                root,
                containers_dir,
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

    fn lease(&self) -> Lease {
        Lease { inner: self.inner.clone(), keys: Vec::new() }
    }

    fn load_config(&self, id: &Digest) -> Result<Arc<ImageConfiguration>> {
        if let Some(c) = self.inner.configs.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(c.clone());
        }
        let data = self.inner.content.read(id)?;
        let cfg: ImageConfiguration =
            serde_json::from_slice(&data).map_err(|e| ImageError::Metadata(format!("image config {id}: {e}")))?;
        let cfg = Arc::new(cfg);
        self.inner.configs.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), cfg.clone());
        Ok(cfg)
    }

    /// Finds the image for an ID (`sha256:…`, bare hex, or a unique hex prefix) or a reference.
    fn find<'a>(images: &'a BTreeMap<Digest, ImageRecord>, s: &str) -> Option<&'a ImageRecord> {
        let s = s.trim();
        if let Ok(d) = Digest::parse(s) {
            if let Some(r) = images.get(&d) {
                return Some(r);
            }
        }
        if s.len() == 64 {
            if let Ok(d) = Digest::parse(&format!("sha256:{s}")) {
                if let Some(r) = images.get(&d) {
                    return Some(r);
                }
            }
        }
        if let Ok(r) = Reference::parse(s) {
            let tag = r.repo_tag();
            let dig = r.digest.as_ref().map(|d| r.repo_digest(d));
            let hit = images.values().find(|img| {
                tag.as_ref().is_some_and(|t| img.repo_tags.contains(t))
                    || dig.as_ref().is_some_and(|d| img.repo_digests.contains(d))
                    || r.digest.as_ref().is_some_and(|d| {
                        *d == img.manifest_digest
                            && img.repo_digests.iter().chain(img.repo_tags.iter()).any(|x| x.starts_with(&r.name()))
                    })
            });
            if hit.is_some() {
                return hit;
            }
        }
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut it = images.values().filter(|i| i.id.hex().starts_with(hex));
            if let (Some(one), None) = (it.next(), it.next()) {
                return Some(one);
            }
        }
        None
    }

    /// All images.
    pub async fn list(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.inner.state.lock().await.images.values().cloned().collect())
    }

    /// The image record for an ID or reference; `None` when absent. An invalid reference that is
    /// not an ID either is an `InvalidReference` error.
    pub async fn status(&self, ref_or_id: &str) -> Result<Option<ImageRecord>> {
        let st = self.inner.state.lock().await;
        if let Some(r) = Self::find(&st.images, ref_or_id) {
            return Ok(Some(r.clone()));
        }
        drop(st);
        if ref_or_id.is_empty() {
            return Err(ImageError::InvalidArgument("empty image reference".into()));
        }
        // Distinguish "absent" from "malformed".
        let hex = ref_or_id.strip_prefix("sha256:").unwrap_or(ref_or_id);
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Reference::parse(ref_or_id)?;
        }
        Ok(None)
    }

    /// The image with its OCI config, for CreateContainer/ContainerStatus; `None` when absent.
    pub async fn resolve(&self, ref_or_id: &str) -> Result<Option<Image>> {
        let Some(record) = self.status(ref_or_id).await? else { return Ok(None) };
        let id = record.id.clone();
        let me = self.clone();
        let config = blocking(move || me.load_config(&id)).await?;
        Ok(Some(Image { record, config }))
    }

    /// Pulls an image and returns its record. Concurrent pulls of the same content share work.
    pub async fn pull(&self, reference: &str, auth: Option<Auth>) -> Result<ImageRecord> {
        let r = Reference::parse(reference)?;
        let mut lease = self.lease();
        let started = Instant::now();
        tracing::info!(reference = %r, "pulling image");
        let res = self.pull_inner(&r, auth, &mut lease).await;
        drop(lease);
        match res {
            Ok(rec) => {
                tracing::info!(reference = %r, id = %rec.id, secs = started.elapsed().as_secs_f64(), "pulled image");
                Ok(rec)
            }
            Err(e) => {
                tracing::warn!(reference = %r, "pull failed: {e}");
                if let Err(ge) = self.gc().await {
                    tracing::warn!("garbage collection after failed pull: {ge}");
                }
                Err(e)
            }
        }
    }

    async fn pull_inner(&self, r: &Reference, auth: Option<Auth>, lease: &mut Lease) -> Result<ImageRecord> {
        let inner = &self.inner;
        let refname = r.to_string();
        let session = Arc::new(inner.client.session(r, auth));
        let (body, ct) = session.manifest(&r.manifest_ref(), MAX_MANIFEST).await?;
        let top_digest = Digest::of(&body);
        if let Some(want) = &r.digest {
            if *want != top_digest {
                return Err(ImageError::DigestMismatch {
                    what: format!("manifest of {refname}"),
                    expected: want.to_string(),
                    actual: top_digest.to_string(),
                });
            }
        }
        let mut extra = BTreeSet::new();
        let (manifest_digest, m) = match manifest::parse_document(&refname, &ct, &body)? {
            Document::Manifest(m) => (top_digest.clone(), m),
            Document::Index(idx) => {
                let desc = manifest::select_platform(&refname, &idx, &manifest::host_platform())?.clone();
                tracing::info!(reference = %r, manifest = %desc.digest, "selected platform manifest from index");
                lease.add(blob_key(&top_digest));
                self.put_blob(&top_digest, body.clone(), "image index").await?;
                extra.insert(top_digest.clone());
                let (mbody, mct) = session.manifest(desc.digest.as_str(), MAX_MANIFEST).await?;
                let got = Digest::of(&mbody);
                if got != desc.digest {
                    return Err(ImageError::DigestMismatch {
                        what: format!("platform manifest of {refname}"),
                        expected: desc.digest.to_string(),
                        actual: got.to_string(),
                    });
                }
                let ct = if desc.media_type.is_empty() { mct } else { desc.media_type.clone() };
                match manifest::parse_document(&refname, &ct, &mbody)? {
                    Document::Manifest(m) => {
                        lease.add(blob_key(&got));
                        self.put_blob(&got, mbody, "manifest").await?;
                        (got, m)
                    }
                    Document::Index(_) => {
                        return Err(ImageError::InvalidManifest {
                            reference: refname.clone(),
                            reason: "nested index".into(),
                        })
                    }
                }
            }
        };
        if manifest_digest == top_digest {
            lease.add(blob_key(&top_digest));
            self.put_blob(&top_digest, body.clone(), "manifest").await?;
        }

        // Config.
        let cdesc = &m.config;
        lease.add(blob_key(&cdesc.digest));
        let cbytes = if inner.content.exists(&cdesc.digest) {
            inner.content.read(&cdesc.digest)?
        } else {
            let b = session.small_blob(&cdesc.digest, cdesc.size as u64, MAX_CONFIG).await?;
            self.put_blob(&cdesc.digest, b.clone(), "image config").await?;
            b
        };
        let bad_cfg = |reason: String| ImageError::InvalidConfig {
            reference: refname.clone(),
            digest: cdesc.digest.to_string(),
            reason,
        };
        let config: ImageConfiguration =
            serde_json::from_slice(&cbytes).map_err(|e| bad_cfg(format!("not a valid image config: {e}")))?;
        let diff_ids: Vec<Digest> = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(bad_cfg)?;
        if diff_ids.len() != m.layers.len() {
            return Err(bad_cfg(format!("{} diff_ids for {} layers", diff_ids.len(), m.layers.len())));
        }
        for l in &m.layers {
            if l.urls.as_ref().is_some_and(|u| !u.is_empty()) {
                tracing::info!(layer = %l.digest, "ignoring foreign-layer URLs; fetching from the registry");
            }
        }
        let chains = snapshot::chain_ids(&diff_ids);
        for (l, c) in m.layers.iter().zip(&chains) {
            lease.add(blob_key(&l.digest));
            lease.add(snap_key(c));
        }

        // Every layer at once: downloads (at most `max_downloads` at a time) stream into a free
        // unpack worker, or into a file that a worker unpacks later. A snapshot holds only its
        // own layer's diff, so no layer waits for its parents.
        let sem = Arc::new(Semaphore::new(inner.max_downloads));
        let n = m.layers.len();
        let mut handles = Vec::with_capacity(n);
        for (i, l) in m.layers.iter().enumerate() {
            let me = self.clone();
            let sess = session.clone();
            let desc = l.clone();
            let sem = sem.clone();
            let (chain, diff_id) = (chains[i].clone(), diff_ids[i].clone());
            let what = format!("layer {}/{} {}", i + 1, n, l.digest.short());
            handles
                .push(tokio::spawn(async move { me.ensure_layer(&sess, &desc, &chain, &diff_id, &what, &sem).await }));
        }
        let mut pending: futures::stream::FuturesUnordered<_> = handles.into_iter().collect();
        let mut result = Ok(());
        while let Some(r) = futures::StreamExt::next(&mut pending).await {
            let r = r.unwrap_or_else(|e| Err(ImageError::Metadata(format!("layer task failed: {e}"))));
            if let Err(e) = r {
                result = Err(e);
                break;
            }
        }
        if let Err(e) = result {
            // Stop the other layers' downloads and wait for every layer task, with the blocking
            // work it started, to end: aborting a task would leave its blocking worker writing
            // a blob or snapshot after the garbage collection that follows a failed pull.
            session.cancel();
            while futures::StreamExt::next(&mut pending).await.is_some() {}
            return Err(e);
        }
        // What the record will reference reaches the disk before the record does.
        self.make_durable().await?;

        // Record.
        let (uid, username) = meta::user_of(config.config().as_ref().and_then(|c| c.user().as_deref()).unwrap_or(""));
        let size = cdesc.size as u64 + m.layers.iter().map(|l| l.size as u64).sum::<u64>();
        let id = cdesc.digest.clone();
        let repo_tag = r.repo_tag();
        let repo_digest = r.repo_digest(&top_digest);
        let mut st = inner.state.lock().await;
        let mut images = st.images.clone();
        if let Some(t) = &repo_tag {
            for img in images.values_mut() {
                if img.id != id {
                    img.repo_tags.retain(|x| x != t);
                }
            }
        }
        let rec = images.entry(id.clone()).or_insert_with(|| ImageRecord {
            id: id.clone(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            size,
            manifest_digest: manifest_digest.clone(),
            layers: m.layers.iter().map(|l| l.digest.clone()).collect(),
            diff_ids: diff_ids.clone(),
            chain_ids: chains.clone(),
            extra_blobs: BTreeSet::new(),
            uid,
            username: username.clone(),
            pinned: false,
            pulled_at: 0,
        });
        if let Some(t) = repo_tag {
            if !rec.repo_tags.contains(&t) {
                rec.repo_tags.push(t);
            }
        }
        if !rec.repo_digests.contains(&repo_digest) {
            rec.repo_digests.push(repo_digest);
        }
        rec.extra_blobs.extend(extra);
        if manifest_digest != rec.manifest_digest {
            rec.extra_blobs.insert(manifest_digest.clone());
        }
        rec.pulled_at = now_unix();
        let rec = rec.clone();
        // An image that lost its last reference to this pull goes away.
        let orphaned: Vec<Digest> = images
            .values()
            .filter(|i| i.repo_tags.is_empty() && i.repo_digests.is_empty())
            .map(|i| i.id.clone())
            .collect();
        for o in &orphaned {
            images.remove(o);
        }
        let meta = inner.meta.clone();
        let to_save = images.clone();
        blocking(move || meta.save(&to_save)).await?;
        st.images = images;
        drop(st);
        if !orphaned.is_empty() {
            self.gc().await?;
        }
        Ok(rec)
    }

    async fn put_blob(&self, d: &Digest, data: Vec<u8>, what: &'static str) -> Result<()> {
        let _g = self.inner.locks.lock(blob_key(d)).await;
        let cs = self.inner.content.clone();
        let d = d.clone();
        blocking(move || cs.put(&d, &data, what)).await
    }

    /// Flushes the store's file systems unless nothing was committed since its last flush.
    async fn make_durable(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if !self.inner.sync_before_record {
            return Ok(());
        }
        let gen = crate::durable::generation();
        if self.inner.synced.load(Ordering::SeqCst) >= gen {
            return Ok(());
        }
        let start = Instant::now();
        let dirs = [self.inner.content.path_dir().to_path_buf(), self.inner.snapshots.dir().to_path_buf()];
        blocking(move || crate::durable::syncfs(&[&dirs[0], &dirs[1]])).await?;
        self.inner.synced.fetch_max(gen, Ordering::SeqCst);
        tracing::debug!(secs = start.elapsed().as_secs_f64(), "flushed pulled data (syncfs)");
        Ok(())
    }

    /// Makes sure a layer's blob and snapshot exist: downloads the blob unless present (into a
    /// free unpack worker as it arrives when the snapshot is missing too), else unpacks it from
    /// the file.
    async fn ensure_layer(
        &self,
        session: &Session,
        desc: &Descriptor,
        chain: &Digest,
        diff_id: &Digest,
        what: &str,
        sem: &Semaphore,
    ) -> Result<()> {
        let d = &desc.digest;
        let blob_guard = self.inner.locks.lock(blob_key(d)).await;
        if !self.inner.content.exists(d) {
            let _permit = sem.acquire().await.map_err(|_| ImageError::Metadata("download limiter closed".into()))?;
            // Lock order: blob, then snapshot.
            let snap_guard = self.inner.locks.lock(snap_key(chain)).await;
            let slot = if self.inner.snapshots.exists(chain) {
                None
            } else {
                self.inner.unpack_slots.clone().try_acquire_owned().ok()
            };
            if let Some(_slot) = slot {
                // The snapshot is complete when the download is.
                return self.download(session, desc, what, Some((chain.clone(), diff_id.clone()))).await;
            }
            drop(snap_guard);
            self.download(session, desc, what, None).await?;
        }
        drop(blob_guard);
        self.ensure_snapshot(chain, d, diff_id, what.to_string()).await
    }

    /// Downloads a blob into the content store through a blocking worker that writes (and, with
    /// `unpack`, unpacks as the bytes arrive) while this task reads the network.
    async fn download(
        &self,
        session: &Session,
        desc: &Descriptor,
        what: &str,
        unpack: Option<(Digest, Digest)>,
    ) -> Result<()> {
        let d = desc.digest.clone();
        let size = desc.size as u64;
        let mut resp = session.blob(&d).await?;
        let start = Instant::now();
        tracing::info!(layer = what, bytes = size, unpack = unpack.is_some(), "downloading");
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes>>(64);
        let cs = self.inner.content.clone();
        let snaps = self.inner.snapshots.clone();
        let w = what.to_string();
        let dd = d.clone();
        let worker = tokio::task::spawn_blocking(move || download_worker(&cs, &snaps, rx, &dd, size, &w, unpack));
        let mut received = 0u64;
        let mut last_log = Instant::now();
        loop {
            let item = match session.next_chunk(&mut resp, what).await {
                Ok(None) => break,
                Ok(Some(chunk)) => {
                    received += chunk.len() as u64;
                    if received > size {
                        Err(ImageError::SizeMismatch { what: what.to_string(), expected: size, actual: received })
                    } else {
                        Ok(chunk)
                    }
                }
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                last_log = Instant::now();
                let secs = start.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    layer = what,
                    done = received,
                    total = size,
                    rate_mib_s = format!("{:.1}", received as f64 / secs / 1048576.0),
                    "download progress"
                );
            }
        }
        drop(tx);
        let stats = worker.await.map_err(|e| ImageError::Metadata(format!("download worker failed: {e}")))??;
        let secs = start.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            layer = what,
            bytes = received,
            secs = format!("{secs:.2}"),
            rate_mib_s = format!("{:.1}", received as f64 / secs / 1048576.0),
            entries = stats.map(|s| s.entries),
            "downloaded"
        );
        Ok(())
    }

    async fn ensure_snapshot(&self, chain: &Digest, blob: &Digest, diff_id: &Digest, label: String) -> Result<()> {
        let _g = self.inner.locks.lock(snap_key(chain)).await;
        if self.inner.snapshots.exists(chain) {
            return Ok(());
        }
        let _slot = self
            .inner
            .unpack_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ImageError::Metadata("unpack workers closed".into()))?;
        let snaps = self.inner.snapshots.clone();
        let path = self.inner.content.path(blob);
        let (c, d) = (chain.clone(), diff_id.clone());
        let start = Instant::now();
        let l2 = label.clone();
        let stats = blocking(move || snaps.unpack(&c, &path, &d, &l2)).await?;
        tracing::info!(
            layer = label,
            entries = stats.entries,
            bytes = stats.bytes,
            secs = format!("{:.2}", start.elapsed().as_secs_f64()),
            "unpacked"
        );
        Ok(())
    }

    /// Removes an image by ID or reference, with all its references (as containerd's CRI does).
    /// Its blobs and snapshots are deleted unless another image or a container still uses them.
    /// Absent images are not an error. Returns whether an image was removed.
    pub async fn remove(&self, ref_or_id: &str) -> Result<bool> {
        let mut st = self.inner.state.lock().await;
        let Some(id) = Self::find(&st.images, ref_or_id).map(|r| r.id.clone()) else {
            drop(st);
            // Malformed input is still an error.
            self.status(ref_or_id).await?;
            return Ok(false);
        };
        let mut images = st.images.clone();
        images.remove(&id);
        let meta = self.inner.meta.clone();
        let to_save = images.clone();
        blocking(move || meta.save(&to_save)).await?;
        st.images = images;
        drop(st);
        self.inner.configs.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        tracing::info!(image = %id, "removed image");
        self.gc().await?;
        Ok(true)
    }

    /// Deletes every blob and snapshot not referenced by an image, a container or an in-flight pull.
    pub async fn gc(&self) -> Result<()> {
        let st = self.inner.state.lock().await;
        let mut blobs: BTreeSet<&Digest> = BTreeSet::new();
        let mut snaps: BTreeSet<&Digest> = BTreeSet::new();
        for img in st.images.values() {
            blobs.extend(img.blobs());
            snaps.extend(img.chain_ids.iter());
        }
        for h in st.holds.values() {
            snaps.extend(h.chain_ids.iter());
            snaps.extend(h.volume_chain_ids.iter());
        }
        let mut doomed = Vec::new();
        {
            let leases = self.inner.leases.lock().unwrap_or_else(|p| p.into_inner());
            for b in self.inner.content.list()? {
                if !blobs.contains(&b) && !leases.contains_key(&blob_key(&b)) {
                    tracing::debug!(blob = %b, "deleting unreferenced blob");
                    self.inner.content.delete(&b)?;
                }
            }
            for s in self.inner.snapshots.list()? {
                if !snaps.contains(&s) && !leases.contains_key(&snap_key(&s)) {
                    tracing::debug!(snapshot = %s, "deleting unreferenced snapshot");
                    if let Some(p) = self.inner.snapshots.doom(&s)? {
                        doomed.push(p);
                    }
                }
            }
        }
        drop(st);
        if !doomed.is_empty() {
            blocking(move || {
                for p in doomed {
                    std::fs::remove_dir_all(&p).map_err(|e| ImageError::io("delete snapshot", &p, e))?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Real bytes and inodes used by the image filesystem (`ROOT/snapshots`) and the containers'
    /// writable layers (`ROOT/containers`).
    pub async fn fs_info(&self) -> Result<FsInfo> {
        let img = self.inner.snapshots.dir().to_path_buf();
        let ctr = self.inner.containers_dir.clone();
        let cache = self.inner.snapshot_usage.clone();
        blocking(move || {
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            Ok(FsInfo { timestamp, image: snapshots_usage(&img, &cache)?, container: usage(&ctr)? })
        })
        .await
    }

    /// Prepares the writable layer of a container: creates `ROOT/containers/<id>/{upper,work}`,
    /// records the container's hold on the image's snapshots (kept until
    /// [`ImageStore::release_rootfs`], across restarts) and returns the overlay layout.
    /// Calling it again for the same container returns the same layout (also when the image was
    /// removed meanwhile: the container's hold keeps its snapshots).
    pub async fn prepare_rootfs(&self, image_ref_or_id: &str, container_id: &str) -> Result<RootfsMount> {
        if !valid_container_id(container_id) {
            return Err(ImageError::InvalidArgument(format!("invalid container id {container_id:?}")));
        }
        let mut st = self.inner.state.lock().await;
        let dir = self.inner.containers_dir.join(container_id);
        if let Some(h) = st.holds.get(container_id) {
            // Prepared before (CreateContainer, then StartContainer): the hold keeps the
            // snapshots even if the image was removed meanwhile.
            let same = Self::find(&st.images, image_ref_or_id).is_none_or(|i| i.id == h.image_id)
                || image_ref_or_id == h.image_id.as_str();
            if !same {
                return Err(ImageError::InvalidArgument(format!(
                    "container {container_id} already has a rootfs from image {}",
                    h.image_id
                )));
            }
            if dir.join("upper").is_dir() && dir.join("work").is_dir() {
                return Ok(self.layout(&dir, &h.chain_ids));
            }
        }
        let img = Self::find(&st.images, image_ref_or_id)
            .cloned()
            .ok_or_else(|| ImageError::ImageNotFound(image_ref_or_id.to_string()))?;
        for c in &img.chain_ids {
            if !self.inner.snapshots.exists(c) {
                return Err(ImageError::ImageNotFound(format!(
                    "{image_ref_or_id} (snapshot {} is missing; pull the image again)",
                    c.short()
                )));
            }
        }
        let hold = ContainerRootfs {
            version: 1,
            container_id: container_id.to_string(),
            image_id: img.id.clone(),
            chain_ids: img.chain_ids.clone(),
            volume_chain_ids: st.holds.get(container_id).map(|h| h.volume_chain_ids.clone()).unwrap_or_default(),
        };
        let d2 = dir.clone();
        let h2 = hold.clone();
        let empty_lower = img.chain_ids.is_empty();
        blocking(move || {
            std::fs::create_dir_all(&d2).map_err(|e| ImageError::io("create container dir", &d2, e))?;
            let data = serde_json::to_vec(&h2).map_err(|e| ImageError::Metadata(e.to_string()))?;
            meta::atomic_write(&d2.join("rootfs.json"), &data)?;
            for sub in ["upper", "work"].into_iter().chain(empty_lower.then_some("lower")) {
                let p = d2.join(sub);
                std::fs::create_dir_all(&p).map_err(|e| ImageError::io("create container dir", &p, e))?;
            }
            Ok(())
        })
        .await?;
        st.holds.insert(container_id.to_string(), hold);
        Ok(self.layout(&dir, &img.chain_ids))
    }

    fn layout(&self, dir: &Path, chain_ids: &[Digest]) -> RootfsMount {
        let mut lowerdirs: Vec<PathBuf> = chain_ids.iter().rev().map(|c| self.inner.snapshots.fs_dir(c)).collect();
        if lowerdirs.is_empty() {
            lowerdirs.push(dir.join("lower"));
        }
        RootfsMount { lowerdirs, upperdir: dir.join("upper"), workdir: dir.join("work") }
    }

    /// Drops a container's writable layer and its hold on the snapshots (unmount first).
    /// Idempotent. Snapshots no longer used by any image or container are deleted.
    pub async fn release_rootfs(&self, container_id: &str) -> Result<()> {
        if !valid_container_id(container_id) {
            return Err(ImageError::InvalidArgument(format!("invalid container id {container_id:?}")));
        }
        let mut st = self.inner.state.lock().await;
        let dir = self.inner.containers_dir.join(container_id);
        let doomed = self.inner.containers_dir.join(format!(".del-{container_id}"));
        let (d1, d2) = (dir.clone(), doomed.clone());
        blocking(move || {
            if d1.exists() {
                if d2.exists() {
                    std::fs::remove_dir_all(&d2).map_err(|e| ImageError::io("remove container layer", &d2, e))?;
                }
                std::fs::rename(&d1, &d2).map_err(|e| ImageError::io("remove container layer", &d1, e))?;
            }
            Ok(())
        })
        .await?;
        let had = st.holds.remove(container_id).is_some();
        drop(st);
        blocking(move || {
            if doomed.exists() {
                std::fs::remove_dir_all(&doomed).map_err(|e| ImageError::io("remove container layer", &doomed, e))?;
            }
            Ok(())
        })
        .await?;
        if had {
            self.gc().await?;
        }
        Ok(())
    }

    /// Image volumes (CRI `Mount.image`) of a container whose rootfs is prepared: resolves each
    /// image (it must be pulled: [`ImageError::ImageNotFound`] otherwise), adds its snapshots
    /// to the container's hold (saved in `rootfs.json`, so they outlive a RemoveImage of the
    /// image and a restart of skiffd until [`ImageStore::release_rootfs`]) and returns, per
    /// image, its ID and its layer directories, topmost first.
    pub async fn hold_image_volumes(&self, container_id: &str, images: &[String]) -> Result<Vec<ImageVolume>> {
        if !valid_container_id(container_id) {
            return Err(ImageError::InvalidArgument(format!("invalid container id {container_id:?}")));
        }
        let mut st = self.inner.state.lock().await;
        let mut out = Vec::new();
        let mut chains: Vec<Digest> = Vec::new();
        for name in images {
            let img = Self::find(&st.images, name).cloned().ok_or_else(|| {
                ImageError::ImageNotFound(format!("{name} (image volumes need the image pulled first)"))
            })?;
            for c in &img.chain_ids {
                if !self.inner.snapshots.exists(c) {
                    return Err(ImageError::ImageNotFound(format!(
                        "{name} (snapshot {} is missing; pull the image again)",
                        c.short()
                    )));
                }
                if !chains.contains(c) {
                    chains.push(c.clone());
                }
            }
            let layers = img.chain_ids.iter().rev().map(|c| self.inner.snapshots.fs_dir(c)).collect();
            out.push(ImageVolume { image_id: img.id.clone(), layers });
        }
        let Some(hold) = st.holds.get(container_id).cloned() else {
            return Err(ImageError::InvalidArgument(format!("container {container_id} has no prepared rootfs")));
        };
        let mut hold = hold;
        for c in chains {
            if !hold.volume_chain_ids.contains(&c) {
                hold.volume_chain_ids.push(c);
            }
        }
        let dir = self.inner.containers_dir.join(container_id);
        let h2 = hold.clone();
        blocking(move || {
            let data = serde_json::to_vec(&h2).map_err(|e| ImageError::Metadata(e.to_string()))?;
            meta::atomic_write(&dir.join("rootfs.json"), &data)
        })
        .await?;
        st.holds.insert(container_id.to_string(), hold);
        Ok(out)
    }

    /// The container ids holding snapshots (for reconciliation by skiffd).
    pub async fn rootfs_holders(&self) -> Vec<String> {
        self.inner.state.lock().await.holds.keys().cloned().collect()
    }
}

/// The chunks of a download as a `Read`, each written to the ingest file on the way.
struct ChunkReader<'a> {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes>>,
    cur: bytes::Bytes,
    ingest: &'a mut crate::content::Ingest,
    /// The download's (or the ingest's) error, reported instead of what the unpacker saw.
    err: Option<ImageError>,
}

impl std::io::Read for ChunkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            if self.err.is_some() {
                return Err(std::io::Error::other("download failed"));
            }
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(c)) => {
                    if let Err(e) = self.ingest.write(&c) {
                        self.err = Some(e);
                    } else {
                        self.cur = c;
                    }
                }
                Some(Err(e)) => self.err = Some(e),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

/// The blocking half of a download: writes the chunks to an ingest file and, with `unpack`
/// (chain ID, diff ID), unpacks them into a snapshot at the same time. The blob is committed
/// after its size and digest check, the snapshot after that and its diff ID check. A download
/// error wins over a size or digest mismatch, which wins over an unpack error (a corrupt blob
/// is reported as such even when the unpacker failed first).
fn download_worker(
    cs: &ContentStore,
    snaps: &Snapshots,
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes>>,
    d: &Digest,
    size: u64,
    what: &str,
    unpack: Option<(Digest, Digest)>,
) -> Result<Option<crate::unpack::UnpackStats>> {
    let mut ing = cs.begin(d)?;
    let mut r = ChunkReader { rx, cur: bytes::Bytes::new(), ingest: &mut ing, err: None };
    let unpacked = match &unpack {
        None => None,
        Some((chain, diff_id)) => {
            let pending = snaps.prepare(chain)?;
            let res = crate::unpack::unpack_layer(what, &mut r, diff_id, &pending.fs());
            Some((res, pending))
        }
    };
    // Whatever the unpacker left (or all of it): the blob is verified as a whole.
    let mut sink = [0u8; 64 * 1024];
    while r.err.is_none() {
        match std::io::Read::read(&mut r, &mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if let Some(e) = r.err.take() {
        return Err(e);
    }
    cs.commit(ing, d, Some(size), what)?;
    match unpacked {
        None => Ok(None),
        Some((Ok(stats), pending)) => {
            pending.commit()?;
            Ok(Some(stats))
        }
        Some((Err(crate::unpack::UnpackError::Other(e)), _)) => Err(e),
        Some((Err(crate::unpack::UnpackError::Read(e)), _)) => {
            Err(ImageError::Metadata(format!("reading {what} while unpacking: {e}")))
        }
    }
}

fn load_holds(dir: &Path) -> Result<BTreeMap<String, ContainerRootfs>> {
    let mut holds = BTreeMap::new();
    let rd = std::fs::read_dir(dir).map_err(|e| ImageError::io("list containers", dir, e))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        if name.starts_with(".del-") {
            if let Err(err) = std::fs::remove_dir_all(&p) {
                tracing::warn!(dir = %p.display(), "cannot remove released container layer: {err}");
            }
            continue;
        }
        match std::fs::read(p.join("rootfs.json")).ok().and_then(|d| serde_json::from_slice::<ContainerRootfs>(&d).ok())
        {
            Some(h) if h.version == 1 && h.container_id == name => {
                holds.insert(name, h);
            }
            _ => {
                tracing::warn!(dir = %p.display(), "removing container layer without a valid rootfs.json (interrupted prepare)");
                if let Err(err) = std::fs::remove_dir_all(&p) {
                    tracing::warn!(dir = %p.display(), "cannot remove: {err}");
                }
            }
        }
    }
    Ok(holds)
}

/// [`usage`] of the snapshots dir, summing the cached usage of committed snapshots (walked
/// once each) with a fresh walk of the entries still changing (`.tmp-*`, `.del-*`).
fn snapshots_usage(dir: &Path, cache: &Mutex<HashMap<String, FsUsage>>) -> Result<FsUsage> {
    use std::os::unix::fs::MetadataExt;
    let top = std::fs::symlink_metadata(dir).map_err(|e| ImageError::io("stat", dir, e))?;
    let mut total = FsUsage { mountpoint: dir.to_path_buf(), used_bytes: top.blocks() * 512, inodes_used: 1 };
    let rd = std::fs::read_dir(dir).map_err(|e| ImageError::io("list snapshots", dir, e))?;
    let mut present = std::collections::HashSet::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let cached = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&name).cloned();
        let u = match cached {
            Some(u) => u,
            None => {
                let Ok(u) = usage(&e.path()) else { continue };
                if !name.starts_with('.') {
                    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), u.clone());
                }
                u
            }
        };
        total.used_bytes += u.used_bytes;
        total.inodes_used += u.inodes_used;
        present.insert(name);
    }
    cache.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| present.contains(k));
    Ok(total)
}

/// du-like usage: allocated bytes and distinct inodes under `dir` (not crossing mounts).
pub fn usage(dir: &Path) -> Result<FsUsage> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let root_dev = std::fs::symlink_metadata(dir).map_err(|e| ImageError::io("stat", dir, e))?.dev();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else { continue };
        if md.dev() != root_dev {
            continue;
        }
        if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        bytes += md.blocks() * 512;
        inodes += 1;
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    Ok(FsUsage { mountpoint: dir.to_path_buf(), used_bytes: bytes, inodes_used: inodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_usage_is_cached_for_committed_snapshots_only() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = dir.path();
        for (name, files) in [("aaaa", 3), ("bbbb", 2), (".tmp-cccc-1-0", 1)] {
            std::fs::create_dir_all(snaps.join(name).join("fs")).unwrap();
            for i in 0..files {
                std::fs::write(snaps.join(name).join("fs").join(format!("f{i}")), vec![7u8; 5000]).unwrap();
            }
        }
        let cache = Mutex::new(HashMap::new());
        let first = snapshots_usage(snaps, &cache).unwrap();
        assert_eq!(first, usage(snaps).unwrap(), "same answer as a full walk");
        assert_eq!(cache.lock().unwrap().len(), 2, "only committed snapshots are cached");

        // A committed snapshot is not walked again; an unpack in progress is.
        std::fs::write(snaps.join("aaaa/fs/late"), vec![1u8; 5000]).unwrap();
        std::fs::write(snaps.join(".tmp-cccc-1-0/fs/more"), vec![1u8; 5000]).unwrap();
        let second = snapshots_usage(snaps, &cache).unwrap();
        assert_eq!(second.inodes_used, first.inodes_used + 1);

        // A removed snapshot leaves the sum and the cache.
        std::fs::remove_dir_all(snaps.join("bbbb")).unwrap();
        let third = snapshots_usage(snaps, &cache).unwrap();
        assert_eq!(third.inodes_used, second.inodes_used - 4);
        assert_eq!(cache.lock().unwrap().len(), 1);
    }
}
