//! Manifests, indexes and platform selection.
//!
//! Accepts OCI image manifests and indexes and their Docker schema 2 equivalents (manifest,
//! manifest list); refuses Docker schema 1 with a clear error. The JSON is parsed into small
//! local types that only keep what a pull needs, so unknown fields and vendor extensions pass.

use serde::Deserialize;

use crate::error::{ImageError, Result};
use crate::reference::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header for manifest requests (schema 1 deliberately not listed).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: i64,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// An index (OCI image index or Docker manifest list).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: i64,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum Document {
    Manifest(ImageManifest),
    Index(Index),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
    #[serde(default)]
    fs_layers: Option<serde_json::Value>,
}

/// Parses a manifest body. `content_type` is the HTTP Content-Type or descriptor media type.
pub fn parse_document(reference: &str, content_type: &str, body: &[u8]) -> Result<Document> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let bad = |reason: String| ImageError::InvalidManifest { reference: reference.to_string(), reason };
    if ct == DOCKER_SCHEMA1 || ct == DOCKER_SCHEMA1_SIGNED {
        return Err(ImageError::Schema1 { reference: reference.to_string() });
    }
    let probe: Probe = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    if probe.schema_version == Some(1) || probe.fs_layers.is_some() {
        return Err(ImageError::Schema1 { reference: reference.to_string() });
    }
    if probe.schema_version != Some(2) {
        return Err(bad(format!("unsupported schemaVersion {:?}", probe.schema_version)));
    }
    let mt = probe.media_type.clone().unwrap_or_default();
    let is_index = match mt.as_str() {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        "" => match ct {
            OCI_INDEX | DOCKER_LIST => true,
            OCI_MANIFEST | DOCKER_MANIFEST => false,
            _ => probe.manifests.is_some() && probe.layers.is_none(),
        },
        other => {
            return Err(ImageError::UnsupportedMediaType {
                reference: reference.to_string(),
                media_type: other.to_string(),
            })
        }
    };
    if is_index {
        let idx: Index = serde_json::from_slice(body).map_err(|e| bad(format!("bad index: {e}")))?;
        Ok(Document::Index(idx))
    } else {
        let m: ImageManifest = serde_json::from_slice(body).map_err(|e| bad(format!("bad manifest: {e}")))?;
        for l in &m.layers {
            if l.size < 0 {
                return Err(bad(format!("layer {} has negative size", l.digest)));
            }
            if !is_layer_media_type(&l.media_type) {
                return Err(ImageError::UnsupportedMediaType {
                    reference: reference.to_string(),
                    media_type: l.media_type.clone(),
                });
            }
        }
        if m.config.size < 0 {
            return Err(bad("config has negative size".into()));
        }
        Ok(Document::Manifest(m))
    }
}

/// Whether `mt` is a layer media type we can unpack (compression is detected from the bytes).
pub fn is_layer_media_type(mt: &str) -> bool {
    matches!(
        mt,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | ""
    )
}

/// The platform we run containers for.
pub fn host_platform() -> Platform {
    let (arch, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "x86" => ("386", None),
        "arm" => ("arm", Some("v7")),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        other => (other, None),
    };
    Platform { architecture: arch.into(), os: "linux".into(), variant: variant.map(Into::into) }
}

/// Picks the manifest for `want` from an index: same os and architecture; among those an exact
/// variant match first, then an entry without a variant (or the architecture's baseline variant).
pub fn select_platform<'a>(reference: &str, idx: &'a Index, want: &Platform) -> Result<&'a Descriptor> {
    let baseline = |v: &str| matches!((want.architecture.as_str(), v), ("amd64", "v1") | ("arm64", "v8"));
    let mut best: Option<(u8, &Descriptor)> = None;
    for d in &idx.manifests {
        if !matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | "") {
            continue;
        }
        let Some(p) = &d.platform else { continue };
        if p.os != want.os || p.architecture != want.architecture {
            continue;
        }
        let score = match (&p.variant, &want.variant) {
            (Some(a), Some(b)) if a == b => 3,
            (None, _) => 2,
            (Some(a), _) if baseline(a) => 1,
            _ => 0,
        };
        if score > 0 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, d));
        }
    }
    best.map(|(_, d)| d).ok_or_else(|| ImageError::NoMatchingPlatform {
        reference: reference.to_string(),
        platform: match &want.variant {
            Some(v) => format!("{}/{}/{}", want.os, want.architecture, v),
            None => format!("{}/{}", want.os, want.architecture),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn index_json(entries: &[(&str, &str, Option<&str>, u8)]) -> Vec<u8> {
        let ms: Vec<_> = entries
            .iter()
            .map(|(os, arch, var, n)| {
                let mut p = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = var {
                    p["variant"] = serde_json::json!(v);
                }
                serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d(*n), "size": 10, "platform": p})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": ms})).unwrap()
    }

    fn sel(entries: &[(&str, &str, Option<&str>, u8)], want: Platform) -> Result<String> {
        let Document::Index(idx) = parse_document("r", OCI_INDEX, &index_json(entries))? else { panic!() };
        select_platform("r", &idx, &want).map(|d| d.digest.to_string())
    }

    fn plat(arch: &str, v: Option<&str>) -> Platform {
        Platform { os: "linux".into(), architecture: arch.into(), variant: v.map(Into::into) }
    }

    #[test]
    fn platform_selection() {
        let e = [
            ("linux", "arm", Some("v6"), 1),
            ("linux", "arm", Some("v7"), 2),
            ("windows", "amd64", None, 3),
            ("linux", "amd64", None, 4),
            ("linux", "arm64", Some("v8"), 5),
            ("unknown", "unknown", None, 6),
        ];
        assert_eq!(sel(&e, plat("amd64", None)).unwrap(), d(4));
        assert_eq!(sel(&e, plat("arm", Some("v7"))).unwrap(), d(2));
        assert_eq!(sel(&e, plat("arm64", Some("v8"))).unwrap(), d(5));
        assert!(matches!(sel(&e, plat("s390x", None)), Err(ImageError::NoMatchingPlatform { .. })));
        assert!(matches!(sel(&e, plat("arm", Some("v5"))), Err(ImageError::NoMatchingPlatform { .. })));
        // baseline variant accepted when no plain entry exists
        assert_eq!(sel(&[("linux", "amd64", Some("v1"), 7)], plat("amd64", None)).unwrap(), d(7));
        assert!(sel(&[("linux", "amd64", Some("v3"), 7)], plat("amd64", None)).is_err());
        assert_eq!(host_platform().os, "linux");
    }

    #[test]
    fn manifests_docker_and_oci() {
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": d(1), "size": 5},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": d(2), "size": 7}]});
        let Document::Manifest(m) = parse_document("r", DOCKER_MANIFEST, m.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(m.layers.len(), 1);
        // OCI without mediaType field: decided by content type
        let m = serde_json::json!({"schemaVersion": 2, "config": {"digest": d(1), "size": 5}, "layers": []});
        assert!(matches!(parse_document("r", OCI_MANIFEST, m.to_string().as_bytes()), Ok(Document::Manifest(_))));
        // docker manifest list
        let l = serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
            {"mediaType": DOCKER_MANIFEST, "digest": d(3), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}}]});
        let Document::Index(i) = parse_document("r", "application/json", l.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(select_platform("r", &i, &plat("amd64", None)).unwrap().digest.to_string(), d(3));
    }

    #[test]
    fn refusals() {
        let s1 = br#"{"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}"#;
        assert!(matches!(parse_document("r", "application/json", s1), Err(ImageError::Schema1 { .. })));
        assert!(matches!(parse_document("r", DOCKER_SCHEMA1_SIGNED, b"{}"), Err(ImageError::Schema1 { .. })));
        let e = parse_document("ref", OCI_MANIFEST, b"<html>nope</html>").unwrap_err();
        assert!(matches!(e, ImageError::InvalidManifest { .. }) && e.to_string().contains("not JSON"), "{e}");
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": d(1), "size": 5},
            "layers": [{"mediaType": "application/x-evil", "digest": d(2), "size": 1}]});
        assert!(matches!(
            parse_document("r", OCI_MANIFEST, m.to_string().as_bytes()),
            Err(ImageError::UnsupportedMediaType { .. })
        ));
        let bad_digest = br#"{"schemaVersion": 2, "config": {"digest": "sha256:xyz", "size": 1}, "layers": []}"#;
        assert!(matches!(parse_document("r", OCI_MANIFEST, bad_digest), Err(ImageError::InvalidManifest { .. })));
    }
}
