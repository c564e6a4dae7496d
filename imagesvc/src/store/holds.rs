//! Containers' writable layers and their holds on snapshots: `ROOT/containers/<id>/` has
//! `upper/` and `work/` (and an empty `lower/` for an image without layers) and `rootfs.json`
//! (a [`ContainerRootfs`], written atomically before the directories are used), which keeps
//! the image's snapshots and those of the container's image volumes from the garbage collector
//! until the container's rootfs is released, across restarts of skiffd.
//!
//! `rootfs.json` is written through a journal ([`common::journal`]): its own,
//! `ROOT/metadata/rootfs-journal.{0,1}`, replayed when the store opens and durable with one
//! `fdatasync` per change, or skiffd's ([`ImageStore::open_with_journal`]), where a change
//! becomes durable with skiffd's record write that follows it (one `fdatasync` for both). A release renames the layer away (a `.del-*`) and journals the removal of its
//! `rootfs.json` without waiting for the disk: a hold that a power cut brings back has no
//! container, and skiffd's recovery releases it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{blocking, ImageStore, ImageVolume};
use crate::error::{ImageError, Result};
use crate::reference::Digest;
use crate::snapshot::{ContainerRootfs, RootfsMount};

fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl ImageStore {
    /// `ROOT/containers/<id>`, for a valid container id.
    fn layer_dir_of(&self, container_id: &str) -> Result<PathBuf> {
        if !valid_container_id(container_id) {
            return Err(ImageError::InvalidArgument(format!("invalid container id {container_id:?}")));
        }
        Ok(self.inner.containers_dir.join(container_id))
    }

    /// Prepares the writable layer of a container: creates `ROOT/containers/<id>/{upper,work}`,
    /// records the container's hold on the image's snapshots (kept until
    /// [`ImageStore::release_rootfs`], across restarts) and returns the overlay layout.
    /// Calling it again for the same container returns the same layout (also when the image was
    /// removed meanwhile: the container's hold keeps its snapshots).
    pub async fn prepare_rootfs(&self, image_ref_or_id: &str, container_id: &str) -> Result<RootfsMount> {
        let dir = self.layer_dir_of(container_id)?;
        let mut st = self.inner.state.lock().await;
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
            // Whether its directories are still there is asked off the async threads and
            // without the store's lock; without them they are made again below.
            let chain_ids = h.chain_ids.clone();
            drop(st);
            let d2 = dir.clone();
            if blocking(move || Ok(d2.join("upper").is_dir() && d2.join("work").is_dir())).await? {
                return Ok(self.layout(&dir, &chain_ids));
            }
            st = self.inner.state.lock().await;
        }
        let img = Self::find(&st.images, image_ref_or_id)
            .cloned()
            .ok_or_else(|| ImageError::ImageNotFound(image_ref_or_id.to_string()))?;
        // The image's snapshots are checked in the blocking task below, after the hold is
        // counted (from then on the GC keeps them).
        let volumes = st.holds.get(container_id).map(|h| h.volume_chain_ids.clone()).unwrap_or_default();
        let hold = hold_of(&img, container_id, volumes);
        let prep = self.prep(&img, hold.clone(), image_ref_or_id, dir.clone());
        // The hold counts from now on (the GC keeps its snapshots), and the store's lock is not
        // held while the record is written and fsynced: other containers' creations, starts
        // and removals go on meanwhile. Undone if the write fails.
        let before = st.holds.insert(container_id.to_string(), hold);
        drop(st);
        let written = blocking(move || {
            prep.hold()?;
            prep.dirs()
        })
        .await;
        if let Err(e) = written {
            let mut st = self.inner.state.lock().await;
            match before {
                Some(b) => st.holds.insert(container_id.to_string(), b),
                None => st.holds.remove(container_id),
            };
            return Err(e);
        }
        Ok(self.layout(&dir, &img.chain_ids))
    }

    /// The first half of [`ImageStore::prepare_rootfs`] for a container that has no hold yet
    /// (a creation), for a caller that wants the blocking halves on threads of its own: the
    /// hold is counted in memory at once (the GC keeps the image's snapshots from then on), and
    /// the returned [`RootfsPrep`] checks the snapshots, journals the hold and makes the
    /// directories. Whatever of it was done, or none, [`ImageStore::release_rootfs`] undoes.
    pub async fn begin_rootfs(&self, image_ref_or_id: &str, container_id: &str) -> Result<RootfsPrep> {
        let dir = self.layer_dir_of(container_id)?;
        let mut st = self.inner.state.lock().await;
        if let Some(h) = st.holds.get(container_id) {
            return Err(ImageError::InvalidArgument(format!(
                "container {container_id} already has a rootfs from image {}",
                h.image_id
            )));
        }
        let img = Self::find(&st.images, image_ref_or_id)
            .cloned()
            .ok_or_else(|| ImageError::ImageNotFound(image_ref_or_id.to_string()))?;
        let hold = hold_of(&img, container_id, Vec::new());
        st.holds.insert(container_id.to_string(), hold.clone());
        drop(st);
        Ok(self.prep(&img, hold, image_ref_or_id, dir))
    }

    fn prep(&self, img: &crate::meta::ImageRecord, hold: ContainerRootfs, image_ref: &str, dir: PathBuf) -> RootfsPrep {
        RootfsPrep {
            snapshot_dirs: img
                .chain_ids
                .iter()
                .map(|c| (self.inner.snapshots.fs_dir(c), c.short().to_string()))
                .collect(),
            image_ref: image_ref.to_string(),
            empty_lower: img.chain_ids.is_empty(),
            dir,
            hold,
            journal: self.inner.journal.clone(),
            durable: self.inner.holds_durable,
        }
    }

    /// The overlay layout of a container that holds its rootfs already (prepared by
    /// CreateContainer), from memory: no look at the disk (a mount of it fails if a directory
    /// is missing, and [`ImageStore::prepare_rootfs`] makes them again). `None` without a hold.
    pub async fn held_rootfs(&self, container_id: &str) -> Option<RootfsMount> {
        let st = self.inner.state.lock().await;
        let chain_ids = st.holds.get(container_id)?.chain_ids.clone();
        drop(st);
        Some(self.layout(&self.inner.containers_dir.join(container_id), &chain_ids))
    }

    /// The directories of an image's layers, topmost first (the lower dirs of
    /// [`ImageStore::prepare_rootfs`]'s layout but for an image without layers, whose only
    /// lower dir is the container's empty one): to read the image's files (its `/etc/passwd`)
    /// while its writable layer is being prepared.
    pub fn layer_dirs(&self, image: &super::Image) -> Vec<PathBuf> {
        image.record.chain_ids.iter().rev().map(|c| self.inner.snapshots.fs_dir(c)).collect()
    }

    fn layout(&self, dir: &Path, chain_ids: &[Digest]) -> RootfsMount {
        let mut lowerdirs: Vec<PathBuf> = chain_ids.iter().rev().map(|c| self.inner.snapshots.fs_dir(c)).collect();
        if lowerdirs.is_empty() {
            lowerdirs.push(dir.join("lower"));
        }
        RootfsMount { lowerdirs, upperdir: dir.join("upper"), workdir: dir.join("work"), volatile: false }
    }

    /// Drops a container's writable layer and its hold on the snapshots (unmount first).
    /// Idempotent. Snapshots no longer used by any image or container are deleted.
    pub async fn release_rootfs(&self, container_id: &str) -> Result<()> {
        if let Some(doomed) = self.release_rootfs_deferred(container_id).await? {
            blocking(move || {
                std::fs::remove_dir_all(&doomed).map_err(|e| ImageError::io("remove container layer", &doomed, e))
            })
            .await?;
        }
        Ok(())
    }

    /// As [`ImageStore::release_rootfs`], but leaves the deletion of the writable layer to
    /// the caller: the layer is renamed to `ROOT/containers/.del-<id>-<n>` (atomic: from then
    /// on the container has no layer and no hold; a `.del-*` left behind, by a crash or a
    /// failed deletion, is removed when the store opens) and that path is returned, `None`
    /// when there was no layer. Snapshots no longer used by any image or container are
    /// deleted before it returns. Its two halves are [`ImageStore::retire_rootfs`] and
    /// [`ImageStore::forget_rootfs`].
    pub async fn release_rootfs_deferred(&self, container_id: &str) -> Result<Option<PathBuf>> {
        let (store, id) = (self.clone(), container_id.to_string());
        let moved = blocking(move || store.retire_rootfs(&id)).await?;
        self.forget_rootfs(container_id).await?;
        Ok(moved)
    }

    /// Blocking, the first half of [`ImageStore::release_rootfs_deferred`]: the layer renamed
    /// away (its new path returned) and the hold's removal journaled (not waited for: see the
    /// module doc). The hold still counts in memory (it keeps its snapshots from the garbage
    /// collector) until [`ImageStore::forget_rootfs`]; the rename needs no lock (the garbage
    /// collector never looks into the containers' layers).
    pub fn retire_rootfs(&self, container_id: &str) -> Result<Option<PathBuf>> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

        let dir = self.layer_dir_of(container_id)?;
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let doomed = self.inner.containers_dir.join(format!(".del-{container_id}-{}-{seq}", std::process::id()));
        let moved = match std::fs::rename(&dir, &doomed) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(ImageError::io("remove container layer", &dir, e)),
        };
        // So that a replay does not bring the hold back.
        self.inner
            .journal
            .remove(&hold_rel(container_id), false)
            .map_err(|e| ImageError::io("journal the release of", &dir, e))?;
        Ok(moved.then_some(doomed))
    }

    /// The second half of [`ImageStore::release_rootfs_deferred`], after
    /// [`ImageStore::retire_rootfs`]: the hold forgotten, and the snapshots it was the last
    /// user of deleted.
    pub async fn forget_rootfs(&self, container_id: &str) -> Result<()> {
        // The store's lock only now, so that other containers' creations, starts and
        // removals do not wait for the rename.
        let mut st = self.inner.state.lock().await;
        // Garbage only when this hold was the last user of one of its snapshots (an image
        // removed while the container held it): no directory walk on every removal.
        let orphaned = st.holds.remove(container_id).is_some_and(|h| {
            h.chain_ids.iter().chain(h.volume_chain_ids.iter()).any(|c| {
                !st.images.values().any(|i| i.chain_ids.contains(c))
                    && !st.holds.values().any(|o| o.chain_ids.contains(c) || o.volume_chain_ids.contains(c))
            })
        });
        drop(st);
        if orphaned {
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
        self.layer_dir_of(container_id)?;
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
        let (h2, journal, durable) = (hold.clone(), self.inner.journal.clone(), self.inner.holds_durable);
        blocking(move || write_hold(&journal, &h2, durable)).await?;
        st.holds.insert(container_id.to_string(), hold);
        Ok(out)
    }

    /// The container ids holding snapshots (for reconciliation by skiffd).
    pub async fn rootfs_holders(&self) -> Vec<String> {
        self.inner.state.lock().await.holds.keys().cloned().collect()
    }
}

/// `rootfs.json` of a container, relative to the store's root (the journal's base).
fn hold_rel(container_id: &str) -> PathBuf {
    Path::new("containers").join(container_id).join("rootfs.json")
}

/// Writes `rootfs.json` of a hold through the journal (`durable`: waits for the disk). Blocking.
fn hold_of(img: &crate::meta::ImageRecord, container_id: &str, volume_chain_ids: Vec<Digest>) -> ContainerRootfs {
    ContainerRootfs {
        version: 1,
        seq: 0,
        container_id: container_id.to_string(),
        image_id: img.id.clone(),
        chain_ids: img.chain_ids.clone(),
        volume_chain_ids,
    }
}

fn write_hold(journal: &common::journal::Journal, hold: &ContainerRootfs, durable: bool) -> Result<()> {
    let rel = hold_rel(&hold.container_id);
    let mut hold = hold.clone();
    let make = move |seq| {
        hold.seq = seq;
        serde_json::to_vec(&hold).unwrap_or_default()
    };
    journal.save(&rel, make, 0o644, durable).map_err(|e| ImageError::io("write", journal.base().join(&rel), e))
}

/// Opens the holds' journal under `root`, replaying it into the `rootfs.json` files. Blocking.
pub(super) fn open_journal(root: &Path) -> Result<common::journal::Journal> {
    fn seq_of(b: &[u8]) -> Option<u64> {
        serde_json::from_slice::<ContainerRootfs>(b).ok().map(|h| h.seq)
    }
    let (journal, replay) = common::journal::Journal::open(root, "metadata/rootfs-journal", seq_of)
        .map_err(|e| ImageError::io("open the journal in", root, e))?;
    if replay.noteworthy() {
        tracing::info!(%replay, "replayed the rootfs journal");
    }
    Ok(journal)
}

/// Loads the holds under `dir`, removing released layers (`.del-*`) and layers without a valid
/// `rootfs.json` (an interrupted prepare).
pub(super) fn load_holds(dir: &Path) -> Result<BTreeMap<String, ContainerRootfs>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_single_path_components() {
        for ok in ["abc", "a.b-c_d", &"x".repeat(128)] {
            assert!(valid_container_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".del-x", "a/b", "a b", &"x".repeat(129)] {
            assert!(!valid_container_id(bad), "{bad}");
        }
    }

    #[test]
    fn load_holds_keeps_valid_holds_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path();
        let hold = |id: &str| ContainerRootfs {
            version: 1,
            seq: 0,
            container_id: id.to_string(),
            image_id: Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap(),
            chain_ids: Vec::new(),
            volume_chain_ids: Vec::new(),
        };
        for (name, h) in [("good", Some(hold("good"))), ("renamed", Some(hold("other"))), ("half", None)] {
            std::fs::create_dir_all(c.join(name).join("upper")).unwrap();
            if let Some(h) = h {
                std::fs::write(c.join(name).join("rootfs.json"), serde_json::to_vec(&h).unwrap()).unwrap();
            }
        }
        std::fs::create_dir_all(c.join(".del-gone/upper")).unwrap();
        let holds = load_holds(c).unwrap();
        assert_eq!(holds.keys().collect::<Vec<_>>(), ["good"]);
        let mut left: Vec<_> = std::fs::read_dir(c).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, ["good"]);
    }
}

/// The blocking halves of a container's writable layer, from [`ImageStore::begin_rootfs`]:
/// [`RootfsPrep::hold`] (the snapshots checked, the layer's directory made and the hold
/// journaled) and [`RootfsPrep::dirs`] (`upper/`, `work/`, and `lower/` for an image without
/// layers), which may run at once on two threads.
#[derive(Debug, Clone)]
pub struct RootfsPrep {
    snapshot_dirs: Vec<(PathBuf, String)>,
    image_ref: String,
    empty_lower: bool,
    dir: PathBuf,
    hold: ContainerRootfs,
    journal: common::journal::Journal,
    durable: bool,
}

impl RootfsPrep {
    /// Blocking: checks that the image's snapshots are there ([`ImageError::ImageNotFound`]
    /// otherwise), makes `ROOT/containers/<id>` (the journal materializes `rootfs.json` only
    /// into a directory that exists) and journals the hold (durable with the caller's next
    /// durable change of the same journal when the store shares skiffd's).
    pub fn hold(&self) -> Result<()> {
        if let Some((_, short)) = self.snapshot_dirs.iter().find(|(d, _)| !d.is_dir()) {
            return Err(ImageError::ImageNotFound(format!(
                "{} (snapshot {short} is missing; pull the image again)",
                self.image_ref
            )));
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| ImageError::io("create container dir", &self.dir, e))?;
        write_hold(&self.journal, &self.hold, self.durable)
    }

    /// Blocking: makes the layer's `upper/` and `work/` (and `lower/`), with their parent.
    pub fn dirs(&self) -> Result<()> {
        for sub in ["upper", "work"].into_iter().chain(self.empty_lower.then_some("lower")) {
            let p = self.dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| ImageError::io("create container dir", &p, e))?;
        }
        Ok(())
    }
}
