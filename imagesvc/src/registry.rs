//! A small OCI distribution client on reqwest (rustls).
//!
//! Why our own client rather than oci-client: we need mirrors tried in order while the image
//! keeps its name, plain HTTP only for loopback and configured insecure hosts (also on
//! redirects and token realms), CRI identity/registry tokens, a per-chunk stall timeout and
//! streaming each blob straight into the content store's verifying ingest. That is a few hundred
//! lines here and hard to bend oci-client into.
//!
//! Credentials are kept in [`Auth`], whose `Debug` redacts them; request headers are never logged.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;

use crate::config::RegistryConfig;
use crate::error::{ImageError, Result};
use crate::manifest::MANIFEST_ACCEPT;
use crate::reference::{Digest, Reference, DOCKER_HUB};

/// Credentials for a pull (from the CRI `AuthConfig`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    /// When set, the credentials are only sent to this registry host.
    pub server_address: String,
    /// OAuth2 refresh token, exchanged at the token realm.
    pub identity_token: String,
    /// Bearer token sent to the registry as is.
    pub registry_token: String,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("auth", &"<redacted>")
            .field("server_address", &self.server_address)
            .field("identity_token", &"<redacted>")
            .field("registry_token", &"<redacted>")
            .finish()
    }
}

impl Auth {
    fn basic(&self) -> Option<(String, String)> {
        if !self.username.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        if !self.auth.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD.decode(self.auth.trim()).ok()?;
            let s = String::from_utf8(raw).ok()?;
            let (u, p) = s.split_once(':')?;
            return Some((u.to_string(), p.to_string()));
        }
        None
    }

    fn applies_to(&self, host: &str) -> bool {
        if self.server_address.is_empty() {
            return true;
        }
        let sa = self.server_address.trim_start_matches("https://").trim_start_matches("http://");
        let sa = sa.split('/').next().unwrap_or("");
        sa == host || (sa == "index.docker.io" || sa == "registry-1.docker.io") && host == "registry-1.docker.io"
    }
}

/// One place to fetch from: a mirror or the registry itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// URL prefix up to and including `/v2`.
    pub base: String,
    /// `host[:port]`.
    pub host: String,
    pub mirror: bool,
}

/// Whether `host[:port]` is a loopback address (or `localhost`).
pub fn is_loopback(host: &str) -> bool {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { host }).unwrap_or(host)
    };
    h == "localhost" || h.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

/// The client: an HTTP connection pool plus the registry configuration.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    cfg: RegistryConfig,
}

impl RegistryClient {
    pub fn new(cfg: RegistryConfig) -> Result<Self> {
        let insecure = cfg.insecure.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            let url = attempt.url();
            if url.scheme() == "https" {
                return attempt.follow();
            }
            let host = match (url.host_str(), url.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                _ => String::new(),
            };
            if url.scheme() == "http" && (is_loopback(&host) || insecure.contains(&host)) {
                attempt.follow()
            } else {
                attempt.error(format!("refusing redirect to plain-HTTP host {host}"))
            }
        });
        let http = reqwest::Client::builder()
            .redirect(policy)
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ImageError::Metadata(format!("building HTTP client: {e}")))?;
        Ok(RegistryClient { http, cfg })
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    /// Whether plain HTTP may be used for `host[:port]`.
    pub fn plain_http_allowed(&self, host: &str) -> bool {
        is_loopback(host) || self.cfg.insecure.iter().any(|i| i == host)
    }

    /// The endpoints for a registry domain, in the order they are tried: the configured mirrors,
    /// then the registry itself: HTTPS, with plain HTTP first for loopback hosts and as a fallback
    /// for configured insecure hosts.
    pub fn endpoints(&self, domain: &str) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = Vec::new();
        let mut push = |e: Endpoint| {
            if !out.contains(&e) {
                out.push(e);
            }
        };
        for m in self.cfg.mirrors.get(domain).into_iter().flatten() {
            let (scheme, rest) = match m.split_once("://") {
                Some((s, r)) => (s.to_ascii_lowercase(), r),
                None => ("https".to_string(), m.as_str()),
            };
            let rest = rest.trim_end_matches('/');
            let (host, path) = match rest.split_once('/') {
                Some((h, p)) => (h.to_string(), format!("/{p}")),
                None => (rest.to_string(), String::new()),
            };
            if scheme != "https" && !(scheme == "http" && self.plain_http_allowed(&host)) {
                tracing::warn!(mirror = %m, "ignoring mirror: plain HTTP is only allowed for loopback and [registry] insecure hosts");
                continue;
            }
            let path = if path.ends_with("/v2") { path } else { format!("{path}/v2") };
            push(Endpoint { base: format!("{scheme}://{host}{path}"), host, mirror: true });
        }
        let host = if domain == DOCKER_HUB { "registry-1.docker.io".to_string() } else { domain.to_string() };
        let https = Endpoint { base: format!("https://{host}/v2"), host: host.clone(), mirror: false };
        let http = Endpoint { base: format!("http://{host}/v2"), host: host.clone(), mirror: false };
        if is_loopback(&host) {
            // Local registries nearly always speak plain HTTP: try that first (as containerd does).
            push(http);
            push(https);
        } else if self.plain_http_allowed(&host) {
            // Configured insecure hosts: HTTPS first, plain HTTP as the fallback (as Docker does).
            push(https);
            push(http);
        } else {
            push(https);
        }
        out
    }

    /// A session pulling one reference.
    pub fn session(&self, reference: &Reference, auth: Option<Auth>) -> Session {
        let stall = Duration::from_secs(self.cfg.stall_timeout_secs.max(1));
        Session {
            client: self.clone(),
            reference: reference.clone(),
            endpoints: self.endpoints(&reference.domain),
            auth,
            stall,
            tokens: Mutex::new(HashMap::new()),
            preferred: Mutex::new(0),
            cancelled: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// State of one pull against a registry: endpoints, credentials and cached tokens.
pub struct Session {
    client: RegistryClient,
    reference: Reference,
    endpoints: Vec<Endpoint>,
    auth: Option<Auth>,
    stall: Duration,
    /// endpoint host → Authorization header value.
    tokens: Mutex<HashMap<String, String>>,
    /// Index of the endpoint that served the manifest; blobs are tried there first.
    preferred: Mutex<usize>,
    /// Set by [`Session::cancel`]: every download of this pull stops at its next chunk.
    cancelled: std::sync::atomic::AtomicBool,
}

enum Failure {
    NotFound(String),
    Unauthorized(String),
    Other(String),
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: HashMap<String, String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"` (quoted values may contain commas).
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(' ') | Some(',')) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() || chars.next() != Some('=') {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n)
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                val.push(c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), val.trim().to_string());
    }
    Some(Challenge { scheme: scheme.to_ascii_lowercase(), params })
}

impl Session {
    fn refname(&self) -> String {
        self.reference.to_string()
    }

    pub fn stall(&self) -> Duration {
        self.stall
    }

    fn reg_err(&self, message: String) -> ImageError {
        ImageError::Registry { reference: self.refname(), message }
    }

    fn auth_for(&self, ep: &Endpoint) -> Option<&Auth> {
        self.auth.as_ref().filter(|a| a.applies_to(&ep.host) || (ep.mirror && a.server_address.is_empty()))
    }

    /// Sends a GET, answering one authentication challenge if needed.
    async fn get(
        &self,
        ep: &Endpoint,
        url: &str,
        accept: Option<&str>,
    ) -> std::result::Result<reqwest::Response, Failure> {
        if let Some(a) = self.auth_for(ep) {
            if !a.registry_token.is_empty() {
                let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
                t.entry(ep.host.clone()).or_insert_with(|| format!("Bearer {}", a.registry_token));
            }
        }
        for attempt in 0..2 {
            let mut req = self.client.http.get(url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            let token = self.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(&ep.host).cloned();
            if let Some(t) = token {
                req = req.header(reqwest::header::AUTHORIZATION, t);
            }
            let resp = match tokio::time::timeout(self.stall, req.send()).await {
                Err(_) => {
                    return Err(Failure::Other(format!("{}: no response within {}s", ep.host, self.stall.as_secs())))
                }
                Ok(Err(e)) => return Err(Failure::Other(format!("{}: {}", ep.host, error_chain(&e)))),
                Ok(Ok(r)) => r,
            };
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                let ch = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                let Some(ch) = ch else {
                    return Err(Failure::Unauthorized(format!("{}: 401 without a challenge", ep.host)));
                };
                let header = self.answer(ep, &ch).await?;
                self.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(ep.host.clone(), header);
                continue;
            }
            if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
                return Err(Failure::Unauthorized(format!("{}: {}", ep.host, status)));
            }
            if status == reqwest::StatusCode::NOT_FOUND {
                return Err(Failure::NotFound(format!("{}: 404 Not Found", ep.host)));
            }
            if !status.is_success() {
                return Err(Failure::Other(format!("{}: HTTP {}", ep.host, status)));
            }
            return Ok(resp);
        }
        Err(Failure::Unauthorized(format!("{}: still unauthorized after authenticating", ep.host)))
    }

    /// Computes the Authorization header answering a challenge.
    async fn answer(&self, ep: &Endpoint, ch: &Challenge) -> std::result::Result<String, Failure> {
        let auth = self.auth_for(ep);
        match ch.scheme.as_str() {
            "basic" => match auth.and_then(Auth::basic) {
                Some((u, p)) => {
                    Ok(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
                }
                None => Err(Failure::Unauthorized(format!("{}: requires credentials", ep.host))),
            },
            "bearer" => {
                let realm = ch.params.get("realm").cloned().unwrap_or_default();
                let url = reqwest::Url::parse(&realm)
                    .map_err(|_| Failure::Unauthorized(format!("{}: bad token realm {realm:?}", ep.host)))?;
                let realm_host = match (url.host_str(), url.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_string(),
                    _ => String::new(),
                };
                if url.scheme() != "https" && !(url.scheme() == "http" && self.client.plain_http_allowed(&realm_host)) {
                    return Err(Failure::Unauthorized(format!(
                        "{}: refusing plain-HTTP token realm {realm_host}",
                        ep.host
                    )));
                }
                let service = ch.params.get("service").cloned().unwrap_or_default();
                let scope = ch
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.reference.path));
                let req = match auth {
                    Some(a) if !a.identity_token.is_empty() => self.client.http.post(url).form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", a.identity_token.as_str()),
                        ("service", service.as_str()),
                        ("scope", scope.as_str()),
                        ("client_id", "skiff"),
                    ]),
                    _ => {
                        let mut q = vec![("scope", scope.as_str())];
                        if !service.is_empty() {
                            q.push(("service", service.as_str()));
                        }
                        let mut r = self.client.http.get(url).query(&q);
                        if let Some((u, p)) = auth.and_then(Auth::basic) {
                            r = r.basic_auth(u, Some(p));
                        }
                        r
                    }
                };
                let resp = tokio::time::timeout(self.stall, req.send())
                    .await
                    .map_err(|_| Failure::Other(format!("token server {realm_host}: no response")))?
                    .map_err(|e| Failure::Other(format!("token server {realm_host}: {}", error_chain(&e))))?;
                if !resp.status().is_success() {
                    return Err(Failure::Unauthorized(format!("token server {realm_host}: HTTP {}", resp.status())));
                }
                #[derive(serde::Deserialize)]
                struct Tok {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body = tokio::time::timeout(self.stall, resp.bytes())
                    .await
                    .map_err(|_| Failure::Other(format!("token server {realm_host}: stalled")))?
                    .map_err(|e| Failure::Other(format!("token server {realm_host}: {e}")))?;
                let t: Tok = serde_json::from_slice(&body)
                    .map_err(|_| Failure::Unauthorized(format!("token server {realm_host}: invalid token response")))?;
                let tok = t
                    .token
                    .or(t.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| Failure::Unauthorized(format!("token server {realm_host}: empty token")))?;
                Ok(format!("Bearer {tok}"))
            }
            other => Err(Failure::Unauthorized(format!("{}: unsupported auth scheme {other:?}", ep.host))),
        }
    }

    fn endpoint_order(&self) -> Vec<usize> {
        let p = *self.preferred.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = vec![p];
        v.extend((0..self.endpoints.len()).filter(|&i| i != p));
        v
    }

    fn combine(&self, what: &str, fails: Vec<Failure>) -> ImageError {
        let mut msgs = Vec::new();
        let (mut nf, mut unauth) = (false, false);
        for f in fails {
            match f {
                Failure::NotFound(m) => {
                    nf = true;
                    msgs.push(m)
                }
                Failure::Unauthorized(m) => {
                    unauth = true;
                    msgs.push(m)
                }
                Failure::Other(m) => msgs.push(m),
            }
        }
        let joined = msgs.join("; ");
        if unauth {
            ImageError::Unauthorized {
                reference: self.refname(),
                registry: self.reference.domain.clone(),
                status: joined,
            }
        } else if nf {
            ImageError::RegistryNotFound { reference: self.refname(), what: what.to_string(), details: joined }
        } else {
            self.reg_err(format!("fetching {what}: {joined}"))
        }
    }

    /// Fetches a manifest by tag or digest, trying the endpoints in order.
    /// Returns the body and its content type.
    pub async fn manifest(&self, tag_or_digest: &str, max: usize) -> Result<(Vec<u8>, String)> {
        let mut fails = Vec::new();
        for i in self.endpoint_order() {
            let ep = &self.endpoints[i];
            let url = format!("{}/{}/manifests/{}", ep.base, self.reference.path, tag_or_digest);
            match self.get(ep, &url, Some(MANIFEST_ACCEPT)).await {
                Ok(resp) => {
                    let ct = resp
                        .headers()
                        .get(reqwest::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    match self.read_small(resp, max, &format!("manifest {tag_or_digest}")).await {
                        Ok(body) => {
                            *self.preferred.lock().unwrap_or_else(|p| p.into_inner()) = i;
                            if ep.mirror {
                                tracing::info!(reference = %self.reference, mirror = %ep.base, "manifest served by mirror");
                            }
                            return Ok((body, ct));
                        }
                        Err(e @ ImageError::Stalled { .. }) => fails.push(Failure::Other(e.to_string())),
                        Err(e) => return Err(e),
                    }
                }
                Err(f) => {
                    let msg = match &f {
                        Failure::NotFound(m) | Failure::Unauthorized(m) | Failure::Other(m) => m.clone(),
                    };
                    tracing::debug!(reference = %self.reference, endpoint = %ep.base, "manifest fetch failed: {msg}");
                    fails.push(f)
                }
            }
        }
        Err(self.combine(&format!("manifest {tag_or_digest:?}"), fails))
    }

    async fn read_small(&self, mut resp: reqwest::Response, max: usize, what: &str) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            match tokio::time::timeout(self.stall, resp.chunk()).await {
                Err(_) => {
                    return Err(ImageError::Stalled {
                        reference: self.refname(),
                        what: what.to_string(),
                        secs: self.stall.as_secs(),
                    })
                }
                Ok(Err(e)) => return Err(self.reg_err(format!("reading {what}: {}", error_chain(&e)))),
                Ok(Ok(None)) => return Ok(body),
                Ok(Ok(Some(c))) => {
                    body.extend_from_slice(&c);
                    if body.len() > max {
                        return Err(ImageError::InvalidManifest {
                            reference: self.refname(),
                            reason: format!("{what} larger than {max} bytes"),
                        });
                    }
                }
            }
        }
    }

    /// Starts fetching a blob; returns the response whose body is streamed by the caller.
    pub async fn blob(&self, digest: &Digest) -> Result<reqwest::Response> {
        let mut fails = Vec::new();
        for i in self.endpoint_order() {
            let ep = &self.endpoints[i];
            let url = format!("{}/{}/blobs/{}", ep.base, self.reference.path, digest);
            match self.get(ep, &url, None).await {
                Ok(r) => return Ok(r),
                Err(f) => fails.push(f),
            }
        }
        Err(self.combine(&format!("blob {digest}"), fails))
    }

    /// Fetches a small blob (config) into memory, verifying digest and size.
    pub async fn small_blob(&self, digest: &Digest, size: u64, max: usize) -> Result<Vec<u8>> {
        if size as usize > max {
            return Err(ImageError::InvalidManifest {
                reference: self.refname(),
                reason: format!("blob {digest} claims {size} bytes, more than {max}"),
            });
        }
        let resp = self.blob(digest).await?;
        let body = self.read_small(resp, max, &format!("blob {digest}")).await?;
        if body.len() as u64 != size {
            return Err(ImageError::SizeMismatch {
                what: format!("blob {digest}"),
                expected: size,
                actual: body.len() as u64,
            });
        }
        let got = Digest::of(&body);
        if &got != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("blob {digest}"),
                expected: digest.to_string(),
                actual: got.to_string(),
            });
        }
        Ok(body)
    }

    /// Reads the next chunk of a streamed body, failing after the stall timeout.
    /// Stops every download of this pull at its next chunk (another part of the pull failed):
    /// they end with an error, so their workers discard what they wrote, and the pull can wait
    /// for all of them before it cleans up.
    pub fn cancel(&self) {
        self.cancelled.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub async fn next_chunk(&self, resp: &mut reqwest::Response, what: &str) -> Result<Option<bytes::Bytes>> {
        if self.cancelled.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ImageError::Registry {
                reference: self.refname(),
                message: format!("{what}: stopped, another part of the pull failed"),
            });
        }
        match tokio::time::timeout(self.stall, resp.chunk()).await {
            Err(_) => Err(ImageError::Stalled {
                reference: self.refname(),
                what: what.to_string(),
                secs: self.stall.as_secs(),
            }),
            Ok(Err(e)) => Err(self.reg_err(format!("reading {what}: {}", error_chain(&e)))),
            Ok(Ok(c)) => Ok(c),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        assert_eq!(c.params["service"], "registry.docker.io");
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
    }

    #[test]
    fn endpoints_and_plain_http() {
        let mut cfg = RegistryConfig::default();
        cfg.mirrors.insert(
            "registry.k8s.io".into(),
            vec!["http://127.0.0.1:5000".into(), "http://evil.example".into(), "mirror.example/prefix/".into()],
        );
        cfg.insecure = vec!["myregistry.local:5000".into()];
        let c = RegistryClient::new(cfg).unwrap();
        let e: Vec<_> = c.endpoints("registry.k8s.io").into_iter().map(|e| e.base).collect();
        assert_eq!(
            e,
            vec!["http://127.0.0.1:5000/v2", "https://mirror.example/prefix/v2", "https://registry.k8s.io/v2"]
        );
        let e: Vec<_> = c.endpoints("docker.io").into_iter().map(|e| e.base).collect();
        assert_eq!(e, vec!["https://registry-1.docker.io/v2"]);
        let e: Vec<_> = c.endpoints("myregistry.local:5000").into_iter().map(|e| e.base).collect();
        assert_eq!(e, vec!["https://myregistry.local:5000/v2", "http://myregistry.local:5000/v2"]);
        let e: Vec<_> = c.endpoints("127.0.0.1:5000").into_iter().map(|e| e.base).collect();
        assert_eq!(e, vec!["http://127.0.0.1:5000/v2", "https://127.0.0.1:5000/v2"]);
        assert!(is_loopback("localhost:5000") && is_loopback("[::1]:80") && is_loopback("127.0.0.2"));
        assert!(!is_loopback("10.0.0.1:5000") && !is_loopback("example.com"));
    }

    #[test]
    fn auth_is_redacted_and_decoded() {
        let a = Auth { auth: base64::engine::general_purpose::STANDARD.encode("u:p:w"), ..Default::default() };
        assert_eq!(a.basic(), Some(("u".into(), "p:w".into())));
        let a = Auth {
            username: "me".into(),
            password: "s3cret".into(),
            identity_token: "tok".into(),
            ..Default::default()
        };
        let dbg = format!("{a:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains("tok\"") && dbg.contains("me"));
        let a = Auth { server_address: "https://reg.example/".into(), ..Default::default() };
        assert!(a.applies_to("reg.example") && !a.applies_to("other.example"));
    }
}
