//! The daemon: directories, the single-instance lock, the gRPC unix socket, serving, and a
//! graceful, bounded shutdown on SIGTERM/SIGINT.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use proto::cri::image_service_server::ImageServiceServer;
use proto::cri::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::logging::RpcSpanLayer;
use crate::services::image::ImageSvc;
use crate::services::runtime::RuntimeSvc;

/// gRPC messages up to this size are accepted and sent (the kubelet uses 16 MiB).
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Why the daemon could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("another skiffd is running with state dir {0} (it holds the lock file)")]
    AlreadyRunning(PathBuf),
    #[error("another skiffd is serving on {0}")]
    SocketInUse(PathBuf),
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("cannot listen on {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("cannot listen for streaming on {address}: {source}")]
    Streaming { address: String, source: io::Error },
    #[error("cannot listen for metrics on {address}: {source}")]
    Metrics { address: String, source: io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error(transparent)]
    Context(#[from] crate::context::ContextError),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Creates `path` and its parents with mode `mode` for the directories it creates.
fn create_dir(path: &Path, mode: u32) -> Result<(), ServerError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| ServerError::CreateDir { path: path.to_owned(), source })
}

/// Holds the state dir's lock for the daemon's lifetime, so that two daemons never share it.
pub struct InstanceLock {
    _lock: Flock<File>,
}

impl InstanceLock {
    pub fn acquire(state: &Path) -> Result<Self, ServerError> {
        let path = state.join("skiffd.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ServerError::Lock { path: path.clone(), source })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Self { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(ServerError::AlreadyRunning(state.to_owned())),
            Err((_, e)) => Err(ServerError::Lock { path, source: io::Error::from(e) }),
        }
    }
}

/// Binds the socket: a stale socket file (nobody answers) is replaced; a live one is an error.
fn bind_socket(path: &Path) -> Result<UnixListener, ServerError> {
    if let Some(parent) = path.parent() {
        create_dir(parent, 0o711)?;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => return Err(ServerError::SocketInUse(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => {
            tracing::info!(socket = %path.display(), "replacing a stale socket");
            fs::remove_file(path).map_err(|source| ServerError::Listen { path: path.to_owned(), source })?;
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Listen { path: path.to_owned(), source })?;
    let listen_err = |source| ServerError::Listen { path: path.to_owned(), source };
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(listen_err)?;
    std::os::unix::fs::chown(path, Some(0), Some(0)).map_err(listen_err)?;
    Ok(listener)
}

/// Runs skiffd until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let config = Arc::new(config);
    crate::failpoint::init();
    if config.runtime.stop_timeout_secs.is_some() {
        tracing::warn!("runtime.stop_timeout_secs is ignored: StopContainer always carries its own timeout");
    }
    create_dir(&config.root, 0o711)?;
    create_dir(&config.state, 0o711)?;
    let _lock = InstanceLock::acquire(&config.state)?;
    let socket = config.socket_path();
    let listener = bind_socket(&socket)?;

    let mut sigterm = signal(SignalKind::terminate()).map_err(ServerError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServerError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(ServerError::Signals)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();

    let ctx = Arc::new(crate::context::Context::open(config.clone()).await?);
    crate::recovery::recover(&ctx).await.map_err(crate::context::ContextError::from)?;
    crate::services::runtime::start_background(ctx.clone());
    let address = config.streaming.address.clone();
    let sc = &config.streaming;
    let tls = (!sc.tls_cert.as_os_str().is_empty()).then_some((sc.tls_cert.as_path(), sc.tls_key.as_path()));
    let streaming = crate::streaming::http::Server::start(ctx.streaming.clone(), &address, tls)
        .await
        .map_err(|source| ServerError::Streaming { address, source })?;
    let metrics = if config.metrics.address.is_empty() {
        None
    } else {
        let address = config.metrics.address.clone();
        let m = crate::metrics::start(&address, ctx.clone())
            .await
            .map_err(|source| ServerError::Metrics { address, source })?;
        tracing::info!(address = %m.addr, "metrics served at /metrics");
        Some(m)
    };
    let runtime = RuntimeServiceServer::new(RuntimeSvc::new(ctx.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let images = ImageServiceServer::new(ImageSvc::new(ctx.images.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let server = tonic::transport::Server::builder()
        .layer(RpcSpanLayer)
        .add_service(runtime)
        .add_service(images)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    let mut server = tokio::spawn(server);

    tracing::info!(
        socket = %socket.display(),
        streaming = %streaming.addr,
        root = %config.root.display(),
        state = %config.state.display(),
        version = env!("CARGO_PKG_VERSION"),
        "skiffd serving"
    );

    // The accept loop runs: tell systemd (Type=notify) that the socket serves.
    crate::sdnotify::notify("READY=1").await;

    let served = loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break None }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break None }
            _ = sighup.recv() => {
                match tokio::task::spawn_blocking(crate::logging::reopen).await {
                    Ok(Ok(true)) => tracing::info!("SIGHUP: log file reopened"),
                    Ok(Ok(false)) => tracing::info!("SIGHUP: logging to stderr, nothing to reopen"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "SIGHUP: cannot reopen the log file"),
                    Err(e) => tracing::warn!(error = %e, "SIGHUP: the reopen task failed"),
                }
            }
            r = &mut server => break Some(r),
        }
    };
    crate::sdnotify::notify("STOPPING=1").await;
    let result = match served {
        Some(r) => r,
        None => {
            // Stop accepting, let in-flight RPCs finish, but not forever.
            let _ = stop_tx.send(());
            let grace = Duration::from_secs(config.shutdown_timeout_secs);
            match tokio::time::timeout(grace, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(?grace, "in-flight RPCs did not finish in time; exiting anyway");
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    crate::services::runtime::container::drain_detached(Duration::from_secs(config.shutdown_timeout_secs)).await;
    // The records' files written from the journal (they lag behind it while skiffd runs): a
    // clean stop leaves them current for whoever reads them.
    let journal = ctx.pod_store.journal().clone();
    match tokio::task::spawn_blocking(move || journal.materialize()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the records' files (the journal still holds them)"),
        Err(e) => tracing::warn!(error = %e, "the task writing the records' files failed"),
    }
    streaming.shutdown().await;
    drop(metrics);
    if let Err(e) = fs::remove_file(&socket) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(socket = %socket.display(), error = %e, "cannot remove the socket");
        }
    }
    match result {
        Ok(r) => r.map_err(ServerError::from),
        Err(join) => {
            tracing::error!(error = %join, "the gRPC server task failed");
            Ok(())
        }
    }?;
    tracing::info!("skiffd stopped");
    Ok(())
}
