//! An in-memory table of records with ID-prefix lookup, name reservation and a lock per
//! record (so that operations on one object are serialised while others proceed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};

use tokio::sync::Mutex;

/// The outcome of looking an ID (or a unique prefix of one) up.
pub enum Lookup<T> {
    Found(Arc<Mutex<T>>),
    NotFound,
    Ambiguous,
}

impl<T> Lookup<T> {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Lookup::NotFound)
    }
}

struct Inner<T> {
    by_id: HashMap<String, Arc<Mutex<T>>>,
    /// Reserved name → ID.
    names: HashMap<String, String>,
}

/// See the module doc.
pub struct Table<T> {
    inner: StdMutex<Inner<T>>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self { inner: StdMutex::new(Inner { by_id: HashMap::new(), names: HashMap::new() }) }
    }
}

impl<T> Table<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // The critical sections below cannot panic half way; a poisoned lock still holds
        // consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves `name` for `id`; on conflict returns the ID holding it.
    pub fn reserve(&self, name: &str, id: &str) -> Result<(), String> {
        let mut inner = self.lock();
        match inner.names.get(name) {
            Some(holder) if holder != id => Err(holder.clone()),
            _ => {
                inner.names.insert(name.to_owned(), id.to_owned());
                Ok(())
            }
        }
    }

    /// Releases `name` if `id` holds it.
    pub fn release(&self, name: &str, id: &str) {
        let mut inner = self.lock();
        if inner.names.get(name).map(String::as_str) == Some(id) {
            inner.names.remove(name);
        }
    }

    pub fn insert(&self, id: &str, record: T) -> Arc<Mutex<T>> {
        let entry = Arc::new(Mutex::new(record));
        self.lock().by_id.insert(id.to_owned(), entry.clone());
        entry
    }

    pub fn remove(&self, id: &str) {
        self.lock().by_id.remove(id);
    }

    /// Finds a record by full ID or unique ID prefix.
    pub fn lookup(&self, id_or_prefix: &str) -> Lookup<T> {
        let inner = self.lock();
        if id_or_prefix.is_empty() {
            return Lookup::NotFound;
        }
        if let Some(e) = inner.by_id.get(id_or_prefix) {
            return Lookup::Found(e.clone());
        }
        let mut found = inner.by_id.iter().filter(|(k, _)| k.starts_with(id_or_prefix));
        match (found.next(), found.next()) {
            (Some((_, e)), None) => Lookup::Found(e.clone()),
            (Some(_), Some(_)) => Lookup::Ambiguous,
            _ => Lookup::NotFound,
        }
    }

    /// Every record (a snapshot of the handles).
    pub fn all(&self) -> Vec<(String, Arc<Mutex<T>>)> {
        self.lock().by_id.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_prefixes() {
        let t: Table<u32> = Table::default();
        t.reserve("a_ns_uid_0", "abc1").unwrap();
        assert_eq!(t.reserve("a_ns_uid_0", "abd2"), Err("abc1".to_owned()));
        t.reserve("a_ns_uid_0", "abc1").unwrap();
        t.insert("abc1", 1);
        t.insert("abd2", 2);
        assert!(matches!(t.lookup("abc"), Lookup::Found(_)));
        assert!(matches!(t.lookup("ab"), Lookup::Ambiguous));
        assert!(matches!(t.lookup("x"), Lookup::NotFound));
        assert!(matches!(t.lookup(""), Lookup::NotFound));
        t.release("a_ns_uid_0", "abd2");
        assert!(t.reserve("a_ns_uid_0", "abd2").is_err());
        t.release("a_ns_uid_0", "abc1");
        t.reserve("a_ns_uid_0", "abd2").unwrap();
    }
}
