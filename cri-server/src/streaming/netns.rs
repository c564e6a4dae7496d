//! Port-forward connections inside a pod's network namespace: a dedicated OS thread (never a
//! tokio worker) enters the namespace from its pin, connects to the loopback port, hands the
//! socket back (a socket keeps the namespace it was made in) and exits.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn connect_loopback(port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e4)
        }
    }
}

/// Connects to `localhost:port` in the network namespace pinned at `netns` (`None`: the
/// node's own, for host-network pods).
pub async fn connect(netns: Option<PathBuf>, port: u16) -> io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("skiff-portfwd".into()).spawn(move || {
        let r = (|| {
            if let Some(pin) = &netns {
                let f = File::open(pin)
                    .map_err(|e| io::Error::new(e.kind(), format!("pod network namespace {}: {e}", pin.display())))?;
                setns(f, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            }
            connect_loopback(port)
        })();
        let _ = tx.send(r);
    })?;
    let s = rx.await.map_err(|_| io::Error::other("the connecting thread died"))??;
    s.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(s)
}
