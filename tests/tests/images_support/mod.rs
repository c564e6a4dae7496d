//! Helpers for the image tests: a tiny in-test OCI registry (plain HTTP on 127.0.0.1, random
//! port) whose blobs can misbehave, layer tars built by hand (hostile paths included), and a
//! snapshot of the image store's files to prove a failed pull changed nothing.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(&sha2::Sha256::digest(data)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// How a blob is served.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Serve {
    Normal,
    /// Full Content-Length announced, half the bytes sent, connection closed.
    CutShort,
    /// Headers and a few bytes, then silence (for the stall timeout).
    Stall,
    /// Other bytes than the digest promises (same length).
    WrongBytes,
}

#[derive(Default)]
struct State {
    manifests: HashMap<String, (String, Vec<u8>)>,
    blobs: HashMap<String, (Vec<u8>, Serve)>,
    /// (user, password) required at /token; /v2/ then needs the bearer token.
    auth: Option<(String, String)>,
    /// Every request answered with 500.
    broken: bool,
    /// (user, password) required as HTTP basic auth on /v2/.
    basic: Option<(String, String)>,
    log: Vec<String>,
}

/// A tiny registry on 127.0.0.1.
pub struct MiniRegistry {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MiniRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const TOKEN: &str = "tok-abc123";
/// The identity (refresh) token the token endpoint accepts with the OAuth2 POST flow.
pub const REFRESH: &str = "refresh-xyz789";

impl MiniRegistry {
    pub async fn start() -> MiniRegistry {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = l.accept().await else { return };
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = handle(sock, st, addr).await;
                });
            }
        });
        MiniRegistry { addr, state, task }
    }

    /// `127.0.0.1:port`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn require_auth(&self, user: &str, pass: &str) {
        self.state.lock().unwrap().auth = Some((user.into(), pass.into()));
    }

    pub fn require_basic(&self, user: &str, pass: &str) {
        self.state.lock().unwrap().basic = Some((user.into(), pass.into()));
    }

    pub fn set_broken(&self, b: bool) {
        self.state.lock().unwrap().broken = b;
    }

    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn put_blob(&self, data: Vec<u8>, serve: Serve) -> String {
        let d = sha256(&data);
        self.state.lock().unwrap().blobs.insert(d.clone(), (data, serve));
        d
    }

    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: Vec<u8>) -> String {
        let d = sha256(&body);
        let mut s = self.state.lock().unwrap();
        s.manifests.insert(format!("{repo}/{d}"), (media_type.into(), body.clone()));
        s.manifests.insert(format!("{repo}/{reference}"), (media_type.into(), body));
        d
    }

    /// Pushes an image of uncompressed layer tars (gzipped here). `config` overrides the config
    /// blob; `serve[i]` how layer i is served. Returns the manifest digest.
    pub fn push_image(
        &self,
        repo: &str,
        tag: &str,
        layers: &[Vec<u8>],
        serve: &[Serve],
        config: Option<Vec<u8>>,
    ) -> String {
        self.push_image_with(repo, tag, layers, serve, config, true)
    }

    /// [`MiniRegistry::push_image`] with uncompressed layers when `gzip` is false.
    pub fn push_image_with(
        &self,
        repo: &str,
        tag: &str,
        layers: &[Vec<u8>],
        serve: &[Serve],
        config: Option<Vec<u8>>,
        gzip: bool,
    ) -> String {
        let mut ldescs = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, raw) in layers.iter().enumerate() {
            diff_ids.push(sha256(raw));
            let (blob, mt) = if gzip {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(raw).unwrap();
                (gz.finish().unwrap(), "application/vnd.oci.image.layer.v1.tar+gzip")
            } else {
                (raw.clone(), "application/vnd.oci.image.layer.v1.tar")
            };
            let size = blob.len();
            let d = self.put_blob(blob, serve.get(i).copied().unwrap_or(Serve::Normal));
            ldescs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": size}));
        }
        let cfg = config.unwrap_or_else(|| {
            serde_json::to_vec(&serde_json::json!({
                "architecture": "amd64", "os": "linux",
                "config": {"Cmd": ["/bin/sh"], "User": "1234"},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }))
            .unwrap()
        });
        let csize = cfg.len();
        let cd = self.put_blob(cfg, Serve::Normal);
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
            "layers": ldescs,
        });
        self.put_manifest(repo, tag, "application/vnd.oci.image.manifest.v1+json", serde_json::to_vec(&m).unwrap())
    }
}

async fn handle(mut sock: tokio::net::TcpStream, st: Arc<Mutex<State>>, addr: SocketAddr) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        if !buf[0].is_ascii_alphabetic() {
            return Ok(()); // a TLS hello or garbage: hang up
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    // Read a request body announced by Content-Length (token POSTs).
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).unwrap_or(buf.len());
    let clen = String::from_utf8_lossy(&buf[..head_end])
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + clen {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    let req = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = req.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let authz = headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.clone()).unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    st.lock().unwrap().log.push(format!("{method} {target} auth={}", authz.split(' ').next().unwrap_or("")));

    let (broken, auth, basic) = {
        let s = st.lock().unwrap();
        (s.broken, s.auth.clone(), s.basic.clone())
    };
    let respond = |status: &str, ctype: &str, extra: &str, body: &[u8]| -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: {ctype}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    if broken {
        sock.write_all(&respond("500 Internal Server Error", "text/plain", "", b"broken")).await?;
        return Ok(());
    }
    if path == "/token" {
        let ok = match &auth {
            Some(_) if method == "POST" => {
                body.contains("grant_type=refresh_token")
                    && body.contains(&format!("refresh_token={REFRESH}"))
                    && body.contains("scope=repository")
            }
            Some((u, p)) => {
                let want = format!("Basic {}", b64(format!("{u}:{p}").as_bytes()));
                authz == want && query.contains("scope=repository")
            }
            None => true,
        };
        let out = if ok {
            respond("200 OK", "application/json", "", format!(r#"{{"token":"{TOKEN}"}}"#).as_bytes())
        } else {
            respond("401 Unauthorized", "application/json", "", b"{}")
        };
        sock.write_all(&out).await?;
        return Ok(());
    }
    if auth.is_some() && authz != format!("Bearer {TOKEN}") {
        let ch = format!(
            "WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"mini\",scope=\"repository:x:pull\"\r\n"
        );
        sock.write_all(&respond("401 Unauthorized", "application/json", &ch, b"{}")).await?;
        return Ok(());
    }
    if let Some((u, p)) = &basic {
        if authz != format!("Basic {}", b64(format!("{u}:{p}").as_bytes())) {
            let ch = "WWW-Authenticate: Basic realm=\"mini\"\r\n";
            sock.write_all(&respond("401 Unauthorized", "application/json", ch, b"{}")).await?;
            return Ok(());
        }
    }
    if path == "/v2/" || path == "/v2" {
        sock.write_all(&respond("200 OK", "application/json", "", b"{}")).await?;
        return Ok(());
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        sock.write_all(&respond("404 Not Found", "text/plain", "", b"")).await?;
        return Ok(());
    };
    if let Some((repo, reference)) = rest.split_once("/manifests/") {
        let m = st.lock().unwrap().manifests.get(&format!("{repo}/{reference}")).cloned();
        let out = match m {
            Some((ct, body)) => {
                let dg = format!("Docker-Content-Digest: {}\r\n", sha256(&body));
                respond("200 OK", &ct, &dg, &body)
            }
            None => respond("404 Not Found", "application/json", "", br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
        };
        sock.write_all(&out).await?;
        return Ok(());
    }
    if let Some((_repo, digest)) = rest.split_once("/blobs/") {
        let b = st.lock().unwrap().blobs.get(digest).cloned();
        let Some((data, serve)) = b else {
            sock.write_all(&respond("404 Not Found", "application/json", "", b"{}")).await?;
            return Ok(());
        };
        match serve {
            Serve::Normal => sock.write_all(&respond("200 OK", "application/octet-stream", "", &data)).await?,
            Serve::WrongBytes => {
                let mut bad = data.clone();
                let n = bad.len();
                bad[n / 2] ^= 0xff;
                sock.write_all(&respond("200 OK", "application/octet-stream", "", &bad)).await?
            }
            Serve::CutShort => {
                let full = respond("200 OK", "application/octet-stream", "", &data);
                let cut = full.len() - data.len() / 2;
                sock.write_all(&full[..cut]).await?;
                sock.flush().await?;
                return Ok(()); // close mid-body
            }
            Serve::Stall => {
                let full = respond("200 OK", "application/octet-stream", "", &data);
                let hdr = full.len() - data.len();
                sock.write_all(&full[..hdr + 10.min(data.len())]).await?;
                sock.flush().await?;
                tokio::time::sleep(Duration::from_secs(600)).await;
            }
        }
        return Ok(());
    }
    sock.write_all(&respond("404 Not Found", "text/plain", "", b"")).await?;
    Ok(())
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Builds tar streams without path sanitising (the `tar` builder refuses `..`).
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    pub fn new() -> Self {
        TarBuilder { b: tar::Builder::new(Vec::new()) }
    }
    fn hdr(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        let name = &mut h.as_ustar_mut().unwrap().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }
    pub fn dir(mut self, p: &str) -> Self {
        let mut h = Self::hdr(p, tar::EntryType::Directory, 0o755, 0);
        h.set_cksum();
        self.b.append(&h, &b""[..]).unwrap();
        self
    }
    pub fn file(mut self, p: &str, data: &[u8]) -> Self {
        let mut h = Self::hdr(p, tar::EntryType::Regular, 0o644, data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }
    pub fn symlink(mut self, p: &str, target: &str) -> Self {
        let mut h = Self::hdr(p, tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name_literal(target).unwrap();
        h.set_cksum();
        self.b.append(&h, &b""[..]).unwrap();
        self
    }
    pub fn hardlink(mut self, p: &str, target: &str) -> Self {
        let mut h = Self::hdr(p, tar::EntryType::Link, 0o644, 0);
        h.set_link_name_literal(target).unwrap();
        h.set_cksum();
        self.b.append(&h, &b""[..]).unwrap();
        self
    }
    pub fn build(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// The files of the image store (blobs, snapshots, metadata), to compare before/after a pull.
pub fn store_files(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for sub in ["content/blobs/sha256", "content/ingest", "snapshots"] {
        if let Ok(rd) = std::fs::read_dir(root.join(sub)) {
            for e in rd.flatten() {
                out.insert(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    if let Ok(d) = std::fs::read(root.join("metadata/images.json")) {
        out.insert(format!("metadata/images.json:{}", sha256(&d)));
    }
    out
}

/// A unique marker name for paths a hostile layer tries to reach.
pub fn marker(tag: &str) -> String {
    format!("skiff-hostile-{tag}-{}-{:x}", std::process::id(), rand::random::<u32>())
}
