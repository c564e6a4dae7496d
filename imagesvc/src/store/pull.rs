//! Pull orchestration: resolve the reference to a platform manifest (through an index if
//! need be), fetch the config, then every layer at once: each download (at most
//! `max_concurrent_downloads` at a time) streams into a free unpack worker (one per core,
//! shared by all pulls) or, when none is free, into a blob that a worker unpacks later. A
//! failed layer cancels the session's other downloads and waits for every layer task before
//! the garbage collection that undoes the pull. Before the record is committed, one `syncfs`
//! makes what it references durable (see [`crate::durable`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oci_spec::image::ImageConfiguration;
use tokio::sync::Semaphore;

use super::gc::{blob_key, snap_key, Lease};
use super::records::Pulled;
use super::{blocking, ImageStore};
use crate::content::ContentStore;
use crate::error::{ImageError, Result};
use crate::manifest::{self, Descriptor, Document};
use crate::meta::{self, ImageRecord};
use crate::reference::{Digest, Reference};
use crate::registry::{Auth, Session};
use crate::snapshot::{self, Snapshots};

const MAX_MANIFEST: usize = 4 << 20;
const MAX_CONFIG: usize = 8 << 20;

impl ImageStore {
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
        // Opened before anything is written: its syncfs reports every writeback error since.
        let sync_point = if inner.sync_before_record {
            let dirs = [inner.content.path_dir().to_path_buf(), inner.snapshots.dir().to_path_buf()];
            Some(blocking(move || crate::durable::SyncPoint::open(&[&dirs[0], &dirs[1]])).await?)
        } else {
            None
        };
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
        let flushing = inner.flusher.as_ref().map(|f| f.flushing());
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
        drop(flushing);
        // What the record will reference reaches the disk before the record does.
        if let Some(sp) = sync_point {
            self.make_durable(sp).await?;
        }

        // Record.
        let (uid, username) = meta::user_of(config.config().as_ref().and_then(|c| c.user().as_deref()).unwrap_or(""));
        let size = cdesc.size as u64 + m.layers.iter().map(|l| l.size as u64).sum::<u64>();
        let fresh = ImageRecord {
            id: cdesc.digest.clone(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            size,
            manifest_digest,
            layers: m.layers.iter().map(|l| l.digest.clone()).collect(),
            diff_ids,
            chain_ids: chains,
            extra_blobs: BTreeSet::new(),
            uid,
            username,
            pinned: false,
            pulled_at: 0,
        };
        self.commit_pull(Pulled { fresh, repo_tag: r.repo_tag(), repo_digest: r.repo_digest(&top_digest), extra }).await
    }

    async fn put_blob(&self, d: &Digest, data: Vec<u8>, what: &'static str) -> Result<()> {
        let _g = self.inner.locks.lock(blob_key(d)).await;
        let cs = self.inner.content.clone();
        let d = d.clone();
        blocking(move || cs.put(&d, &data, what)).await
    }

    /// Flushes the store's file systems unless a flush that started after every commit so far
    /// has finished.
    async fn make_durable(&self, sp: crate::durable::SyncPoint) -> Result<()> {
        use std::sync::atomic::Ordering;
        let need = crate::durable::generation();
        if self.inner.synced.load(Ordering::SeqCst) >= need {
            return Ok(());
        }
        let start = Instant::now();
        let covered = crate::durable::settled();
        blocking(move || sp.sync()).await?;
        if let Some(g) = covered {
            self.inner.synced.fetch_max(g, Ordering::SeqCst);
        }
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
