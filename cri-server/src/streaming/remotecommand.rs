//! Exec and attach sessions over either transport: the client's streams (stdin, stdout,
//! stderr, error, resize) wired to the monitor's file descriptors, the exit status reported on
//! the error stream as the Kubernetes clients parse it.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runtime::monitor::{self, AttachOptions, ExecHandle, ExecStreamOptions, MonitorError};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::fdio::FdIo;
use super::{spdy, ws, AttachTarget, ExecTarget};

/// A client → server stream.
pub enum In {
    Spdy(spdy::StreamReader),
    Ws(mpsc::Receiver<Bytes>),
}

impl In {
    pub async fn read(&mut self) -> Option<Bytes> {
        match self {
            In::Spdy(r) => r.read().await,
            In::Ws(r) => r.recv().await,
        }
    }
}

/// A server → client stream.
#[derive(Clone)]
pub enum Out {
    Spdy(spdy::StreamWriter),
    Ws(ws::ChannelWriter),
}

impl Out {
    pub async fn write(&self, data: &[u8]) -> io::Result<()> {
        match self {
            Out::Spdy(w) => w.write(data).await,
            Out::Ws(w) => w.write(data).await,
        }
    }

    /// End of this stream (SPDY FIN; WebSocket channels have none).
    pub async fn close(&self) {
        if let Out::Spdy(w) = self {
            w.close().await;
        }
    }
}

/// The streams a client opened for one session.
#[derive(Default)]
pub struct Streams {
    pub stdin: Option<In>,
    pub stdout: Option<Out>,
    pub stderr: Option<Out>,
    pub error: Option<Out>,
    pub resize: Option<In>,
    /// v4 and later: the status is a JSON metav1.Status, success included; before, only a
    /// failure's message is written.
    pub json_status: bool,
}

/// How a session ended.
#[derive(Debug)]
pub enum Outcome {
    Exited(i32),
    Failed(String),
}

/// The error stream's content for an outcome (`None`: nothing to write).
pub fn status_message(outcome: &Outcome, json: bool) -> Option<String> {
    let v = match outcome {
        Outcome::Exited(0) => {
            return json.then(|| serde_json::json!({"metadata": {}, "status": "Success"}).to_string());
        }
        Outcome::Exited(code) => {
            let message = format!("command terminated with non-zero exit code: exit status {code}");
            if !json {
                return Some(message);
            }
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
        }
        Outcome::Failed(m) => {
            if !json {
                return Some(m.clone());
            }
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": m,
                "reason": "InternalError",
                "code": 500,
                "details": {"causes": [{"message": m}]},
            })
        }
    };
    Some(v.to_string())
}

#[derive(Deserialize)]
struct TermSize {
    #[serde(alias = "width")]
    #[serde(rename = "Width")]
    width: u16,
    #[serde(alias = "height")]
    #[serde(rename = "Height")]
    height: u16,
}

/// Splits the resize stream's concatenated JSON objects; keeps an incomplete tail in `buf`.
fn parse_sizes(buf: &mut Vec<u8>) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<TermSize>();
    let mut used = 0;
    loop {
        match it.next() {
            Some(Ok(s)) => {
                used = it.byte_offset();
                out.push((s.width, s.height));
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(_)) => {
                // Garbage: drop everything seen so far.
                used = buf.len();
                break;
            }
            None => {
                used = buf.len();
                break;
            }
        }
    }
    buf.drain(..used);
    out
}

/// Reads the next terminal size from a resize stream.
struct Sizes {
    input: In,
    buf: Vec<u8>,
    ready: std::collections::VecDeque<(u16, u16)>,
}

impl Sizes {
    async fn next(&mut self) -> Option<(u16, u16)> {
        loop {
            if let Some(s) = self.ready.pop_front() {
                return Some(s);
            }
            let chunk = self.input.read().await?;
            if self.buf.len() + chunk.len() > 64 * 1024 {
                self.buf.clear();
            }
            self.buf.extend_from_slice(&chunk);
            self.ready.extend(parse_sizes(&mut self.buf));
        }
    }
}

/// After the command's exit, output still flows while it comes; a pipe silent this long is
/// taken as ended (a background child may hold it open forever).
const EXIT_DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Copies a monitor output fd to a client stream until EOF (or, once `exited` is set, until it
/// has been silent for [`EXIT_DRAIN_GRACE`]), then ends the stream.
async fn pump_out(fd: Option<OwnedFd>, out: Option<Out>, mut exited: Option<watch::Receiver<bool>>) {
    let Some(fd) = fd else {
        if let Some(o) = out {
            o.close().await;
        }
        return;
    };
    let io = match FdIo::new(fd) {
        Ok(io) => io,
        Err(e) => {
            tracing::debug!(error = %e, "streaming: cannot poll an output fd");
            return;
        }
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let read = async {
            match exited.as_mut() {
                Some(x) if *x.borrow() => {
                    tokio::time::timeout(EXIT_DRAIN_GRACE, io.read(&mut buf)).await.unwrap_or(Ok(0))
                }
                Some(x) => {
                    let mut x2 = x.clone();
                    tokio::select! {
                        r = io.read(&mut buf) => r,
                        _ = crate::streaming::flag(&mut x2) => {
                            tokio::time::timeout(EXIT_DRAIN_GRACE, io.read(&mut buf)).await.unwrap_or(Ok(0))
                        }
                    }
                }
                None => io.read(&mut buf).await,
            }
        };
        let n = match read.await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Backpressure: the next read waits until the client took this chunk.
        if let Some(o) = &out {
            if o.write(&buf[..n]).await.is_err() {
                break;
            }
        }
    }
    if let Some(o) = out {
        o.close().await;
    }
}

/// Copies a client stream to the monitor's stdin fd; closing it at the client's EOF.
async fn pump_in(input: Option<In>, fd: Option<OwnedFd>) {
    let (Some(mut input), Some(fd)) = (input, fd) else { return };
    let Ok(io) = FdIo::new(fd) else { return };
    while let Some(b) = input.read().await {
        if io.write_all(&b).await.is_err() {
            break;
        }
    }
    // Dropping `io` closes the fd: EOF for the command.
}

/// Kills an exec'd command unless disarmed: the session future was dropped (client gone, idle
/// timeout, shutdown) before the command ended.
struct KillOnDrop(Option<ExecHandle>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let kill = move || {
                if let Err(e) = h.kill() {
                    tracing::debug!(error = %e, "streaming: cannot kill the exec'd command");
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(kill);
                }
                Err(_) => kill(),
            }
        }
    }
}

fn failure(what: &str, e: impl std::fmt::Display) -> Outcome {
    Outcome::Failed(format!("{what}: {e}"))
}

fn monitor_failure(what: &str, e: MonitorError) -> Outcome {
    match e {
        MonitorError::StartError(m) => Outcome::Failed(m),
        e => failure(what, e),
    }
}

/// Runs an exec session on `streams`; returns how it ended (the caller writes the status).
pub async fn exec(mut streams: Streams, target: ExecTarget, monitor_bin: PathBuf) -> (Streams, Outcome) {
    let mut sizes = (target.tty).then(|| streams.resize.take()).flatten().map(|input| Sizes {
        input,
        buf: Vec::new(),
        ready: Default::default(),
    });
    // The client sends the terminal's size first thing: start the command with it.
    let mut size = None;
    if let Some(s) = sizes.as_mut() {
        size = tokio::time::timeout(Duration::from_millis(500), s.next()).await.ok().flatten();
    }
    let opts = ExecStreamOptions {
        tty: target.tty,
        stdin: target.stdin,
        stdout: target.stdout,
        stderr: target.stderr && !target.tty,
        size,
    };
    let (dir, cmd) = (target.container_dir.clone(), target.cmd.clone());
    let started = tokio::task::spawn_blocking(move || monitor::exec_stream(&monitor_bin, &dir, &cmd, &opts)).await;
    let mut session = match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return (streams, monitor_failure("exec", e)),
        Err(e) => return (streams, failure("exec", e)),
    };
    let handle = session.handle();
    let mut guard = KillOnDrop(Some(handle.clone()));
    let (fd_in, fd_out, fd_err) = (session.take_stdin(), session.take_stdout(), session.take_stderr());
    let (exited_tx, exited_rx) = watch::channel(false);
    let waiter = async move {
        let r = tokio::task::spawn_blocking(move || session.wait()).await;
        let _ = exited_tx.send(true);
        r
    };
    let outputs = futures::future::join(
        pump_out(fd_out, streams.stdout.clone(), Some(exited_rx.clone())),
        pump_out(fd_err, streams.stderr.clone(), Some(exited_rx)),
    );
    let inputs = futures::future::join(pump_in(streams.stdin.take(), fd_in), async move {
        while let Some(s) = sizes.as_mut() {
            let Some((cols, rows)) = s.next().await else { break };
            let h = handle.clone();
            let _ = tokio::task::spawn_blocking(move || h.resize(cols, rows)).await;
        }
    });
    let done = async { futures::future::join(waiter, outputs).await.0 };
    let waited = tokio::select! {
        w = done => w,
        // Inputs ending (stdin EOF) never end the session: this branch never completes.
        w = async { inputs.await; std::future::pending().await } => w,
    };
    let outcome = match waited {
        Ok(Ok(code)) => Outcome::Exited(code),
        Ok(Err(e)) => failure("exec", e),
        Err(e) => failure("exec", e),
    };
    guard.0 = None;
    (streams, outcome)
}

/// Runs an attach session: until the container's output ends (or the client goes).
pub async fn attach(mut streams: Streams, target: AttachTarget) -> (Streams, Outcome) {
    let opts = AttachOptions { stdin: target.stdin, stdout: target.stdout, stderr: target.stderr };
    let dir = target.container_dir.clone();
    let mut session = match tokio::task::spawn_blocking(move || monitor::attach(&dir, &opts)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return (streams, monitor_failure("attach", e)),
        Err(e) => return (streams, failure("attach", e)),
    };
    let (fd_in, fd_out, fd_err) = (session.take_stdin(), session.take_stdout(), session.take_stderr());
    let session = Arc::new(session);
    let mut sizes = streams.resize.take().map(|input| Sizes { input, buf: Vec::new(), ready: Default::default() });
    let s2 = session.clone();
    let resize = async move {
        while let Some(s) = sizes.as_mut() {
            let Some((cols, rows)) = s.next().await else { break };
            let sess = s2.clone();
            let _ = tokio::task::spawn_blocking(move || sess.resize(cols, rows)).await;
        }
    };
    let has_output = fd_out.is_some() || fd_err.is_some();
    let outputs = futures::future::join(
        pump_out(fd_out, streams.stdout.clone(), None),
        pump_out(fd_err, streams.stderr.clone(), None),
    );
    let stdin = pump_in(streams.stdin.take(), fd_in);
    if has_output {
        tokio::select! {
            _ = outputs => {}
            _ = async { futures::future::join(stdin, resize).await; std::future::pending::<()>().await } => {}
        }
    } else {
        tokio::select! {
            _ = stdin => {}
            _ = resize => std::future::pending::<()>().await,
        }
    }
    drop(session);
    (streams, Outcome::Exited(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_as_clients_parse_them() {
        assert_eq!(status_message(&Outcome::Exited(0), true).unwrap(), r#"{"metadata":{},"status":"Success"}"#);
        assert_eq!(status_message(&Outcome::Exited(0), false), None);
        let v: serde_json::Value = serde_json::from_str(&status_message(&Outcome::Exited(3), true).unwrap()).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert!(status_message(&Outcome::Exited(3), false).unwrap().contains("exit code"));
        let v: serde_json::Value =
            serde_json::from_str(&status_message(&Outcome::Failed("no such file".into()), true).unwrap()).unwrap();
        assert_eq!(v["message"], "no such file");
    }

    #[test]
    fn resize_events_are_split() {
        let mut b = br#"{"Width":80,"Height":24}{"Width":100,"Height":40}
{"Width":1"#
            .to_vec();
        assert_eq!(parse_sizes(&mut b), vec![(80, 24), (100, 40)]);
        assert_eq!(b.as_slice(), b"\n{\"Width\":1".as_slice());
        b.extend_from_slice(br#"2,"Height":3}"#);
        assert_eq!(parse_sizes(&mut b), vec![(12, 3)]);
        assert!(b.is_empty());
        let mut b = b"garbage".to_vec();
        assert!(parse_sizes(&mut b).is_empty());
        assert!(b.is_empty());
    }
}
