//! nftables rules of the built-in bridge: masquerade and host ports, all in skiff's own table.
//!
//! Rules are applied with the `nft` command (Debian's nftables): a script on stdin (`nft -f -`) is
//! one atomic transaction, and `nft -j` lists rules with their handles. Only the table named in the
//! configuration (`nft_table`, always starting with `skiff`) is ever created, changed or deleted.
//!
//! Layout of `table inet <table>`:
//! - `prerouting` (nat, dstnat) and `output` (nat, dstnat): `fib daddr type local jump hostports`,
//!   so host ports answer on every local address, including 127.0.0.1 and the node IP;
//! - `hostports`: the per-pod DNAT rules, each tagged `comment "skiff:pod=<pod id>"`;
//! - `postrouting` (nat, srcnat): masquerade of 127.0.0.0/8 sources leaving through the bridge
//!   (needs `route_localnet` on the bridge), of DNATed pod→pod traffic (hairpin: a pod reaching
//!   itself or another pod through a host port), and of pod traffic leaving the pod ranges.
//!   The base chains are flushed and refilled on every `ensure_base` (same transaction).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::cidr::Cidr;
use crate::error::{NetworkError, Result};
use crate::types::PortMapping;

const NFT_TIMEOUT: Duration = Duration::from_secs(30);
const POD_TAG: &str = "skiff:pod=";

/// Settings of the base chains.
#[derive(Debug, Clone)]
pub(crate) struct BaseRules {
    pub bridge: String,
    pub v4: Cidr,
    pub v6: Option<Cidr>,
    pub masquerade: bool,
}

/// skiff's nftables table.
#[derive(Debug, Clone)]
pub struct Nft {
    table: String,
}

/// Find the `nft` binary.
pub(crate) fn nft_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join("nft")).find(|p| p.is_file())
}

/// The comment tagging the rules of one pod.
fn pod_tag(pod_id: &str) -> String {
    format!("{POD_TAG}{pod_id}")
}

impl Nft {
    /// The table `inet <table>`; the name must start with `skiff` and be a plain identifier.
    pub fn new(table: &str) -> Result<Self> {
        if !valid_table(table) {
            return Err(NetworkError::Config(format!(
                "nft_table {table:?}: must start with \"skiff\" and contain only letters, digits and _ (at most 64)"
            )));
        }
        Ok(Self { table: table.to_string() })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    async fn nft(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let bin = nft_binary().ok_or_else(|| NetworkError::Nft("the nft command was not found".into()))?;
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| NetworkError::Nft(format!("run {}: {e}", bin.display())))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await.map_err(|e| NetworkError::Nft(format!("write to nft: {e}")))?;
            drop(pipe);
        }
        let out = tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| NetworkError::Nft(format!("nft {args:?} timed out")))?
            .map_err(|e| NetworkError::Nft(format!("wait for nft: {e}")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(NetworkError::Nft(match stdin {
                Some(s) => format!("{err}\nscript:\n{s}"),
                None => format!("nft {}: {err}", args.join(" ")),
            }));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn apply(&self, script: &str) -> Result<()> {
        tracing::debug!(table = %self.table, script, "nft -f -");
        self.nft(&["-f", "-"], Some(script)).await.map(|_| ())
    }

    /// Create the table and chains (idempotent) and (re)write the base rules, atomically.
    pub(crate) async fn ensure_base(&self, base: &BaseRules) -> Result<()> {
        let t = format!("inet {}", self.table);
        let br = &base.bridge;
        let mut s = String::new();
        s += &format!("add table {t}\n");
        s += &format!("add chain {t} prerouting {{ type nat hook prerouting priority -100; policy accept; }}\n");
        s += &format!("add chain {t} output {{ type nat hook output priority -100; policy accept; }}\n");
        s += &format!("add chain {t} postrouting {{ type nat hook postrouting priority 100; policy accept; }}\n");
        s += &format!("add chain {t} hostports\n");
        for c in ["prerouting", "output", "postrouting"] {
            s += &format!("flush chain {t} {c}\n");
        }
        s += &format!("add rule {t} prerouting fib daddr type local jump hostports\n");
        s += &format!("add rule {t} output fib daddr type local jump hostports\n");
        s += &format!("add rule {t} postrouting ip saddr 127.0.0.0/8 oifname \"{br}\" masquerade\n");
        s += &format!("add rule {t} postrouting ct status dnat ip saddr {} oifname \"{br}\" masquerade\n", base.v4);
        if let Some(v6) = &base.v6 {
            s += &format!("add rule {t} postrouting ct status dnat ip6 saddr {v6} oifname \"{br}\" masquerade\n");
        }
        if base.masquerade {
            s += &format!("add rule {t} postrouting ip saddr {0} ip daddr != {0} masquerade\n", base.v4);
            if let Some(v6) = &base.v6 {
                s += &format!("add rule {t} postrouting ip6 saddr {v6} ip6 daddr != {v6} masquerade\n");
            }
        }
        self.apply(&s).await
    }

    /// Whether the table exists.
    pub async fn table_exists(&self) -> Result<bool> {
        // Over netlink (no process); the `nft` command only where that fails.
        let table = self.table.clone();
        match tokio::task::spawn_blocking(move || crate::nfnl::table_exists(&table)).await {
            Ok(Ok(exists)) => return Ok(exists),
            Ok(Err(e)) => tracing::debug!(error = %e, "nftables table query over netlink failed; asking nft"),
            Err(e) => tracing::debug!(error = %e, "nftables table query task failed; asking nft"),
        }
        match self.nft(&["-j", "list", "table", "inet", &self.table], None).await {
            Ok(_) => Ok(true),
            Err(NetworkError::Nft(m)) if m.contains("No such file or directory") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Add the DNAT rules of one pod's port mappings (one transaction); nothing when the pod
    /// has rules already. A host port already mapped by another pod is refused (the first rule
    /// would win silently).
    /// The caller serializes rule changes, so check and add cannot race.
    pub(crate) async fn add_pod(&self, pod_id: &str, mappings: &[PortMapping], ips: &[IpAddr]) -> Result<()> {
        let script = pod_rules(&self.table, pod_id, mappings, ips);
        if script.is_empty() {
            return Ok(());
        }
        let tag = pod_tag(pod_id);
        let existing = self.hostport_rules().await?;
        if existing.iter().any(|r| r.comment == tag) {
            // Already there (one transaction adds all of a pod's rules): restored meanwhile
            // from the pod's host-port record.
            return Ok(());
        }
        for m in mappings.iter().filter(|m| m.host_port != 0) {
            let host_ip = m.host_ip.filter(|ip| !ip.is_unspecified());
            for r in existing.iter().filter(|r| r.comment != tag) {
                let same_family = match (host_ip, r.daddr) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                };
                if r.l4proto.as_deref() == Some(m.protocol.as_str()) && r.dport == Some(m.host_port) && same_family {
                    let other = r.comment.strip_prefix(POD_TAG).unwrap_or(&r.comment);
                    return Err(NetworkError::InvalidArgument(format!(
                        "host port {}/{} is already mapped by pod {other}",
                        m.host_port, m.protocol
                    )));
                }
            }
        }
        self.apply(&script).await
    }

    /// Every rule in `hostports`; empty when the table is gone (or when nft is not installed:
    /// then no rule can exist either).
    async fn hostport_rules(&self) -> Result<Vec<HostPortRule>> {
        if nft_binary().is_none() {
            return Ok(Vec::new());
        }
        let out = match self.nft(&["-j", "-a", "list", "chain", "inet", &self.table, "hostports"], None).await {
            Ok(o) => o,
            Err(NetworkError::Nft(m)) if m.contains("No such file or directory") => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        parse_rules(&out)
    }

    async fn delete_handles(&self, handles: &[u64]) -> Result<()> {
        if handles.is_empty() {
            return Ok(());
        }
        let mut s = String::new();
        for h in handles {
            s += &format!("delete rule inet {} hostports handle {h}\n", self.table);
        }
        self.apply(&s).await
    }

    /// Remove the rules of one pod; returns how many were removed (0 is fine).
    pub async fn remove_pod(&self, pod_id: &str) -> Result<usize> {
        let tag = pod_tag(pod_id);
        let handles: Vec<u64> =
            self.hostport_rules().await?.into_iter().filter(|r| r.comment == tag).map(|r| r.handle).collect();
        self.delete_handles(&handles).await?;
        Ok(handles.len())
    }

    /// Remove the rules of every pod not in `live`; returns how many were removed.
    pub async fn remove_pods_except(&self, live: &HashSet<String>) -> Result<usize> {
        let handles: Vec<u64> = self
            .hostport_rules()
            .await?
            .into_iter()
            .filter(|r| r.comment.strip_prefix(POD_TAG).is_some_and(|id| !live.contains(id)))
            .map(|r| r.handle)
            .collect();
        self.delete_handles(&handles).await?;
        Ok(handles.len())
    }

    /// Number of rules tagged for `pod_id` (for tests and diagnostics).
    pub async fn pod_rule_count(&self, pod_id: &str) -> Result<usize> {
        let tag = pod_tag(pod_id);
        Ok(self.hostport_rules().await?.iter().filter(|r| r.comment == tag).count())
    }

    /// Delete the whole table (tests; uninstall). A missing table is fine.
    pub async fn delete_table(&self) -> Result<()> {
        if self.table_exists().await? {
            self.apply(&format!("delete table inet {}\n", self.table)).await?;
        }
        Ok(())
    }
}

/// What skiff needs to know about one rule of `hostports`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPortRule {
    handle: u64,
    comment: String,
    l4proto: Option<String>,
    dport: Option<u16>,
    daddr: Option<IpAddr>,
}

/// Parse `nft -j -a list chain ...` output.
fn parse_rules(out: &str) -> Result<Vec<HostPortRule>> {
    let v: Value = serde_json::from_str(out).map_err(|e| NetworkError::Nft(format!("parse nft -j output: {e}")))?;
    let mut rules = Vec::new();
    for item in v.get("nftables").and_then(Value::as_array).into_iter().flatten() {
        let Some(rule) = item.get("rule") else { continue };
        let Some(handle) = rule.get("handle").and_then(Value::as_u64) else { continue };
        let mut r = HostPortRule {
            handle,
            comment: rule.get("comment").and_then(Value::as_str).unwrap_or_default().to_string(),
            l4proto: None,
            dport: None,
            daddr: None,
        };
        for e in rule.get("expr").and_then(Value::as_array).into_iter().flatten() {
            let Some(m) = e.get("match") else { continue };
            let (left, right) = (m.get("left"), m.get("right"));
            if left.and_then(|l| l.get("meta")).and_then(|m| m.get("key")).and_then(Value::as_str) == Some("l4proto") {
                r.l4proto = right.and_then(Value::as_str).map(String::from);
            }
            if let Some(p) = left.and_then(|l| l.get("payload")) {
                match p.get("field").and_then(Value::as_str) {
                    Some("dport") => {
                        r.dport = right.and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok());
                        // nft folds `meta l4proto tcp th dport N` into `tcp dport N`
                        match p.get("protocol").and_then(Value::as_str) {
                            Some("th") | None => {}
                            Some(proto) => r.l4proto = Some(proto.to_string()),
                        }
                    }
                    Some("daddr") => r.daddr = right.and_then(Value::as_str).and_then(|s| s.parse().ok()),
                    _ => {}
                }
            }
        }
        rules.push(r);
    }
    Ok(rules)
}

fn valid_table(t: &str) -> bool {
    t.starts_with("skiff") && t.len() <= 64 && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The nft script adding one pod's DNAT rules.
fn pod_rules(table: &str, pod_id: &str, mappings: &[PortMapping], ips: &[IpAddr]) -> String {
    let tag = pod_tag(pod_id);
    let mut s = String::new();
    for m in mappings.iter().filter(|m| m.host_port != 0) {
        let host_ip = m.host_ip.filter(|ip| !ip.is_unspecified());
        for ip in ips {
            let daddr = match (host_ip, ip) {
                (None, IpAddr::V4(_)) => "meta nfproto ipv4".to_string(),
                (None, IpAddr::V6(_)) => "meta nfproto ipv6".to_string(),
                (Some(IpAddr::V4(h)), IpAddr::V4(_)) => format!("ip daddr {h}"),
                (Some(IpAddr::V6(h)), IpAddr::V6(_)) => format!("ip6 daddr {h}"),
                _ => continue, // host IP of the other family
            };
            let to = match ip {
                IpAddr::V4(a) => format!("ip to {a}:{}", m.container_port),
                IpAddr::V6(a) => format!("ip6 to [{a}]:{}", m.container_port),
            };
            s += &format!(
                "add rule inet {table} hostports {daddr} meta l4proto {} th dport {} dnat {to} comment \"{tag}\"\n",
                m.protocol, m.host_port
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Protocol;

    #[test]
    fn rules_per_family_and_host_ip() {
        let ips: Vec<IpAddr> = vec!["10.1.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        let m = vec![
            PortMapping { protocol: Protocol::Tcp, container_port: 80, host_port: 8080, host_ip: None },
            PortMapping {
                protocol: Protocol::Udp,
                container_port: 53,
                host_port: 5353,
                host_ip: Some("127.0.0.1".parse().unwrap()),
            },
            PortMapping { protocol: Protocol::Sctp, container_port: 9, host_port: 0, host_ip: None },
        ];
        let s = pod_rules("skiff", "abc", &m, &ips);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 3, "{s}");
        assert_eq!(
            lines[0],
            "add rule inet skiff hostports meta nfproto ipv4 meta l4proto tcp th dport 8080 dnat ip to 10.1.0.2:80 comment \"skiff:pod=abc\""
        );
        assert!(lines[1].contains("dnat ip6 to [fd00::2]:80"));
        assert!(lines[2].contains("ip daddr 127.0.0.1 meta l4proto udp th dport 5353 dnat ip to 10.1.0.2:53"));
    }

    #[test]
    fn parse_listing() {
        let out = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"chain": {"family": "inet", "table": "skiff", "name": "hostports", "handle": 4}},
          {"rule": {"family": "inet", "table": "skiff", "chain": "hostports", "handle": 9, "comment": "skiff:pod=abc", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.0.0.1"}},
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": 5353}},
            {"dnat": {"family": "ip", "addr": "10.1.0.2", "port": 53}}]}},
          {"rule": {"family": "inet", "table": "skiff", "chain": "hostports", "handle": 10, "comment": "skiff:pod=def", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "sctp", "field": "dport"}}, "right": 1235}},
            {"dnat": {"family": "ip", "addr": "10.1.0.3", "port": 80}}]}}]}"#;
        let r = parse_rules(out).unwrap();
        assert_eq!(
            r,
            vec![
                HostPortRule {
                    handle: 9,
                    comment: "skiff:pod=abc".into(),
                    l4proto: Some("udp".into()),
                    dport: Some(5353),
                    daddr: Some("127.0.0.1".parse().unwrap()),
                },
                HostPortRule {
                    handle: 10,
                    comment: "skiff:pod=def".into(),
                    l4proto: Some("sctp".into()),
                    dport: Some(1235),
                    daddr: None,
                }
            ]
        );
    }

    #[test]
    fn table_names() {
        assert!(Nft::new("skiff").is_ok());
        assert!(Nft::new("skiff_t123").is_ok());
        assert!(Nft::new("filter").is_err());
        assert!(Nft::new("skiff; flush ruleset").is_err());
    }
}
