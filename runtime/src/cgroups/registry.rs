//! The durable list of cgroup directories skiff created, so that removal deletes exactly those
//! (parents such as `/kubepods` that existed before skiff are never touched). Kept under the
//! state dir (cgroups, like the state dir, do not survive a reboot): one small JSON file per
//! cgroup in `<file>.d/` (`STATE/cgroups.json.d/`), named by a hash of its path, so that a
//! change rewrites only the files of the cgroups it changed. (A single file rewritten whole at
//! every change cost O(cgroups) per creation and removal, under the manager's lock: with 100
//! pods, 200 entries of 9 directories each.) A registry in the single file `<file>` of earlier
//! versions is read and moved into the directory when the registry opens.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::CgroupError;

const VERSION: u32 = 1;

/// The single-file registry of earlier versions.
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

/// One cgroup's file in the registry directory.
#[derive(Debug, Serialize, Deserialize)]
struct EntryFile {
    version: u32,
    /// The normalized relative cgroup path.
    cgroup: String,
    /// The directories skiff created for it.
    dirs: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    explicit: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    leftover: bool,
}

fn corrupt(file: &Path, reason: impl Into<String>) -> CgroupError {
    CgroupError::Registry { file: file.to_path_buf(), reason: reason.into() }
}

#[derive(Debug)]
pub(crate) struct Registry {
    /// The directory of entry files (`None` = in memory only).
    dir: Option<PathBuf>,
    data: RegistryFile,
    /// Cgroups changed since the last [`save`](Self::save).
    dirty: BTreeSet<String>,
}

impl Registry {
    /// Loads the registry of `file` (its directory `<file>.d`, and `file` itself if an earlier
    /// version wrote one); `None` = in memory only, for tests and tools.
    pub(crate) fn open(file: Option<PathBuf>) -> Result<Self, CgroupError> {
        let mut data = RegistryFile { version: VERSION, ..Default::default() };
        let Some(file) = file else { return Ok(Registry { dir: None, data, dirty: BTreeSet::new() }) };
        let mut legacy = false;
        match std::fs::read(&file) {
            // Empty: written unsynced before a power cut (the cgroups are gone too).
            Ok(bytes) if bytes.is_empty() => legacy = true,
            Ok(bytes) => {
                data = serde_json::from_slice(&bytes).map_err(|e| corrupt(&file, e.to_string()))?;
                if data.version != VERSION {
                    return Err(corrupt(&file, format!("unsupported version {}", data.version)));
                }
                legacy = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CgroupError::io("read", &file, e)),
        }
        let mut name = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".d");
        let dir = file.with_file_name(name);
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.collect::<Result<Vec<_>, _>>().map_err(|e| CgroupError::io("read", &dir, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(CgroupError::io("read", &dir, e)),
        };
        for e in entries {
            let path = e.path();
            // Temp files of an interrupted write start with a dot.
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| CgroupError::io("read", &path, e))?;
            let entry: EntryFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, e.to_string()))?;
            if entry.version != VERSION {
                return Err(corrupt(&path, format!("unsupported version {}", entry.version)));
            }
            if entry.explicit {
                data.explicit.insert(entry.cgroup.clone());
            }
            if entry.leftover {
                data.leftover.insert(entry.cgroup.clone());
            }
            data.created.insert(entry.cgroup, entry.dirs);
        }
        let mut reg = Registry { dir: Some(dir), data, dirty: BTreeSet::new() };
        if legacy {
            // Moved into the directory; the old file goes only once every entry is there.
            reg.dirty = reg.data.created.keys().cloned().collect();
            reg.save()?;
            std::fs::remove_file(&file).map_err(|e| CgroupError::io("remove", &file, e))?;
        }
        Ok(reg)
    }

    pub(crate) fn created(&self, rel: &str) -> Option<&Vec<PathBuf>> {
        self.data.created.get(rel)
    }

    pub(crate) fn add(&mut self, rel: &str, dir: PathBuf) {
        self.dirty.insert(rel.to_string());
        let v = self.data.created.entry(rel.to_string()).or_default();
        if !v.contains(&dir) {
            v.push(dir);
        }
    }

    pub(crate) fn is_explicit(&self, rel: &str) -> bool {
        self.data.explicit.contains(rel)
    }

    pub(crate) fn set_explicit(&mut self, rel: &str, on: bool) {
        self.dirty.insert(rel.to_string());
        if on {
            self.data.explicit.insert(rel.to_string());
        } else {
            self.data.explicit.remove(rel);
        }
    }

    pub(crate) fn set_leftover(&mut self, rel: &str, on: bool) {
        self.dirty.insert(rel.to_string());
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
        self.dirty.insert(rel.to_string());
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
        self.dirty.insert(rel.to_string());
        if dirs.is_empty() {
            self.data.created.remove(rel);
            self.data.explicit.remove(rel);
            self.data.leftover.remove(rel);
        } else {
            self.data.created.insert(rel.to_string(), dirs);
        }
    }

    /// Writes the files of the cgroups changed since the last save (temp file, rename; no
    /// fsync: the state dir is volatile) and removes those of cgroups no longer listed. A
    /// failed one stays to be written by the next save.
    pub(crate) fn save(&mut self) -> Result<(), CgroupError> {
        let Some(dir) = &self.dir else {
            self.dirty.clear();
            return Ok(());
        };
        while let Some(rel) = self.dirty.first().cloned() {
            let path = dir.join(entry_name(&rel));
            match self.data.created.get(&rel) {
                Some(dirs) => {
                    let entry = EntryFile {
                        version: VERSION,
                        cgroup: rel.clone(),
                        dirs: dirs.clone(),
                        explicit: self.data.explicit.contains(&rel),
                        leftover: self.data.leftover.contains(&rel),
                    };
                    let bytes = serde_json::to_vec(&entry).map_err(|e| corrupt(&path, e.to_string()))?;
                    write_atomic(&path, &bytes).map_err(|e| CgroupError::io("write", &path, e))?;
                }
                None => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(CgroupError::io("remove", &path, e));
                    }
                    _ => {}
                },
            }
            self.dirty.remove(&rel);
        }
        Ok(())
    }
}

/// The file name of a cgroup's entry: a hash of its path (any length, any characters).
fn entry_name(rel: &str) -> String {
    let d = sha2::Sha256::digest(rel.as_bytes());
    format!("{}.json", hex::encode(&d[..16]))
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::util::write_replace(path, bytes, 0o644)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn one_file_per_cgroup_and_only_changed_ones_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("cgroups.json");
        let dir = d.path().join("cgroups.json.d");
        let mut r = Registry::open(Some(file.clone())).unwrap();
        r.add("pods/a", "/cg/memory/pods/a".into());
        r.add("pods/a", "/cg/cpu/pods/a".into());
        r.set_explicit("pods/a", true);
        r.add("pods", "/cg/memory/pods".into());
        r.save().unwrap();
        assert_eq!(files(&dir).len(), 2);
        let ino = |rel: &str| std::fs::metadata(dir.join(entry_name(rel))).unwrap().ino();
        let pods = ino("pods");
        r.add("pods/b", "/cg/memory/pods/b".into());
        r.set_leftover("pods/a", true);
        r.save().unwrap();
        assert_eq!(ino("pods"), pods, "an unchanged cgroup's file is not rewritten");
        // A temp file of an interrupted write is ignored.
        std::fs::write(dir.join(".x.json.tmp.1.2.3"), b"{").unwrap();
        let r2 = Registry::open(Some(file.clone())).unwrap();
        assert_eq!(r2.created("pods/a").unwrap().len(), 2);
        assert!(r2.is_explicit("pods/a") && !r2.is_explicit("pods"));
        assert_eq!(r2.leftovers(), vec!["pods/a".to_string()]);
        assert!(r2.created("pods/b").is_some());
        r.remove_dir("pods/b", Path::new("/cg/memory/pods/b"));
        r.set("pods/a", Vec::new());
        r.save().unwrap();
        assert_eq!(files(&dir), vec![".x.json.tmp.1.2.3".to_string(), entry_name("pods")]);
        let r3 = Registry::open(Some(file.clone())).unwrap();
        assert!(r3.created("pods/a").is_none() && r3.leftovers().is_empty());
        assert!(!file.exists());
        // A corrupt entry is an error, never a silently forgotten cgroup.
        std::fs::write(dir.join(entry_name("pods")), b"{").unwrap();
        assert!(matches!(Registry::open(Some(file)), Err(CgroupError::Registry { .. })));
    }

    #[test]
    fn a_single_file_registry_moves_into_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("cgroups.json");
        let old = serde_json::json!({
            "version": 1,
            "created": {"k": ["/cg/memory/k"], "k/p": ["/cg/memory/k/p", "/cg/cpu/k/p"]},
            "explicit": ["k/p"],
            "leftover": ["k"],
        });
        std::fs::write(&file, old.to_string()).unwrap();
        let r = Registry::open(Some(file.clone())).unwrap();
        assert!(!file.exists());
        assert_eq!(files(&d.path().join("cgroups.json.d")).len(), 2);
        drop(r);
        let r = Registry::open(Some(file.clone())).unwrap();
        assert_eq!(r.created("k/p").unwrap().len(), 2);
        assert!(r.is_explicit("k/p"));
        assert_eq!(r.leftovers(), vec!["k".to_string()]);
        // An empty one (written unsynced before a power cut) is dropped.
        std::fs::write(&file, b"").unwrap();
        Registry::open(Some(file.clone())).unwrap();
        assert!(!file.exists());
    }
}
