//! Durable metadata of pods and containers: one JSON file per object under
//! `ROOT/metadata/{pods,containers}/<id>.json` inside a versioned envelope, and an in-memory
//! index over them. Each write is an entry of the redo journal `ROOT/metadata/journal.{0,1}`
//! ([`common::journal`], shared with the image store for its containers' holds, which the
//! records' writes make durable), made durable by one `fdatasync` of a preallocated file per
//! write (shared by concurrent writes) instead of fsyncing the file and its directory; the file
//! is written from the journal later (atomically: temp file, rename), at the journal's
//! checkpoint, at a clean stop ([`common::journal::Journal::materialize`]) or by [`open`]'s
//! replay after a crash. The envelope carries the write's sequence number, by which the replay
//! tells an older file from a newer one.

pub mod records;
pub mod reserve;
pub mod table;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use records::*;
pub use table::{Entry, Lookup, Mode, Removed, Table, Transition, TransitionGuard};

/// The version written into every record file. A file of a newer version is refused.
pub const STORE_VERSION: u32 = 1;

/// A failure of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("store task failed: {0}")]
    Task(String),
}

impl common::Kinded for StoreError {
    /// The disk failing is Internal; a record that cannot be read is lost data.
    fn kind(&self) -> common::ErrorKind {
        match self {
            StoreError::Io { .. } => common::ErrorKind::Internal,
            StoreError::Corrupt { .. } => common::ErrorKind::DataLoss,
            StoreError::Task(_) => common::ErrorKind::Internal,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    version: u32,
    /// The journal's sequence number of the write (0 in files written before the journal).
    #[serde(default)]
    seq: u64,
    record: T,
}

/// The sequence number of a file the journal covers (for its replay): a record (its
/// envelope) or a hold (`rootfs.json`, which carries it at the top level too).
fn seq_of(bytes: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Seq {
        #[serde(default)]
        seq: u64,
    }
    serde_json::from_slice::<Seq>(bytes).ok().map(|s| s.seq)
}

/// The journal's files, under the root.
const JOURNAL: &str = "metadata/journal";

/// What [`open`] opens.
pub struct Opened {
    pub pods: RecordDir,
    pub containers: RecordDir,
    /// The journal, its base `root`, for the image store's holds.
    pub journal: common::journal::Journal,
}

/// Opens the journal of `root` (replaying it into the files it covers: the records and the
/// image store's holds) and the pod and container record directories
/// (`ROOT/metadata/{pods,containers}`). Blocking.
pub fn open(root: &Path) -> Result<Opened, StoreError> {
    let (journal, replay) = common::journal::Journal::open(root, JOURNAL, seq_of).map_err(|source| StoreError::Io {
        op: "open the journal in",
        path: root.to_owned(),
        source,
    })?;
    if replay.noteworthy() {
        tracing::info!(%replay, "replayed the metadata journal");
    }
    let pods = RecordDir::open(&journal, "metadata/pods")?;
    let containers = RecordDir::open(&journal, "metadata/containers")?;
    Ok(Opened { pods, containers, journal })
}

/// Every record of a directory: its id and the record, or why it cannot be read.
pub type Loaded<T> = Vec<(String, Result<T, StoreError>)>;

/// A directory of records, one file per id, written through the journal.
#[derive(Debug, Clone)]
pub struct RecordDir {
    dir: PathBuf,
    /// The directory's name under the journal's base.
    name: &'static str,
    journal: common::journal::Journal,
}

impl RecordDir {
    /// The directory `name` (a relative path) under the journal's base.
    pub fn open(journal: &common::journal::Journal, name: &'static str) -> Result<Self, StoreError> {
        let dir = journal.base().join(name);
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io { op: "create", path: dir.clone(), source })?;
        Ok(Self { dir, name, journal: journal.clone() })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The journal the records are written through (shared by every record directory and the
    /// image store's holds).
    pub fn journal(&self) -> &common::journal::Journal {
        &self.journal
    }

    fn rel(&self, id: &str) -> PathBuf {
        Path::new(self.name).join(format!("{id}.json"))
    }

    fn write<T: Serialize>(&self, id: &str, record: &T, durable: bool) -> Result<(), StoreError> {
        let path = self.path(id);
        // Serialized once, up front, so that a record that cannot be is an error here; the
        // journal's callback only wraps it in the envelope (the bytes `Envelope` serializes to).
        let record = serde_json::to_string(record)
            .map_err(|e| StoreError::Corrupt { path: path.clone(), message: e.to_string() })?;
        let make = |seq| format!(r#"{{"version":{STORE_VERSION},"seq":{seq},"record":{record}}}"#).into_bytes();
        self.journal.save(&self.rel(id), make, 0o600, durable).map_err(|source| StoreError::Io {
            op: "write",
            path,
            source,
        })
    }

    /// Writes the record of `id` durably (through the journal; see the module doc).
    pub fn save<T: Serialize>(&self, id: &str, record: &T) -> Result<(), StoreError> {
        self.write(id, record, true)
    }

    /// Writes the record of `id` without waiting for the disk: only for the "creating" record
    /// written before a creation acquires anything. What it guards against a crash of skiffd is
    /// in the page cache all the same; after a power cut everything a creation acquires before
    /// its final (fsynced) record is gone or released anyway (namespaces, mounts, cgroups and
    /// veths with the reboot, leases of pods not recorded READY and writable layers of unknown
    /// containers by recovery), and [`RecordDir::load_all`] drops the empty file such a write
    /// may leave.
    pub fn save_unsynced<T: Serialize>(&self, id: &str, record: &T) -> Result<(), StoreError> {
        self.write(id, record, false)
    }

    /// Deletes the record of `id` durably; an absent record is fine.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.journal.remove(&self.rel(id), true).map_err(|source| StoreError::Io {
            op: "remove",
            path: self.path(id),
            source,
        })
    }

    /// Writes the current record of `entry` on the blocking pool, in order with the entry's
    /// other writes and never after its removal (see [`Entry::persist_with`]).
    pub async fn save_entry<T>(&self, id: &str, entry: &std::sync::Arc<Entry<T>>) -> Result<(), StoreError>
    where
        T: Serialize + Clone + Send + 'static,
    {
        self.save_entry_as(id, entry, true).await
    }

    /// [`RecordDir::save_entry`] without waiting for durability (the next durable write of the
    /// journal, or its checkpoint, makes it durable): for a change whose loss in a power cut an
    /// earlier durable record already covers (see `ContainerRecord::starting`).
    pub async fn save_entry_unsynced<T>(&self, id: &str, entry: &std::sync::Arc<Entry<T>>) -> Result<(), StoreError>
    where
        T: Serialize + Clone + Send + 'static,
    {
        self.save_entry_as(id, entry, false).await
    }

    async fn save_entry_as<T>(
        &self,
        id: &str,
        entry: &std::sync::Arc<Entry<T>>,
        durable: bool,
    ) -> Result<(), StoreError>
    where
        T: Serialize + Clone + Send + 'static,
    {
        let (dir, id, entry) = (self.clone(), id.to_owned(), entry.clone());
        tokio::task::spawn_blocking(move || dir.persist_entry(&id, &entry, durable))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Deletes the record of `entry` on the blocking pool and marks the entry removed (see
    /// [`Entry::remove_with`]).
    pub async fn remove_entry<T>(&self, id: &str, entry: &std::sync::Arc<Entry<T>>) -> Result<(), StoreError>
    where
        T: Clone + Send + 'static,
    {
        let (dir, id, entry) = (self.clone(), id.to_owned(), entry.clone());
        tokio::task::spawn_blocking(move || dir.remove_entry_blocking(&id, &entry))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// [`RecordDir::save_entry`] on the calling thread (blocking).
    pub fn save_entry_blocking<T: Serialize + Clone>(&self, id: &str, entry: &Entry<T>) -> Result<(), StoreError> {
        self.persist_entry(id, entry, true)
    }

    /// Writes the current record of `entry`, in order with its other writes (blocking).
    fn persist_entry<T: Serialize + Clone>(&self, id: &str, entry: &Entry<T>, durable: bool) -> Result<(), StoreError> {
        entry.persist_with(|r| self.write(id, r, durable))
    }

    /// [`RecordDir::remove_entry`] on the calling thread (blocking).
    pub fn remove_entry_blocking<T: Clone>(&self, id: &str, entry: &Entry<T>) -> Result<(), StoreError> {
        entry.remove_with(|| self.remove(id))
    }

    /// Writes a record that is in no table yet, on the blocking pool.
    pub async fn save_async<T>(&self, id: &str, record: &T) -> Result<(), StoreError>
    where
        T: Serialize + Clone + Send + 'static,
    {
        let (dir, id, record) = (self.clone(), id.to_owned(), record.clone());
        tokio::task::spawn_blocking(move || dir.save(&id, &record))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// [`RecordDir::save_unsynced`] on the blocking pool, for a record in no table yet.
    pub async fn save_async_unsynced<T>(&self, id: &str, record: &T) -> Result<(), StoreError>
    where
        T: Serialize + Clone + Send + 'static,
    {
        let (dir, id, record) = (self.clone(), id.to_owned(), record.clone());
        tokio::task::spawn_blocking(move || dir.save_unsynced(&id, &record))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Reads every record (at startup, after the journal's replay: while skiffd runs the files
    /// lag behind the journal); leftovers of interrupted writes are deleted. Unreadable records
    /// are returned as errors (with their id) so that the caller can report them.
    pub fn load_all<T: DeserializeOwned>(&self) -> Result<Loaded<T>, StoreError> {
        let entries =
            fs::read_dir(&self.dir).map_err(|source| StoreError::Io { op: "read", path: self.dir.clone(), source })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let Some(id) = name.strip_suffix(".json") else {
                // A temp file of a write that never reached its rename.
                let _ = fs::remove_file(&path);
                continue;
            };
            // Empty: an unsynced "creating" record cut short by a power cut (a synced write
            // is complete before its rename), i.e. a creation that never finished.
            if entry.metadata().is_ok_and(|m| m.len() == 0) {
                tracing::info!(file = %path.display(), "removing the empty record of an interrupted creation");
                let _ = fs::remove_file(&path);
                continue;
            }
            out.push((id.to_owned(), read_record(&path)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn read_record<T: DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let bytes = fs::read(path).map_err(|source| StoreError::Io { op: "read", path: path.to_owned(), source })?;
    let env: Envelope<serde_json::Value> = serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Corrupt { path: path.to_owned(), message: e.to_string() })?;
    if env.version > STORE_VERSION {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            message: format!("record version {} is newer than this skiffd's {STORE_VERSION}", env.version),
        });
    }
    serde_json::from_value(env.record)
        .map_err(|e| StoreError::Corrupt { path: path.to_owned(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct R {
        a: u32,
    }

    fn test_dir(base: &Path, name: &'static str) -> RecordDir {
        let (j, _) = common::journal::Journal::open(base, JOURNAL, seq_of).unwrap();
        RecordDir::open(&j, name).unwrap()
    }

    #[test]
    fn save_load_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_dir(dir.path(), "x");
        store.save("one", &R { a: 1 }).unwrap();
        store.save("two", &R { a: 2 }).unwrap();
        store.save("one", &R { a: 3 }).unwrap();
        fs::write(dir.path().join("x/.one.json.tmp123"), b"partial").unwrap();
        fs::write(dir.path().join("x/bad.json"), b"{not json").unwrap();
        store.journal().materialize().unwrap();
        let all: Vec<(String, Result<R, StoreError>)> = store.load_all().unwrap();
        assert_eq!(all.len(), 3);
        assert!(matches!(&all[0], (id, Err(StoreError::Corrupt { .. })) if id == "bad"));
        assert_eq!(all[1].1.as_ref().unwrap(), &R { a: 3 });
        assert_eq!(all[2].1.as_ref().unwrap(), &R { a: 2 });
        assert!(!dir.path().join("x/.one.json.tmp123").exists());
        store.remove("one").unwrap();
        store.remove("one").unwrap();
        assert_eq!(store.load_all::<R>().unwrap().len(), 2);
    }

    #[test]
    fn unsynced_records_load_and_empty_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_dir(dir.path(), "x");
        store.save_unsynced("one", &R { a: 1 }).unwrap();
        fs::write(dir.path().join("x/cut.json"), b"").unwrap();
        store.journal().materialize().unwrap();
        let all: Vec<(String, Result<R, StoreError>)> = store.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.as_ref().unwrap(), &R { a: 1 });
        assert!(!dir.path().join("x/cut.json").exists());
    }

    #[test]
    fn lost_record_writes_come_back_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).unwrap().pods;
        store.save("one", &R { a: 1 }).unwrap();
        store.save("two", &R { a: 2 }).unwrap();
        store.remove("two").unwrap();
        drop(store);
        // What a power cut may leave of the unsynced files.
        fs::write(dir.path().join("metadata/pods/one.json"), b"").unwrap();
        fs::write(dir.path().join("metadata/pods/two.json"), br#"{"version":1,"record":{"a":2}}"#).unwrap();
        let opened = open(dir.path()).unwrap();
        let pods = opened.pods;
        let all: Vec<(String, Result<R, StoreError>)> = pods.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.as_ref().unwrap(), &R { a: 1 });
    }

    #[test]
    fn a_written_file_is_the_envelope_with_its_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_dir(dir.path(), "x");
        store.save("one", &R { a: 7 }).unwrap();
        store.journal().materialize().unwrap();
        let bytes = fs::read(dir.path().join("x/one.json")).unwrap();
        let seq = seq_of(&bytes).unwrap();
        assert!(seq > 0);
        let env = Envelope { version: STORE_VERSION, seq, record: R { a: 7 } };
        assert_eq!(bytes, serde_json::to_vec(&env).unwrap());
    }

    #[test]
    fn newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_dir(dir.path(), "x");
        fs::write(dir.path().join("x/n.json"), br#"{"version":99,"record":{"a":1}}"#).unwrap();
        let all: Vec<(String, Result<R, StoreError>)> = store.load_all().unwrap();
        assert!(all[0].1.is_err());
    }
}
