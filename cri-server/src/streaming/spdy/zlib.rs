//! SPDY/3 header-block compression: one zlib stream per direction and connection, primed with
//! the SPDY/3 dictionary (spec section 2.6.10.1), each header block ending in a sync flush.

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::SpdyError;

/// The length-prefixed words the SPDY/3 dictionary starts with, in the spec's order.
const DICT_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The dictionary's tail, after the words: status codes and phrases, dates, content types.
const DICT_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized",
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
);

/// The SPDY/3 header dictionary (1423 bytes).
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        let mut d = Vec::with_capacity(1423);
        for w in DICT_WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(DICT_TAIL.as_bytes());
        d
    })
}

/// Compresses the header blocks one direction of a connection sends.
pub struct HeaderCompressor {
    z: Compress,
}

impl HeaderCompressor {
    pub fn new() -> Result<Self, SpdyError> {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(dictionary()).map_err(|e| SpdyError::Compression(e.to_string()))?;
        Ok(Self { z })
    }

    /// One header block, compressed and sync-flushed so that the peer can decode it at once.
    pub fn compress(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() / 2 + 64);
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before = self.z.total_in();
            self.z
                .compress_vec(&block[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            consumed += (self.z.total_in() - before) as usize;
            // Done when all input is in and the flush did not fill the buffer.
            if consumed == block.len() && out.capacity() - out.len() >= 64 {
                return Ok(out);
            }
        }
    }
}

/// Decompresses the header blocks one direction of a connection receives.
pub struct HeaderDecompressor {
    z: Decompress,
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self { z: Decompress::new(true) }
    }
}

impl HeaderDecompressor {
    /// One compressed header block; at most `limit` bytes of output.
    pub fn decompress(&mut self, input: &[u8], limit: usize) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity((input.len() * 4).clamp(256, limit.max(256)));
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 64 {
                if out.len() >= limit {
                    return Err(SpdyError::Protocol("header block too large".into()));
                }
                out.reserve(out.capacity());
            }
            let before = self.z.total_in();
            let status = match self.z.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync) {
                Ok(s) => s,
                Err(e) if e.needs_dictionary().is_some() => {
                    consumed += (self.z.total_in() - before) as usize;
                    self.z.set_dictionary(dictionary()).map_err(|e| SpdyError::Compression(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(SpdyError::Compression(e.to_string())),
            };
            consumed += (self.z.total_in() - before) as usize;
            if status == Status::StreamEnd {
                return Err(SpdyError::Compression("header stream ended".into()));
            }
            if out.len() > limit {
                return Err(SpdyError::Protocol("header block too large".into()));
            }
            if consumed == input.len() && out.capacity() - out.len() >= 64 {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_the_spec_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        // Adler-32 of the SPDY/3 dictionary, as zlib announces it in the stream header.
        let adler = Compress::new(Compression::best(), true).set_dictionary(d).unwrap();
        assert_eq!(adler, 0xe3c6_a7c2);
    }

    #[test]
    fn blocks_round_trip_on_one_stream() {
        let mut c = HeaderCompressor::new().unwrap();
        let mut d = HeaderDecompressor::default();
        let a = c.compress(b"\x00\x00\x00\x01\x00\x00\x00\x0astreamtype\x00\x00\x00\x05error").unwrap();
        // zlib header with FDICT and the dictionary's id.
        assert_eq!(a[0], 0x78);
        assert_eq!(a[1] & 0x20, 0x20);
        assert_eq!(&a[2..6], &0xe3c6_a7c2u32.to_be_bytes());
        // A sync flush ends every block.
        assert_eq!(&a[a.len() - 4..], &[0, 0, 0xff, 0xff]);
        let b = c.compress(b"\x00\x00\x00\x00").unwrap();
        assert_eq!(
            d.decompress(&a, 1 << 16).unwrap(),
            b"\x00\x00\x00\x01\x00\x00\x00\x0astreamtype\x00\x00\x00\x05error"
        );
        assert_eq!(d.decompress(&b, 1 << 16).unwrap(), b"\x00\x00\x00\x00");
        let big = vec![b'x'; 100_000];
        let z = c.compress(&big).unwrap();
        assert_eq!(d.decompress(&z, 1 << 20).unwrap(), big);
        let z = c.compress(&big).unwrap();
        assert!(d.decompress(&z, 1 << 10).is_err());
    }
}
