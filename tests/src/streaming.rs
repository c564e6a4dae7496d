//! Small clients of the streaming server for tests: SPDY/3.1 (skiff's own SPDY implementation
//! in its client role, driven as client-go's remotecommand and portforward do) and WebSocket
//! (tokio-tungstenite, with the Kubernetes channel framing).

use std::time::Duration;

use bytes::Bytes;
use cri_server::streaming::spdy::{self, Connection, Headers, Role, Stream};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// `http://host:port/path` → (host:port, /path).
pub fn split_url(url: &str) -> (String, String) {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or_else(|| panic!("not an http URL: {url}"));
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    (host.to_owned(), format!("/{path}"))
}

/// Sends an HTTP/1.1 request with `headers` and reads the response head (byte by byte, so that
/// nothing after it is consumed). Returns the status code, the head, and the socket.
pub async fn request(url: &str, headers: &[(&str, &str)]) -> (u16, String, TcpStream) {
    let (host, path) = split_url(url);
    let s = TcpStream::connect(&host).await.expect("connect to the streaming server");
    request_on(s, &host, &path, headers).await
}

/// [`request`] on a connection of the caller's (e.g. TLS).
pub async fn request_on<S>(mut s: S, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await.expect("response in time").unwrap();
        if n == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head, s)
}

/// The status code of a SPDY upgrade request to `url`.
pub async fn upgrade_status(url: &str) -> u16 {
    request(
        url,
        &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v4.channel.k8s.io")],
    )
    .await
    .0
}

/// Upgrades to SPDY with `protocols` offered; panics unless the server switches.
pub async fn spdy_connect(url: &str, protocols: &[&str]) -> (Connection, String) {
    let mut h = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
    for p in protocols {
        h.push(("X-Stream-Protocol-Version", p));
    }
    let (code, head, sock) = request(url, &h).await;
    assert_eq!(code, 101, "upgrade refused: {head}");
    let (conn, _incoming) = Connection::new(sock, Role::Client).unwrap();
    (conn, head)
}

fn headers(kv: &[(&str, &str)]) -> Headers {
    kv.iter().map(|(k, v)| (k.to_ascii_lowercase(), vec![v.to_string()])).collect()
}

/// What an exec or attach session produced.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream's content (a metav1.Status JSON with v4+).
    pub status: String,
}

impl Output {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.status).unwrap_or_else(|e| panic!("status {:?}: {e}", self.status))
    }
    /// The exit code the status reports (0 for Success).
    pub fn exit_code(&self) -> i32 {
        let v = self.status_json();
        if v["status"] == "Success" {
            return 0;
        }
        assert_eq!(v["reason"], "NonZeroExitCode", "{v}");
        v["details"]["causes"][0]["message"].as_str().and_then(|m| m.parse().ok()).expect("exit code cause")
    }
}

async fn read_all(s: &mut spdy::StreamReader) -> Vec<u8> {
    let mut v = Vec::new();
    while let Some(b) = s.read().await {
        v.extend_from_slice(&b);
    }
    v
}

/// A remote-command session over SPDY: the streams client-go's v4 protocol opens.
pub struct SpdySession {
    pub conn: Connection,
    pub error: Stream,
    pub stdin: Option<Stream>,
    pub stdout: Option<Stream>,
    pub stderr: Option<Stream>,
    pub resize: Option<Stream>,
}

impl SpdySession {
    pub async fn open(url: &str, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> SpdySession {
        let (conn, head) = spdy_connect(url, &["v4.channel.k8s.io", "v3.channel.k8s.io"]).await;
        assert!(head.to_ascii_lowercase().contains("x-stream-protocol-version: v4.channel.k8s.io"), "{head}");
        let open = |t: &'static str| {
            let conn = conn.clone();
            async move { conn.open_stream(headers(&[("streamType", t)])).await.expect("stream") }
        };
        let error = open("error").await;
        let stdin = if stdin { Some(open("stdin").await) } else { None };
        let stdout = if stdout { Some(open("stdout").await) } else { None };
        let stderr = if stderr && !tty { Some(open("stderr").await) } else { None };
        let resize = if tty { Some(open("resize").await) } else { None };
        SpdySession { conn, error, stdin, stdout, stderr, resize }
    }

    pub async fn resize(&self, cols: u16, rows: u16) {
        let r = self.resize.as_ref().expect("tty session");
        r.writer.write(format!("{{\"Width\":{cols},\"Height\":{rows}}}").as_bytes()).await.unwrap();
    }

    pub async fn send_stdin(&self, data: &[u8], close: bool) {
        let s = self.stdin.as_ref().expect("stdin session");
        s.writer.write(data).await.unwrap();
        if close {
            s.writer.close().await;
        }
    }

    /// Reads everything until the server ends the streams.
    pub async fn finish(self) -> Output {
        let SpdySession { conn, mut error, stdout, stderr, .. } = self;
        let (mut out, mut err) = (stdout, stderr);
        let (stdout, stderr, status) = tokio::time::timeout(Duration::from_secs(60), async {
            futures::join!(
                async {
                    match out.as_mut() {
                        Some(s) => read_all(&mut s.reader).await,
                        None => Vec::new(),
                    }
                },
                async {
                    match err.as_mut() {
                        Some(s) => read_all(&mut s.reader).await,
                        None => Vec::new(),
                    }
                },
                read_all(&mut error.reader),
            )
        })
        .await
        .expect("session ends in time");
        drop(conn);
        Output { stdout, stderr, status: String::from_utf8_lossy(&status).into_owned() }
    }
}

/// A WebSocket channel session.
pub struct WsSession {
    pub ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    pub protocol: String,
}

impl WsSession {
    pub async fn open(url: &str, protocols: &str) -> WsSession {
        let (host, path) = split_url(url);
        let tcp = TcpStream::connect(&host).await.unwrap();
        let mut req = format!("ws://{host}{path}").into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
        let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await.expect("websocket handshake");
        let protocol =
            resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        WsSession { ws, protocol }
    }

    pub async fn send(&mut self, channel: u8, data: &[u8]) {
        let mut v = vec![channel];
        v.extend_from_slice(data);
        self.ws.send(Message::Binary(v.into())).await.unwrap();
    }

    /// Reads messages until the server closes; per channel, what arrived.
    pub async fn collect(&mut self) -> std::collections::BTreeMap<u8, Vec<u8>> {
        let mut out = std::collections::BTreeMap::<u8, Vec<u8>>::new();
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(Ok(m)) = self.ws.next().await {
                match m {
                    Message::Binary(b) if !b.is_empty() => out.entry(b[0]).or_default().extend_from_slice(&b[1..]),
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        })
        .await;
        out
    }

    /// The next data message: (channel, data).
    pub async fn next_data(&mut self) -> Option<(u8, Bytes)> {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.ws.next()).await.ok()?? {
                Ok(Message::Binary(b)) if !b.is_empty() => return Some((b[0], b.slice(1..))),
                Ok(Message::Close(_)) | Err(_) => return None,
                _ => {}
            }
        }
    }
}

/// Opens a port-forward pair (error stream first, as client-go) for `port` on `conn`.
pub async fn forward_pair(conn: &Connection, port: u16, request_id: u32) -> (Stream, Stream) {
    let (p, r) = (port.to_string(), request_id.to_string());
    let error = conn
        .open_stream(headers(&[("streamType", "error"), ("port", &p), ("requestID", &r)]))
        .await
        .expect("error stream");
    let data = conn
        .open_stream(headers(&[("streamType", "data"), ("port", &p), ("requestID", &r)]))
        .await
        .expect("data stream");
    (error, data)
}

/// Sends `request` on a forwarded connection and reads the reply until the pod closes it.
pub async fn forward_roundtrip(conn: &Connection, port: u16, request_id: u32, request: &[u8]) -> (Vec<u8>, String) {
    let (mut error, mut data) = forward_pair(conn, port, request_id).await;
    data.writer.write(request).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(30), read_all(&mut data.reader)).await.expect("reply in time");
    let err =
        tokio::time::timeout(Duration::from_secs(30), read_all(&mut error.reader)).await.expect("error stream ends");
    (reply, String::from_utf8_lossy(&err).into_owned())
}
