//! Host-local IP address management for the built-in bridge.
//!
//! Leases live in one JSON file, `ROOT/network/leases.json` (versioned, written atomically).
//! Every operation holds an in-process mutex and an exclusive `flock` on `leases.lock`, reads the
//! file, changes it and writes it back, so that two plugin instances (or a restarted skiffd) never
//! hand out an address that is in use. Allocation continues after the last address handed out in
//! each range (like CNI host-local), so a released address is not reused at once.
//! The network address, the gateway (first address) and the IPv4 broadcast address are never leased.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, OpenOptions};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::error::{NetworkError, Result};
use crate::fsutil::write_replace;

const LEASES_VERSION: u32 = 1;
/// Upper bound of candidates looked at per allocation (matters only for huge IPv6 ranges).
const MAX_PROBES: u128 = 1 << 20;

/// One leased address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: IpAddr,
    pub pod_id: String,
    #[serde(default)]
    pub pod_name: String,
    #[serde(default)]
    pub namespace: String,
    /// Unix seconds.
    #[serde(default)]
    pub allocated_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LeaseFile {
    version: u32,
    leases: Vec<Lease>,
    /// Last address handed out, per range (key = range in CIDR notation).
    #[serde(default)]
    last: BTreeMap<String, IpAddr>,
}

/// The lease store of one set of ranges (IPv4 and optionally IPv6).
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    lock_path: PathBuf,
    ranges: std::sync::RwLock<Vec<Cidr>>,
    mutex: Mutex<()>,
}

impl Ipam {
    /// Lease store in `dir` (created when needed) for `ranges` (IPv4 first, then IPv6).
    pub fn new(dir: &Path, ranges: Vec<Cidr>) -> Self {
        Self {
            path: dir.join("leases.json"),
            lock_path: dir.join("leases.lock"),
            ranges: std::sync::RwLock::new(ranges),
            mutex: Mutex::new(()),
        }
    }

    /// Replaces the ranges (the pod CIDR changed while no pod held an address).
    pub fn set_ranges(&self, ranges: Vec<Cidr>) {
        if let Ok(mut g) = self.ranges.write() {
            *g = ranges;
        }
    }

    /// Path of the lease file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_file<T>(&self, f: impl FnOnce(&mut LeaseFile) -> Result<(T, bool)>) -> Result<T> {
        let _guard = self.mutex.lock().map_err(|_| NetworkError::Internal("IPAM mutex poisoned".into()))?;
        if let Some(dir) = self.lock_path.parent() {
            fs::create_dir_all(dir).map_err(|e| NetworkError::io("create directory", dir, e))?;
        }
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| NetworkError::io("open", &self.lock_path, e))?;
        let _flock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| NetworkError::io("flock", &self.lock_path, e.into()))?;
        let mut file = self.read()?;
        let (out, dirty) = f(&mut file)?;
        if dirty {
            file.version = LEASES_VERSION;
            let data = serde_json::to_vec_pretty(&file)
                .map_err(|e| NetworkError::Internal(format!("serialize leases: {e}")))?;
            // Replaced, not fsynced: a lease matters only while its pod's network namespace
            // exists, and a power cut ends every pod (recovery releases the leases of pods not
            // running); a skiffd crash keeps the page cache. So only a power cut can leave the
            // file empty, and then no address is in use (see `read`).
            write_replace(&self.path, &data)?;
        }
        Ok(out)
    }

    fn read(&self) -> Result<LeaseFile> {
        let data = match fs::read(&self.path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LeaseFile { version: LEASES_VERSION, ..Default::default() })
            }
            Err(e) => return Err(NetworkError::io("read", &self.path, e)),
        };
        if data.is_empty() {
            // An unsynced replace cut short by a power cut: no pod survived it.
            tracing::warn!(file = %self.path.display(), "empty lease file (power cut?): starting with no leases");
            return Ok(LeaseFile { version: LEASES_VERSION, ..Default::default() });
        }
        // A corrupt lease file is an error, never silently dropped: that could hand out addresses in use.
        let file: LeaseFile = serde_json::from_slice(&data)
            .map_err(|e| NetworkError::Internal(format!("corrupt lease file {}: {e}", self.path.display())))?;
        if file.version > LEASES_VERSION {
            return Err(NetworkError::Internal(format!(
                "lease file {} has version {}, this skiff understands up to {LEASES_VERSION}",
                self.path.display(),
                file.version
            )));
        }
        Ok(file)
    }

    /// Lease one address per range for `pod_id` (reusing addresses the pod already holds).
    /// Returns the addresses in range order (IPv4 first).
    pub fn allocate(&self, pod_id: &str, pod_name: &str, namespace: &str) -> Result<Vec<IpAddr>> {
        let ranges = self.ranges.read().map(|g| g.clone()).unwrap_or_default();
        if ranges.is_empty() {
            return Err(NetworkError::Internal("no pod range to allocate from".into()));
        }
        self.with_file(|file| {
            let mut used: HashSet<IpAddr> = file.leases.iter().map(|l| l.ip).collect();
            let mut out = Vec::new();
            let mut dirty = false;
            for range in &ranges {
                if let Some(l) = file.leases.iter().find(|l| l.pod_id == pod_id && range.contains(l.ip)) {
                    out.push(l.ip);
                    continue;
                }
                let (first, last) = range
                    .pod_offsets()
                    .ok_or_else(|| NetworkError::Config(format!("pod range {range} is too small")))?;
                let span = last - first + 1;
                let start = file
                    .last
                    .get(&range.to_string())
                    .and_then(|ip| range.offset(*ip))
                    .filter(|o| *o >= first && *o <= last)
                    .map(|o| o - first + 1)
                    .unwrap_or(0);
                let mut found = None;
                let mut i: u128 = 0;
                while i < span && i < MAX_PROBES {
                    let off = first + (start + i) % span;
                    if let Some(ip) = range.nth(off) {
                        if !used.contains(&ip) {
                            found = Some(ip);
                            break;
                        }
                    }
                    i += 1;
                }
                let ip = found.ok_or_else(|| NetworkError::AddressesExhausted(range.to_string()))?;
                used.insert(ip);
                file.leases.push(Lease {
                    ip,
                    pod_id: pod_id.to_string(),
                    pod_name: pod_name.to_string(),
                    namespace: namespace.to_string(),
                    allocated_at: now(),
                });
                file.last.insert(range.to_string(), ip);
                out.push(ip);
                dirty = true;
            }
            Ok((out, dirty))
        })
    }

    /// Release every lease of `pod_id`; returns what was released (nothing is fine).
    pub fn release(&self, pod_id: &str) -> Result<Vec<IpAddr>> {
        self.with_file(|file| {
            let (gone, keep): (Vec<Lease>, Vec<Lease>) =
                std::mem::take(&mut file.leases).into_iter().partition(|l| l.pod_id == pod_id);
            file.leases = keep;
            let dirty = !gone.is_empty();
            Ok((gone.into_iter().map(|l| l.ip).collect(), dirty))
        })
    }

    /// Release the leases of every pod not in `live`; returns the released leases.
    pub fn release_except(&self, live: &HashSet<String>) -> Result<Vec<Lease>> {
        self.with_file(|file| {
            let (keep, gone): (Vec<Lease>, Vec<Lease>) =
                std::mem::take(&mut file.leases).into_iter().partition(|l| live.contains(&l.pod_id));
            file.leases = keep;
            let dirty = !gone.is_empty();
            Ok((gone, dirty))
        })
    }

    /// All current leases.
    pub fn leases(&self) -> Result<Vec<Lease>> {
        self.with_file(|file| Ok((file.leases.clone(), false)))
    }

    /// The leases of one pod (range order).
    pub fn leases_of(&self, pod_id: &str) -> Result<Vec<IpAddr>> {
        let mut ips: Vec<IpAddr> = self.leases()?.into_iter().filter(|l| l.pod_id == pod_id).map(|l| l.ip).collect();
        ips.sort_by_key(|ip| ip.is_ipv6());
        Ok(ips)
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(dir: &Path, ranges: &[&str]) -> Ipam {
        Ipam::new(dir, ranges.iter().map(|r| r.parse().unwrap()).collect())
    }

    #[test]
    fn allocate_release_rotate() {
        let d = tempfile::tempdir().unwrap();
        let a = ipam(d.path(), &["10.1.0.0/29", "fd00:1::/120"]);
        let ips = a.allocate("p1", "n", "ns").unwrap();
        assert_eq!(ips, vec!["10.1.0.2".parse::<IpAddr>().unwrap(), "fd00:1::2".parse().unwrap()]);
        // same pod again: same addresses
        assert_eq!(a.allocate("p1", "n", "ns").unwrap(), ips);
        let ips2 = a.allocate("p2", "n", "ns").unwrap();
        assert_eq!(ips2[0].to_string(), "10.1.0.3");
        a.release("p1").unwrap();
        // released address is not reused at once
        assert_eq!(a.allocate("p3", "n", "ns").unwrap()[0].to_string(), "10.1.0.4");
        // new instance over the same file keeps leases
        let b = ipam(d.path(), &["10.1.0.0/29"]);
        assert_eq!(b.leases_of("p2").unwrap()[0].to_string(), "10.1.0.3");
        assert_eq!(b.allocate("p4", "n", "ns").unwrap()[0].to_string(), "10.1.0.5");
        assert_eq!(b.allocate("p5", "n", "ns").unwrap()[0].to_string(), "10.1.0.6");
        // wraps around to the released .2, never .7 (broadcast) or .1 (gateway)
        assert_eq!(b.allocate("p6", "n", "ns").unwrap()[0].to_string(), "10.1.0.2");
        assert!(matches!(b.allocate("p7", "n", "ns"), Err(NetworkError::AddressesExhausted(_))));
        let live: HashSet<String> = ["p2".to_string()].into();
        let gone = b.release_except(&live).unwrap();
        assert_eq!(gone.len(), 5, "{gone:?}");
        assert_eq!(b.leases().unwrap().len(), 2); // p2's v4 and v6
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("leases.json"), b"{not json").unwrap();
        let a = ipam(d.path(), &["10.1.0.0/24"]);
        assert!(a.allocate("p", "", "").is_err());
    }

    #[test]
    fn empty_file_after_a_power_cut_means_no_leases() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("leases.json"), b"").unwrap();
        let i = ipam(d.path(), &["10.1.0.0/29"]);
        assert_eq!(i.allocate("p", "n", "ns").unwrap().len(), 1);
        assert_eq!(i.leases().unwrap().len(), 1);
    }

    #[test]
    fn concurrent_allocations_are_unique() {
        let d = tempfile::tempdir().unwrap();
        let a = std::sync::Arc::new(ipam(d.path(), &["10.2.0.0/24"]));
        let b = std::sync::Arc::new(ipam(d.path(), &["10.2.0.0/24"]));
        let mut threads = Vec::new();
        for t in 0..8 {
            let s = if t % 2 == 0 { a.clone() } else { b.clone() };
            threads.push(std::thread::spawn(move || {
                (0..10).map(|i| s.allocate(&format!("p{t}-{i}"), "", "").unwrap()[0]).collect::<Vec<_>>()
            }));
        }
        let all: Vec<IpAddr> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let set: HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), 80);
    }
}
