//! skiffd's streaming server: the URLs that Exec, Attach and PortForward return, served over
//! HTTP/1.1 (hyper) and upgraded to SPDY/3.1 or WebSocket as the kubelet's streaming library
//! (`k8s.io/kubelet/pkg/cri/streaming`, used by containerd and CRI-O) does.
//!
//! - [`cache`]: single-use tokens, one minute, at most 1000 in flight.
//! - [`http`]: the listener, routes (`/exec/<token>`, `/attach/<token>`,
//!   `/portforward/<token>`), protocol negotiation, upgrades, idle timeout.
//! - [`spdy`]: SPDY/3.1 framing, header compression, flow control.
//! - [`ws`]: the channel protocols over WebSocket.
//! - [`remotecommand`]: exec and attach sessions; [`portforward`]: port forwarding, with
//!   [`netns`] connecting inside the pod's network namespace.

pub mod cache;
mod fdio;
pub mod http;
mod netns;
pub mod portforward;
pub mod remotecommand;
pub mod spdy;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use cache::TooManyInFlight;

/// An exec session to run when its URL is opened.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    pub container_id: String,
    pub container_dir: PathBuf,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// An attach session.
#[derive(Debug, Clone)]
pub struct AttachTarget {
    pub container_id: String,
    pub container_dir: PathBuf,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// Where port-forward connections go.
#[derive(Debug, Clone)]
pub struct PortForwardTarget {
    pub pod_id: String,
    /// The pod's network namespace pin; `None` for host-network pods.
    pub netns: Option<PathBuf>,
}

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum StreamRequest {
    Exec(ExecTarget),
    Attach(AttachTarget),
    PortForward(PortForwardTarget),
}

impl StreamRequest {
    fn path(&self) -> &'static str {
        match self {
            StreamRequest::Exec(_) => "exec",
            StreamRequest::Attach(_) => "attach",
            StreamRequest::PortForward(_) => "portforward",
        }
    }
}

/// Why a streaming URL cannot be handed out.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("the streaming server is not running")]
    NotServing,
    #[error(transparent)]
    TooMany(#[from] TooManyInFlight),
}

/// The streaming server's shared state: the token cache and, once bound, its address.
pub struct Streaming {
    pub cache: cache::RequestCache,
    pub monitor_path: PathBuf,
    pub idle_timeout: Duration,
    /// The bound address and whether it speaks TLS.
    addr: OnceLock<(SocketAddr, bool)>,
}

impl Streaming {
    pub fn new(monitor_path: PathBuf, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            cache: cache::RequestCache::new(cache::TOKEN_TTL),
            monitor_path,
            idle_timeout,
            addr: OnceLock::new(),
        })
    }

    /// The bound address, once serving.
    pub fn address(&self) -> Option<SocketAddr> {
        self.addr.get().map(|a| a.0)
    }

    /// Whether the server speaks TLS (once serving).
    pub fn tls(&self) -> bool {
        self.addr.get().is_some_and(|a| a.1)
    }

    /// Stores `req` and returns its single-use URL.
    pub fn url_for(&self, req: StreamRequest) -> Result<String, StreamingError> {
        let (addr, tls) = self.addr.get().copied().ok_or(StreamingError::NotServing)?;
        let path = req.path();
        let token = self.cache.insert(req)?;
        let scheme = if tls { "https" } else { "http" };
        Ok(format!("{scheme}://{addr}/{path}/{token}"))
    }
}

/// Resolves once a boolean watch is true (or its sender is gone).
pub(crate) async fn flag(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
