//! Image metadata, persisted as one versioned JSON document written atomically.
//!
//! Why a file and not redb: the data set is small (one record per image, a few hundred at most),
//! every change is a whole-state update that must be atomic anyway (a tag moving from one image
//! to another touches two records), and the guide's atomic-file discipline (temp file, fsync,
//! rename, fsync dir) gives crash safety with no extra dependency or on-disk format to migrate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};
use crate::reference::Digest;

/// Current on-disk version of `images.json`.
pub const META_VERSION: u32 = 1;

/// What we know about one image. The image ID is the config digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Image ID (`sha256:…` of the config blob).
    pub id: Digest,
    /// `domain/path:tag` references.
    pub repo_tags: Vec<String>,
    /// `domain/path@sha256:…` references (digest of what the pulled reference resolved to:
    /// the index or the manifest).
    pub repo_digests: Vec<String>,
    /// Compressed size of config + layers, as containerd reports it.
    pub size: u64,
    /// The platform manifest used.
    pub manifest_digest: Digest,
    /// Compressed layer blobs, bottom first.
    pub layers: Vec<Digest>,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<Digest>,
    /// Snapshot keys, bottom first.
    pub chain_ids: Vec<Digest>,
    /// Other blobs this image keeps alive (indexes, manifests).
    pub extra_blobs: BTreeSet<Digest>,
    /// Numeric user from the config's `User` (`1002`, `1003:1004`).
    pub uid: Option<i64>,
    /// Named user from the config's `User` (`www-data`, `www-data:1004`).
    pub username: String,
    /// Never garbage collected by the kubelet.
    pub pinned: bool,
    /// Unix seconds of the (last) pull.
    pub pulled_at: i64,
}

impl ImageRecord {
    /// Every blob this image references.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        std::iter::once(&self.id)
            .chain(std::iter::once(&self.manifest_digest))
            .chain(self.layers.iter())
            .chain(self.extra_blobs.iter())
    }
}

/// Splits a config `User` into (uid, username) as containerd's CRI does.
pub fn user_of(user: &str) -> (Option<i64>, String) {
    let u = user.split(':').next().unwrap_or("");
    if u.is_empty() {
        return (None, String::new());
    }
    match u.parse::<i64>() {
        Ok(n) => (Some(n), String::new()),
        Err(_) => (None, u.to_string()),
    }
}

#[derive(Serialize, Deserialize)]
struct MetaFile {
    version: u32,
    images: Vec<ImageRecord>,
}

/// Writes `data` to `path` atomically: temp file, fsync, rename, fsync dir (mode 0644).
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    common::fs::write_atomic(path, data, 0o644).map_err(|e| ImageError::io("write atomically", path, e))
}

/// The metadata file `ROOT/metadata/images.json`.
#[derive(Debug, Clone)]
pub struct MetaStore {
    path: PathBuf,
}

impl MetaStore {
    pub fn open(root: &Path) -> Result<Self> {
        let dir = root.join("metadata");
        std::fs::create_dir_all(&dir).map_err(|e| ImageError::io("create metadata dir", &dir, e))?;
        Ok(MetaStore { path: dir.join("images.json") })
    }

    /// Loads all records (none when the file does not exist yet).
    pub fn load(&self) -> Result<BTreeMap<Digest, ImageRecord>> {
        let data = match std::fs::read(&self.path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(ImageError::io("read image metadata", &self.path, e)),
        };
        let f: MetaFile =
            serde_json::from_slice(&data).map_err(|e| ImageError::Metadata(format!("{}: {e}", self.path.display())))?;
        if f.version != META_VERSION {
            return Err(ImageError::Metadata(format!(
                "{}: unsupported version {} (expected {META_VERSION})",
                self.path.display(),
                f.version
            )));
        }
        Ok(f.images.into_iter().map(|r| (r.id.clone(), r)).collect())
    }

    pub fn save(&self, images: &BTreeMap<Digest, ImageRecord>) -> Result<()> {
        let f = MetaFile { version: META_VERSION, images: images.values().cloned().collect() };
        let data = serde_json::to_vec_pretty(&f).map_err(|e| ImageError::Metadata(e.to_string()))?;
        atomic_write(&self.path, &data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        assert_eq!(user_of(""), (None, String::new()));
        assert_eq!(user_of("1002"), (Some(1002), String::new()));
        assert_eq!(user_of("1003:1004"), (Some(1003), String::new()));
        assert_eq!(user_of("www-data"), (None, "www-data".into()));
        assert_eq!(user_of("www-data:1004"), (None, "www-data".into()));
    }

    #[test]
    fn roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let m = MetaStore::open(d.path()).unwrap();
        assert!(m.load().unwrap().is_empty());
        let id = Digest::of(b"cfg");
        let r = ImageRecord {
            id: id.clone(),
            repo_tags: vec!["docker.io/library/x:latest".into()],
            repo_digests: vec![],
            size: 1,
            manifest_digest: Digest::of(b"m"),
            layers: vec![],
            diff_ids: vec![],
            chain_ids: vec![],
            extra_blobs: BTreeSet::new(),
            uid: Some(0),
            username: String::new(),
            pinned: false,
            pulled_at: 0,
        };
        let mut map = BTreeMap::new();
        map.insert(id.clone(), r.clone());
        m.save(&map).unwrap();
        assert_eq!(m.load().unwrap()[&id], r);
        std::fs::write(d.path().join("metadata/images.json"), br#"{"version": 99, "images": []}"#).unwrap();
        assert!(m.load().is_err());
    }
}
