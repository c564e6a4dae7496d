//! Image records: finding an image by ID, ID prefix or reference, listing, status, resolving
//! an image with its OCI config, removing an image, and merging a finished pull into the
//! records. Records live in `State::images` and are persisted by [`MetaStore`] as one document
//! written atomically (see [`crate::meta`]); every change saves the whole new map before the
//! in-memory state is replaced, under the state lock.
//!
//! [`MetaStore`]: crate::meta::MetaStore

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use oci_spec::image::ImageConfiguration;

use super::{blocking, now_unix, Image, ImageStore};
use crate::error::{ImageError, Result};
use crate::meta::ImageRecord;
use crate::reference::{Digest, Reference};

/// What a finished pull adds to the records (see [`ImageStore::commit_pull`]).
pub(super) struct Pulled {
    /// The record to create when the image is new (no references, `pulled_at` 0).
    pub fresh: ImageRecord,
    /// `domain/path:tag` of the pulled reference, if it has a tag.
    pub repo_tag: Option<String>,
    /// `domain/path@sha256:…` of what the reference resolved to.
    pub repo_digest: String,
    /// Blobs the image keeps alive besides its manifest, config and layers (an index).
    pub extra: BTreeSet<Digest>,
}

/// Merges a pull into `images`: the tag moves to this image, the repo digest and extra blobs are
/// added (and the manifest, if the image was known with another one), `pulled_at` is set.
/// Images left without any reference are removed. Returns the record and the removed IDs.
pub(super) fn merge_pulled(
    images: &mut BTreeMap<Digest, ImageRecord>,
    pulled: Pulled,
    now: i64,
) -> (ImageRecord, Vec<Digest>) {
    let Pulled { fresh, repo_tag, repo_digest, extra } = pulled;
    let id = fresh.id.clone();
    let manifest_digest = fresh.manifest_digest.clone();
    if let Some(t) = &repo_tag {
        for img in images.values_mut() {
            if img.id != id {
                img.repo_tags.retain(|x| x != t);
            }
        }
    }
    let rec = images.entry(id).or_insert(fresh);
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
        rec.extra_blobs.insert(manifest_digest);
    }
    rec.pulled_at = now;
    let rec = rec.clone();
    // An image that lost its last reference to this pull goes away.
    let orphaned: Vec<Digest> =
        images.values().filter(|i| i.repo_tags.is_empty() && i.repo_digests.is_empty()).map(|i| i.id.clone()).collect();
    for o in &orphaned {
        images.remove(o);
    }
    (rec, orphaned)
}

impl ImageStore {
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
    pub(super) fn find<'a>(images: &'a BTreeMap<Digest, ImageRecord>, s: &str) -> Option<&'a ImageRecord> {
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
        // Configs are content-addressed (immutable) and cached once read: only the first
        // resolve of an image reads and parses its config, on the blocking pool.
        let cached = self.inner.configs.lock().unwrap_or_else(|p| p.into_inner()).get(&record.id).cloned();
        let config = match cached {
            Some(c) => c,
            None => {
                let (me, id) = (self.clone(), record.id.clone());
                blocking(move || me.load_config(&id)).await?
            }
        };
        Ok(Some(Image { record, config }))
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

    /// Commits a finished pull to the records (saved before the in-memory state changes) and
    /// collects the garbage of images it orphaned. The caller made the image's data durable.
    pub(super) async fn commit_pull(&self, pulled: Pulled) -> Result<ImageRecord> {
        let mut st = self.inner.state.lock().await;
        let mut images = st.images.clone();
        let (rec, orphaned) = merge_pulled(&mut images, pulled, now_unix());
        let meta = self.inner.meta.clone();
        let to_save = images.clone();
        blocking(move || meta.save(&to_save)).await?;
        st.images = images;
        drop(st);
        if !orphaned.is_empty() {
            self.gc().await?;
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dig(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn record(id: char, tags: &[&str], digests: &[&str]) -> ImageRecord {
        ImageRecord {
            id: dig(id),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: digests.iter().map(|s| s.to_string()).collect(),
            size: 1,
            manifest_digest: dig('f'),
            layers: vec![dig('e')],
            diff_ids: vec![dig('d')],
            chain_ids: vec![dig('d')],
            extra_blobs: BTreeSet::new(),
            uid: None,
            username: String::new(),
            pinned: false,
            pulled_at: 0,
        }
    }

    fn pulled(id: char, tag: Option<&str>, digest: &str) -> Pulled {
        Pulled {
            fresh: record(id, &[], &[]),
            repo_tag: tag.map(str::to_string),
            repo_digest: digest.to_string(),
            extra: BTreeSet::new(),
        }
    }

    #[test]
    fn a_new_pull_adds_a_record_with_its_references() {
        let mut images = BTreeMap::new();
        let (rec, orphaned) = merge_pulled(&mut images, pulled('a', Some("r/x:1"), "r/x@sha256:1"), 42);
        assert!(orphaned.is_empty());
        assert_eq!(rec.repo_tags, ["r/x:1"]);
        assert_eq!(rec.repo_digests, ["r/x@sha256:1"]);
        assert_eq!(rec.pulled_at, 42);
        assert_eq!(images.get(&dig('a')), Some(&rec));

        // Pulled again by digest: references are added once, the time moves.
        let (rec, _) = merge_pulled(&mut images, pulled('a', None, "r/x@sha256:1"), 43);
        assert_eq!(rec.repo_tags, ["r/x:1"]);
        assert_eq!(rec.repo_digests, ["r/x@sha256:1"]);
        assert_eq!(rec.pulled_at, 43);
    }

    #[test]
    fn a_tag_moves_and_an_image_left_without_references_goes() {
        let mut images = BTreeMap::new();
        images.insert(dig('a'), record('a', &["r/x:1"], &[]));
        images.insert(dig('b'), record('b', &["r/x:1", "r/y:2"], &["r/y@sha256:2"]));
        let (rec, orphaned) = merge_pulled(&mut images, pulled('c', Some("r/x:1"), "r/x@sha256:3"), 1);
        assert_eq!(rec.id, dig('c'));
        assert_eq!(orphaned, [dig('a')], "a had only the moved tag");
        assert!(!images.contains_key(&dig('a')));
        assert_eq!(images[&dig('b')].repo_tags, ["r/y:2"], "b keeps its other tag");
        assert_eq!(images[&dig('c')].repo_tags, ["r/x:1"]);
    }

    #[test]
    fn a_known_image_pulled_through_another_manifest_keeps_it_alive() {
        let mut images = BTreeMap::new();
        images.insert(dig('a'), record('a', &["r/x:1"], &[]));
        let mut p = pulled('a', Some("r/x:1"), "r/x@sha256:9");
        p.fresh.manifest_digest = dig('9');
        p.extra.insert(dig('8'));
        let (rec, _) = merge_pulled(&mut images, p, 1);
        assert_eq!(rec.manifest_digest, dig('f'), "the first manifest stays the record's");
        assert_eq!(rec.extra_blobs, [dig('8'), dig('9')].into_iter().collect());
    }

    #[test]
    fn find_by_id_hex_prefix_tag_and_digest() {
        let mut images = BTreeMap::new();
        images.insert(dig('a'), record('a', &["docker.io/library/x:1"], &["docker.io/library/x@sha256:1"]));
        images.insert(dig('b'), record('b', &["docker.io/library/y:2"], &[]));
        let id = |s: &str| ImageStore::find(&images, s).map(|r| r.id.clone());
        assert_eq!(id(dig('a').as_str()), Some(dig('a')));
        assert_eq!(id(&"b".repeat(64)), Some(dig('b')));
        assert_eq!(id("aaaa"), Some(dig('a')));
        assert_eq!(id("sha256:bbbbbb"), Some(dig('b')));
        assert_eq!(id("x:1"), Some(dig('a')));
        assert_eq!(id("docker.io/library/y:2"), Some(dig('b')));
        assert_eq!(id("y:3"), None);
        assert_eq!(id("aaa"), None, "a prefix needs four digits");
    }
}
