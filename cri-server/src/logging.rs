//! Logging: `tracing` to stderr or a log file (reopened on SIGHUP), text or JSON, and a tower layer that opens one span per RPC
//! and logs its outcome and duration.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::codegen::http;
use tracing::Instrument;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber, writing to stderr, or appending to `log_file` when it is
/// not empty (then [`reopen`], on SIGHUP, opens the file again after logrotate moved it).
/// `level` is a tracing filter (validated by the config).
pub fn init(level: &str, format: LogFormat, log_file: &Path) -> io::Result<()> {
    let filter = EnvFilter::try_new(filter_directives(level)).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, ansi) = if log_file.as_os_str().is_empty() {
        (BoxMakeWriter::new(std::io::stderr), std::io::IsTerminal::is_terminal(&std::io::stderr()))
    } else {
        let file = open_log(log_file)?;
        let _ = LOG_FILE.set(LogFile { path: log_file.to_owned(), file: Mutex::new(file) });
        (BoxMakeWriter::new(|| FileWriter), false)
    };
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi).with_target(true);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    Ok(())
}

/// The log file of `log_file`, shared by every writer.
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

static LOG_FILE: OnceLock<LogFile> = OnceLock::new();

fn open_log(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

/// Opens the log file again (SIGHUP; logrotate's `postrotate`). Blocking: call it off the
/// async workers. `Ok(false)` when skiffd logs to stderr.
pub fn reopen() -> io::Result<bool> {
    let Some(log) = LOG_FILE.get() else { return Ok(false) };
    let file = open_log(&log.path)?;
    match log.file.lock() {
        Ok(mut g) => *g = file,
        Err(p) => *p.into_inner() = file,
    }
    Ok(true)
}

/// One event's write to the shared log file.
struct FileWriter;

impl io::Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(log) = LOG_FILE.get() else { return Ok(buf.len()) };
        let mut f = log.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// skiff's own crates; a bare level ("debug") applies to them, while the libraries below
/// (h2, hyper, tower…) stay at info at most, so that a debug log is readable.
const SKIFF_TARGETS: [&str; 6] = ["skiffd", "cri_server", "runtime", "imagesvc", "netplugin", "proto"];

/// The tracing filter for `log_level`: a full filter is used as it is.
pub fn filter_directives(level: &str) -> String {
    let level = level.trim();
    if level.contains(['=', ',']) {
        return level.to_owned();
    }
    let deps = match level.to_ascii_lowercase().as_str() {
        "debug" | "trace" => "info".to_owned(),
        other => other.to_owned(),
    };
    let mut out = deps;
    for t in SKIFF_TARGETS {
        out.push_str(&format!(",{t}={level}"));
    }
    out
}

/// Wraps every gRPC call in a `rpc` span (method name), logs its gRPC status and duration, and
/// records both in [`crate::metrics`] (`skiff_grpc_request*`).
///
/// It also answers DEADLINE_EXCEEDED when the client's `grpc-timeout` passes, as grpc-go
/// servers (containerd, CRI-O) do: tonic's own enforcement of that header, outside every layer,
/// answers CANCELLED, which clients and critest read as the caller giving up. This layer's
/// timer runs out just before tonic's, so the answer is DEADLINE_EXCEEDED; the handler is
/// dropped either way (the mutating RPCs' bodies run in tasks of their own and go on).
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcSpanLayer;

impl<S> tower::Layer<S> for RpcSpanLayer {
    type Service = RpcSpan<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcSpan { inner }
    }
}

/// See [`RpcSpanLayer`].
#[derive(Clone, Debug)]
pub struct RpcSpan<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The client's deadline from `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a unit);
/// `None` when absent or malformed (tonic ignores those too).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let s = headers.get("grpc-timeout")?.to_str().ok()?;
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How much sooner than tonic this layer's deadline answer comes: a twentieth of the timeout,
/// between 10 ms and 250 ms (tonic starts its timer before this layer runs, and a loaded node
/// may run this layer well after it; the answer must still come first). The client may get
/// its DEADLINE_EXCEEDED that much early; mutating work goes on in its task regardless.
fn deadline_margin(timeout: Duration) -> Duration {
    (timeout / 20).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcSpan<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let method = path.rsplit('/').next().unwrap_or(path).to_owned();
        let span = tracing::info_span!("rpc", method = %method);
        let start = Instant::now();
        let deadline = grpc_timeout(req.headers())
            .and_then(|t| tokio::time::Instant::from_std(start).checked_add(t.saturating_sub(deadline_margin(t))));
        let fut = self.inner.call(req).instrument(span.clone());
        Box::pin(async move {
            let result = match deadline {
                Some(at) => match tokio::time::timeout_at(at, fut).await {
                    Ok(r) => r,
                    Err(_) => Ok(tonic::Status::deadline_exceeded(format!("{method}: the client's deadline passed"))
                        .into_http::<R>()),
                },
                None => fut.await,
            };
            let elapsed = start.elapsed();
            let elapsed_ms = (elapsed.as_secs_f64() * 1e6).round() / 1000.0;
            let _enter = span.enter();
            match &result {
                Ok(resp) => {
                    // A handler's error travels as a trailers-only response with grpc-status.
                    let code = resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .unwrap_or(0);
                    // Unknown methods (Unimplemented) share one label: a client cannot grow the set.
                    let label = if code == tonic::Code::Unimplemented as i32 { "unknown" } else { method.as_str() };
                    crate::metrics::METRICS.rpc(label, &format!("{:?}", tonic::Code::from_i32(code)), elapsed);
                    if code == 0 {
                        tracing::debug!(elapsed_ms, "rpc done");
                    } else {
                        let message = resp
                            .headers()
                            .get("grpc-message")
                            .map(|v| percent_decode(v.as_bytes()))
                            .unwrap_or_default();
                        let code = tonic::Code::from_i32(code);
                        tracing::info!(elapsed_ms, ?code, %message, "rpc failed");
                    }
                }
                Err(e) => {
                    crate::metrics::METRICS.rpc("unknown", "Transport", elapsed);
                    tracing::warn!(elapsed_ms, error = %e, "rpc transport error")
                }
            }
            result
        })
    }
}

/// Decodes the percent-encoding gRPC uses for `grpc-message`.
fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn bare_levels_apply_to_skiff() {
        let f = super::filter_directives("debug");
        assert!(f.starts_with("info,") && f.contains("cri_server=debug") && f.contains("imagesvc=debug"), "{f}");
        assert_eq!(super::filter_directives("warn,h2=trace"), "warn,h2=trace");
        assert!(super::filter_directives("error").starts_with("error,"));
    }

    #[test]
    fn percent_decode() {
        assert_eq!(super::percent_decode(b"a%20b%3A%"), "a b:%");
        assert_eq!(super::percent_decode(b"%2"), "%2");
        assert_eq!(super::percent_decode(b"plain"), "plain");
    }
}
