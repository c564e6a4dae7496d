//! An in-memory table of records with ID-prefix lookup and name reservation.
//!
//! Each record lives in an [`Entry`]: the record behind a short synchronous lock that hands
//! out copies (never held across an await), a transition flag for the long operations on it
//! (start, stop, remove…: whoever holds the transition does the work, holding no lock, and
//! concurrent operations wait on the transition, not on a lock), and the order of its writes
//! to disk (the latest state always lands last, and nothing is written after its removal).
//! This is containerd's model of a container's status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

pub use super::reserve::{NameGuard, Names, Reserve};

/// The outcome of looking an ID (or a unique prefix of one) up.
pub enum Lookup<T> {
    Found(Arc<Entry<T>>),
    NotFound,
    Ambiguous,
}

impl<T> Lookup<T> {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Lookup::NotFound)
    }
}

/// The long operations on an object, as its transition flag shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// StartContainer.
    Starting,
    /// StopContainer, StopPodSandbox.
    Stopping,
    /// RemoveContainer, RemovePodSandbox.
    Removing,
    /// UpdateContainerResources.
    Updating,
    /// Releasing the rootfs mount and cgroup of a container that exited.
    CleaningUp,
    /// A pod in use by CreateContainer or StartContainer of one of its containers.
    InUse,
}

/// How a transition shares its object: `Shared` ones of the same kind run together
/// (several StopContainer calls, several container starts in one pod), `Exclusive` ones alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// The object was removed while the operation waited for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("removed")]
pub struct Removed;

struct Busy {
    kind: Transition,
    mode: Mode,
    holders: u32,
}

struct Slot<T> {
    record: T,
    busy: Option<Busy>,
    removed: bool,
}

/// One record; see the module doc.
pub struct Entry<T> {
    slot: StdMutex<Slot<T>>,
    /// Serialises the writes of the record to disk (held on the blocking pool only).
    persist: StdMutex<()>,
    changed: Notify,
}

fn lock<U>(m: &StdMutex<U>) -> MutexGuard<'_, U> {
    // The critical sections cannot panic half way; a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: Clone> Entry<T> {
    pub fn new(record: T) -> Arc<Self> {
        Arc::new(Self {
            slot: StdMutex::new(Slot { record, busy: None, removed: false }),
            persist: StdMutex::new(()),
            changed: Notify::new(),
        })
    }

    /// A copy of the record.
    pub fn get(&self) -> T {
        lock(&self.slot).record.clone()
    }

    /// Reads the record in place (no copy), under the short lock.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&lock(&self.slot).record)
    }

    /// Changes the record in memory (a short, synchronous change; persist it afterwards).
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let r = f(&mut lock(&self.slot).record);
        self.changed.notify_waiters();
        r
    }

    /// The long operation under way, if any.
    pub fn transition(&self) -> Option<Transition> {
        lock(&self.slot).busy.as_ref().map(|b| b.kind)
    }

    pub fn is_removed(&self) -> bool {
        lock(&self.slot).removed
    }

    /// Waits until the object is free for a `kind` transition and takes it; fails when the
    /// object was removed (before or meanwhile). The transition ends when the guard drops.
    pub async fn begin(self: &Arc<Self>, kind: Transition, mode: Mode) -> Result<TransitionGuard<T>, Removed> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = lock(&self.slot);
                if s.removed {
                    return Err(Removed);
                }
                match &mut s.busy {
                    None => {
                        s.busy = Some(Busy { kind, mode, holders: 1 });
                        return Ok(TransitionGuard { entry: self.clone() });
                    }
                    Some(b) if mode == Mode::Shared && b.mode == Mode::Shared && b.kind == kind => {
                        b.holders += 1;
                        return Ok(TransitionGuard { entry: self.clone() });
                    }
                    Some(_) => {}
                }
            }
            notified.await;
        }
    }

    /// Writes the current record with `write` (blocking: call it on the blocking pool). The
    /// writes of one entry are serialised and each writes the state current when it runs, so
    /// the latest state lands last; after [`Entry::remove_with`] nothing is written any more.
    pub fn persist_with<E>(&self, write: impl FnOnce(&T) -> Result<(), E>) -> Result<(), E> {
        let _order = lock(&self.persist);
        let record = {
            let s = lock(&self.slot);
            if s.removed {
                return Ok(());
            }
            s.record.clone()
        };
        write(&record)
    }

    /// Deletes the record with `delete` (blocking) and marks the entry removed when that
    /// succeeds: no later write brings it back, and waiting operations fail with [`Removed`].
    pub fn remove_with<E>(&self, delete: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let _order = lock(&self.persist);
        delete()?;
        lock(&self.slot).removed = true;
        self.changed.notify_waiters();
        Ok(())
    }
}

/// A transition in progress; dropping it ends it and wakes the operations waiting for it.
pub struct TransitionGuard<T> {
    entry: Arc<Entry<T>>,
}

impl<T> Drop for TransitionGuard<T> {
    fn drop(&mut self) {
        {
            let mut s = lock(&self.entry.slot);
            if let Some(b) = s.busy.as_mut() {
                b.holders = b.holders.saturating_sub(1);
                if b.holders == 0 {
                    s.busy = None;
                }
            }
        }
        self.entry.changed.notify_waiters();
    }
}

/// See the module doc.
pub struct Table<T> {
    by_id: StdMutex<HashMap<String, Arc<Entry<T>>>>,
    /// Reserved names (`name_namespace_uid_attempt`…) and the creations under way.
    pub names: Names,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self { by_id: StdMutex::new(HashMap::new()), names: Names::default() }
    }
}

impl<T: Clone> Table<T> {
    pub fn insert(&self, id: &str, record: T) -> Arc<Entry<T>> {
        let entry = Entry::new(record);
        self.insert_entry(id, entry.clone());
        entry
    }

    pub fn insert_entry(&self, id: &str, entry: Arc<Entry<T>>) {
        lock(&self.by_id).insert(id.to_owned(), entry);
    }

    pub fn remove(&self, id: &str) {
        lock(&self.by_id).remove(id);
    }

    /// Finds a record by full ID or unique ID prefix.
    pub fn lookup(&self, id_or_prefix: &str) -> Lookup<T> {
        let by_id = lock(&self.by_id);
        if id_or_prefix.is_empty() {
            return Lookup::NotFound;
        }
        if let Some(e) = by_id.get(id_or_prefix) {
            return Lookup::Found(e.clone());
        }
        let mut found = by_id.iter().filter(|(k, _)| k.starts_with(id_or_prefix));
        match (found.next(), found.next()) {
            (Some((_, e)), None) => Lookup::Found(e.clone()),
            (Some(_), Some(_)) => Lookup::Ambiguous,
            _ => Lookup::NotFound,
        }
    }

    /// Every record (a snapshot of the handles).
    pub fn all(&self) -> Vec<(String, Arc<Entry<T>>)> {
        lock(&self.by_id).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Copies of every record.
    pub fn records(&self) -> Vec<T> {
        self.all().into_iter().map(|(_, e)| e.get()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn prefixes() {
        let t: Table<u32> = Table::default();
        t.insert("abc1", 1);
        t.insert("abd2", 2);
        assert!(matches!(t.lookup("abc"), Lookup::Found(_)));
        assert!(matches!(t.lookup("ab"), Lookup::Ambiguous));
        assert!(matches!(t.lookup("x"), Lookup::NotFound));
        assert!(matches!(t.lookup(""), Lookup::NotFound));
        t.remove("abd2");
        assert!(matches!(t.lookup("ab"), Lookup::Found(_)));
    }

    #[tokio::test]
    async fn transitions_exclude_and_share() {
        let e = Entry::new(0u32);
        let stop1 = e.begin(Transition::Stopping, Mode::Shared).await.unwrap();
        // Another stop shares it.
        let stop2 = e.begin(Transition::Stopping, Mode::Shared).await.unwrap();
        assert_eq!(e.transition(), Some(Transition::Stopping));
        // A removal waits for both; reads never wait.
        let e2 = e.clone();
        let remove = tokio::spawn(async move {
            let _g = e2.begin(Transition::Removing, Mode::Exclusive).await.unwrap();
            e2.update(|r| *r = 7);
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!remove.is_finished());
        assert_eq!(e.get(), 0);
        drop(stop1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!remove.is_finished());
        drop(stop2);
        tokio::time::timeout(Duration::from_secs(5), remove).await.unwrap().unwrap();
        assert_eq!(e.get(), 7);
        assert_eq!(e.transition(), None);
    }

    #[tokio::test]
    async fn removal_fails_the_waiters_and_stops_the_writes() {
        let e = Entry::new(1u32);
        let g = e.begin(Transition::Removing, Mode::Exclusive).await.unwrap();
        let e2 = e.clone();
        let start = tokio::spawn(async move { e2.begin(Transition::Starting, Mode::Exclusive).await.map(|_| ()) });
        let written = StdMutex::new(Vec::new());
        e.persist_with(|r| {
            written.lock().unwrap().push(*r);
            Ok::<_, ()>(())
        })
        .unwrap();
        e.remove_with(|| Ok::<_, ()>(())).unwrap();
        drop(g);
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), start).await.unwrap().unwrap(), Err(Removed));
        e.update(|r| *r = 2);
        e.persist_with(|r| {
            written.lock().unwrap().push(*r);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(*written.lock().unwrap(), vec![1]);
        // A failed deletion leaves it in place.
        let f = Entry::new(3u32);
        assert!(f.remove_with(|| Err("busy")).is_err());
        assert!(!f.is_removed());
    }
}
