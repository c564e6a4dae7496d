//! SPDY/3 frames (draft-mbelshe-httpbis-spdy-00, with the SPDY/3.1 session window): the
//! encoding of each frame, and an incremental decoder over a byte buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::zlib::{HeaderCompressor, HeaderDecompressor};
use super::SpdyError;

pub const VERSION: u16 = 3;

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_INVALID_STREAM: u32 = 2;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;
pub const RST_FLOW_CONTROL_ERROR: u32 = 7;

/// SETTINGS id of the initial stream window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// The largest frame payload (24-bit length).
pub const MAX_FRAME_LEN: usize = (1 << 24) - 1;
/// Header blocks larger than this (decompressed) are a protocol error here.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Header names (lower case) with their values (NUL-separated on the wire).
pub type Headers = Vec<(String, Vec<String>)>;

/// The first value of header `name` (case-insensitive).
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.first()).map(String::as_str)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// (flags, id, value) triples.
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type this implementation does not know: ignored, as the spec says.
    Unknown {
        frame_type: u16,
    },
}

fn encode_header_block(h: &Headers) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.put_u32(h.len() as u32);
    for (name, values) in h {
        let name = name.to_ascii_lowercase();
        b.put_u32(name.len() as u32);
        b.put_slice(name.as_bytes());
        let v = values.join("\0");
        b.put_u32(v.len() as u32);
        b.put_slice(v.as_bytes());
    }
    b
}

fn decode_header_block(mut b: &[u8]) -> Result<Headers, SpdyError> {
    let bad = || SpdyError::Protocol("malformed header block".into());
    let take = |b: &mut &[u8]| -> Result<String, SpdyError> {
        if b.remaining() < 4 {
            return Err(bad());
        }
        let n = b.get_u32() as usize;
        if b.remaining() < n {
            return Err(bad());
        }
        let s = String::from_utf8(b[..n].to_vec()).map_err(|_| bad())?;
        b.advance(n);
        Ok(s)
    };
    if b.remaining() < 4 {
        return Err(bad());
    }
    let count = b.get_u32() as usize;
    let mut h = Headers::with_capacity(count.min(64));
    for _ in 0..count {
        let name = take(&mut b)?.to_ascii_lowercase();
        let value = take(&mut b)?;
        if name.is_empty() || h.iter().any(|(n, _)| *n == name) {
            return Err(SpdyError::Protocol(format!("empty or duplicate header {name:?}")));
        }
        h.push((name, value.split('\0').map(str::to_owned).collect()));
    }
    Ok(h)
}

fn control_header(out: &mut BytesMut, frame_type: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(frame_type);
    out.put_u32((flags as u32) << 24 | len as u32);
}

impl Frame {
    /// Appends the frame's bytes to `out`; header blocks go through `z`.
    pub fn encode(&self, z: &mut HeaderCompressor, out: &mut BytesMut) -> Result<(), SpdyError> {
        match self {
            Frame::SynStream { stream_id, associated_to, priority, flags, headers } => {
                let block = z.compress(&encode_header_block(headers))?;
                control_header(out, TYPE_SYN_STREAM, *flags, 10 + block.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(associated_to & 0x7fff_ffff);
                out.put_u8((priority & 0x7) << 5);
                out.put_u8(0); // slot
                out.put_slice(&block);
            }
            Frame::SynReply { stream_id, flags, headers } | Frame::Headers { stream_id, flags, headers } => {
                let t = if matches!(self, Frame::SynReply { .. }) { TYPE_SYN_REPLY } else { TYPE_HEADERS };
                let block = z.compress(&encode_header_block(headers))?;
                control_header(out, t, *flags, 4 + block.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                control_header(out, TYPE_RST_STREAM, 0, 8);
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::Settings { flags, entries } => {
                control_header(out, TYPE_SETTINGS, *flags, 4 + 8 * entries.len());
                out.put_u32(entries.len() as u32);
                for (f, id, v) in entries {
                    out.put_u32((*f as u32) << 24 | (id & 0xff_ffff));
                    out.put_u32(*v);
                }
            }
            Frame::Ping { id } => {
                control_header(out, TYPE_PING, 0, 4);
                out.put_u32(*id);
            }
            Frame::GoAway { last_good_stream_id, status } => {
                control_header(out, TYPE_GOAWAY, 0, 8);
                out.put_u32(last_good_stream_id & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control_header(out, TYPE_WINDOW_UPDATE, 0, 8);
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(delta & 0x7fff_ffff);
            }
            Frame::Data { stream_id, flags, data } => {
                if data.len() > MAX_FRAME_LEN {
                    return Err(SpdyError::Protocol("data frame too large".into()));
                }
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32((*flags as u32) << 24 | data.len() as u32);
                out.put_slice(data);
            }
            Frame::Unknown { .. } => {}
        }
        Ok(())
    }
}

/// Decodes frames from a growing buffer; owns the receive direction's header decompressor.
#[derive(Default)]
pub struct FrameDecoder {
    z: HeaderDecompressor,
}

impl FrameDecoder {
    /// The next whole frame at the start of `buf` (consumed), or `None` if more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let word = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if buf.len() < 8 + len {
            return Ok(None);
        }
        buf.advance(8);
        let mut p = buf.split_to(len).freeze();
        if word & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data { stream_id: word & 0x7fff_ffff, flags, data: p }));
        }
        let version = ((word >> 16) & 0x7fff) as u16;
        let frame_type = (word & 0xffff) as u16;
        if version != VERSION {
            return Err(SpdyError::Protocol(format!("SPDY version {version} is not supported")));
        }
        let short = || SpdyError::Protocol(format!("control frame {frame_type} too short"));
        let need = |p: &Bytes, n: usize| if p.len() < n { Err(short()) } else { Ok(()) };
        let frame = match frame_type {
            TYPE_SYN_STREAM => {
                need(&p, 10)?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let associated_to = p.get_u32() & 0x7fff_ffff;
                let priority = p.get_u8() >> 5;
                let _slot = p.get_u8();
                let headers = decode_header_block(&self.z.decompress(&p, MAX_HEADER_BLOCK)?)?;
                Frame::SynStream { stream_id, associated_to, priority, flags, headers }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                need(&p, 4)?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let headers = decode_header_block(&self.z.decompress(&p, MAX_HEADER_BLOCK)?)?;
                if frame_type == TYPE_SYN_REPLY {
                    Frame::SynReply { stream_id, flags, headers }
                } else {
                    Frame::Headers { stream_id, flags, headers }
                }
            }
            TYPE_RST_STREAM => {
                need(&p, 8)?;
                Frame::RstStream { stream_id: p.get_u32() & 0x7fff_ffff, status: p.get_u32() }
            }
            TYPE_SETTINGS => {
                need(&p, 4)?;
                let n = p.get_u32() as usize;
                need(&p, n.saturating_mul(8))?;
                let entries = (0..n)
                    .map(|_| {
                        let fid = p.get_u32();
                        ((fid >> 24) as u8, fid & 0xff_ffff, p.get_u32())
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            TYPE_PING => {
                need(&p, 4)?;
                Frame::Ping { id: p.get_u32() }
            }
            TYPE_GOAWAY => {
                need(&p, 4)?;
                let last_good_stream_id = p.get_u32() & 0x7fff_ffff;
                let status = if p.len() >= 4 { p.get_u32() } else { 0 };
                Frame::GoAway { last_good_stream_id, status }
            }
            TYPE_WINDOW_UPDATE => {
                need(&p, 8)?;
                Frame::WindowUpdate { stream_id: p.get_u32() & 0x7fff_ffff, delta: p.get_u32() & 0x7fff_ffff }
            }
            other => Frame::Unknown { frame_type: other },
        };
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: &Frame) -> Vec<u8> {
        let mut z = HeaderCompressor::new().unwrap();
        let mut out = BytesMut::new();
        f.encode(&mut z, &mut out).unwrap();
        out.to_vec()
    }

    fn dec(bytes: &[u8]) -> Frame {
        let mut buf = BytesMut::from(bytes);
        let f = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        f
    }

    // The byte sequences below are built by hand from the SPDY/3 spec (section 2.2 and 2.6),
    // not captured from a Go client.

    #[test]
    fn data_frame_bytes() {
        let f = Frame::Data { stream_id: 5, flags: FLAG_FIN, data: Bytes::from_static(b"hi") };
        assert_eq!(enc(&f), [0, 0, 0, 5, 0x01, 0, 0, 2, b'h', b'i']);
        assert_eq!(dec(&[0, 0, 0, 5, 0x01, 0, 0, 2, b'h', b'i']), f);
    }

    #[test]
    fn fixed_control_frames_bytes() {
        let cases: Vec<(Frame, Vec<u8>)> = vec![
            (Frame::Ping { id: 1 }, vec![0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]),
            (
                Frame::RstStream { stream_id: 3, status: RST_CANCEL },
                vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 5],
            ),
            (
                Frame::GoAway { last_good_stream_id: 7, status: 0 },
                vec![0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 7, 0, 0, 0, 0],
            ),
            (
                Frame::WindowUpdate { stream_id: 1, delta: 0x10000 },
                vec![0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 1, 0, 0],
            ),
            (
                Frame::Settings { flags: 0, entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 0x20000)] },
                vec![0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 7, 0, 2, 0, 0],
            ),
        ];
        for (f, bytes) in cases {
            assert_eq!(enc(&f), bytes, "{f:?}");
            assert_eq!(dec(&bytes), f);
        }
    }

    #[test]
    fn syn_stream_layout_and_headers_round_trip() {
        let headers: Headers =
            vec![("streamtype".into(), vec!["stdout".into()]), ("x-multi".into(), vec!["a".into(), "b".into()])];
        let f = Frame::SynStream { stream_id: 3, associated_to: 0, priority: 0, flags: FLAG_FIN, headers };
        let b = enc(&f);
        assert_eq!(&b[..4], &[0x80, 3, 0, 1]);
        assert_eq!(b[4], FLAG_FIN);
        assert_eq!(u32::from_be_bytes([0, b[5], b[6], b[7]]) as usize, b.len() - 8);
        assert_eq!(&b[8..16], &[0, 0, 0, 3, 0, 0, 0, 0]);
        assert_eq!(dec(&b), f);
        assert_eq!(
            header(
                &match dec(&b) {
                    Frame::SynStream { headers, .. } => headers,
                    _ => unreachable!(),
                },
                "streamType"
            ),
            Some("stdout")
        );
    }

    #[test]
    fn uncompressed_block_layout() {
        let h: Headers = vec![("port".into(), vec!["80".into()])];
        assert_eq!(encode_header_block(&h), [0, 0, 0, 1, 0, 0, 0, 4, b'p', b'o', b'r', b't', 0, 0, 0, 2, b'8', b'0']);
        assert!(decode_header_block(&[0, 0, 0, 2, 0, 0, 0, 1, b'a', 0, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 0, 0]).is_err());
        assert!(decode_header_block(&[0, 0, 0, 1, 0, 0, 0, 9]).is_err());
    }

    #[test]
    fn partial_input_waits_and_unknown_types_are_skipped() {
        let mut d = FrameDecoder::default();
        let mut buf = BytesMut::from(&[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0][..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[0, 9]);
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Frame::Ping { id: 9 }));
        let mut buf = BytesMut::from(&[0x80, 3, 0, 0x0a, 0, 0, 0, 2, 1, 2][..]);
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Frame::Unknown { frame_type: 10 }));
        let mut buf = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(d.decode(&mut buf).is_err());
    }

    /// The first three frames crictl v1.32.0 (client-go's SPDY executor over moby/spdystream)
    /// sent for `crictl exec <ctr> echo captured`, captured with strace on skiff's streaming
    /// connection: SYN_STREAMs for the error, stdout and stderr streams, their header blocks
    /// on one zlib stream primed with the dictionary.
    #[test]
    fn decodes_a_captured_go_client_session() {
        let hex = concat!(
            "800300010000002a0000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a5a54945f04000000ffff",
            "800300010000001900000003000000000000c22ac5565c92925f5a02000000ffff",
            "800300010000001500000005000000000000c229975a5404000000ffff",
        );
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let mut buf = BytesMut::from(&bytes[..]);
        let mut d = FrameDecoder::default();
        for (id, kind) in [(1, "error"), (3, "stdout"), (5, "stderr")] {
            match d.decode(&mut buf).unwrap() {
                Some(Frame::SynStream { stream_id, associated_to: 0, flags: 0, headers, .. }) => {
                    assert_eq!(stream_id, id);
                    assert_eq!(headers, vec![("streamtype".to_owned(), vec![kind.to_owned()])]);
                }
                f => panic!("{f:?}"),
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn header_blocks_share_one_zlib_stream_per_direction() {
        let mut z = HeaderCompressor::new().unwrap();
        let mut out = BytesMut::new();
        for id in [1u32, 3, 5] {
            let headers = vec![("streamtype".into(), vec!["data".into()]), ("port".into(), vec!["80".into()])];
            Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, flags: 0, headers }
                .encode(&mut z, &mut out)
                .unwrap();
        }
        let mut d = FrameDecoder::default();
        for id in [1u32, 3, 5] {
            match d.decode(&mut out).unwrap() {
                Some(Frame::SynStream { stream_id, headers, .. }) => {
                    assert_eq!(stream_id, id);
                    assert_eq!(header(&headers, "port"), Some("80"));
                }
                f => panic!("{f:?}"),
            }
        }
    }
}
