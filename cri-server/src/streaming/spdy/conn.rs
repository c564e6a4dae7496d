//! A SPDY/3.1 connection over any byte stream: a reader task that decodes frames and routes
//! them to streams, a writer task that owns the socket's write half, and per-stream handles.
//!
//! Flow control. Every stream's inbound data goes through a small bounded queue: when a
//! consumer is slow, the reader task waits, stops reading the socket, and TCP pushes back on
//! the peer. Consumed data is acknowledged with WINDOW_UPDATE (stream and session). Outbound
//! data waits for the peer's windows, but only once the peer has shown it does flow control
//! (sent a WINDOW_UPDATE or an initial window SETTING): the Go client (moby/spdystream, used by
//! kubectl, crictl and the kubelet) never sends either, and would stall after 64 KiB otherwise.
//! Outbound frames go through a bounded queue to the writer task, so a slow reader on the far
//! side blocks the producers (and so the container's pipe) instead of filling memory.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::frame::*;
use super::zlib::HeaderCompressor;
use super::SpdyError;

/// Which side of the connection this is: it decides stream-id and ping-id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// The window every stream and the session start with (SPDY/3: 64 KiB).
const DEFAULT_WINDOW: i64 = 64 * 1024;
/// Largest data frame sent.
const MAX_CHUNK: usize = 32 * 1024;
/// Chunks queued per inbound stream before the reader waits.
const INBOUND_QUEUE: usize = 8;
/// Frames queued for the writer.
const OUTBOUND_QUEUE: usize = 32;
/// New streams waiting for the application; more are refused.
const INCOMING_QUEUE: usize = 64;

struct Slot {
    inbound: Option<mpsc::Sender<Bytes>>,
    send_window: i64,
    local_fin: bool,
    remote_fin: bool,
    reply: Option<oneshot::Sender<()>>,
}

struct Shared {
    streams: HashMap<u32, Slot>,
    next_id: u32,
    last_peer_id: u32,
    flow_control: bool,
    initial_window: i64,
    session_window: i64,
    dead: bool,
    /// Data consumed but not yet acknowledged, per stream (0 = the session).
    credit: HashMap<u32, u32>,
}

struct Inner {
    role: Role,
    shared: Mutex<Shared>,
    window_changed: Notify,
    out: mpsc::Sender<Out>,
    closed: watch::Receiver<bool>,
    abort: watch::Sender<bool>,
}

enum Out {
    Frame(Frame),
    /// Wakes the writer to send pending WINDOW_UPDATEs.
    Credit,
    /// GOAWAY, then shut the write side down.
    Close,
}

/// A handle on the connection (cheap to clone).
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

/// A stream opened by the peer (or by [`Connection::open_stream`]).
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub reader: StreamReader,
    pub writer: StreamWriter,
}

/// Aborts the connection when dropped: a session whose future is dropped takes its
/// connection down with it.
pub struct AbortOnDrop(pub Connection);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The inbound half of a stream.
pub struct StreamReader {
    id: u32,
    rx: mpsc::Receiver<Bytes>,
    inner: Arc<Inner>,
}

/// The outbound half of a stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    inner: Arc<Inner>,
}

fn lock(inner: &Inner) -> std::sync::MutexGuard<'_, Shared> {
    // A poisoned lock only means another task panicked while holding it; the map stays usable.
    inner.shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "SPDY stream closed")
}

impl Connection {
    /// Starts the reader and writer tasks on `io`; streams the peer opens arrive on the receiver.
    pub fn new<T>(io: T, role: Role) -> Result<(Connection, mpsc::Receiver<Stream>), SpdyError>
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let z = HeaderCompressor::new()?;
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (closed_tx, closed_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (abort_tx, abort_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            role,
            shared: Mutex::new(Shared {
                streams: HashMap::new(),
                next_id: if role == Role::Client { 1 } else { 2 },
                last_peer_id: 0,
                flow_control: false,
                initial_window: DEFAULT_WINDOW,
                session_window: DEFAULT_WINDOW,
                dead: false,
                credit: HashMap::new(),
            }),
            window_changed: Notify::new(),
            out: out_tx,
            closed: closed_rx,
            abort: abort_tx,
        });
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
        let (r, w) = tokio::io::split(io);
        tokio::spawn(writer_task(w, out_rx, z, stop_tx, abort_rx.clone(), Arc::downgrade(&inner)));
        tokio::spawn(reader_task(r, inner.clone(), incoming_tx, closed_tx, stop_rx, abort_rx));
        Ok((Connection { inner }, incoming_rx))
    }

    /// Opens a stream (the client side of the protocol) and waits for the peer's SYN_REPLY.
    pub async fn open_stream(&self, headers: Headers) -> Result<Stream, SpdyError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let id = {
            let mut s = lock(&self.inner);
            if s.dead {
                return Err(SpdyError::Closed);
            }
            let id = s.next_id;
            s.next_id += 2;
            let send_window = s.initial_window;
            s.streams.insert(
                id,
                Slot { inbound: Some(tx), send_window, local_fin: false, remote_fin: false, reply: Some(reply_tx) },
            );
            id
        };
        let syn = Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, flags: 0, headers: headers.clone() };
        self.inner.out.send(Out::Frame(syn)).await.map_err(|_| SpdyError::Closed)?;
        reply_rx.await.map_err(|_| SpdyError::Protocol(format!("stream {id} was reset")))?;
        Ok(Stream {
            id,
            headers,
            reader: StreamReader { id, rx, inner: self.inner.clone() },
            writer: StreamWriter { id, inner: self.inner.clone() },
        })
    }

    /// Sends GOAWAY after everything queued so far and closes the connection.
    pub async fn close(&self) {
        let _ = self.inner.out.send(Out::Close).await;
    }

    /// Resolves when the peer has closed or reset the connection (or after [`Connection::close`]).
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.clone();
        let _ = crate::streaming::flag(&mut rx).await;
    }

    /// Drops the connection at once (reader and writer stop; the socket closes).
    pub fn abort(&self) {
        let _ = self.inner.abort.send(true);
    }

    /// Streams currently open (for tests and logs).
    pub fn open_streams(&self) -> usize {
        lock(&self.inner).streams.len()
    }
}

impl StreamReader {
    /// The next chunk the peer sent; `None` at the peer's FIN (or reset, or connection end).
    pub async fn read(&mut self) -> Option<Bytes> {
        let b = self.rx.recv().await?;
        let delta = b.len() as u32;
        if delta > 0 {
            // Credit the peer; the writer task sends the WINDOW_UPDATEs, so that a reader is
            // never held up by a full outbound queue (the peer may not be reading our output).
            {
                let mut s = lock(&self.inner);
                let alive = s.streams.get(&self.id).is_some_and(|s| !s.remote_fin);
                if alive {
                    *s.credit.entry(self.id).or_default() += delta;
                }
                *s.credit.entry(0).or_default() += delta;
            }
            let _ = self.inner.out.try_send(Out::Credit);
        }
        Some(b)
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl StreamWriter {
    /// Sends `data`, waiting for window and for room in the writer's queue.
    pub async fn write(&self, data: &[u8]) -> io::Result<()> {
        let mut off = 0;
        while off < data.len() {
            let n = self.acquire((data.len() - off).min(MAX_CHUNK)).await?;
            let chunk = Bytes::copy_from_slice(&data[off..off + n]);
            let f = Frame::Data { stream_id: self.id, flags: 0, data: chunk };
            self.inner.out.send(Out::Frame(f)).await.map_err(|_| broken())?;
            off += n;
        }
        Ok(())
    }

    /// Takes up to `want` bytes of send window, waiting while there is none.
    async fn acquire(&self, want: usize) -> io::Result<usize> {
        loop {
            let notified = self.inner.window_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = lock(&self.inner);
                let (flow, session) = (s.flow_control, s.session_window);
                if s.dead {
                    return Err(broken());
                }
                let slot = match s.streams.get_mut(&self.id) {
                    Some(slot) if !slot.local_fin => slot,
                    _ => return Err(broken()),
                };
                let avail = if flow { slot.send_window.min(session) } else { want as i64 };
                if avail > 0 {
                    let n = (avail as usize).min(want);
                    slot.send_window -= n as i64;
                    s.session_window -= n as i64;
                    return Ok(n);
                }
            }
            notified.await;
        }
    }

    /// Half-closes the stream (FIN): the peer reads EOF.
    pub async fn close(&self) {
        let send = {
            let mut s = lock(&self.inner);
            match s.streams.get_mut(&self.id) {
                Some(slot) if !slot.local_fin => {
                    slot.local_fin = true;
                    if slot.remote_fin {
                        s.streams.remove(&self.id);
                    }
                    true
                }
                _ => false,
            }
        };
        if send {
            let f = Frame::Data { stream_id: self.id, flags: FLAG_FIN, data: Bytes::new() };
            let _ = self.inner.out.send(Out::Frame(f)).await;
        }
    }

    /// Resets the stream (RST_STREAM CANCEL).
    pub async fn reset(&self) {
        let present = lock(&self.inner).streams.remove(&self.id).is_some();
        if present {
            let f = Frame::RstStream { stream_id: self.id, status: RST_CANCEL };
            let _ = self.inner.out.send(Out::Frame(f)).await;
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

async fn writer_task<W: AsyncWrite>(
    w: W,
    mut rx: mpsc::Receiver<Out>,
    mut z: HeaderCompressor,
    stop: watch::Sender<bool>,
    mut abort: watch::Receiver<bool>,
    inner: std::sync::Weak<Inner>,
) {
    tokio::pin!(w);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut closing = false;
    loop {
        let first = tokio::select! {
            o = rx.recv() => match o { Some(o) => o, None => break },
            _ = crate::streaming::flag(&mut abort) => break,
        };
        let mut next = Some(first);
        // Batch whatever is already queued into one write.
        while let Some(o) = next.take() {
            match o {
                Out::Frame(f) => {
                    if let Err(e) = f.encode(&mut z, &mut buf) {
                        tracing::debug!(error = %e, "SPDY: cannot encode a frame");
                    }
                }
                Out::Credit => {}
                Out::Close => {
                    let _ = Frame::GoAway { last_good_stream_id: 0, status: 0 }.encode(&mut z, &mut buf);
                    closing = true;
                    break;
                }
            }
            if buf.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if let Some(inner) = inner.upgrade().filter(|_| !closing) {
            let credit: Vec<(u32, u32)> = lock(&inner).credit.drain().collect();
            for (stream_id, delta) in credit {
                let _ = Frame::WindowUpdate { stream_id, delta }.encode(&mut z, &mut buf);
            }
        }
        let written = tokio::select! {
            r = async { w.write_all(&buf).await?; w.flush().await } => r.is_ok(),
            _ = crate::streaming::flag(&mut abort) => false,
        };
        if !written {
            break;
        }
        buf.clear();
        if closing {
            break;
        }
    }
    let _ = w.shutdown().await;
    let _ = stop.send(true);
}

async fn reader_task<R: AsyncRead>(
    r: R,
    inner: Arc<Inner>,
    incoming: mpsc::Sender<Stream>,
    closed: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
    mut abort: watch::Receiver<bool>,
) {
    tokio::pin!(r);
    let mut dec = FrameDecoder::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut incoming = Some(incoming);
    'read: loop {
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    let ends = [stop.clone(), abort.clone()];
                    if !handle_frame(&inner, f, &mut incoming, ends).await {
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "SPDY: bad frame; closing the connection");
                    let _ = inner.out.try_send(Out::Frame(Frame::GoAway { last_good_stream_id: 0, status: 1 }));
                    let _ = inner.out.try_send(Out::Close);
                    break 'read;
                }
            }
        }
        tokio::select! {
            n = r.read_buf(&mut buf) => match n {
                Ok(0) | Err(_) => break 'read,
                Ok(_) => {}
            },
            _ = crate::streaming::flag(&mut stop) => break 'read,
            _ = crate::streaming::flag(&mut abort) => break 'read,
        }
    }
    {
        let mut s = lock(&inner);
        s.dead = true;
        for slot in s.streams.values_mut() {
            slot.inbound = None;
            slot.reply = None;
        }
    }
    inner.window_changed.notify_waiters();
    let _ = closed.send(true);
    drop(incoming);
    if *abort.borrow() {
        return;
    }
    // Let the peer read what we sent: drain until it closes, but not forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut sink = [0u8; 4096];
        while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Handles one frame; false ends the connection.
/// `ends` (the writer's stop, the abort) end a wait on a slow consumer.
async fn handle_frame(
    inner: &Arc<Inner>,
    f: Frame,
    incoming: &mut Option<mpsc::Sender<Stream>>,
    ends: [watch::Receiver<bool>; 2],
) -> bool {
    let send = |f: Frame| {
        let out = inner.out.clone();
        async move { out.send(Out::Frame(f)).await.is_ok() }
    };
    match f {
        Frame::SynStream { stream_id, flags, headers, .. } => {
            let peer_parity = if inner.role == Role::Server { 1 } else { 0 };
            let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
            let refused = {
                let mut s = lock(inner);
                if stream_id % 2 != peer_parity || stream_id <= s.last_peer_id {
                    Some(RST_PROTOCOL_ERROR)
                } else {
                    s.last_peer_id = stream_id;
                    let remote_fin = flags & FLAG_FIN != 0;
                    let send_window = s.initial_window;
                    s.streams.insert(
                        stream_id,
                        Slot {
                            inbound: (!remote_fin).then_some(tx),
                            send_window,
                            local_fin: flags & FLAG_UNIDIRECTIONAL != 0,
                            remote_fin,
                            reply: None,
                        },
                    );
                    None
                }
            };
            if let Some(status) = refused {
                return send(Frame::RstStream { stream_id, status }).await;
            }
            if !send(Frame::SynReply { stream_id, flags: 0, headers: Vec::new() }).await {
                return false;
            }
            let stream = Stream {
                id: stream_id,
                headers,
                reader: StreamReader { id: stream_id, rx, inner: inner.clone() },
                writer: StreamWriter { id: stream_id, inner: inner.clone() },
            };
            let delivered = incoming.as_ref().is_some_and(|i| i.try_send(stream).is_ok());
            if !delivered {
                lock(inner).streams.remove(&stream_id);
                return send(Frame::RstStream { stream_id, status: RST_REFUSED_STREAM }).await;
            }
        }
        Frame::SynReply { stream_id, .. } => {
            if let Some(r) = lock(inner).streams.get_mut(&stream_id).and_then(|s| s.reply.take()) {
                let _ = r.send(());
            }
        }
        Frame::Data { stream_id, flags, data } => {
            let tx = {
                let mut s = lock(inner);
                let Some(slot) = s.streams.get_mut(&stream_id) else { return true };
                let tx = slot.inbound.clone();
                if flags & FLAG_FIN != 0 {
                    slot.remote_fin = true;
                    slot.inbound = None;
                    if slot.local_fin {
                        s.streams.remove(&stream_id);
                    }
                }
                tx
            };
            if let Some(tx) = tx {
                if !data.is_empty() {
                    // Waits while the consumer is slow: backpressure onto the socket. A
                    // writer that failed (the peer is gone) or an abort ends the wait.
                    let [mut stop, mut abort] = ends;
                    tokio::select! {
                        _ = tx.send(data) => {}
                        _ = crate::streaming::flag(&mut stop) => return false,
                        _ = crate::streaming::flag(&mut abort) => return false,
                    }
                }
            }
        }
        Frame::RstStream { stream_id, .. } => {
            lock(inner).streams.remove(&stream_id);
            inner.window_changed.notify_waiters();
        }
        Frame::Settings { entries, .. } => {
            let mut s = lock(inner);
            for (_, id, value) in entries {
                if id == SETTINGS_INITIAL_WINDOW_SIZE {
                    let delta = value as i64 - s.initial_window;
                    s.initial_window = value as i64;
                    s.flow_control = true;
                    for slot in s.streams.values_mut() {
                        slot.send_window += delta;
                    }
                }
            }
            drop(s);
            inner.window_changed.notify_waiters();
        }
        Frame::Ping { id } => {
            // Pings the peer starts carry the peer's parity: answer those, ignore our echoes.
            let peer_parity = if inner.role == Role::Server { 1 } else { 0 };
            if id % 2 == peer_parity {
                return send(Frame::Ping { id }).await;
            }
        }
        Frame::GoAway { .. } => return false,
        Frame::WindowUpdate { stream_id, delta } => {
            let mut s = lock(inner);
            s.flow_control = true;
            if stream_id == 0 {
                s.session_window += delta as i64;
            } else if let Some(slot) = s.streams.get_mut(&stream_id) {
                slot.send_window += delta as i64;
            }
            drop(s);
            inner.window_changed.notify_waiters();
        }
        Frame::Headers { .. } | Frame::Unknown { .. } => {}
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: &str, v: &str) -> Headers {
        vec![(k.into(), vec![v.into()])]
    }

    #[tokio::test]
    async fn streams_carry_data_both_ways_with_fin() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (server, mut incoming) = Connection::new(a, Role::Server).unwrap();
        let (client, _none) = Connection::new(b, Role::Client).unwrap();
        let opened =
            tokio::spawn(async move { client.open_stream(h("streamtype", "stdin")).await.map(|s| (s, client)) });
        let mut s = incoming.recv().await.unwrap();
        assert_eq!(header(&s.headers, "streamType"), Some("stdin"));
        let (mut c, client) = opened.await.unwrap().unwrap();
        assert_eq!(c.id, 1);
        c.writer.write(b"hello").await.unwrap();
        c.writer.close().await;
        assert_eq!(s.reader.read().await.as_deref(), Some(&b"hello"[..]));
        assert_eq!(s.reader.read().await, None);
        let big = vec![7u8; 200_000];
        s.writer.write(&big).await.unwrap();
        s.writer.close().await;
        let mut got = Vec::new();
        while let Some(b) = c.reader.read().await {
            got.extend_from_slice(&b);
        }
        assert_eq!(got, big);
        server.close().await;
        client.closed().await;
    }

    #[tokio::test]
    async fn a_flow_controlled_peer_is_honoured() {
        // The peer announces flow control with a tiny initial window: sends stall until it
        // grants more.
        let (a, b) = tokio::io::duplex(1 << 16);
        let (server, mut incoming) = Connection::new(a, Role::Server).unwrap();
        let (client, _none) = Connection::new(b, Role::Client).unwrap();
        client
            .inner
            .out
            .send(Out::Frame(Frame::Settings { flags: 0, entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 10)] }))
            .await
            .unwrap();
        let c2 = client.clone();
        let opened = tokio::spawn(async move { c2.open_stream(h("streamtype", "stdout")).await });
        let s = incoming.recv().await.unwrap();
        let mut c = opened.await.unwrap().unwrap();
        let w = s.writer.clone();
        let sent = tokio::spawn(async move { w.write(&[1u8; 25]).await });
        // Only the first 10 bytes can go.
        assert_eq!(c.reader.rx.recv().await.unwrap().len(), 10);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!sent.is_finished());
        // Each read grants what it consumed: 10 more bytes at a time.
        client.inner.out.send(Out::Frame(Frame::WindowUpdate { stream_id: 1, delta: 20 })).await.unwrap();
        let mut n = 0;
        while n < 15 {
            n += c.reader.rx.recv().await.unwrap().len();
        }
        sent.await.unwrap().unwrap();
        drop(server);
    }

    #[tokio::test]
    async fn pings_are_answered_and_bad_stream_ids_reset() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (_server, _incoming) = Connection::new(a, Role::Server).unwrap();
        let (mut raw_r, mut raw_w) = tokio::io::split(b);
        let mut z = HeaderCompressor::new().unwrap();
        let mut out = BytesMut::new();
        Frame::Ping { id: 3 }.encode(&mut z, &mut out).unwrap();
        // An even stream id from a client is a protocol error.
        Frame::SynStream { stream_id: 2, associated_to: 0, priority: 0, flags: 0, headers: vec![] }
            .encode(&mut z, &mut out)
            .unwrap();
        raw_w.write_all(&out).await.unwrap();
        let mut dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        while frames.len() < 2 {
            raw_r.read_buf(&mut buf).await.unwrap();
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames[0], Frame::Ping { id: 3 });
        assert_eq!(frames[1], Frame::RstStream { stream_id: 2, status: RST_PROTOCOL_ERROR });
    }

    #[tokio::test]
    async fn consumed_data_is_acknowledged() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (_server, mut incoming) = Connection::new(a, Role::Server).unwrap();
        let (mut raw_r, mut raw_w) = tokio::io::split(b);
        let mut z = HeaderCompressor::new().unwrap();
        let mut out = BytesMut::new();
        let headers = h("streamtype", "stdin");
        Frame::SynStream { stream_id: 1, associated_to: 0, priority: 0, flags: 0, headers }
            .encode(&mut z, &mut out)
            .unwrap();
        Frame::Data { stream_id: 1, flags: 0, data: Bytes::from_static(b"12345") }.encode(&mut z, &mut out).unwrap();
        raw_w.write_all(&out).await.unwrap();
        let mut s = incoming.recv().await.unwrap();
        assert_eq!(s.reader.read().await.as_deref(), Some(&b"12345"[..]));
        let mut dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        while frames.len() < 3 {
            raw_r.read_buf(&mut buf).await.unwrap();
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames[0], Frame::SynReply { stream_id: 1, flags: 0, headers: vec![] });
        assert!(frames.contains(&Frame::WindowUpdate { stream_id: 1, delta: 5 }), "{frames:?}");
        assert!(frames.contains(&Frame::WindowUpdate { stream_id: 0, delta: 5 }), "{frames:?}");
    }
}
