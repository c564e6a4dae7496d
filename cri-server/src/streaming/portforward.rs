//! Port forwarding: SPDY `portforward.k8s.io` (a data and an error stream per forwarded
//! connection, paired by their `requestID` header, any number at once on one connection) and
//! the WebSocket channel protocols (ports from the `port` query parameter, channels 2i and
//! 2i+1 per port, each starting with the port as two little-endian bytes).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::remotecommand::{In, Out};
use super::{netns, spdy, ws, PortForwardTarget};

/// How long the second stream of a pair may take to come.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// Forwards one connection: `input`/`output` are the client's data stream, `error` its error
/// stream (the reason of a failure goes there).
async fn forward(target: PortForwardTarget, port: u16, mut input: In, output: Out, error: Out) {
    match netns::connect(target.netns.clone(), port).await {
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {}: {e}", target.pod_id);
            tracing::debug!(pod_id = %target.pod_id, port, error = %e, "port-forward: cannot connect");
            let _ = error.write(msg.as_bytes()).await;
        }
        Ok(tcp) => {
            let (mut rd, mut wr) = tcp.into_split();
            let up = async move {
                while let Some(b) = input.read().await {
                    if wr.write_all(&b).await.is_err() {
                        return;
                    }
                }
                // The client closed its side: so do we, towards the pod.
                let _ = wr.shutdown().await;
            };
            let out2 = output.clone();
            let down = async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if out2.write(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            };
            // The pod's side ending ends the forwarding; the client's only half-closes it.
            tokio::select! {
                _ = down => {}
                _ = async { up.await; std::future::pending::<()>().await } => {}
            }
        }
    }
    output.close().await;
    error.close().await;
}

struct Pair {
    created: Instant,
    port: u16,
    data: Option<spdy::Stream>,
    error: Option<spdy::Stream>,
}

/// Serves a SPDY port-forward connection until the client closes it.
pub async fn serve_spdy(mut incoming: mpsc::Receiver<spdy::Stream>, target: PortForwardTarget) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            s = incoming.recv() => {
                let Some(s) = s else { break };
                let port = spdy::header(&s.headers, "port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0);
                let kind = spdy::header(&s.headers, "streamtype").unwrap_or_default().to_owned();
                let Some(port) = port.filter(|_| kind == "data" || kind == "error") else {
                    s.writer.reset().await;
                    continue;
                };
                let request_id = match spdy::header(&s.headers, "requestid") {
                    Some(r) if !r.is_empty() => r.to_owned(),
                    // Old clients: the error stream's id, the data stream 2 after it.
                    _ if kind == "error" => s.id.to_string(),
                    _ => s.id.saturating_sub(2).to_string(),
                };
                let pair = pairs.entry(request_id.clone()).or_insert_with(|| Pair {
                    created: Instant::now(), port, data: None, error: None,
                });
                let slot = if kind == "data" { &mut pair.data } else { &mut pair.error };
                if slot.is_some() {
                    s.writer.reset().await;
                    continue;
                }
                *slot = Some(s);
                if pair.data.is_some() && pair.error.is_some() {
                    if let Some(Pair { port, data: Some(d), error: Some(e), .. }) = pairs.remove(&request_id) {
                        let (input, output) = (In::Spdy(d.reader), Out::Spdy(d.writer));
                        tasks.spawn(forward(target.clone(), port, input, output, Out::Spdy(e.writer)));
                    }
                }
            }
            _ = tasks.join_next(), if !tasks.is_empty() => {}
            _ = tick.tick() => {
                let stale: Vec<String> =
                    pairs.iter().filter(|(_, p)| p.created.elapsed() > PAIR_TIMEOUT).map(|(k, _)| k.clone()).collect();
                for k in stale {
                    if let Some(p) = pairs.remove(&k) {
                        if let Some(e) = p.error {
                            let _ = e.writer.write(format!("timed out waiting for the data stream of request {k}").as_bytes()).await;
                            e.writer.close().await;
                        }
                        if let Some(d) = p.data {
                            d.writer.reset().await;
                        }
                    }
                }
            }
        }
    }
    tasks.shutdown().await;
}

/// The ports of a WebSocket port-forward request: `port=80&port=8080` or `port=80,8080`.
pub fn query_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        if k != "port" {
            continue;
        }
        for p in v.split("%2C").flat_map(|s| s.split(',')) {
            let port: u16 = p.parse().map_err(|_| format!("unable to parse {p:?} as a port"))?;
            if port == 0 {
                return Err(format!("port {p:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

/// Serves a WebSocket port-forward connection: one forwarded connection per port.
pub async fn serve_ws(
    conn: &ws::WsConn,
    mut inputs: HashMap<u8, mpsc::Receiver<Bytes>>,
    ports: Vec<u16>,
    target: PortForwardTarget,
) {
    let mut tasks = JoinSet::new();
    for (i, port) in ports.into_iter().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let (data, err) = (conn.writer(data_ch), conn.writer(err_ch));
        let prefix = port.to_le_bytes();
        if data.write(&prefix).await.is_err() || err.write(&prefix).await.is_err() {
            return;
        }
        let Some(input) = inputs.remove(&data_ch) else { continue };
        tasks.spawn(forward(target.clone(), port, In::Ws(input), Out::Ws(data), Out::Ws(err)));
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_from_the_query() {
        assert_eq!(query_ports("port=80").unwrap(), vec![80]);
        assert_eq!(query_ports("port=80&port=8080").unwrap(), vec![80, 8080]);
        assert_eq!(query_ports("x=1&port=80,81").unwrap(), vec![80, 81]);
        assert!(query_ports("").is_err());
        assert!(query_ports("port=0").is_err());
        assert!(query_ports("port=http").is_err());
    }
}
