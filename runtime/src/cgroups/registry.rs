//! The durable list of cgroup directories skiff created, so that removal deletes exactly those
//! (parents such as `/kubepods` that existed before skiff are never touched). Kept as a small
//! JSON file under the state dir (cgroups, like the state dir, do not survive a reboot).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CgroupError;

const VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
struct RegistryFile {
    version: u32,
    /// Normalized relative cgroup path → the directories skiff created for it.
    created: BTreeMap<String, Vec<PathBuf>>,
    /// Paths that were the target of a create call (pods, containers), as opposed to parents
    /// made on the way: removing a child never takes an explicit parent with it.
    #[serde(default)]
    explicit: BTreeSet<String>,
    /// Parents whose removal found them empty but busy: retried by later removals and sweeps.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    leftover: BTreeSet<String>,
}

#[derive(Debug)]
pub(crate) struct Registry {
    file: Option<PathBuf>,
    data: RegistryFile,
}

impl Registry {
    /// Loads the registry (`None` = in memory only, for tests and tools).
    pub(crate) fn open(file: Option<PathBuf>) -> Result<Self, CgroupError> {
        let mut data = RegistryFile { version: VERSION, ..Default::default() };
        if let Some(f) = &file {
            match std::fs::read(f) {
                // Empty: written unsynced before a power cut (the cgroups are gone too).
                Ok(bytes) if bytes.is_empty() => {}
                Ok(bytes) => {
                    data = serde_json::from_slice(&bytes)
                        .map_err(|e| CgroupError::Registry { file: f.clone(), reason: e.to_string() })?;
                    if data.version != VERSION {
                        return Err(CgroupError::Registry {
                            file: f.clone(),
                            reason: format!("unsupported version {}", data.version),
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CgroupError::io("read", f, e)),
            }
        }
        Ok(Registry { file, data })
    }

    pub(crate) fn created(&self, rel: &str) -> Option<&Vec<PathBuf>> {
        self.data.created.get(rel)
    }

    pub(crate) fn add(&mut self, rel: &str, dir: PathBuf) {
        let v = self.data.created.entry(rel.to_string()).or_default();
        if !v.contains(&dir) {
            v.push(dir);
        }
    }

    pub(crate) fn is_explicit(&self, rel: &str) -> bool {
        self.data.explicit.contains(rel)
    }

    pub(crate) fn set_explicit(&mut self, rel: &str, on: bool) {
        if on {
            self.data.explicit.insert(rel.to_string());
        } else {
            self.data.explicit.remove(rel);
        }
    }

    pub(crate) fn set_leftover(&mut self, rel: &str, on: bool) {
        if on {
            self.data.leftover.insert(rel.to_string());
        } else {
            self.data.leftover.remove(rel);
        }
    }

    pub(crate) fn leftovers(&self) -> Vec<String> {
        self.data.leftover.iter().cloned().collect()
    }

    pub(crate) fn remove_dir(&mut self, rel: &str, dir: &Path) {
        if let Some(v) = self.data.created.get_mut(rel) {
            v.retain(|d| d != dir);
            if v.is_empty() {
                self.data.created.remove(rel);
                self.data.explicit.remove(rel);
                self.data.leftover.remove(rel);
            }
        }
    }

    pub(crate) fn set(&mut self, rel: &str, dirs: Vec<PathBuf>) {
        if dirs.is_empty() {
            self.data.created.remove(rel);
            self.data.explicit.remove(rel);
            self.data.leftover.remove(rel);
        } else {
            self.data.created.insert(rel.to_string(), dirs);
        }
    }

    /// Replaces the registry file atomically (temp file, rename; no fsync: it lives in the
    /// volatile state dir, as the cgroups it lists do not survive a reboot either).
    pub(crate) fn save(&self) -> Result<(), CgroupError> {
        let Some(f) = &self.file else { return Ok(()) };
        let bytes = serde_json::to_vec_pretty(&self.data)
            .map_err(|e| CgroupError::Registry { file: f.clone(), reason: e.to_string() })?;
        write_atomic(f, &bytes).map_err(|e| CgroupError::io("write", f, e))
    }
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::util::write_replace(path, bytes, 0o644)
}
