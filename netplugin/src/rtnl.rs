//! rtnetlink connections (host netns and pod netns) and small helpers on top of them.
//!
//! A connection into a pod's netns is made without ever calling `setns` on a tokio worker: a
//! dedicated `std::thread` enters the netns, opens the netlink socket there and exits. The socket
//! stays bound to the netns it was created in, and rtnetlink drives it from tokio.

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
use rtnetlink::{Handle, LinkUnspec};
use tokio::task::JoinHandle;

use crate::error::{NetworkError, Result};

pub(crate) const ENODEV: i32 = libc::ENODEV;
pub(crate) const EEXIST: i32 = libc::EEXIST;

/// A running rtnetlink connection; the connection task is stopped on drop.
pub(crate) struct Rtnl {
    pub handle: Handle,
    task: JoinHandle<()>,
    /// In skiffd's own network namespace (where the blocking pool's threads are).
    host: bool,
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Rtnl {
    /// A connection in skiffd's own (host) network namespace.
    pub fn host() -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetworkError::io("open netlink socket", "NETLINK_ROUTE", e))?;
        Ok(Self { handle, task: tokio::spawn(conn), host: true })
    }

    /// A connection inside the network namespace pinned at `netns`.
    pub async fn in_netns(netns: &Path) -> Result<Self> {
        let path: PathBuf = netns.to_path_buf();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("skiff-netns".into())
            .spawn(move || {
                let res = (|| -> Result<Socket> {
                    let ns = File::open(&path).map_err(|e| NetworkError::io("open netns", &path, e))?;
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| NetworkError::io("setns", &path, e.into()))?;
                    Socket::new(NETLINK_ROUTE).map_err(|e| NetworkError::io("open netlink socket in", &path, e))
                })();
                let _ = tx.send(res);
                // The thread exits here: nothing else ever runs in the pod's netns.
            })
            .map_err(|e| NetworkError::Internal(format!("spawn netns thread: {e}")))?;
        let socket = rx.await.map_err(|_| NetworkError::Internal("netns thread died".into()))??;
        // SAFETY: the fd comes from a socket we own and give away here.
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        Ok(Self { handle, task: tokio::spawn(conn), host: false })
    }

    /// The link called `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(m) => Ok(m),
            Err(e) => {
                let e = NetworkError::netlink(format!("get link {name}"), e);
                if e.errno() == Some(ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Index of the link called `name` (error when missing).
    pub async fn index(&self, name: &str) -> Result<u32> {
        self.link(name).await?.map(|l| l.header.index).ok_or_else(|| NetworkError::Netlink {
            op: format!("get link {name}"),
            message: "no such device".into(),
            errno: Some(ENODEV),
        })
    }

    /// Delete the link called `name`; `false` when it did not exist.
    ///
    /// The kernel deletes a link inside the sending system call, and a veth's deletion waits
    /// for an RCU grace period (10-15 ms measured): on a host connection the request goes out
    /// from the blocking pool ([`delete_link_blocking`]), never from a tokio worker.
    pub async fn delete_link(&self, name: &str) -> Result<bool> {
        if self.host {
            let n = name.to_string();
            return tokio::task::spawn_blocking(move || delete_link_blocking(&n))
                .await
                .map_err(|e| NetworkError::Internal(format!("delete link {name}: {e}")))?;
        }
        let Some(link) = self.link(name).await? else { return Ok(false) };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = NetworkError::netlink(format!("delete link {name}"), e);
                if e.errno() == Some(ENODEV) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Set a link up.
    pub async fn set_up(&self, index: u32, what: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(format!("set {what} up"), e))
    }

    /// Add `addr/prefix` to a link; an existing identical address is fine. IPv6 addresses skip DAD.
    pub async fn add_address(&self, index: u32, addr: std::net::IpAddr, prefix: u8, what: &str) -> Result<()> {
        let mut req = self.handle.address().add(index, addr, prefix);
        if addr.is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = NetworkError::netlink(format!("add address {addr}/{prefix} to {what}"), e);
                if e.errno() == Some(EEXIST) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// The `kind` of a link (bridge, veth, ...).
pub(crate) fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// The name of a link.
pub(crate) fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The controller (bridge) index of a link.
pub(crate) fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

/// The MTU of a link.
pub(crate) fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// The hardware address of a link.
pub(crate) fn link_address(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

/// Deletes the link called `name` in the calling thread's network namespace with one blocking
/// netlink request (RTM_DELLINK by name, acknowledged); `false` when it did not exist.
pub(crate) fn delete_link_blocking(name: &str) -> Result<bool> {
    use netlink_packet_route::RouteNetlinkMessage;
    use rtnetlink::packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
    let op = || format!("delete link {name}");
    let io = |e: std::io::Error| NetworkError::Netlink { op: op(), message: e.to_string(), errno: e.raw_os_error() };
    let mut link = LinkMessage::default();
    link.attributes.push(LinkAttribute::IfName(name.to_string()));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(io)?;
    sock.bind_auto().map_err(io)?;
    sock.connect(&rtnetlink::sys::SocketAddr::new(0, 0)).map_err(io)?;
    sock.send(&buf, 0).map_err(io)?;
    loop {
        let (data, _) = sock.recv_from_full().map_err(io)?;
        let mut off = 0;
        while off < data.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                .map_err(|e| NetworkError::Netlink { op: op(), message: e.to_string(), errno: None })?;
            let len = m.header.length as usize;
            if let NetlinkPayload::Error(e) = m.payload {
                return match e.code {
                    None => Ok(true),
                    Some(c) if -c.get() == ENODEV => Ok(false),
                    Some(c) => Err(NetworkError::Netlink {
                        op: op(),
                        message: std::io::Error::from_raw_os_error(-c.get()).to_string(),
                        errno: Some(-c.get()),
                    }),
                };
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}
