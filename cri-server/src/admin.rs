//! Operator subcommands that talk to a running skiffd over its CRI socket: `skiffd pods`
//! lists pods, `skiffd pods --remove` stops and removes every pod (and so its containers) —
//! what `manifests/uninstall.sh --force` does before it stops skiffd, without needing crictl.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use proto::cri::runtime_service_client::RuntimeServiceClient;
use proto::cri::*;
use tonic::transport::{Channel, Endpoint, Uri};

async fn connect(socket: &Path) -> anyhow::Result<RuntimeServiceClient<Channel>> {
    let path: PathBuf = socket.to_owned();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("cannot connect to skiffd at {}", socket.display()))?;
    Ok(RuntimeServiceClient::new(channel))
}

/// Prints one line per pod (`id state namespace/name`); with `remove`, stops and removes each.
/// Returns the number of pods that were there (and, with `remove`, the number left).
pub async fn pods(socket: &Path, remove: bool) -> anyhow::Result<(usize, usize)> {
    let mut rt = connect(socket).await?;
    let items = rt.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await.context("ListPodSandbox")?;
    let items = items.into_inner().items;
    let mut left = 0;
    for p in &items {
        let md = p.metadata.clone().unwrap_or_default();
        let state = if p.state == PodSandboxState::SandboxReady as i32 { "ready" } else { "not_ready" };
        println!("{}\t{state}\t{}/{}", p.id, md.namespace, md.name);
        if !remove {
            continue;
        }
        let id = p.id.clone();
        let stopped = rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await;
        let removed = match stopped {
            Ok(_) => rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.clone() }).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => eprintln!("skiffd: removed pod {id}"),
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => {
                left += 1;
                eprintln!("skiffd: cannot remove pod {id}: {}", e.message());
            }
        }
    }
    Ok((items.len(), left))
}
