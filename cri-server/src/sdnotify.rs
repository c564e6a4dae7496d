//! systemd's readiness protocol (`Type=notify`): one datagram, `READY=1` once the CRI socket
//! serves, `STOPPING=1` on shutdown, sent to the unix datagram socket named by `$NOTIFY_SOCKET`
//! (a path, or `@name` for the abstract namespace). Without `$NOTIFY_SOCKET` (no systemd, or
//! `Type=simple`) nothing is sent. Errors are logged, never fatal.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `READY=1`) to `$NOTIFY_SOCKET` off the async workers. Returns whether a
/// message was sent.
pub async fn notify(state: &'static str) -> bool {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return false };
    let target = target.to_string_lossy().into_owned();
    let sent = tokio::task::spawn_blocking(move || send(&target, state)).await;
    match sent {
        Ok(Ok(())) => {
            tracing::debug!(state, "notified systemd");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(state, error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
            false
        }
        Err(e) => {
            tracing::warn!(state, error = %e, "the systemd notification task failed");
            false
        }
    }
}

/// Blocking: one datagram to `target`.
pub fn send(target: &str, state: &str) -> io::Result<()> {
    let addr = if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())?
    } else if target.starts_with('/') {
        SocketAddr::from_pathname(target)?
    } else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("NOTIFY_SOCKET {target:?} is not a path")));
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_to_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(super::send("relative", "READY=1").is_err());
        use std::os::linux::net::SocketAddrExt;
        let name = format!("skiff-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        super::send(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
