//! Leases and garbage collection. An in-flight pull takes a [`Lease`] on every blob and
//! snapshot it may create ("blob:<digest>", "snap:<chain id>" keys counted in
//! `Inner::leases`); [`ImageStore::gc`] deletes what no image record, container hold or lease
//! references. It runs at startup, after a remove, after a released container rootfs, after a
//! pull that orphaned an image, and after a failed pull (which so leaves the store as it was).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{blocking, ImageStore, Inner};
use crate::error::{ImageError, Result};
use crate::reference::Digest;

/// What one pull keeps from the garbage collector until it is dropped.
pub(super) struct Lease {
    inner: Arc<Inner>,
    keys: Vec<String>,
}

impl Lease {
    pub(super) fn add(&mut self, key: String) {
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

pub(super) fn blob_key(d: &Digest) -> String {
    format!("blob:{d}")
}
pub(super) fn snap_key(d: &Digest) -> String {
    format!("snap:{d}")
}

impl ImageStore {
    pub(super) fn lease(&self) -> Lease {
        Lease { inner: self.inner.clone(), keys: Vec::new() }
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
}
