//! When pulled data reaches the disk.
//!
//! Blobs and snapshots are written without any fsync and renamed into place; what makes them
//! durable is one `syncfs` per pull, right before the image record that references them is
//! committed ([`crate::meta`] writes it with fsync + rename + fsync of the directory). What a
//! crash can leave unsynced is therefore never referenced by a record, and unreferenced blobs
//! and snapshots are collected when the store opens.
//!
//! The pull opens its [`SyncPoint`] (the file systems of `content/` and `snapshots/`) when it
//! starts, so that its `syncfs` also reports writeback errors of data written back earlier (by
//! the kernel, by early writeback or by the [`Flusher`]): `syncfs` reports the errors of its
//! file system since the descriptor was opened.
//!
//! While pulls run, a [`Flusher`] thread calls `syncfs` over and over (at most every
//! [`FLUSH_EVERY`]), so that the disk writes back what the unpackers write while they write it
//! and the pull's own `syncfs` finds little left. It is only a head start: the pull's `syncfs`
//! is what the record waits for.
//!
//! Process-wide counters of commits let a pull skip its `syncfs` when a flush that started after
//! all commits it depends on has finished (e.g. the image was already present): `started` is
//! bumped before each rename (whoever sees an object in place also sees the bump), `finished`
//! after it; a flush covers the commits up to `started` only if `finished` equalled it when the
//! flush began (no rename in flight).

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::{ImageError, Result};

static STARTED: AtomicU64 = AtomicU64::new(1);
static FINISHED: AtomicU64 = AtomicU64::new(1);

/// Minimum time between the starts of two background flushes.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// A commit (rename into place) in progress; counted as finished when dropped.
pub(crate) struct Commit(());

impl Drop for Commit {
    fn drop(&mut self) {
        FINISHED.fetch_add(1, Ordering::SeqCst);
    }
}

/// Call right before renaming a blob or snapshot into place; drop the guard after the rename
/// (whether it worked or not).
pub(crate) fn will_commit() -> Commit {
    STARTED.fetch_add(1, Ordering::SeqCst);
    Commit(())
}

/// The current generation: every object in place now was counted at or below it.
pub(crate) fn generation() -> u64 {
    STARTED.load(Ordering::SeqCst)
}

/// The generation a flush starting now covers: `Some(g)` when no commit is in flight (every
/// commit counted at or below `g` has renamed its object), else `None`.
pub(crate) fn settled() -> Option<u64> {
    let finished = FINISHED.load(Ordering::SeqCst);
    let started = STARTED.load(Ordering::SeqCst);
    (started == finished).then_some(started)
}

/// Descriptors of the file systems holding some directories (each file system once), opened
/// before the data to flush is written: [`SyncPoint::sync`] reports the writeback errors since.
pub(crate) struct SyncPoint {
    fds: Vec<(PathBuf, std::fs::File)>,
}

impl SyncPoint {
    /// Opens the file systems of `dirs`. Blocking.
    pub(crate) fn open(dirs: &[&Path]) -> Result<Self> {
        let mut fds: Vec<(PathBuf, std::fs::File)> = Vec::new();
        let mut seen = Vec::new();
        for d in dirs {
            let f = std::fs::File::open(d).map_err(|e| ImageError::io("open for syncfs", d, e))?;
            let dev = f.metadata().map_err(|e| ImageError::io("stat for syncfs", d, e))?.dev();
            if seen.contains(&dev) {
                continue;
            }
            seen.push(dev);
            fds.push((d.to_path_buf(), f));
        }
        Ok(SyncPoint { fds })
    }

    /// `syncfs` of each file system. Blocking.
    pub(crate) fn sync(&self) -> Result<()> {
        for (d, f) in &self.fds {
            // SAFETY: syncfs on a descriptor we hold open.
            if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
                return Err(ImageError::io("syncfs", d, std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct FlushState {
    /// Pulls in flight (each holds a [`Flushing`]).
    active: usize,
    closed: bool,
}

/// Background flushes while pulls run (see the module docs). One thread per store, ended when
/// the `Flusher` is dropped.
pub(crate) struct Flusher {
    state: Arc<(Mutex<FlushState>, Condvar)>,
}

/// Keeps the [`Flusher`] flushing until dropped.
pub(crate) struct Flushing {
    state: Arc<(Mutex<FlushState>, Condvar)>,
}

impl Drop for Flushing {
    fn drop(&mut self) {
        let (m, _) = &*self.state;
        let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
        st.active = st.active.saturating_sub(1);
    }
}

impl Flusher {
    /// Starts the thread flushing the file systems of `dirs` while [`Flusher::flushing`] guards
    /// are alive. Blocking (opens the directories).
    pub(crate) fn start(dirs: &[&Path]) -> Result<Self> {
        let sp = SyncPoint::open(dirs)?;
        let state: Arc<(Mutex<FlushState>, Condvar)> = Arc::default();
        let st2 = state.clone();
        std::thread::Builder::new()
            .name("skiff-flusher".into())
            .spawn(move || flush_loop(&sp, &st2))
            .map_err(|e| ImageError::Metadata(format!("cannot start the flusher thread: {e}")))?;
        Ok(Flusher { state })
    }

    /// Flushes in the background until the guard is dropped.
    pub(crate) fn flushing(&self) -> Flushing {
        let (m, cv) = &*self.state;
        m.lock().unwrap_or_else(|p| p.into_inner()).active += 1;
        cv.notify_all();
        Flushing { state: self.state.clone() }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let (m, cv) = &*self.state;
        m.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        cv.notify_all();
    }
}

fn flush_loop(sp: &SyncPoint, state: &(Mutex<FlushState>, Condvar)) {
    let (m, cv) = state;
    let mut last: Option<Instant> = None;
    loop {
        {
            let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if st.closed {
                    return;
                }
                let wait = last.map(|t| FLUSH_EVERY.saturating_sub(t.elapsed())).unwrap_or_default();
                if st.active > 0 && wait.is_zero() {
                    break;
                }
                st = if st.active == 0 {
                    cv.wait(st).unwrap_or_else(|p| p.into_inner())
                } else {
                    cv.wait_timeout(st, wait).unwrap_or_else(|p| p.into_inner()).0
                };
            }
        }
        last = Some(Instant::now());
        // Errors are the pull's own syncfs to report (its descriptor sees them too).
        if let Err(e) = sp.sync() {
            tracing::debug!("background flush: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_covers_only_commits_that_finished() {
        // Other tests commit concurrently: only check the relations that always hold.
        let before = generation();
        let c = will_commit();
        assert!(generation() > before);
        assert_eq!(settled(), None, "a flush starting now does not cover the open commit");
        drop(c);
    }

    #[test]
    fn the_flusher_flushes_only_while_guarded_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let f = Flusher::start(&[dir.path(), dir.path()]).unwrap();
        let g = f.flushing();
        std::fs::write(dir.path().join("x"), b"data").unwrap();
        std::thread::sleep(FLUSH_EVERY * 2);
        drop(g);
        drop(f);
    }
}
