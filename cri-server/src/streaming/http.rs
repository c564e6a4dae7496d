//! The HTTP side of the streaming server: accept, route by token, negotiate the protocol,
//! answer `101 Switching Protocols`, then run the session on the upgraded connection in the
//! connection's own task (so that shutdown and the idle timeout end it, and with it the
//! exec'd process).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::WebSocketStream;

use super::remotecommand::{self, In, Out, Outcome, Streams};
use super::{portforward, spdy, ws, PortForwardTarget, StreamRequest, Streaming};

/// Exec/attach over SPDY, best first (v5 is v4 on SPDY, as the kubelet treats it).
pub const COMMAND_SPDY_PROTOCOLS: &[&str] =
    &["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];
/// Exec/attach over WebSocket ("" = a client that names none).
pub const COMMAND_WS_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "",
];
pub const PORTFORWARD_SPDY_PROTOCOLS: &[&str] = &["portforward.k8s.io"];
pub const PORTFORWARD_WS_PROTOCOLS: &[&str] =
    &[SPDY_TUNNEL_PROTOCOL, "v4.channel.k8s.io", "v4.base64.channel.k8s.io", ""];
/// SPDY port-forward tunnelled in WebSocket binary messages (client-go's WebSocket
/// port-forward, `crictl port-forward -r websocket`, as the API server accepts it).
pub const SPDY_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// How long a client may take to open all of a session's SPDY streams.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the last frames may take to leave when a session ends.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The running server; [`Server::shutdown`] stops it and every session.
pub struct Server {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    pub addr: SocketAddr,
}

impl Server {
    /// Binds `address` (`host:port`; port 0 picks a free one) and serves, over TLS when
    /// `tls` names a PEM certificate chain and key.
    pub async fn start(streaming: Arc<Streaming>, address: &str, tls: Option<(&Path, &Path)>) -> io::Result<Server> {
        let acceptor = match tls {
            Some((cert, key)) => {
                let (cert, key) = (cert.to_owned(), key.to_owned());
                let load = tokio::task::spawn_blocking(move || tls_acceptor(&cert, &key));
                Some(load.await.map_err(io::Error::other)??)
            }
            None => None,
        };
        let listener = TcpListener::bind(address).await?;
        let addr = listener.local_addr()?;
        let _ = streaming.addr.set((addr, acceptor.is_some()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, streaming, acceptor, stop_rx));
        Ok(Server { stop, task, addr })
    }

    /// Stops accepting and ends every session (exec'd processes are killed).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> io::Result<TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &Path, e: &dyn std::fmt::Display| io::Error::other(format!("{}: {e}", what.display()));
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    if certs.is_empty() {
        return Err(bad(cert, &"no certificate in the file"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| bad(cert, &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: TcpListener,
    streaming: Arc<Streaming>,
    acceptor: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let st = streaming.clone();
                    match acceptor.clone() {
                        None => {
                            conns.spawn(serve_conn(tcp, st));
                        }
                        Some(a) => {
                            conns.spawn(async move {
                                match tokio::time::timeout(Duration::from_secs(10), a.accept(tcp)).await {
                                    Ok(Ok(tls)) => serve_conn(tls, st).await,
                                    Ok(Err(e)) => tracing::debug!(error = %e, "streaming: TLS handshake failed"),
                                    Err(_) => tracing::debug!("streaming: TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "streaming: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = conns.join_next(), if !conns.is_empty() => {}
            _ = super::flag(&mut stop) => break,
        }
    }
    conns.shutdown().await;
}

/// Last time bytes moved on a connection.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self { start: Instant::now(), last_ms: AtomicU64::new(0) })
    }
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Resolves once the connection has been idle for `timeout`.
async fn idle(activity: Arc<Activity>, timeout: Duration) {
    loop {
        let idle = activity.idle_for();
        if idle >= timeout {
            return;
        }
        tokio::time::sleep(timeout - idle).await;
    }
}

/// A socket that records activity.
struct IdleIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What to run once the connection is upgraded.
enum Session {
    SpdyCommand { req: StreamRequest, protocol: &'static str },
    SpdyPortForward { target: PortForwardTarget },
    WsCommand { req: StreamRequest, protocol: &'static str },
    WsPortForward { target: PortForwardTarget, ports: Vec<u16>, protocol: &'static str },
    TunnelPortForward { target: PortForwardTarget },
}

struct Upgrade {
    on: OnUpgrade,
    session: Session,
}

async fn serve_conn<T>(tcp: T, streaming: Arc<Streaming>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    activity.touch();
    let io = TokioIo::new(IdleIo { inner: tcp, activity: activity.clone() });
    let (up_tx, mut up_rx) = mpsc::channel::<Upgrade>(1);
    let st = streaming.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let (st, up_tx) = (st.clone(), up_tx.clone());
        async move { Ok::<_, Infallible>(route(req, &st, &up_tx)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "streaming: HTTP connection failed");
            }
        }
        _ = idle(activity.clone(), streaming.idle_timeout) => return,
    }
    let Ok(up) = up_rx.try_recv() else { return };
    tokio::select! {
        _ = run_session(up, &streaming) => {}
        _ = idle(activity, streaming.idle_timeout) => {
            tracing::info!(idle_timeout = ?streaming.idle_timeout, "streaming: session idle too long; closed");
        }
    }
}

fn respond(code: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = code;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Every value of a header, comma lists split.
fn header_values(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

fn has_token(h: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// The first protocol the client offers that the server supports; a client that offers none
/// gets "" when the server accepts that.
fn negotiate(client: &[String], server: &[&'static str]) -> Option<&'static str> {
    if client.is_empty() {
        return server.iter().find(|p| p.is_empty()).copied().or(Some(""));
    }
    client.iter().find_map(|c| server.iter().find(|s| **s == c.as_str()).copied())
}

fn route(mut req: Request<Incoming>, st: &Streaming, up_tx: &mpsc::Sender<Upgrade>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST");
    }
    let path = req.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if !["exec", "attach", "portforward"].contains(&kind) || token.is_empty() || token.contains('/') {
        return respond(StatusCode::NOT_FOUND, "not found");
    }
    let Some(cached) = st.cache.consume(token) else {
        return respond(StatusCode::NOT_FOUND, "unknown or expired token");
    };
    if cached.path() != kind {
        return respond(StatusCode::NOT_FOUND, "unknown or expired token");
    }
    let h = req.headers();
    let websocket = has_token(h, UPGRADE, "websocket") && has_token(h, CONNECTION, "upgrade");
    let (session, mut resp) = if websocket {
        let Some(key) = h.get("sec-websocket-key").map(|k| derive_accept_key(k.as_bytes())) else {
            return respond(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        };
        if h.get("sec-websocket-version").and_then(|v| v.to_str().ok()) != Some("13") {
            return respond(StatusCode::BAD_REQUEST, "unsupported Sec-WebSocket-Version (13 is)");
        }
        let offered = header_values(h, "sec-websocket-protocol");
        let server = match cached {
            StreamRequest::PortForward(_) => PORTFORWARD_WS_PROTOCOLS,
            _ => COMMAND_WS_PROTOCOLS,
        };
        let Some(protocol) = negotiate(&offered, server) else {
            return respond(
                StatusCode::FORBIDDEN,
                &format!("requested protocol(s) are not supported: {offered:?}; supports {server:?}"),
            );
        };
        let session = match cached {
            StreamRequest::PortForward(target) if protocol == SPDY_TUNNEL_PROTOCOL => {
                Session::TunnelPortForward { target }
            }
            StreamRequest::PortForward(target) => {
                let ports = match portforward::query_ports(req.uri().query().unwrap_or_default()) {
                    Ok(p) if p.len() <= 127 => p,
                    Ok(_) => return respond(StatusCode::BAD_REQUEST, "at most 127 ports per connection"),
                    Err(e) => return respond(StatusCode::BAD_REQUEST, &e),
                };
                Session::WsPortForward { target, ports, protocol }
            }
            req => Session::WsCommand { req, protocol },
        };
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let rh = r.headers_mut();
        rh.insert(UPGRADE, HeaderValue::from_static("websocket"));
        rh.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&key) {
            rh.insert("sec-websocket-accept", v);
        }
        if !protocol.is_empty() {
            rh.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
        }
        (session, r)
    } else {
        if !has_token(h, CONNECTION, "upgrade") || !has_token(h, UPGRADE, spdy::UPGRADE) {
            return respond(StatusCode::BAD_REQUEST, "unable to upgrade: missing upgrade headers in request");
        }
        let offered = header_values(h, "x-stream-protocol-version");
        let server = match cached {
            StreamRequest::PortForward(_) => PORTFORWARD_SPDY_PROTOCOLS,
            _ => COMMAND_SPDY_PROTOCOLS,
        };
        let Some(protocol) = negotiate(&offered, server) else {
            let mut r = respond(
                StatusCode::FORBIDDEN,
                &format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {server:?}"
                ),
            );
            for p in server {
                r.headers_mut().append("x-accepted-stream-protocol-versions", HeaderValue::from_static(p));
            }
            return r;
        };
        let session = match cached {
            StreamRequest::PortForward(target) => Session::SpdyPortForward { target },
            req => Session::SpdyCommand { req, protocol },
        };
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let rh = r.headers_mut();
        rh.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        rh.insert(UPGRADE, HeaderValue::from_static(spdy::UPGRADE));
        if !protocol.is_empty() {
            rh.insert("x-stream-protocol-version", HeaderValue::from_static(protocol));
        }
        (session, r)
    };
    let on = hyper::upgrade::on(&mut req);
    if up_tx.try_send(Upgrade { on, session }).is_err() {
        resp = respond(StatusCode::CONFLICT, "one upgrade per connection");
    }
    resp
}

/// The protocol version number of a remote-command protocol name.
fn command_version(protocol: &str) -> u8 {
    match protocol.split('.').next() {
        Some("v5") => 5,
        Some("v4") => 4,
        Some("v3") => 3,
        Some("v2") => 2,
        _ => 1,
    }
}

fn flags(req: &StreamRequest) -> (bool, bool, bool, bool) {
    match req {
        StreamRequest::Exec(e) => (e.tty, e.stdin, e.stdout, e.stderr),
        StreamRequest::Attach(a) => (a.tty, a.stdin, a.stdout, a.stderr),
        StreamRequest::PortForward(_) => (false, false, false, false),
    }
}

async fn run_command(req: StreamRequest, streams: Streams, st: &Streaming) -> (Streams, Outcome) {
    match req {
        StreamRequest::Exec(t) => {
            tracing::debug!(container_id = %t.container_id, "streaming: exec session");
            remotecommand::exec(streams, t, st.monitor_path.clone()).await
        }
        StreamRequest::Attach(t) => {
            tracing::debug!(container_id = %t.container_id, "streaming: attach session");
            remotecommand::attach(streams, t).await
        }
        StreamRequest::PortForward(_) => (streams, Outcome::Failed("not a command".into())),
    }
}

/// Writes the status and ends the streams.
async fn finish(streams: &Streams, outcome: &Outcome) {
    if let Outcome::Failed(m) = outcome {
        tracing::debug!(error = %m, "streaming: session failed");
    }
    for o in [&streams.stdout, &streams.stderr].into_iter().flatten() {
        o.close().await;
    }
    if let Some(e) = &streams.error {
        if let Some(msg) = remotecommand::status_message(outcome, streams.json_status) {
            let _ = e.write(msg.as_bytes()).await;
        }
        e.close().await;
    }
}

async fn run_session(up: Upgrade, st: &Streaming) {
    let upgraded = match up.on.await {
        Ok(u) => TokioIo::new(u),
        Err(e) => {
            tracing::debug!(error = %e, "streaming: upgrade failed");
            return;
        }
    };
    match up.session {
        Session::SpdyCommand { req, protocol } => {
            let Ok((conn, mut incoming)) = spdy::Connection::new(upgraded, spdy::Role::Server) else { return };
            let _abort = spdy::conn::AbortOnDrop(conn.clone());
            let version = command_version(protocol);
            let (tty, stdin, stdout, stderr) = flags(&req);
            let mut streams = Streams { json_status: version >= 4, ..Default::default() };
            let need = |s: &Streams| {
                s.error.is_none()
                    || (stdin && s.stdin.is_none())
                    || (stdout && s.stdout.is_none())
                    || (stderr && !tty && s.stderr.is_none())
                    || (tty && version >= 3 && s.resize.is_none())
            };
            let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
            while need(&streams) {
                let s = match tokio::time::timeout_at(deadline, incoming.recv()).await {
                    Ok(Some(s)) => s,
                    Ok(None) => return,
                    Err(_) => {
                        tracing::debug!("streaming: timed out waiting for the client to create streams");
                        conn.close().await;
                        return;
                    }
                };
                let kind = spdy::header(&s.headers, "streamtype").unwrap_or_default().to_owned();
                match kind.as_str() {
                    "error" => streams.error = Some(Out::Spdy(s.writer)),
                    "stdin" => streams.stdin = Some(In::Spdy(s.reader)),
                    "stdout" => streams.stdout = Some(Out::Spdy(s.writer)),
                    "stderr" if !tty => streams.stderr = Some(Out::Spdy(s.writer)),
                    "resize" => streams.resize = Some(In::Spdy(s.reader)),
                    // stderr with a tty (merged into stdout) or a type we do not know.
                    _ => tracing::debug!(stream_type = %kind, "streaming: extra stream ignored"),
                }
            }
            // Further streams are refused while the session runs.
            drop(incoming);
            let outcome = tokio::select! {
                r = run_command(req, streams, st) => r,
                _ = conn.closed() => {
                    tracing::debug!("streaming: the client went away; session ended");
                    return;
                }
            };
            finish(&outcome.0, &outcome.1).await;
            conn.close().await;
            let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
        }
        Session::TunnelPortForward { target } => {
            let ws = WebSocketStream::from_raw_socket(
                upgraded,
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            let (bytes, pump) = ws::tunnel(ws);
            let Ok((conn, incoming)) = spdy::Connection::new(bytes, spdy::Role::Server) else { return };
            let _abort = spdy::conn::AbortOnDrop(conn.clone());
            tracing::debug!(pod_id = %target.pod_id, "streaming: port-forward session (SPDY in WebSocket)");
            tokio::select! {
                _ = portforward::serve_spdy(incoming, target) => {}
                _ = pump => {}
            }
        }
        Session::SpdyPortForward { target } => {
            let Ok((conn, incoming)) = spdy::Connection::new(upgraded, spdy::Role::Server) else { return };
            let _abort = spdy::conn::AbortOnDrop(conn.clone());
            tracing::debug!(pod_id = %target.pod_id, "streaming: port-forward session");
            portforward::serve_spdy(incoming, target).await;
        }
        Session::WsCommand { req, protocol } => {
            let ws = WebSocketStream::from_raw_socket(
                upgraded,
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            let codec = if protocol.contains("base64") { ws::Codec::Base64 } else { ws::Codec::Binary };
            let version = command_version(protocol);
            let (tty, stdin, stdout, stderr) = flags(&req);
            let (conn, mut inputs) = ws::WsConn::new(ws, codec, &[0, 4], version >= 5);
            let mut streams = Streams {
                stdin: stdin.then(|| inputs.remove(&0).map(In::Ws)).flatten(),
                stdout: stdout.then(|| Out::Ws(conn.writer(1))),
                stderr: (stderr && !tty).then(|| Out::Ws(conn.writer(2))),
                error: Some(Out::Ws(conn.writer(3))),
                resize: tty.then(|| inputs.remove(&4).map(In::Ws)).flatten(),
                json_status: version >= 4,
            };
            // An empty message on the lowest writable channel tells the client it is connected.
            let first = streams.stdout.as_ref().or(streams.stderr.as_ref()).or(streams.error.as_ref());
            if let Some(o) = first {
                let _ = o.write(&[]).await;
            }
            if !stdin {
                streams.stdin = None;
            }
            let outcome = tokio::select! {
                r = run_command(req, streams, st) => r,
                _ = conn.closed() => {
                    tracing::debug!("streaming: the client went away; session ended");
                    return;
                }
            };
            finish(&outcome.0, &outcome.1).await;
            conn.close().await;
            let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
            conn.abort();
        }
        Session::WsPortForward { target, ports, protocol } => {
            let ws = WebSocketStream::from_raw_socket(
                upgraded,
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            let codec = if protocol.contains("base64") { ws::Codec::Base64 } else { ws::Codec::Binary };
            let readable: Vec<u8> = (0..ports.len()).map(|i| (2 * i) as u8).collect();
            let (conn, inputs) = ws::WsConn::new(ws, codec, &readable, false);
            tracing::debug!(pod_id = %target.pod_id, ?ports, "streaming: port-forward session (websocket)");
            tokio::select! {
                _ = portforward::serve_ws(&conn, inputs, ports, target) => {}
                _ = conn.closed() => {
                    tracing::debug!("streaming: the client went away; session ended");
                    return;
                }
            }
            conn.close().await;
            let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
            conn.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_the_clients_first_supported() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            negotiate(&c(&["v5.channel.k8s.io", "v4.channel.k8s.io"]), COMMAND_SPDY_PROTOCOLS),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(negotiate(&c(&["v9", "v3.channel.k8s.io"]), COMMAND_SPDY_PROTOCOLS), Some("v3.channel.k8s.io"));
        assert_eq!(negotiate(&c(&["v9"]), COMMAND_SPDY_PROTOCOLS), None);
        assert_eq!(negotiate(&[], COMMAND_SPDY_PROTOCOLS), Some(""));
        assert_eq!(negotiate(&[], COMMAND_WS_PROTOCOLS), Some(""));
        assert_eq!(negotiate(&c(&["portforward.k8s.io"]), PORTFORWARD_SPDY_PROTOCOLS), Some("portforward.k8s.io"));
        assert_eq!(command_version("v4.base64.channel.k8s.io"), 4);
        assert_eq!(command_version("channel.k8s.io"), 1);
        assert_eq!(command_version(""), 1);
    }

    #[test]
    fn tls_files_are_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = tls_acceptor(&missing, &missing).err().unwrap().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = tls_acceptor(&empty, &empty).err().unwrap().to_string();
        assert!(e.contains("no certificate"), "{e}");
    }
}
