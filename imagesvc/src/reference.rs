//! Image references and digests, parsed and normalised as Docker and the kubelet do
//! (`busybox` = `docker.io/library/busybox:latest`).
//!
//! Grammar (docker/distribution `reference`): `[domain/]path[:tag][@digest]`. The first path
//! component is a domain when it contains `.` or `:` or is `localhost`; otherwise the domain is
//! `docker.io`, and a single-component name on Docker Hub gets the `library/` prefix. A
//! reference with neither tag nor digest gets `:latest`. With both tag and digest, the digest
//! wins and the tag is dropped (as `ParseDockerRef` does for containerd).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};

/// Docker Hub's canonical domain in references.
pub const DOCKER_HUB: &str = "docker.io";

/// A content digest (`sha256:<64 lowercase hex>`; the only algorithm we accept).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<hex>`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(format!("digest {s:?} has no algorithm"));
        };
        if algo != "sha256" {
            return Err(format!("unsupported digest algorithm {algo:?}"));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("digest {s:?} is not 64 lowercase hex characters"));
        }
        Ok(Digest(s.to_string()))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Digest(format!("sha256:{}", hex::encode(sha2::Sha256::digest(data))))
    }

    /// Builds a digest from a finished sha256 hasher.
    pub fn from_hasher(h: sha2::Sha256) -> Self {
        use sha2::Digest as _;
        Digest(format!("sha256:{}", hex::encode(h.finalize())))
    }

    /// The hex part (file name in the content store).
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The whole digest string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex characters, for logs.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `registry.k8s.io`, `127.0.0.1:5000`).
    pub domain: String,
    /// Repository path (`library/busybox`).
    pub path: String,
    /// Tag, unless the reference is by digest.
    pub tag: Option<String>,
    /// Digest, when pulling by digest.
    pub digest: Option<Digest>,
}

fn invalid(reference: &str, reason: impl Into<String>) -> ImageError {
    ImageError::InvalidReference { reference: reference.to_string(), reason: reason.into() }
}

fn valid_path_component(c: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator run
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        // IPv6 literal
        let Some((h, after)) = rest.split_once(']') else { return false };
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(p) => ("x", Some(p)),
                None => return false,
            },
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 5 {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

impl Reference {
    /// Parses and normalises `s`. Errors name the reference.
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(invalid(s, "empty reference"));
        }
        if s.len() > 4096 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(s, "contains whitespace or is too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|e| invalid(s, e))?)),
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                let tag = &rest[i + 1..];
                if !valid_tag(tag) {
                    return Err(invalid(s, format!("invalid tag {tag:?}")));
                }
                (&rest[..i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(invalid(s, "empty repository name"));
        }
        if name.len() > 255 {
            return Err(invalid(s, "repository name longer than 255 characters"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" || first.starts_with('[') =>
            {
                if !valid_domain(first) {
                    return Err(invalid(s, format!("invalid registry host {first:?}")));
                }
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let domain = if domain == "index.docker.io" { DOCKER_HUB.to_string() } else { domain };
        let path = if domain == DOCKER_HUB && !path.contains('/') { format!("library/{path}") } else { path };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid(s, "repository name must be lowercase"));
        }
        if let Some(bad) = path.split('/').find(|c| !valid_path_component(c)) {
            return Err(invalid(s, format!("invalid repository path component {bad:?}")));
        }
        // The limit holds for the normalised name (as distribution's reference package checks
        // it), so that every parsed reference prints as one that parses again.
        if domain.len() + 1 + path.len() > 255 {
            return Err(invalid(s, "repository name longer than 255 characters"));
        }
        let tag = match (&tag, &digest) {
            (_, Some(_)) => None,
            (Some(t), None) => Some(t.clone()),
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference { domain, path, tag, digest })
    }

    /// `domain/path`, the repository name used in repo tags and digests.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// What to ask the registry's manifest endpoint for: the digest if any, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The repo tag (`domain/path:tag`) when the reference has a tag.
    pub fn repo_tag(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{}", self.name(), t))
    }

    /// `domain/path@digest` for a given manifest digest.
    pub fn repo_digest(&self, digest: &Digest) -> String {
        format!("{}@{}", self.name(), digest)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_limit_holds_for_the_normalised_name() {
        // 250 characters as written, over 255 once "docker.io/" is added (found by fuzz/reference)
        let long = format!("a/{}", "b".repeat(248));
        assert!(Reference::parse(&long).is_err());
        let ok = format!("a/{}", "b".repeat(240));
        let r = Reference::parse(&ok).unwrap();
        assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn n(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("busybox:1.29"), "docker.io/library/busybox:1.29");
        assert_eq!(n("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("index.docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(
            n("registry.k8s.io/e2e-test-images/busybox:1.29-2"),
            "registry.k8s.io/e2e-test-images/busybox:1.29-2"
        );
        assert_eq!(n("localhost/foo"), "localhost/foo:latest");
        assert_eq!(n("127.0.0.1:5000/pause:3.9"), "127.0.0.1:5000/pause:3.9");
        assert_eq!(n("myregistry.local:5000/a/b/c"), "myregistry.local:5000/a/b/c:latest");
        assert_eq!(n("[::1]:5000/x:y"), "[::1]:5000/x:y");
        assert_eq!(n("a__b/c.d-e_f---g"), "docker.io/a__b/c.d-e_f---g:latest");
    }

    #[test]
    fn digests_and_tag_plus_digest() {
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().unwrap().as_str(), D);
        assert_eq!(r.manifest_ref(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        let r = Reference::parse(&format!("127.0.0.1:5000/busybox:1.0@{D}")).unwrap();
        assert_eq!(r.tag, None, "digest wins over tag");
        assert_eq!(r.domain, "127.0.0.1:5000");
        assert_eq!(r.repo_digest(r.digest.as_ref().unwrap()), format!("127.0.0.1:5000/busybox@{D}"));
        assert_eq!(Reference::parse("x:5000").unwrap().to_string(), "docker.io/library/x:5000");
    }

    #[test]
    fn invalid_references_are_named() {
        for bad in [
            "",
            "Busybox",
            "docker.io/Library/busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            "a//b",
            "a/b/",
            "-a",
            "a b",
            "host:port/x",
            "busybox:tag:more",
            "reg..istry.io/x",
            &format!("busybox:{}", "t".repeat(129)),
        ] {
            match Reference::parse(bad) {
                Err(e @ ImageError::InvalidReference { .. }) => {
                    assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
                    assert_eq!(e.kind(), crate::error::ErrorKind::InvalidArgument);
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn digest_type() {
        let d = Digest::of(b"hello");
        assert_eq!(d.as_str(), "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(d.short(), "2cf24dba5fb0");
        assert!(Digest::parse("sha256:ABC").is_err());
    }
}
