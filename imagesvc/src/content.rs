//! The content store: blobs by digest under `ROOT/content/blobs/sha256/<hex>`, written through
//! `ROOT/content/ingest/` and renamed into place only after digest and size were verified.
//! Durability comes from the pull's one `syncfs` before it records the image (`durable`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{ImageError, Result};
use crate::reference::Digest;

static INGEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// The blob store.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

/// An ingest file being written. Dropping it without [`Ingest::commit`] deletes the file, so a
/// failed or cancelled download leaves nothing behind.
pub struct Ingest {
    path: PathBuf,
    file: Option<std::fs::File>,
    hasher: sha2::Sha256,
    written: u64,
}

impl Ingest {
    /// Appends bytes (blocking write).
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        use sha2::Digest as _;
        self.hasher.update(data);
        self.written += data.len() as u64;
        let f = self.file.as_mut().ok_or_else(|| ImageError::Metadata("ingest already closed".into()))?;
        f.write_all(data).map_err(|e| ImageError::io("write ingest", &self.path, e))
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.file.take();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ContentStore {
    /// Opens (creating) the store under `root/content` and empties the ingest area.
    pub fn open(root: &Path) -> Result<Self> {
        let blobs = root.join("content/blobs/sha256");
        let ingest = root.join("content/ingest");
        std::fs::create_dir_all(&blobs).map_err(|e| ImageError::io("create content store", &blobs, e))?;
        if ingest.exists() {
            let n = std::fs::read_dir(&ingest).map(|d| d.count()).unwrap_or(0);
            if n > 0 {
                tracing::info!(files = n, "removing interrupted downloads from the ingest area");
            }
            std::fs::remove_dir_all(&ingest).map_err(|e| ImageError::io("clean ingest", &ingest, e))?;
        }
        std::fs::create_dir_all(&ingest).map_err(|e| ImageError::io("create ingest", &ingest, e))?;
        Ok(ContentStore { blobs, ingest })
    }

    /// The directory of committed blobs.
    pub fn path_dir(&self) -> &Path {
        &self.blobs
    }

    /// Path of a committed blob.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.hex())
    }

    pub fn exists(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// Size of a committed blob.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        std::fs::metadata(self.path(d)).ok().map(|m| m.len())
    }

    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.path(d);
        std::fs::read(&p).map_err(|e| ImageError::io("read blob", &p, e))
    }

    /// Starts writing a blob.
    pub fn begin(&self, d: &Digest) -> Result<Ingest> {
        use sha2::Digest as _;
        let seq = INGEST_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self.ingest.join(format!("{}-{}-{}", d.hex(), std::process::id(), seq));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ImageError::io("create ingest file", &path, e))?;
        Ok(Ingest { path, file: Some(file), hasher: sha2::Sha256::new(), written: 0 })
    }

    /// Verifies size and digest and renames the blob into place. Nothing is fsynced here: the
    /// pull flushes the file system once before it records an image (see `durable`).
    pub fn commit(&self, mut ing: Ingest, d: &Digest, size: Option<u64>, what: &str) -> Result<()> {
        use sha2::Digest as _;
        if let Some(s) = size {
            if ing.written != s {
                return Err(ImageError::SizeMismatch { what: what.to_string(), expected: s, actual: ing.written });
            }
        }
        let hasher = std::mem::replace(&mut ing.hasher, sha2::Sha256::new());
        let got = Digest::from_hasher(hasher);
        if &got != d {
            return Err(ImageError::DigestMismatch {
                what: what.to_string(),
                expected: d.to_string(),
                actual: got.to_string(),
            });
        }
        if let Some(f) = ing.file.take() {
            // Start the blob's writeback now; the pull's syncfs waits for it (see `durable`).
            // SAFETY: plain syscall on a descriptor we hold.
            unsafe { libc::sync_file_range(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        }
        let dest = self.path(d);
        let _commit = crate::durable::will_commit();
        std::fs::rename(&ing.path, &dest).map_err(|e| ImageError::io("commit blob", &dest, e))
    }

    /// Writes a small verified blob in one go (manifests, configs).
    pub fn put(&self, d: &Digest, data: &[u8], what: &str) -> Result<()> {
        if self.exists(d) {
            return Ok(());
        }
        let mut ing = self.begin(d)?;
        ing.write(data)?;
        self.commit(ing, d, Some(data.len() as u64), what)
    }

    /// Deletes a blob (absent is fine).
    pub fn delete(&self, d: &Digest) -> Result<()> {
        let p = self.path(d);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::io("delete blob", &p, e)),
        }
    }

    /// All committed blobs.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let rd = std::fs::read_dir(&self.blobs).map_err(|e| ImageError::io("list blobs", &self.blobs, e))?;
        Ok(rd
            .filter_map(|e| e.ok())
            .filter_map(|e| Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())).ok())
            .collect())
    }

    /// Ingest files currently present (for tests and diagnostics).
    pub fn ingest_count(&self) -> usize {
        std::fs::read_dir(&self.ingest).map(|d| d.count()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_commit_and_cleanup() {
        let root = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(root.path()).unwrap();
        let d = Digest::of(b"hello");
        // wrong size
        let mut i = cs.begin(&d).unwrap();
        i.write(b"hell").unwrap();
        assert!(matches!(cs.commit(i, &d, Some(5), "blob"), Err(ImageError::SizeMismatch { .. })));
        // wrong content
        let mut i = cs.begin(&d).unwrap();
        i.write(b"hellO").unwrap();
        assert!(matches!(cs.commit(i, &d, Some(5), "blob"), Err(ImageError::DigestMismatch { .. })));
        assert!(!cs.exists(&d));
        assert_eq!(cs.ingest_count(), 0, "failed ingests are removed");
        // dropped (cancelled) ingest
        let mut i = cs.begin(&d).unwrap();
        i.write(b"he").unwrap();
        assert_eq!(cs.ingest_count(), 1);
        drop(i);
        assert_eq!(cs.ingest_count(), 0);
        cs.put(&d, b"hello", "blob").unwrap();
        assert_eq!(cs.read(&d).unwrap(), b"hello");
        assert_eq!(cs.list().unwrap(), vec![d.clone()]);
        // leftovers are cleaned when the store is opened again
        std::fs::write(root.path().join("content/ingest/junk"), b"x").unwrap();
        let cs = ContentStore::open(root.path()).unwrap();
        assert_eq!(cs.ingest_count(), 0);
        cs.delete(&d).unwrap();
        cs.delete(&d).unwrap();
        assert!(!cs.exists(&d));
    }
}
