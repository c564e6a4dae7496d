//! Single-use tokens for the streaming URLs, as the kubelet's streaming request cache: a
//! random token per request, consumed by the first connection, expiring after a minute, at
//! most [`MAX_IN_FLIGHT`] at once. Tokens are never logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::StreamRequest;

/// How long a token stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Tokens outstanding at once; more are refused (ResourceExhausted).
pub const MAX_IN_FLIGHT: usize = 1000;

#[derive(Debug, thiserror::Error)]
#[error("too many streaming requests in flight ({MAX_IN_FLIGHT})")]
pub struct TooManyInFlight;

pub struct RequestCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, StreamRequest)>>,
}

impl RequestCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// Stores `req` under a fresh token (32 random bytes, URL-safe base64).
    pub fn insert(&self, req: StreamRequest) -> Result<String, TooManyInFlight> {
        use base64::Engine;
        let now = Instant::now();
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.retain(|_, (t, _)| now.duration_since(*t) < self.ttl);
        if e.len() >= MAX_IN_FLIGHT {
            return Err(TooManyInFlight);
        }
        loop {
            let raw: [u8; 32] = rand::random();
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            if !e.contains_key(&token) {
                e.insert(token.clone(), (now, req));
                return Ok(token);
            }
        }
    }

    /// Takes the request of `token` if it exists and has not expired; a token works once.
    pub fn consume(&self, token: &str) -> Option<StreamRequest> {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (t, req) = e.remove(token)?;
        (t.elapsed() < self.ttl).then_some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> StreamRequest {
        StreamRequest::PortForward(super::super::PortForwardTarget { pod_id: "p".into(), netns: None })
    }

    #[test]
    fn tokens_are_single_use_and_expire() {
        let c = RequestCache::new(Duration::from_millis(50));
        let a = c.insert(pf()).unwrap();
        let b = c.insert(pf()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a.bytes().all(|ch| ch.is_ascii_alphanumeric() || ch == b'-' || ch == b'_'));
        assert!(c.consume(&a).is_some());
        assert!(c.consume(&a).is_none());
        assert!(c.consume("nope").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.consume(&b).is_none());
    }

    #[test]
    fn in_flight_is_bounded() {
        let c = RequestCache::new(Duration::from_secs(60));
        for _ in 0..MAX_IN_FLIGHT {
            c.insert(pf()).unwrap();
        }
        assert!(c.insert(pf()).is_err());
    }
}
