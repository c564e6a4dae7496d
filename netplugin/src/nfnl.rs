//! The one nftables query skiff makes on a hot path, straight over netlink: does skiff's table
//! exist? (`ensure_host` asks before every pod's network setup, to notice a table deleted
//! behind skiff's back; `nft -j list table` cost a process spawn each time, serialized under
//! the host lock.) Rules are still changed with the `nft` command (see `nft.rs`).
//!
//! The request is one `NFT_MSG_GETTABLE` for `inet <table>` with an ACK asked for: the kernel
//! answers with the table (`NFT_MSG_NEWTABLE`) then the ACK, or with `ENOENT`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFPROTO_INET: u8 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const TIMEOUT: Duration = Duration::from_secs(5);

/// The request: nlmsghdr, nfgenmsg, the table name attribute.
fn request(table: &str, seq: u32) -> Vec<u8> {
    let name_len = table.len() + 1;
    let attr_len = 4 + name_len;
    let len = 16 + 4 + attr_len.div_ceil(4) * 4;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]);
    m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    m.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
    m.extend_from_slice(table.as_bytes());
    m.push(0);
    m.resize(len, 0);
    m
}

/// What the kernel's answer says: Some(true) the table (or a plain ACK), Some(false) ENOENT,
/// None nothing of ours in `buf` (read on); an error for any other errno.
fn parse(buf: &[u8], seq: u32) -> io::Result<Option<bool>> {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let u32_at = |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
        let len = u32_at(off) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < 16 || off + len > buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink message"));
        }
        if u32_at(off + 8) == seq {
            if ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE {
                return Ok(Some(true));
            }
            if ty == NLMSG_ERROR && len >= 20 {
                return match -(u32_at(off + 16) as i32) {
                    0 => Ok(Some(true)),
                    libc::ENOENT => Ok(Some(false)),
                    e => Err(io::Error::from_raw_os_error(e)),
                };
            }
            if ty == NLMSG_DONE {
                return Ok(Some(false));
            }
        }
        off += len.div_ceil(4) * 4;
    }
    Ok(None)
}

/// Whether `table inet <table>` exists, asked of the kernel in the calling thread's network
/// namespace. Blocking (a netlink round trip): call it from `spawn_blocking`.
pub(crate) fn table_exists(table: &str) -> io::Result<bool> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval { tv_sec: TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
    // SAFETY: setsockopt with a pointer to a timeval that lives across the call and its size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let seq = std::process::id() ^ 0x5eed;
    let req = request(table, seq);
    // SAFETY: the kernel address (all zero but the family) and the request buffer are valid
    // for the duration of the call.
    let sent = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 16384];
    loop {
        // SAFETY: recv into our own buffer of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(v) = parse(&buf[..n as usize], seq)? {
            return Ok(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let m = request("skiff", 7);
        assert_eq!(m.len(), 16 + 4 + 12);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize, m.len());
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), (10 << 8) | 1);
        assert_eq!(m[16], NFPROTO_INET);
        assert_eq!(u16::from_ne_bytes([m[20], m[21]]), 10);
        assert_eq!(&m[24..30], b"skiff\0");
    }

    fn msg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn answers() {
        let enoent = msg(NLMSG_ERROR, 3, &(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse(&enoent, 3).unwrap(), Some(false));
        let mut both = msg((10 << 8) | NFT_MSG_NEWTABLE, 3, &[1, 0, 0, 0]);
        both.extend(msg(NLMSG_ERROR, 3, &0i32.to_ne_bytes()));
        assert_eq!(parse(&both, 3).unwrap(), Some(true));
        let eperm = msg(NLMSG_ERROR, 3, &(-libc::EPERM).to_ne_bytes());
        assert!(parse(&eperm, 3).is_err());
        // Another request's answer is not ours.
        assert_eq!(parse(&enoent, 4).unwrap(), None);
    }

    #[test]
    fn absent_table_on_this_host() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        assert!(!table_exists("skiff_no_such_table_for_sure").unwrap());
    }
}
