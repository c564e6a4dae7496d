//! Wire format of `monitor.sock` and of the start report.
//!
//! Frame: 4-byte big-endian length, then that many bytes of JSON. Every message carries the
//! protocol version `v`. Requests are tagged by `op`, responses by `type`.

use std::io::{Read, Write};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::types::{ExitRecord, Status};

pub const PROTOCOL_VERSION: u32 = 1;
/// Frames larger than this are rejected.
pub const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    #[serde(flatten)]
    pub msg: T,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Signal {
        signal: i32,
    },
    ReopenLog,
    /// Answered with `Exited` once the container has exited (at once if it already has).
    Wait,
    /// Attach to the container's stdio: answered with `Attached` carrying the fds (SCM_RIGHTS)
    /// or `Error`. The connection stays the attacher's: closing it detaches.
    Attach {
        #[serde(default)]
        stdin: bool,
        #[serde(default)]
        stdout: bool,
        #[serde(default)]
        stderr: bool,
    },
    /// Set the container terminal's size (a no-op without a tty); answered with `Ok`.
    Resize {
        cols: u16,
        rows: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Status {
        status: Status,
    },
    Ok,
    Error {
        message: String,
    },
    Exited {
        record: ExitRecord,
    },
    /// Answer to `Attach`: the same message carries, in this order, the write end of a stdin
    /// pipe (when `stdin`), the read end of a stdout pipe (when `stdout`) and of a stderr pipe
    /// (when `stderr`; never with a tty: terminal output is stdout).
    Attached {
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
}

/// What `skiff-monitor run|infra` writes to its stdout (one JSON line) before detaching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StartReport {
    Started { pid: i32, monitor_pid: i32 },
    Error { message: String },
}

/// Messages of `skiff-monitor exec` on its fd 0 (a socket shared with the client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ExecReport {
    /// The command runs; `pgid` is the host pid of its process group leader (kill `-pgid`).
    Started {
        pgid: i32,
    },
    Error {
        message: String,
    },
    Exited {
        exit_code: i32,
    },
}

/// Messages of the client to `skiff-monitor exec` on the same socket (streaming exec). The
/// client closing its end of the socket kills the command like `Kill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ExecControl {
    /// TIOCSWINSZ on the command's terminal (ignored without a tty).
    Resize { cols: u16, rows: u16 },
    /// Kill the command's whole process tree; answered by `Exited`.
    Kill,
}

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let env = Envelope { v: PROTOCOL_VERSION, msg };
    let body = serde_json::to_vec(&env).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> std::io::Result<()> {
    w.write_all(&encode(msg))?;
    w.flush()
}

/// Reads one frame. `Ok(None)` on a clean EOF before the frame.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = match r.read(&mut len[got..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too large"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode(&body).map(Some)
}

/// Decodes a frame body, checking the version.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> std::io::Result<T> {
    let env: Envelope<T> =
        serde_json::from_slice(body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if env.v != PROTOCOL_VERSION {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unsupported protocol version {}", env.v),
        ));
    }
    Ok(env.msg)
}

/// Parses one complete frame from the front of `buf`: `(message, consumed bytes)`.
pub fn take_frame<T: DeserializeOwned>(buf: &[u8]) -> std::io::Result<Option<(T, usize)>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too large"));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((decode(&buf[4..4 + len])?, 4 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let f = encode(&Request::Signal { signal: 15 });
        let (r, n): (Request, usize) = take_frame(&f).unwrap().unwrap();
        assert_eq!(n, f.len());
        assert_eq!(r, Request::Signal { signal: 15 });
        let body = std::str::from_utf8(&f[4..]).unwrap();
        assert_eq!(body, r#"{"v":1,"op":"signal","signal":15}"#);
        let mut cur = std::io::Cursor::new(encode(&Response::Ok));
        let r: Response = read_frame(&mut cur).unwrap().unwrap();
        assert_eq!(r, Response::Ok);
        let r: Option<Response> = read_frame(&mut cur).unwrap();
        assert!(r.is_none());
        let f = encode(&Request::Attach { stdin: true, stdout: true, stderr: false });
        assert_eq!(
            std::str::from_utf8(&f[4..]).unwrap(),
            r#"{"v":1,"op":"attach","stdin":true,"stdout":true,"stderr":false}"#
        );
        let f = encode(&ExecControl::Resize { cols: 100, rows: 30 });
        let (r, _): (ExecControl, usize) = take_frame(&f).unwrap().unwrap();
        assert_eq!(r, ExecControl::Resize { cols: 100, rows: 30 });
    }
}
