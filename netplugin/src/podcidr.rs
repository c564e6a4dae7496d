//! The built-in bridge's pod ranges: from the configuration (`pod_cidr`, `pod_cidr_v6`), or,
//! when `pod_cidr` is empty, from the kubelet (`UpdateRuntimeConfig` hands over the node's
//! `spec.podCIDRs`), persisted in `ROOT/network/pod-cidr.json` so that a restarted skiffd keeps
//! them. Until a range is known the network is not ready (`NoPodCIDR`); after
//! `pod_cidr_fallback_secs` without one, [`FALLBACK_POD_CIDR`] is used (with a warning) so that
//! a node without a kubelet (crictl only) still gets a network. A range given later by the
//! kubelet replaces the fallback as long as no pod holds an address.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::error::{NetworkError, Result};
use crate::fsutil::write_atomic;
use crate::types::NotReady;

/// The range used when neither the configuration nor the kubelet gives one in time.
pub const FALLBACK_POD_CIDR: &str = "10.88.0.0/16";

/// The ranges pods get addresses from (IPv4, and IPv6 for dual stack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges {
    pub v4: Cidr,
    pub v6: Option<Cidr>,
}

impl Ranges {
    /// Both ranges, IPv4 first.
    pub fn list(&self) -> Vec<Cidr> {
        std::iter::once(self.v4).chain(self.v6).collect()
    }

    /// `10.244.1.0/24` or `10.244.1.0/24,fd00:1::/64` (the kubelet's form).
    pub fn to_kubelet_string(&self) -> String {
        self.list().iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Parses the ranges as the kubelet sends them: comma-separated, one per family, IPv4 required.
    pub fn parse_kubelet(s: &str) -> Result<Self> {
        let mut v4 = None;
        let mut v6 = None;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let c: Cidr = part.parse().map_err(|e| NetworkError::InvalidArgument(format!("pod CIDR {part:?}: {e}")))?;
            c.pod_offsets().ok_or_else(|| NetworkError::InvalidArgument(format!("pod CIDR {c} is too small")))?;
            let slot = if c.is_ipv6() { &mut v6 } else { &mut v4 };
            if slot.replace(c).is_some() {
                return Err(NetworkError::InvalidArgument(format!("pod CIDRs {s:?}: two ranges of one family")));
            }
        }
        let v4 = v4.ok_or_else(|| {
            NetworkError::InvalidArgument(format!(
                "pod CIDRs {s:?}: the built-in bridge needs an IPv4 range (IPv6-only is not supported)"
            ))
        })?;
        Ok(Self { v4, v6 })
    }

    /// Whether an address belongs to one of the ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.list().iter().any(|c| c.contains(ip))
    }
}

/// Where the ranges came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Config,
    Kubelet,
    Fallback,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    version: u32,
    pod_cidr: String,
    source: Source,
}

const RECORD_VERSION: u32 = 1;

/// The current ranges and where they came from.
#[derive(Debug)]
pub struct PodCidr {
    current: RwLock<Option<(Ranges, Source)>>,
    path: PathBuf,
    fallback_after: Option<Duration>,
    started: Instant,
}

impl PodCidr {
    /// `configured` = the ranges of the configuration (None when `pod_cidr` is empty: then the
    /// persisted ranges of `dir/pod-cidr.json`, if any, are used).
    pub fn open(configured: Option<Ranges>, dir: &Path, fallback_secs: u64) -> Result<Self> {
        let path = dir.join("pod-cidr.json");
        let current = match configured {
            Some(r) => Some((r, Source::Config)),
            None => match std::fs::read(&path) {
                Ok(data) => {
                    let rec: Record = serde_json::from_slice(&data)
                        .map_err(|e| NetworkError::Internal(format!("corrupt {}: {e}", path.display())))?;
                    if rec.version > RECORD_VERSION {
                        return Err(NetworkError::Internal(format!(
                            "{} has version {}, this skiff understands up to {RECORD_VERSION}",
                            path.display(),
                            rec.version
                        )));
                    }
                    let r = Ranges::parse_kubelet(&rec.pod_cidr)
                        .map_err(|e| NetworkError::Internal(format!("{}: {e}", path.display())))?;
                    tracing::info!(pod_cidr = %rec.pod_cidr, source = ?rec.source, "pod ranges from the last run");
                    Some((r, rec.source))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(NetworkError::io("read", &path, e)),
            },
        };
        Ok(Self {
            current: RwLock::new(current),
            path,
            fallback_after: (fallback_secs > 0).then(|| Duration::from_secs(fallback_secs)),
            started: Instant::now(),
        })
    }

    /// The ranges in force, if any (without falling back).
    pub fn get(&self) -> Option<(Ranges, Source)> {
        self.current.read().ok().and_then(|g| *g)
    }

    /// The ranges in force; falls back (and persists the fallback) once the wait is over.
    /// Blocking (file write): call off the async workers or accept one small write.
    pub fn resolve(&self) -> std::result::Result<Ranges, NotReady> {
        if let Some((r, _)) = self.get() {
            return Ok(r);
        }
        let waited = self.started.elapsed();
        match self.fallback_after {
            Some(after) if waited >= after => {
                let r =
                    Ranges::parse_kubelet(FALLBACK_POD_CIDR).map_err(|e| NotReady::new("NoPodCIDR", e.to_string()))?;
                let mut g = self.current.write().map_err(|_| NotReady::new("NoPodCIDR", "lock poisoned"))?;
                if let Some((r, _)) = *g {
                    return Ok(r);
                }
                tracing::warn!(
                    pod_cidr = FALLBACK_POD_CIDR,
                    waited_secs = waited.as_secs(),
                    "no pod range from the configuration or the kubelet: using the fallback range; \
                     pod IPs collide if other nodes do the same (set network.pod_cidr, or let the kubelet hand one over)"
                );
                if let Err(e) = self.persist(&r, Source::Fallback) {
                    tracing::warn!(error = %e, "cannot record the fallback pod range");
                }
                *g = Some((r, Source::Fallback));
                Ok(r)
            }
            _ => Err(NotReady::new(
                "NoPodCIDR",
                "no pod range yet: waiting for the kubelet's UpdateRuntimeConfig (the node's podCIDR), \
                 or set network.pod_cidr"
                    .to_string()
                    + &match self.fallback_after {
                        Some(a) => format!("; {FALLBACK_POD_CIDR} is used after {}s", a.as_secs()),
                        None => String::new(),
                    },
            )),
        }
    }

    /// Sets the ranges the kubelet gave. `Ok(None)` = nothing to do (same ranges, or the
    /// configuration fixes them); `Ok(Some(old))` = changed from `old`. The caller must have
    /// checked that no pod holds an address of the old ranges.
    pub fn set(&self, ranges: Ranges) -> Result<Option<Option<Ranges>>> {
        let mut g = self.current.write().map_err(|_| NetworkError::Internal("pod range lock poisoned".into()))?;
        match *g {
            Some((_, Source::Config)) => Ok(None),
            Some((r, Source::Kubelet)) if r == ranges => Ok(None),
            old => {
                self.persist(&ranges, Source::Kubelet)?;
                *g = Some((ranges, Source::Kubelet));
                Ok(Some(old.map(|(r, _)| r)))
            }
        }
    }

    fn persist(&self, r: &Ranges, source: Source) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| NetworkError::io("create directory", dir, e))?;
        }
        let rec = Record { version: RECORD_VERSION, pod_cidr: r.to_kubelet_string(), source };
        let data = serde_json::to_vec_pretty(&rec).map_err(|e| NetworkError::Internal(format!("encode: {e}")))?;
        write_atomic(&self.path, &data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_forms() {
        let r = Ranges::parse_kubelet("10.244.1.0/24").unwrap();
        assert_eq!(r.v4.to_string(), "10.244.1.0/24");
        assert!(r.v6.is_none());
        let r = Ranges::parse_kubelet("fd00:1::/64, 10.244.1.0/24").unwrap();
        assert_eq!(r.to_kubelet_string(), "10.244.1.0/24,fd00:1::/64");
        assert!(Ranges::parse_kubelet("fd00:1::/64").is_err());
        assert!(Ranges::parse_kubelet("10.0.0.0/24,10.1.0.0/24").is_err());
        assert!(Ranges::parse_kubelet("10.0.0.0/31").is_err());
        assert!(Ranges::parse_kubelet("nonsense").is_err());
    }

    #[test]
    fn waits_then_falls_back_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let p = PodCidr::open(None, dir.path(), 0).unwrap();
        assert_eq!(p.resolve().unwrap_err().reason, "NoPodCIDR");
        let r = Ranges::parse_kubelet("10.9.0.0/24").unwrap();
        assert_eq!(p.set(r).unwrap(), Some(None));
        assert_eq!(p.set(r).unwrap(), None);
        let again = PodCidr::open(None, dir.path(), 0).unwrap();
        assert_eq!(again.get(), Some((r, Source::Kubelet)));
        // The configuration wins over the kubelet.
        let c = Ranges::parse_kubelet("10.8.0.0/24").unwrap();
        let fixed = PodCidr::open(Some(c), dir.path(), 0).unwrap();
        assert_eq!(fixed.set(r).unwrap(), None);
        assert_eq!(fixed.resolve().unwrap(), c);
        let fresh = tempfile::tempdir().unwrap();
        let fb = PodCidr { fallback_after: Some(Duration::ZERO), ..PodCidr::open(None, fresh.path(), 0).unwrap() };
        assert_eq!(fb.resolve().unwrap().to_kubelet_string(), FALLBACK_POD_CIDR);
        assert_eq!(fb.get().unwrap().1, Source::Fallback);
    }
}
