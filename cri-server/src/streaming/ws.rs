//! The Kubernetes channel protocols over WebSocket (RFC 6455, tungstenite): every message is
//! one channel-id byte and the data (`channel.k8s.io`, `v4.`, `v5.`), or an ASCII digit and the
//! data in base64 (`base64.channel.k8s.io`, `v4.base64.`). `v5.channel.k8s.io` adds the close
//! signal: the message `[255, channel]` half-closes that channel (stdin EOF).

use std::collections::HashMap;
use std::io;

use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The channel id of v5's close signal.
pub const CLOSE_SIGNAL: u8 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Binary,
    Base64,
}

/// The message for `data` on `channel`.
pub fn encode(codec: Codec, channel: u8, data: &[u8]) -> Message {
    match codec {
        Codec::Binary => {
            let mut v = Vec::with_capacity(data.len() + 1);
            v.push(channel);
            v.extend_from_slice(data);
            Message::Binary(v.into())
        }
        Codec::Base64 => {
            let mut s = String::with_capacity(data.len() * 4 / 3 + 4);
            s.push(char::from(b'0'.wrapping_add(channel)));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::Text(s.into())
        }
    }
}

/// The channel and data of a data message; `None` for control and empty messages.
pub fn decode(codec: Codec, msg: &Message) -> Result<Option<(u8, Vec<u8>)>, String> {
    let raw: &[u8] = match msg {
        Message::Binary(b) => b,
        Message::Text(t) => t.as_bytes(),
        _ => return Ok(None),
    };
    let Some((&first, rest)) = raw.split_first() else { return Ok(None) };
    match codec {
        Codec::Binary => Ok(Some((first, rest.to_vec()))),
        Codec::Base64 => {
            let data = base64::engine::general_purpose::STANDARD.decode(rest).map_err(|e| e.to_string())?;
            Ok(Some((first.wrapping_sub(b'0'), data)))
        }
    }
}

enum Out {
    Data(u8, Bytes),
    Close,
}

/// The server end of a channel connection.
#[derive(Clone)]
pub struct WsConn {
    out: mpsc::Sender<Out>,
    closed: watch::Receiver<bool>,
    abort: std::sync::Arc<watch::Sender<bool>>,
}

/// Writes one channel.
#[derive(Clone)]
pub struct ChannelWriter {
    channel: u8,
    out: mpsc::Sender<Out>,
}

impl ChannelWriter {
    pub async fn write(&self, data: &[u8]) -> io::Result<()> {
        self.out
            .send(Out::Data(self.channel, Bytes::copy_from_slice(data)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed"))
    }
}

impl WsConn {
    /// Starts the reader and writer tasks. `readable` are the channels the client may write to:
    /// their data arrives on the returned receivers (bounded: a slow consumer stops the reads).
    pub fn new<T>(
        ws: WebSocketStream<T>,
        codec: Codec,
        readable: &[u8],
        close_signal: bool,
    ) -> (WsConn, HashMap<u8, mpsc::Receiver<Bytes>>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (out_tx, mut out_rx) = mpsc::channel::<Out>(32);
        let (closed_tx, closed_rx) = watch::channel(false);
        let (abort_tx, abort_rx) = watch::channel(false);
        let (mut abort_w, mut abort_r) = (abort_rx.clone(), abort_rx);
        let mut senders = HashMap::new();
        let mut receivers = HashMap::new();
        for &c in readable {
            let (tx, rx) = mpsc::channel::<Bytes>(8);
            senders.insert(c, tx);
            receivers.insert(c, rx);
        }
        let (mut sink, mut stream) = ws.split();
        tokio::spawn(async move {
            loop {
                let o = tokio::select! {
                    o = out_rx.recv() => match o { Some(o) => o, None => break },
                    _ = crate::streaming::flag(&mut abort_w) => return,
                };
                let r = match o {
                    Out::Data(c, b) => sink.send(encode(codec, c, &b)).await,
                    Out::Close => {
                        let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                        let _ = sink.send(Message::Close(Some(frame))).await;
                        break;
                    }
                };
                if r.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let closed_tx2 = closed_tx;
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = stream.next() => match m { Some(Ok(m)) => m, _ => break },
                    _ = crate::streaming::flag(&mut abort_r) => break,
                };
                if matches!(msg, Message::Close(_)) {
                    break;
                }
                let (channel, data) = match decode(codec, &msg) {
                    Ok(Some(cd)) => cd,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "websocket: bad base64 message");
                        continue;
                    }
                };
                if close_signal && channel == CLOSE_SIGNAL {
                    if let Some(c) = data.first() {
                        senders.remove(c);
                    }
                    continue;
                }
                let tx = senders.get(&channel).cloned();
                if let Some(tx) = tx {
                    if !data.is_empty() && tx.send(Bytes::from(data)).await.is_err() {
                        senders.remove(&channel);
                    }
                }
            }
            drop(senders);
            let _ = closed_tx2.send(true);
        });
        (WsConn { out: out_tx, closed: closed_rx, abort: std::sync::Arc::new(abort_tx) }, receivers)
    }

    pub fn writer(&self, channel: u8) -> ChannelWriter {
        ChannelWriter { channel, out: self.out.clone() }
    }

    /// Sends a normal close after everything queued.
    pub async fn close(&self) {
        let _ = self.out.send(Out::Close).await;
    }

    /// Drops the connection at once.
    pub fn abort(&self) {
        let _ = self.abort.send(true);
    }

    /// Resolves when the client has gone.
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        let _ = crate::streaming::flag(&mut rx).await;
    }
}

/// A byte stream carried in binary messages, as `SPDY/3.1+portforward.k8s.io` tunnels SPDY:
/// returns the byte end for the SPDY connection and the future that pumps between the two
/// (it ends when either side does). The duplex buffer bounds what is in flight.
pub fn tunnel<T>(ws: WebSocketStream<T>) -> (tokio::io::DuplexStream, impl std::future::Future<Output = ()> + Send)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let pump = async move {
        let (mut sink, mut stream) = ws.split();
        let (mut rd, mut wr) = tokio::io::split(theirs);
        let inbound = async {
            while let Some(Ok(m)) = stream.next().await {
                match m {
                    Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = wr.shutdown().await;
        };
        let outbound = async {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = sink.send(Message::Close(None)).await;
        };
        tokio::select! {
            _ = inbound => {}
            _ = outbound => {}
        }
    };
    (ours, pump)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_frames_carry_one_channel_byte() {
        let m = encode(Codec::Binary, 1, b"foo\n");
        assert_eq!(m, Message::Binary(vec![1, b'f', b'o', b'o', b'\n'].into()));
        assert_eq!(decode(Codec::Binary, &m).unwrap(), Some((1, b"foo\n".to_vec())));
        assert_eq!(decode(Codec::Binary, &Message::Binary(vec![255, 0].into())).unwrap(), Some((255, vec![0])));
        assert_eq!(decode(Codec::Binary, &Message::Binary(Vec::new().into())).unwrap(), None);
        assert_eq!(encode(Codec::Binary, 3, b""), Message::Binary(vec![3].into()));
    }

    #[test]
    fn base64_frames_carry_a_digit() {
        // The examples of the Kubernetes wsstream documentation.
        let m = encode(Codec::Base64, 1, b"\n");
        assert_eq!(m, Message::Text("1Cg==".into()));
        let m = Message::Text("0Zm9vCg==".into());
        assert_eq!(decode(Codec::Base64, &m).unwrap(), Some((0, b"foo\n".to_vec())));
        assert!(decode(Codec::Base64, &Message::Text("0!!".into())).is_err());
    }
}
