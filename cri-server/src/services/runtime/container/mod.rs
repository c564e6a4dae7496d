//! Containers: CreateContainer (`create`), StartContainer (`start`), StopContainer (`stop`),
//! RemoveContainer (`remove`), ContainerStatus (`status`), ListContainers (`list`),
//! ReopenContainerLog (`log`), one module per RPC as containerd's `internal/cri/server` has them.
//!
//! A container's process runs under its own `skiff-monitor`; skiffd learns about its exit from
//! the exit record the monitor writes (`STATE/containers/<id>/exit.json`), pushed by the monitor
//! over its socket to a watcher task, and on every read of the container; then the rootfs mount
//! and cgroup are released (`exit`).
//!
//! Every mutating RPC runs its body in a task of its own ([`detached`]): tonic drops the
//! handler's future when the client's deadline passes, the task goes on to the end. A
//! container's record sits in a [`crate::store::Entry`]: reads take copies and never wait;
//! Start, Stop, Remove, UpdateContainerResources and the release after an exit hold a
//! transition on it instead of a lock, and wait for each other's (Stop shares its transition
//! with other Stops). Lock order: the pod's transition (CreateContainer, StartContainer), then
//! the container's.

mod create;
mod exit;
mod list;
mod log;
mod remove;
pub(crate) use remove::sweep_trash;
mod start;
mod status;
mod stop;

use std::future::Future;
use std::sync::Arc;

use runtime::monitor::MonitorError;
use tonic::Status;

use super::RuntimeSvc;
use crate::context::Context;
use crate::error::join_error;
use crate::store::{ContainerRecord, ContainerState, Entry, Lookup, PodRecord};

pub(crate) use exit::{
    cleanup_after_exit, notice_exit, process_alive, refresh, release_runtime_resources, spawn_exit_sweeper,
    spawn_exit_watcher, wait_pushed_exit,
};
// The stats lists read exits in their own blocking jobs.
pub(crate) use exit::{read_exit, record_exit, Exit};

/// A container's entry in the table.
pub(crate) type ContainerEntry = Arc<Entry<ContainerRecord>>;
/// A pod's entry in the table.
pub(crate) type PodEntry = Arc<Entry<PodRecord>>;

/// Runs a mutating RPC's body in a task of its own, so that it completes (and its rollback or
/// its record is never cut half way) even when the caller goes away; the handler only awaits it.
pub(crate) async fn detached<R, Fut>(body: Fut) -> Result<R, Status>
where
    Fut: Future<Output = Result<R, Status>> + Send + 'static,
    R: Send + 'static,
{
    let running = Running::enter();
    tokio::spawn(async move {
        let _running = running;
        body.await
    })
    .await
    .map_err(join_error)?
}

/// Runs blocking clean-up work (deleting a removed container's directories) after the RPC
/// has answered, on the blocking pool; counted with the [`detached`] bodies, so that a graceful
/// shutdown waits for it (at most its grace; what is left is swept at the next start).
pub(crate) fn spawn_background_blocking(work: impl FnOnce() + Send + 'static) {
    let running = Running::enter();
    tokio::task::spawn_blocking(move || {
        let _running = running;
        work()
    });
}

/// Runs blocking clean-up work (deleting a removed container's renamed directories) on one
/// thread of its own at the lowest priority (nice 19), so that it never takes a core from the
/// RPCs, the answer of the removal that handed it over included (on 2 cores a deletion started
/// beside it delayed that answer by 0.2-0.3 ms); under load it still gets its share. Counted as
/// [`spawn_background_blocking`]. Falls back on the blocking pool if the thread cannot start.
pub(crate) fn spawn_low_priority(work: impl FnOnce() + Send + 'static) {
    type Job = (Box<dyn FnOnce() + Send>, Running);
    static QUEUE: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Job>>> = std::sync::OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new().name("skiff-cleanup".into()).spawn(move || {
            // SAFETY: setpriority with integer arguments only; on Linux the nice value of
            // PRIO_PROCESS with a thread id is that thread's alone.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) } != 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "cleanup thread keeps its priority");
            }
            for (work, running) in rx {
                work();
                drop(running);
            }
        });
        spawned.ok().map(|_| tx)
    });
    let job: Job = (Box::new(work), Running::enter());
    let (work, running) = match queue {
        Some(tx) => match tx.send(job) {
            Ok(()) => return,
            Err(std::sync::mpsc::SendError(job)) => job,
        },
        None => job,
    };
    tokio::task::spawn_blocking(move || {
        work();
        drop(running);
    });
}

/// Runs work left after an RPC answered (a pod's network teardown) in a task of its own,
/// counted as [`spawn_background_blocking`].
pub(crate) fn spawn_background(work: impl Future<Output = ()> + Send + 'static) {
    let running = Running::enter();
    tokio::spawn(async move {
        let _running = running;
        work.await
    });
}

/// The number of [`detached`] bodies under way (also those whose caller went away).
static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static RUNNING_DONE: tokio::sync::Notify = tokio::sync::Notify::const_new();

struct Running;

impl Running {
    fn enter() -> Self {
        RUNNING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        RUNNING_DONE.notify_waiters();
    }
}

/// At shutdown: waits (at most `grace`) for the mutating operations still under way, also
/// those whose caller went away, so that they end as they would have rather than be rolled
/// back by the next start's recovery.
pub async fn drain_detached(grace: std::time::Duration) {
    let wait = async {
        loop {
            let done = RUNNING_DONE.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if RUNNING.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    };
    if tokio::time::timeout(grace, wait).await.is_err() {
        tracing::warn!(
            left = RUNNING.load(std::sync::atomic::Ordering::SeqCst),
            "operations still under way at shutdown; the next start's recovery completes or rolls them back"
        );
    }
}
pub(crate) use status::container_status;

fn container_state(s: ContainerState) -> proto::cri::ContainerState {
    match s {
        ContainerState::Creating | ContainerState::Created => proto::cri::ContainerState::ContainerCreated,
        ContainerState::Running => proto::cri::ContainerState::ContainerRunning,
        ContainerState::Exited => proto::cri::ContainerState::ContainerExited,
        ContainerState::Unknown => proto::cri::ContainerState::ContainerUnknown,
    }
}

fn monitor_status(e: MonitorError, doing: &str) -> Status {
    match e {
        MonitorError::StartError(m) => Status::unknown(format!("{doing}: {m}")),
        MonitorError::Timeout => Status::deadline_exceeded(format!("{doing}: timed out")),
        other => Status::internal(format!("{doing}: {other}")),
    }
}

/// Finds a container by ID or unique ID prefix.
pub(crate) fn find_container(ctx: &Context, id: &str) -> Result<Option<ContainerEntry>, Status> {
    match ctx.containers.lookup(id) {
        Lookup::Found(c) => Ok(Some(c)),
        Lookup::NotFound => Ok(None),
        Lookup::Ambiguous => Err(Status::invalid_argument(format!("container ID prefix {id:?} is ambiguous"))),
    }
}

pub(crate) fn container_or_not_found(ctx: &Context, id: &str) -> Result<ContainerEntry, Status> {
    find_container(ctx, id)?.ok_or_else(|| container_not_found(id))
}

pub(crate) fn container_not_found(id: &str) -> Status {
    Status::not_found(format!("container {id:?} not found"))
}

/// Finds a pod by ID or unique ID prefix.
pub(crate) fn find_pod(ctx: &Context, id: &str) -> Result<Option<PodEntry>, Status> {
    match ctx.pods.lookup(id) {
        Lookup::Found(p) => Ok(Some(p)),
        Lookup::NotFound => Ok(None),
        Lookup::Ambiguous => Err(Status::invalid_argument(format!("pod sandbox ID prefix {id:?} is ambiguous"))),
    }
}

pub(crate) fn pod_or_not_found(ctx: &Context, id: &str) -> Result<PodEntry, Status> {
    find_pod(ctx, id)?.ok_or_else(|| pod_not_found(id))
}

pub(crate) fn pod_not_found(id: &str) -> Status {
    Status::not_found(format!("pod sandbox {id:?} not found"))
}

impl RuntimeSvc {
    #[allow(dead_code)] // the RPC modules outside this one look containers up through these
    pub(crate) fn find_container(&self, id: &str) -> Result<Option<ContainerEntry>, Status> {
        find_container(&self.ctx, id)
    }

    pub(crate) fn container_or_not_found(&self, id: &str) -> Result<ContainerEntry, Status> {
        container_or_not_found(&self.ctx, id)
    }

    /// A service on the same daemon state, for a task of its own (see [`detached`]).
    pub(crate) fn handle(&self) -> RuntimeSvc {
        // The same caches (CPU samples, writable-layer usage) and background task, not new ones.
        RuntimeSvc { ctx: self.ctx.clone(), cpu_samples: self.cpu_samples.clone(), fs_cache: self.fs_cache.clone() }
    }
}
