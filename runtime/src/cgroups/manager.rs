//! [`CgroupManager`]: create, configure, observe, kill and remove cgroups, v1 or v2.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use super::hierarchy::{join_rel, normalize, CgroupMode, Hierarchies};
use super::registry::Registry;
use super::util::{is_cgroupfs, read};
use super::{stats, v1, v2, CgroupError, CgroupStats};

/// Manages the cgroups skiff creates. Thread-safe (the registry is behind a mutex).
#[derive(Debug)]
pub struct CgroupManager {
    h: Hierarchies,
    registry: Mutex<Registry>,
}

impl CgroupManager {
    /// Detects the host's hierarchies; `registry_file` (e.g. `STATE/cgroups.json`) records which
    /// directories skiff created (`None`: in memory only). Parents an earlier run left over
    /// are retried ([`sweep`](Self::sweep)).
    pub fn detect(registry_file: Option<PathBuf>) -> Result<Self, CgroupError> {
        Self::new(Hierarchies::detect()?, registry_file)
    }

    /// A manager over given hierarchies (fake trees in tests).
    pub fn new(h: Hierarchies, registry_file: Option<PathBuf>) -> Result<Self, CgroupError> {
        if h.v1.is_empty() && h.unified.is_none() {
            return Err(CgroupError::NoHierarchy);
        }
        let m = CgroupManager { h, registry: Mutex::new(Registry::open(registry_file)?) };
        m.sweep();
        Ok(m)
    }

    pub fn hierarchies(&self) -> &Hierarchies {
        &self.h
    }

    pub fn mode(&self) -> CgroupMode {
        self.h.mode()
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        match self.registry.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Whether the cgroup exists (in any managed hierarchy).
    pub fn exists(&self, path: &str) -> Result<bool, CgroupError> {
        let rel = normalize(path)?;
        Ok(self.h.dirs(&rel).iter().any(|d| d.is_dir()))
    }

    /// Whether skiff created this cgroup (so [`remove`](Self::remove) would delete it).
    pub fn created_by_skiff(&self, path: &str) -> Result<bool, CgroupError> {
        let rel = normalize(path)?;
        Ok(self.registry().created(&rel).is_some())
    }

    /// Creates the cgroup and any missing parents in every managed hierarchy, recording each
    /// directory skiff made. Existing directories are left as they are. On failure, what this
    /// call created is removed again.
    pub fn create(&self, path: &str) -> Result<(), CgroupError> {
        self.create_reporting(path).map(|_| ())
    }

    /// [`create`](Self::create); whether the cgroup itself was there before (in any hierarchy).
    fn create_reporting(&self, path: &str) -> Result<bool, CgroupError> {
        let rel = normalize(path)?;
        let comps: Vec<&str> = rel.split('/').collect();
        let unified = self.mode() == CgroupMode::Unified;
        let mut reg = self.registry();
        // Plan the missing directories and record them before making them, so that a crash in
        // between leaves a registry entry for a dir that may not exist (harmless) rather than
        // an unrecorded dir (a leak).
        let mut plan: Vec<(String, PathBuf, bool)> = Vec::new();
        let mut existed = false;
        for root in self.roots() {
            let is_cpuset = self.is_cpuset_root(&root);
            for i in 0..comps.len() {
                let sub = comps[..=i].join("/");
                let dir = join_rel(&root, &sub);
                if !dir.is_dir() {
                    plan.push((sub, dir, is_cpuset));
                } else if i == comps.len() - 1 {
                    existed = true;
                }
            }
        }
        if plan.is_empty() {
            // already there; if skiff made it on the way to another cgroup, it is a target now
            if reg.created(&rel).is_some() && !reg.is_explicit(&rel) {
                reg.set_explicit(&rel, true);
                reg.save()?;
            }
            return Ok(true);
        }
        for (sub, dir, _) in &plan {
            reg.add(sub, dir.clone());
        }
        reg.set_explicit(&rel, true);
        if let Err(e) = reg.save() {
            for (sub, dir, _) in &plan {
                reg.remove_dir(sub, dir);
            }
            return Err(e);
        }
        let mut made: Vec<(String, PathBuf)> = Vec::new();
        // Whether the registry changed after its save above (a chain made again, a directory
        // someone else made meanwhile): only then is it saved again.
        let mut changed = false;
        let res = (|| {
            for (sub, dir, is_cpuset) in &plan {
                if unified {
                    if let Some(parent) = dir.parent() {
                        v2::enable_subtree(parent)?;
                    }
                }
                let mut r = std::fs::create_dir(dir);
                if matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
                    // a parent shared with another skiff instance vanished meanwhile: recreate
                    // the chain and record it as ours
                    let mut missing = Vec::new();
                    let mut p = dir.parent();
                    while let Some(d) = p.filter(|d| !d.exists()) {
                        missing.push(d.to_path_buf());
                        p = d.parent();
                    }
                    for d in missing.iter().rev() {
                        if std::fs::create_dir(d).is_ok() {
                            if let Some(s) = d
                                .strip_prefix(dir.ancestors().nth(sub.split('/').count()).unwrap_or(d))
                                .ok()
                                .and_then(|s| s.to_str())
                            {
                                reg.add(s, d.clone());
                                changed = true;
                                made.push((s.to_string(), d.clone()));
                            }
                        }
                    }
                    r = std::fs::create_dir(dir);
                }
                match r {
                    Ok(()) => {
                        made.push((sub.clone(), dir.clone()));
                        if *is_cpuset {
                            v1::cpuset::inherit(dir)?;
                        }
                    }
                    // made by someone else meanwhile: not ours
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        reg.remove_dir(sub, dir);
                        changed = true;
                    }
                    Err(e) => return Err(CgroupError::io("mkdir", dir, e)),
                }
            }
            Ok(())
        })();
        if let Err(e) = res {
            for (sub, dir) in made.iter().rev() {
                let _ = rmdir_retry(dir, false);
                reg.remove_dir(sub, dir);
            }
            for (sub, dir, _) in &plan {
                reg.remove_dir(sub, dir);
            }
            let _ = reg.save();
            return Err(e);
        }
        if changed {
            reg.save()?;
        }
        tracing::debug!(cgroup = %rel, created = made.len(), "cgroup created");
        Ok(existed)
    }

    /// [`create`](Self::create) then [`apply`](Self::apply); removes what it created when the
    /// resources cannot be applied.
    pub fn create_with(&self, path: &str, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        let existed = self.create_reporting(path)?;
        if let Some(r) = resources {
            if let Err(e) = self.apply_existing(&normalize(path)?, r) {
                if !existed {
                    let _ = self.remove(path);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// The directories that make up the cgroup: one per v1 hierarchy or the v2 one.
    fn roots(&self) -> Vec<PathBuf> {
        match self.mode() {
            CgroupMode::Unified => self.h.unified.iter().cloned().collect(),
            _ => self.h.v1.iter().map(|h| h.mountpoint.clone()).collect(),
        }
    }

    fn is_cpuset_root(&self, root: &Path) -> bool {
        self.mode() != CgroupMode::Unified && self.h.v1_mount("cpuset") == Some(root)
    }

    fn v1_dir(&self, controller: &str, rel: &str) -> Option<PathBuf> {
        self.h.v1_mount(controller).map(|m| join_rel(m, rel))
    }

    fn v2_dir(&self, rel: &str) -> Result<PathBuf, CgroupError> {
        self.h.unified.as_ref().map(|u| join_rel(u, rel)).ok_or(CgroupError::NoHierarchy)
    }

    /// Applies OCI resources (cpu, cpuset, memory, pids, hugetlb, device rules — v1 files or a
    /// v2 eBPF program; `unified` on v2 only) to an existing cgroup. Zero values mean "not set" (as in CRI). Pass the spec's
    /// `linux.resources` at CreateContainer (it carries the device rules).
    pub fn apply(&self, path: &str, r: &LinuxResources) -> Result<(), CgroupError> {
        let rel = normalize(path)?;
        if !self.exists(path)? {
            return Err(CgroupError::NotFound(path.to_string()));
        }
        self.apply_existing(&rel, r)
    }

    /// [`apply`](Self::apply) to a cgroup known to exist (`rel` normalized).
    fn apply_existing(&self, rel: &str, r: &LinuxResources) -> Result<(), CgroupError> {
        let rel = rel.to_string();
        if self.mode() == CgroupMode::Unified {
            let dir = self.v2_dir(&rel)?;
            if let Some(c) = r.cpu() {
                v2::cpu::apply(&dir, c)?;
                v2::cpuset::apply(&dir, c)?;
            }
            if let Some(m) = r.memory() {
                v2::memory::apply(&dir, m)?;
            }
            if let Some(p) = r.pids() {
                v2::pids::apply(&dir, p)?;
            }
            if let Some(h) = r.hugepage_limits() {
                v2::hugetlb::apply(&dir, h)?;
            }
            if let Some(u) = r.unified() {
                v2::unified::apply(&dir, u)?;
            }
            if let Some(d) = r.devices().as_ref().filter(|d| !d.is_empty()) {
                v2::devices::apply(&dir, d)?;
            }
            return Ok(());
        }
        if let Some(c) = r.cpu() {
            if let Some(d) = self.v1_dir("cpu", &rel) {
                v1::cpu::apply(&d, c)?;
            }
            if let Some(d) = self.v1_dir("cpuset", &rel) {
                v1::cpuset::apply(&d, c)?;
            }
        }
        if let Some(m) = r.memory() {
            match self.v1_dir("memory", &rel) {
                Some(d) => v1::memory::apply(&d, m)?,
                None => tracing::warn!(cgroup = %rel, "memory controller not mounted: memory limits ignored"),
            }
        }
        if let Some(p) = r.pids() {
            if let Some(d) = self.v1_dir("pids", &rel) {
                v1::pids::apply(&d, p)?;
            }
        }
        if let Some(d) = r.devices().as_ref().filter(|d| !d.is_empty()) {
            if let Some(dir) = self.v1_dir("devices", &rel) {
                v1::devices::apply(&dir, d)?;
            }
        }
        if let Some(h) = r.hugepage_limits().as_ref().filter(|h| !h.is_empty()) {
            match self.v1_dir("hugetlb", &rel) {
                Some(d) => v1::hugetlb::apply(&d, h)?,
                None => tracing::warn!(cgroup = %rel, "hugetlb controller not mounted: hugepage limits ignored"),
            }
        }
        if let Some(u) = r.unified().as_ref().filter(|u| !u.is_empty()) {
            return Err(CgroupError::InvalidResource(format!(
                "unified cgroup resources {:?} need cgroup v2; this host uses v1",
                u.keys().collect::<Vec<_>>()
            )));
        }
        Ok(())
    }

    /// Current usage; controllers that are not mounted leave their fields `None`.
    pub fn stats(&self, path: &str) -> Result<CgroupStats, CgroupError> {
        let rel = normalize(path)?;
        if !self.exists(path)? {
            return Err(CgroupError::NotFound(path.to_string()));
        }
        let mut s = CgroupStats::default();
        if self.mode() == CgroupMode::Unified {
            let dir = self.v2_dir(&rel)?;
            let _ = v2::cpu::stats(&dir, &mut s);
            let _ = v2::memory::stats(&dir, &mut s);
            let _ = v2::pids::stats(&dir, &mut s);
            stats::v2_extra(&dir, &mut s);
            return Ok(s);
        }
        let cpuacct = self.v1_dir("cpuacct", &rel);
        if let Some(d) = &cpuacct {
            let _ = v1::cpuacct::stats(d, &mut s);
        }
        stats::v1_cpu(self.v1_dir("cpu", &rel).as_deref(), cpuacct.as_deref(), &mut s);
        if let Some(d) = self.v1_dir("memory", &rel) {
            let _ = v1::memory::stats(&d, &mut s);
            stats::v1_memory(&d, &mut s);
        }
        if let Some(d) = self.v1_dir("pids", &rel) {
            let _ = v1::pids::stats(&d, &mut s);
            stats::pids_max(&d, &mut s);
        }
        if let Some(d) = self.v1_dir("blkio", &rel) {
            stats::v1_blkio(&d, &mut s);
        }
        Ok(s)
    }

    /// The number of OOM kills in the cgroup so far (0 when the counter is not available).
    pub fn oom_kills(&self, path: &str) -> Result<u64, CgroupError> {
        let rel = normalize(path)?;
        if self.mode() == CgroupMode::Unified {
            return v2::memory::oom_kills(&self.v2_dir(&rel)?);
        }
        match self.v1_dir("memory", &rel) {
            Some(d) if d.is_dir() => v1::memory::oom_kills(&d),
            Some(_) => Err(CgroupError::NotFound(path.to_string())),
            None => Ok(0),
        }
    }

    /// Pids of every process in the cgroup (the union over all hierarchies; on v2 including
    /// descendant cgroups).
    pub fn procs(&self, path: &str) -> Result<Vec<i32>, CgroupError> {
        let rel = normalize(path)?;
        let mut set = BTreeSet::new();
        for d in self.h.dirs(&rel) {
            collect_procs(&d, &mut set);
        }
        Ok(set.into_iter().collect())
    }

    /// Sends SIGKILL once to every process of the cgroup (`cgroup.kill` on v2, else each pid
    /// listed), without freezing or waiting: the first, cheap step of a stop, for processes that
    /// outlive the container's main one (a shared PID namespace). A process forked meanwhile can
    /// escape it; [`kill_all`](Self::kill_all) is the thorough one. Nothing to do for a cgroup
    /// that does not exist.
    pub fn signal_all(&self, path: &str) -> Result<(), CgroupError> {
        let rel = normalize(path)?;
        if self.mode() == CgroupMode::Unified && v2::freezer::kill(&self.v2_dir(&rel)?)? {
            return Ok(());
        }
        for pid in self.procs(path)? {
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => tracing::warn!(pid, error = %e, "kill in cgroup failed"),
            }
        }
        Ok(())
    }

    /// Kills every process of the cgroup: `cgroup.kill` on v2, otherwise freeze → SIGKILL each
    /// listed pid → thaw, repeated until no live process remains (zombies waiting for their
    /// parent count as dead). A cgroup that does not exist has nothing to kill.
    pub fn kill_all(&self, path: &str) -> Result<(), CgroupError> {
        let rel = normalize(path)?;
        if !self.exists(path)? {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        if self.mode() == CgroupMode::Unified {
            let _ = v2::freezer::kill(&self.v2_dir(&rel)?);
        }
        let freezer = match self.mode() {
            CgroupMode::Unified => self.v2_dir(&rel).ok().filter(|d| d.join(v2::freezer::FREEZE).exists()),
            _ => self.v1_dir("freezer", &rel).filter(|d| d.join(v1::freezer::STATE).exists()),
        };
        loop {
            let live: Vec<i32> = self.procs(path)?.into_iter().filter(|p| !is_zombie(*p)).collect();
            if live.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Busy { path: path.to_string(), remaining: live.len() });
            }
            if let Some(f) = &freezer {
                let _ = self.freeze_dir(f);
            }
            for pid in self.procs(path)? {
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => tracing::warn!(pid, error = %e, "kill in cgroup failed"),
                }
            }
            if let Some(f) = &freezer {
                let _ = self.thaw_dir(f);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn freeze_dir(&self, d: &Path) -> Result<(), CgroupError> {
        if self.mode() == CgroupMode::Unified {
            v2::freezer::freeze(d)
        } else {
            v1::freezer::freeze(d)
        }
    }

    fn thaw_dir(&self, d: &Path) -> Result<(), CgroupError> {
        if self.mode() == CgroupMode::Unified {
            v2::freezer::thaw(d)
        } else {
            v1::freezer::thaw(d)
        }
    }

    /// Removes the cgroup if skiff created it, then each parent skiff created on the way (not
    /// one that was itself the target of a create, like a pod's cgroup) that is now empty.
    /// Directories skiff did not create are never removed. Idempotent: a cgroup that is
    /// already gone is fine. Fails with [`CgroupError::Busy`] when processes are still inside
    /// (call [`kill_all`](Self::kill_all) first).
    ///
    /// A parent that is empty but still busy (the kernel takes its just-removed child offline
    /// asynchronously) is retried for a few seconds without holding the registry lock; one that
    /// stays busy is logged and kept in the registry as left over, and retried by every later
    /// `remove` and when a manager opens the registry again ([`sweep`](Self::sweep)).
    pub fn remove(&self, path: &str) -> Result<(), CgroupError> {
        let rel = normalize(path)?;
        // No look at the processes first: rmdir refuses a cgroup with tasks (EBUSY), and only
        // then are its live ones counted (`rmdir_retry`).
        let comps: Vec<&str> = rel.split('/').collect();
        let mut result = Ok(());
        let mut i = comps.len();
        while i > 0 {
            i -= 1;
            let sub = comps[..=i].join("/");
            let is_target = i == comps.len() - 1;
            match self.remove_level(&sub, is_target) {
                Level::Removed => {}
                Level::Stop => break,
                Level::Failed(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.sweep();
        result
    }

    /// One level of [`remove`](Self::remove): the directories of `sub` in every hierarchy.
    fn remove_level(&self, sub: &str, is_target: bool) -> Level {
        let mut delay = Duration::from_millis(5);
        let deadline = Instant::now() + PARENT_PATIENCE;
        loop {
            let mut reg = self.registry();
            let Some(dirs) = reg.created(sub).cloned() else {
                if is_target {
                    tracing::debug!(cgroup = %sub, "cgroup not created by skiff: left alone");
                }
                return Level::Stop;
            };
            if !is_target && reg.is_explicit(sub) {
                // a pod cgroup outlives its containers
                return Level::Stop;
            }
            let mut left = Vec::new();
            let mut busy_empty = false;
            let mut failure = None;
            let mut dirs = dirs.into_iter();
            while let Some(d) = dirs.next() {
                let r = if is_target { rmdir_retry(&d, true) } else { rmdir_once(&d) };
                if let Err(CgroupError::Busy { remaining, .. }) = r {
                    // Processes inside: nothing more is removed.
                    left.push(d);
                    left.extend(dirs);
                    failure = Some(CgroupError::Busy { path: format!("/{sub}"), remaining });
                    break;
                }
                if let Err(e) = r {
                    // cgroupfs answers EBUSY for an empty parent while its removed child is
                    // still going offline; with child cgroups it is in use and kept.
                    if !is_target && e.errno() == Some(libc::EBUSY) && !has_subdirs(&d) {
                        busy_empty = true;
                    }
                    left.push(d);
                    failure.get_or_insert(e);
                }
            }
            reg.set(sub, left);
            let Some(e) = failure else {
                reg.set_leftover(sub, false);
                return match reg.save() {
                    Ok(()) => Level::Removed,
                    Err(e) if is_target => Level::Failed(e),
                    Err(e) => {
                        tracing::warn!(cgroup = %sub, error = %e, "cgroup registry not saved");
                        Level::Removed
                    }
                };
            };
            if is_target {
                let _ = reg.save();
                return Level::Failed(e);
            }
            if !busy_empty || Instant::now() >= deadline {
                if busy_empty {
                    tracing::warn!(cgroup = %sub, error = %e, "empty parent cgroup still busy: left over, retried later");
                    reg.set_leftover(sub, true);
                }
                let _ = reg.save();
                return Level::Stop;
            }
            drop(reg);
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    /// Retries the parents an earlier [`remove`](Self::remove) left over (empty but busy):
    /// removes those still empty, and forgets the leftover mark of those that hold child
    /// cgroups again (the removal of the last child takes them). One attempt each; never fails.
    pub fn sweep(&self) {
        let mut reg = self.registry();
        let subs = reg.leftovers();
        if subs.is_empty() {
            return;
        }
        for sub in subs {
            let Some(dirs) = reg.created(&sub).cloned() else {
                reg.set_leftover(&sub, false);
                continue;
            };
            let mut left = Vec::new();
            let mut in_use = false;
            for d in dirs {
                if has_subdirs(&d) {
                    in_use = true;
                    left.push(d);
                } else if let Err(e) = rmdir_once(&d) {
                    tracing::debug!(cgroup = %sub, error = %e, "left-over cgroup still busy");
                    left.push(d);
                }
            }
            let done = left.is_empty();
            reg.set(&sub, left);
            if done {
                tracing::info!(cgroup = %sub, "left-over parent cgroup removed");
            }
            if done || in_use {
                reg.set_leftover(&sub, false);
            }
        }
        if let Err(e) = reg.save() {
            tracing::warn!(error = %e, "cgroup registry not saved");
        }
    }

    /// The parents left over by [`remove`](Self::remove) (empty but busy), not yet swept.
    pub fn leftovers(&self) -> Vec<String> {
        self.registry().leftovers()
    }
}

/// How long [`CgroupManager::remove`] retries an empty parent that is still busy.
const PARENT_PATIENCE: Duration = Duration::from_secs(3);

enum Level {
    Removed,
    Stop,
    Failed(CgroupError),
}

fn collect_procs(dir: &Path, set: &mut BTreeSet<i32>) {
    if let Ok(s) = read(&dir.join("cgroup.procs")) {
        set.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_procs(&e.path(), set);
            }
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with(['Z', 'X'])).unwrap_or(false),
        Err(_) => true,
    }
}

/// rmdir with retries on EBUSY (the kernel may still be releasing exited tasks). For a parent
/// (`is_target` false) a non-empty dir is simply kept. On fake trees (not cgroupfs) the
/// interface files are regular files and are deleted first.
fn rmdir_retry(dir: &Path, is_target: bool) -> Result<(), CgroupError> {
    let mut delay = Duration::from_millis(5);
    for attempt in 0.. {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(0);
                if errno == libc::ENOTEMPTY && !is_cgroupfs(dir) && !has_subdirs(dir) {
                    // fake tree: drop the interface files, then retry
                    if let Ok(rd) = std::fs::read_dir(dir) {
                        for f in rd.flatten() {
                            let _ = std::fs::remove_file(f.path());
                        }
                    }
                    continue;
                }
                // cgroupfs answers EBUSY (not ENOTEMPTY) for a cgroup with child cgroups: that
                // is final (for a parent still holding other cgroups, or a pod whose container
                // cgroups are still there), not worth retrying.
                let has_children = has_subdirs(dir);
                // Live processes inside: final too (the caller kills them); zombies and tasks
                // the kernel is still releasing are waited for.
                if is_target && errno == libc::EBUSY && !has_children {
                    let mut set = BTreeSet::new();
                    collect_procs(dir, &mut set);
                    let live = set.into_iter().filter(|p| !is_zombie(*p)).count();
                    if live > 0 {
                        return Err(CgroupError::Busy { path: dir.display().to_string(), remaining: live });
                    }
                }
                let retryable = errno == libc::EBUSY || (is_target && errno == libc::ENOTEMPTY);
                if !retryable || has_children || attempt >= 8 {
                    return Err(CgroupError::io("rmdir", dir, e));
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(200));
            }
        }
    }
    Ok(())
}

/// One rmdir: a dir already gone is fine; on fake trees the interface files go first.
fn rmdir_once(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) && !is_cgroupfs(dir) && !has_subdirs(dir) => {
            rmdir_retry(dir, false)
        }
        Err(e) => Err(CgroupError::io("rmdir", dir, e)),
    }
}

fn has_subdirs(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().any(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false)))
        .unwrap_or(false)
}
