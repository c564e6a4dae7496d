//! A LIFO list of undo steps for a multi-step operation (RunPodSandbox, CreateContainer…):
//! every step that acquires something registers how to release it; on failure the steps run
//! in reverse order, and the ones that fail are reported so that the object can be shown in
//! an error state instead of leaking silently.

use std::future::Future;
use std::pin::Pin;

type Step = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send>;

/// See the module doc. Callers end with [`Rollback::run`] or [`Rollback::commit`]; one dropped
/// without either (a panic, an early return) hands its steps to a background task, so that
/// nothing acquired is ever silently kept.
#[derive(Default)]
#[must_use = "end with run() on failure or commit() on success"]
pub struct Rollback {
    steps: Vec<(&'static str, Step)>,
}

impl Rollback {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an async undo step.
    pub fn push<F, Fut>(&mut self, what: &'static str, undo: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.steps.push((what, Box::new(move || Box::pin(undo()))));
    }

    /// Registers a blocking undo step (run on the blocking pool).
    pub fn push_blocking<F>(&mut self, what: &'static str, undo: F)
    where
        F: FnOnce() -> Result<(), String> + Send + 'static,
    {
        self.push(what, move || async move {
            tokio::task::spawn_blocking(undo).await.map_err(|e| format!("undo task failed: {e}"))?
        });
    }

    /// Success: forget the undo steps.
    pub fn commit(mut self) {
        self.steps.clear();
    }

    /// Failure: runs every step, last first; returns the failures as "what: why".
    pub async fn run(mut self) -> Vec<String> {
        run_steps(std::mem::take(&mut self.steps)).await
    }
}

async fn run_steps(mut steps: Vec<(&'static str, Step)>) -> Vec<String> {
    let mut failed = Vec::new();
    while let Some((what, step)) = steps.pop() {
        if let Err(e) = step().await {
            tracing::warn!(step = what, error = %e, "rollback step failed");
            failed.push(format!("{what}: {e}"));
        }
    }
    failed
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if self.steps.is_empty() {
            return;
        }
        let steps = std::mem::take(&mut self.steps);
        let names: Vec<&str> = steps.iter().map(|(w, _)| *w).collect();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                tracing::warn!(steps = ?names, "a rollback was dropped unfinished: undoing in the background");
                rt.spawn(run_steps(steps));
            }
            Err(_) => tracing::error!(steps = ?names, "a rollback was dropped outside the runtime: steps not run"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn runs_last_first_and_reports_failures() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut rb = Rollback::new();
        for i in 0..3 {
            let log = log.clone();
            rb.push("step", move || async move {
                log.lock().unwrap().push(i);
                if i == 1 {
                    Err("boom".into())
                } else {
                    Ok(())
                }
            });
        }
        let l2 = log.clone();
        rb.push_blocking("blocking", move || {
            l2.lock().unwrap().push(9);
            Ok(())
        });
        let failed = rb.run().await;
        assert_eq!(*log.lock().unwrap(), vec![9, 2, 1, 0]);
        assert_eq!(failed, vec!["step: boom".to_string()]);
    }

    #[tokio::test]
    async fn dropped_unfinished_runs_in_the_background() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut rb = Rollback::new();
        rb.push("x", move || async move {
            let _ = tx.send(());
            Ok(())
        });
        drop(rb);
        tokio::time::timeout(std::time::Duration::from_secs(5), rx).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn commit_runs_nothing() {
        let hit = Arc::new(Mutex::new(false));
        let mut rb = Rollback::new();
        let h = hit.clone();
        rb.push("x", move || async move {
            *h.lock().unwrap() = true;
            Ok(())
        });
        rb.commit();
        assert!(!*hit.lock().unwrap());
    }
}
