//! The `/metrics` HTTP endpoint (HTTP/1.1, plain text, no authentication: keep it on loopback
//! or a trusted network).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::{render, Gauges, METRICS};
use crate::context::Context;
use crate::store::records::{ContainerState, PodState};

/// The running endpoint; dropping it stops serving.
pub struct MetricsServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `address` and serves `/metrics` until dropped.
pub async fn start(address: &str, ctx: Arc<Context>) -> std::io::Result<MetricsServer> {
    let listener = TcpListener::bind(address).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(respond(req, &ctx).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tcp), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "metrics: HTTP connection failed");
                }
            });
        }
    });
    Ok(MetricsServer { addr, task })
}

async fn respond(req: Request<Incoming>, ctx: &Context) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "only /metrics is served here\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
    }
    let mut g = Gauges::default();
    for s in ["creating", "ready", "not_ready"] {
        g.pods.insert(s, 0);
    }
    for s in ["creating", "created", "running", "exited", "unknown"] {
        g.containers.insert(s, 0);
    }
    for p in ctx.pods.records() {
        let s = match p.state {
            PodState::Creating => "creating",
            PodState::Ready => "ready",
            PodState::NotReady => "not_ready",
        };
        *g.pods.entry(s).or_default() += 1;
    }
    for c in ctx.containers.records() {
        let s = match c.state {
            ContainerState::Creating => "creating",
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Exited => "exited",
            ContainerState::Unknown => "unknown",
        };
        *g.containers.entry(s).or_default() += 1;
    }
    g.process = tokio::task::spawn_blocking(super::process::Process::read).await.unwrap_or_default();
    let journal = ctx.pod_store.journal();
    g.journal = Some((journal.stats(), journal.unusable().is_none()));
    let mut r = plain(StatusCode::OK, render(&METRICS, &g));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn plain(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r
}
