//! Name reservations of pods and containers, and retries that get the finished result (as
//! CRI-O's resource store does).
//!
//! RunPodSandbox and CreateContainer reserve the object's name (built from its metadata:
//! name, namespace, uid, attempt) before they create anything. The creation runs in a task of
//! its own, so it finishes even when the caller's deadline passes and tonic drops the handler.
//! A retry with the same metadata then
//! - while the first still runs: waits for it and answers with the same ID (or, when the first
//!   failed, tries again itself: a failed attempt leaves nothing reserved);
//! - after it finished and nobody received its answer ("unclaimed"): answers with its ID at
//!   once, for [`UNCLAIMED_TTL`];
//! - otherwise (the answer was delivered, or too long ago): ALREADY_EXISTS, as before.
//!
//! An unclaimed object is kept, not removed, when its window passes: it is a complete pod or
//! container, listed as any other, and the kubelet removes the ones it does not know (its
//! garbage collection of unwanted pods and containers). CRI-O removes them instead; keeping
//! them never destroys something a late caller may be about to use.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::Status;

use super::new_id;

/// How long the result of a creation whose caller went away is kept for a retry.
pub const UNCLAIMED_TTL: Duration = Duration::from_secs(300);

enum Name {
    /// A creation is under way; `done` turns true when it succeeded (and is closed without
    /// turning true when it failed).
    Pending { id: String, done: watch::Receiver<bool> },
    /// The object exists; `unclaimed_until` is set while nobody received its ID.
    Held { id: String, unclaimed_until: Option<Instant> },
}

impl Name {
    fn id(&self) -> &str {
        match self {
            Name::Pending { id, .. } | Name::Held { id, .. } => id,
        }
    }
}

type Map = Arc<StdMutex<HashMap<String, Name>>>;

fn lock(m: &Map) -> MutexGuard<'_, HashMap<String, Name>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The reserved names of one kind of object.
#[derive(Default)]
pub struct Names {
    map: Map,
}

/// The answer of [`Names::reserve`].
pub enum Reserve {
    /// The name is ours: create the object, then [`NameGuard::commit`].
    New(NameGuard),
    /// Another creation with this name is under way.
    Running { id: String, done: watch::Receiver<bool> },
    /// Created by an earlier call whose caller never received the answer.
    Unclaimed(String),
    /// Held by an existing object.
    Taken(String),
}

impl Names {
    /// Reserves `name` for a new object `id`.
    pub fn reserve(&self, name: &str, id: &str) -> Reserve {
        let mut map = lock(&self.map);
        match map.get_mut(name) {
            Some(Name::Pending { id, done }) => Reserve::Running { id: id.clone(), done: done.clone() },
            Some(Name::Held { id, unclaimed_until: Some(until) }) if Instant::now() < *until => {
                Reserve::Unclaimed(id.clone())
            }
            Some(held) => Reserve::Taken(held.id().to_owned()),
            None => {
                let (tx, rx) = watch::channel(false);
                map.insert(name.to_owned(), Name::Pending { id: id.to_owned(), done: rx });
                Reserve::New(NameGuard {
                    map: self.map.clone(),
                    name: name.to_owned(),
                    id: id.to_owned(),
                    done: Some(tx),
                })
            }
        }
    }

    /// Marks `id`'s result as delivered to a caller.
    pub fn claim(&self, name: &str, id: &str) {
        if let Some(Name::Held { id: held, unclaimed_until }) = lock(&self.map).get_mut(name) {
            if held == id {
                *unclaimed_until = None;
            }
        }
    }

    /// Holds `name` for the existing object `id` (at recovery); on conflict returns the holder.
    pub fn hold(&self, name: &str, id: &str) -> Result<(), String> {
        let mut map = lock(&self.map);
        match map.get(name) {
            Some(other) if other.id() != id => Err(other.id().to_owned()),
            _ => {
                map.insert(name.to_owned(), Name::Held { id: id.to_owned(), unclaimed_until: None });
                Ok(())
            }
        }
    }

    /// Releases `name` if `id` holds it.
    pub fn release(&self, name: &str, id: &str) {
        let mut map = lock(&self.map);
        if map.get(name).map(Name::id) == Some(id) {
            map.remove(name);
        }
    }

    /// The ID holding or creating `name`.
    pub fn holder(&self, name: &str) -> Option<String> {
        lock(&self.map).get(name).map(|n| n.id().to_owned())
    }

    /// Creates the object `name` at most once: `attempt(id, guard)` creates it (in a task of
    /// its own; it commits the guard once the object is in the table). Concurrent and later
    /// calls with the same name get the same ID as described in the module doc; `taken` makes
    /// the error for a name held by an object whose ID was already delivered.
    pub async fn create_once<F, Fut>(
        &self,
        name: &str,
        mut attempt: F,
        taken: impl Fn(&str) -> Status,
    ) -> Result<String, Status>
    where
        F: FnMut(String, NameGuard) -> Fut,
        Fut: Future<Output = Result<(), Status>>,
    {
        loop {
            let id = new_id();
            match self.reserve(name, &id) {
                Reserve::New(guard) => {
                    attempt(id.clone(), guard).await?;
                    // Not reached when the caller went away meanwhile: then it stays unclaimed.
                    self.claim(name, &id);
                    return Ok(id);
                }
                Reserve::Running { id, mut done } => {
                    tracing::info!(name, id = %id, "a retry joins the creation under way");
                    if done.wait_for(|ok| *ok).await.is_ok() {
                        self.claim(name, &id);
                        return Ok(id);
                    }
                    // It failed and released the name: try ourselves.
                }
                Reserve::Unclaimed(id) => {
                    tracing::info!(name, id = %id, "a retry gets the result of an earlier call");
                    self.claim(name, &id);
                    return Ok(id);
                }
                Reserve::Taken(holder) => return Err(taken(&holder)),
            }
        }
    }
}

/// A name reserved for a creation under way. [`NameGuard::commit`] keeps it for the new
/// object; dropping the guard otherwise (failure, panic) releases the name, so that a failed
/// attempt leaves nothing reserved and waiting retries try again.
pub struct NameGuard {
    map: Map,
    name: String,
    id: String,
    done: Option<watch::Sender<bool>>,
}

impl NameGuard {
    /// The object exists (and is in its table): keep the name, unclaimed until a caller gets it.
    pub fn commit(mut self) {
        lock(&self.map).insert(
            self.name.clone(),
            Name::Held { id: self.id.clone(), unclaimed_until: Some(Instant::now() + UNCLAIMED_TTL) },
        );
        if let Some(done) = self.done.take() {
            let _ = done.send(true);
        }
    }
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        if self.done.take().is_some() {
            let mut map = lock(&self.map);
            if matches!(map.get(&self.name), Some(Name::Pending { id, .. }) if *id == self.id) {
                map.remove(&self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_commit_claim_release() {
        let n = Names::default();
        let Reserve::New(g) = n.reserve("a", "1") else { panic!("new") };
        assert!(matches!(n.reserve("a", "2"), Reserve::Running { id, .. } if id == "1"));
        g.commit();
        assert!(matches!(n.reserve("a", "2"), Reserve::Unclaimed(id) if id == "1"));
        n.claim("a", "1");
        assert!(matches!(n.reserve("a", "2"), Reserve::Taken(id) if id == "1"));
        n.release("a", "2");
        assert_eq!(n.holder("a").as_deref(), Some("1"));
        n.release("a", "1");
        assert!(matches!(n.reserve("a", "3"), Reserve::New(_)));
        // A failed attempt (guard dropped) leaves nothing.
        assert!(matches!(n.reserve("b", "4"), Reserve::New(_)));
        assert_eq!(n.holder("b"), None);
        n.hold("c", "5").unwrap();
        assert_eq!(n.hold("c", "6"), Err("5".to_owned()));
        assert!(matches!(n.reserve("c", "7"), Reserve::Taken(_)));
    }

    #[tokio::test]
    async fn a_retry_joins_the_running_attempt_and_a_failure_lets_it_try() {
        let n = Arc::new(Names::default());
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<bool>();
        let n1 = n.clone();
        let first = tokio::spawn(async move {
            let mut go = Some(go_rx);
            n1.create_once(
                "x",
                move |_id, guard| {
                    let go = go.take();
                    async move {
                        let ok = go.expect("called once").await.unwrap_or(false);
                        if ok {
                            guard.commit();
                            Ok(())
                        } else {
                            Err(Status::internal("boom"))
                        }
                    }
                },
                |h| Status::already_exists(h.to_owned()),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n2 = n.clone();
        let second = tokio::spawn(async move {
            n2.create_once(
                "x",
                |_id, guard| async move {
                    guard.commit();
                    Ok(())
                },
                |h| Status::already_exists(h.to_owned()),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished());
        go_tx.send(true).unwrap();
        let a = first.await.unwrap().unwrap();
        let b = second.await.unwrap().unwrap();
        assert_eq!(a, b);
        // Both callers got it: a third call is a duplicate.
        let third =
            n.create_once("x", |_id, _g| async { Ok(()) }, |h| Status::already_exists(h.to_owned())).await.unwrap_err();
        assert_eq!(third.code(), tonic::Code::AlreadyExists);

        // A failing first attempt: the joined retry makes its own.
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<bool>();
        let n1 = n.clone();
        let first = tokio::spawn(async move {
            let mut go = Some(go_rx);
            n1.create_once(
                "y",
                move |_id, _guard| {
                    let go = go.take();
                    async move {
                        let _ = go.expect("called once").await;
                        Err::<(), _>(Status::internal("boom"))
                    }
                },
                |h| Status::already_exists(h.to_owned()),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n2 = n.clone();
        let second = tokio::spawn(async move {
            n2.create_once(
                "y",
                |_id, guard| async move {
                    guard.commit();
                    Ok(())
                },
                |h| Status::already_exists(h.to_owned()),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        go_tx.send(false).unwrap();
        assert!(first.await.unwrap().is_err());
        let id = second.await.unwrap().unwrap();
        assert_eq!(n.holder("y"), Some(id));
    }
}
