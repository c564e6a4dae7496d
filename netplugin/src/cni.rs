//! Standard CNI plugins (`plugin = "cni"`), executed per the CNI spec 0.3.x/0.4.0/1.0.0/1.1.0.
//!
//! - Configuration: the first file (lexical order) ending in `.conflist`, `.conf` or `.json` in
//!   `cni_conf_dir`; a single-plugin `.conf` is wrapped into a list. A missing or invalid file (or
//!   a plugin binary missing from `cni_bin_dirs`) makes `status()` NotReady naming the file and
//!   the reason; it is re-read on every `status`/`setup`, so a config written later is picked up.
//! - ADD runs the plugins in order, each getting the previous result as `prevResult`; plugins
//!   declaring `capabilities.portMappings` (`dns`, `cgroupPath`, `io.kubernetes.cri.pod-annotations`)
//!   get them in `runtimeConfig`. Env: `CNI_COMMAND`, `CNI_CONTAINERID` (= pod id), `CNI_NETNS`,
//!   `CNI_IFNAME` (= eth0), `CNI_ARGS` (`IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;
//!   K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..`), `CNI_PATH` (= `cni_bin_dirs`), plus `PATH`.
//!   A failed ADD is followed by a DEL of the whole list.
//! - The network config and the ADD result are cached in `ROOT/network/cni/<pod id>-eth0.json`
//!   (written before ADD as "pending", then with the result). DEL (teardown, recover) uses the
//!   cached config and result (`prevResult`), runs the plugins in reverse order, and tolerates a
//!   missing netns (plugins must, per spec); the cache is removed once DEL succeeded.
//! - CHECK (0.4.0+, unless `disableCheck`) via [`CniNetwork::check`]; STATUS (1.1.0+) in `status()`.
//! - Every plugin call is limited to `cni_timeout_secs` (the plugin is killed after that).

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

use crate::config::NetworkConfig;
use crate::error::{NetworkError, Result};
use crate::fsutil::{remove_durable, write_atomic};
use crate::types::{NotReady, PodNetworkRequest, PodNetworkStatus};
use crate::{validate_id, validate_request, NetworkPlugin};

const IFNAME: &str = "eth0";
const CACHE_VERSION: u32 = 1;
const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A loaded network configuration list.
#[derive(Debug, Clone)]
pub struct ConfList {
    /// The file it came from.
    pub file: PathBuf,
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    /// The plugin configurations, in order.
    pub plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    fn to_json(&self) -> Value {
        json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": self.plugins,
        })
    }

    pub fn from_json(file: &Path, v: Value) -> std::result::Result<Self, String> {
        let Value::Object(mut obj) = v else { return Err("not a JSON object".into()) };
        let is_list = obj.contains_key("plugins");
        let name = obj.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        if name.is_empty() {
            return Err("missing \"name\"".into());
        }
        let cni_version = obj.get("cniVersion").and_then(Value::as_str).unwrap_or_default().to_string();
        if !SUPPORTED.contains(&cni_version.as_str()) {
            return Err(format!("unsupported cniVersion {cni_version:?} (supported: {})", SUPPORTED.join(", ")));
        }
        let disable_check = obj.get("disableCheck").and_then(Value::as_bool).unwrap_or(false);
        let plugins: Vec<Map<String, Value>> = if is_list {
            let Some(Value::Array(list)) = obj.remove("plugins") else {
                return Err("\"plugins\" is not an array".into());
            };
            list.into_iter()
                .enumerate()
                .map(|(i, p)| match p {
                    Value::Object(m) => Ok(m),
                    _ => Err(format!("plugins[{i}] is not an object")),
                })
                .collect::<std::result::Result<_, _>>()?
        } else {
            vec![obj]
        };
        if plugins.is_empty() {
            return Err("\"plugins\" is empty".into());
        }
        for (i, p) in plugins.iter().enumerate() {
            let t = p.get("type").and_then(Value::as_str).unwrap_or_default();
            if t.is_empty() || t.contains('/') || t.starts_with('.') {
                return Err(format!("plugins[{i}] has no valid \"type\""));
            }
        }
        Ok(Self { file: file.to_path_buf(), name, cni_version, disable_check, plugins })
    }
}

/// What is cached per pod for DEL/CHECK.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    version: u32,
    container_id: String,
    if_name: String,
    netns: PathBuf,
    network_name: String,
    /// The config list used for ADD.
    config: Value,
    /// The final ADD result (`None` while ADD is in progress or when it failed).
    result: Option<Value>,
    cni_args: String,
    runtime_config: Map<String, Value>,
}

/// The CNI plugin runner.
pub struct CniNetwork {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    timeout: Duration,
    cache_dir: PathBuf,
}

/// Versions a plugin result/prevResult/CHECK applies to.
fn version_at_least(v: &str, major: u64, minor: u64) -> bool {
    let mut it = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

impl CniNetwork {
    /// A CNI runner from the `[network]` section; results are cached under `root/network/cni/`.
    pub fn new(config: &NetworkConfig, root: &Path) -> Result<Self> {
        if config.cni_bin_dirs.is_empty() {
            return Err(NetworkError::Config("cni_bin_dirs is empty".into()));
        }
        Ok(Self {
            conf_dir: config.cni_conf_dir.clone(),
            bin_dirs: config.cni_bin_dirs.clone(),
            timeout: Duration::from_secs(config.cni_timeout_secs.max(1)),
            cache_dir: root.join("network").join("cni"),
        })
    }

    /// Load the first network configuration of `cni_conf_dir`.
    pub fn load_config(&self) -> std::result::Result<ConfList, NotReady> {
        let dir = &self.conf_dir;
        let rd = std::fs::read_dir(dir)
            .map_err(|e| NotReady::new("NoCniConfig", format!("no network config found in {}: {e}", dir.display())))?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("conflist" | "conf" | "json"))
            })
            .collect();
        files.sort();
        let file = files
            .into_iter()
            .next()
            .ok_or_else(|| NotReady::new("NoCniConfig", format!("no network config found in {}", dir.display())))?;
        let invalid = |why: String| NotReady::new("InvalidCniConfig", format!("{}: {why}", file.display()));
        let data = std::fs::read(&file).map_err(|e| invalid(e.to_string()))?;
        let v: Value = serde_json::from_slice(&data).map_err(|e| invalid(format!("invalid JSON: {e}")))?;
        let list = ConfList::from_json(&file, v).map_err(invalid)?;
        for p in &list.plugins {
            let t = p.get("type").and_then(Value::as_str).unwrap_or_default();
            if self.find_plugin(t).is_none() {
                return Err(NotReady::new(
                    "CniPluginMissing",
                    format!(
                        "{}: plugin {t:?} not found in {}",
                        file.display(),
                        self.bin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
                    ),
                ));
            }
        }
        Ok(list)
    }

    fn find_plugin(&self, t: &str) -> Option<PathBuf> {
        self.bin_dirs.iter().map(|d| d.join(t)).find(|p| p.is_file())
    }

    fn cache_path(&self, pod_id: &str) -> PathBuf {
        self.cache_dir.join(format!("{pod_id}-{IFNAME}.json"))
    }

    fn read_cache(&self, pod_id: &str) -> Result<Option<CacheEntry>> {
        let p = self.cache_path(pod_id);
        match std::fs::read(&p) {
            Ok(d) => serde_json::from_slice(&d)
                .map(Some)
                .map_err(|e| NetworkError::Internal(format!("corrupt CNI cache {}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NetworkError::io("read", p, e)),
        }
    }

    fn write_cache(&self, entry: &CacheEntry) -> Result<()> {
        let data = serde_json::to_vec_pretty(entry)
            .map_err(|e| NetworkError::Internal(format!("serialize CNI cache: {e}")))?;
        write_atomic(&self.cache_path(&entry.container_id), &data)
    }

    fn cni_args(req: &PodNetworkRequest) -> String {
        let clean = |s: &str| s.chars().all(|c| c != ';' && c != '=');
        let mut args = vec!["IgnoreUnknown=1".to_string()];
        for (k, v) in [
            ("K8S_POD_NAMESPACE", &req.namespace),
            ("K8S_POD_NAME", &req.name),
            ("K8S_POD_INFRA_CONTAINER_ID", &req.id),
            ("K8S_POD_UID", &req.uid),
        ] {
            if !v.is_empty() && clean(v) {
                args.push(format!("{k}={v}"));
            }
        }
        args.join(";")
    }

    fn runtime_config(req: &PodNetworkRequest) -> Map<String, Value> {
        let mut rc = Map::new();
        let ports: Vec<Value> = req
            .port_mappings
            .iter()
            .filter(|m| m.host_port != 0)
            .map(|m| {
                let mut o = json!({
                    "hostPort": m.host_port,
                    "containerPort": m.container_port,
                    "protocol": m.protocol.as_str(),
                });
                if let Some(ip) = m.host_ip.filter(|ip| !ip.is_unspecified()) {
                    o["hostIP"] = json!(ip.to_string());
                }
                o
            })
            .collect();
        rc.insert("portMappings".into(), Value::Array(ports));
        if let Some(dns) = &req.dns {
            rc.insert("dns".into(), json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}));
        }
        if !req.cgroup_parent.is_empty() {
            rc.insert("cgroupPath".into(), json!(req.cgroup_parent));
        }
        rc.insert("io.kubernetes.cri.pod-annotations".into(), json!(req.annotations));
        rc
    }

    /// The stdin config of one plugin call.
    fn plugin_stdin(
        list: &ConfList,
        plugin: &Map<String, Value>,
        prev: Option<&Value>,
        runtime_config: &Map<String, Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        conf.insert("name".into(), json!(list.name));
        conf.insert("cniVersion".into(), json!(list.cni_version));
        if let Some(p) = prev {
            conf.insert("prevResult".into(), p.clone());
        }
        let caps: Vec<String> = plugin
            .get("capabilities")
            .and_then(Value::as_object)
            .map(|c| c.iter().filter(|(_, v)| v.as_bool() == Some(true)).map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        let rc: Map<String, Value> =
            runtime_config.iter().filter(|(k, _)| caps.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        Value::Object(conf)
    }

    /// Run one plugin; returns its parsed stdout (`Null` when empty).
    async fn exec(&self, plugin_type: &str, command: &str, entry: &CacheEntry, stdin: &Value) -> Result<Value> {
        let err = |code: Option<u64>, message: String| NetworkError::Cni {
            plugin: plugin_type.to_string(),
            command: command.to_string(),
            code,
            message,
        };
        let bin =
            self.find_plugin(plugin_type).ok_or_else(|| err(None, format!("not found in {:?}", self.bin_dirs)))?;
        let cni_path = std::env::join_paths(&self.bin_dirs).unwrap_or_else(|_| OsString::from("/opt/cni/bin"));
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &entry.container_id)
            .env("CNI_NETNS", &entry.netns)
            .env("CNI_IFNAME", &entry.if_name)
            .env("CNI_ARGS", &entry.cni_args)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let input = serde_json::to_vec(stdin).map_err(|e| err(None, format!("serialize config: {e}")))?;
        tracing::debug!(plugin = plugin_type, command, pod = %entry.container_id, "exec CNI plugin");
        let run = async {
            let mut child = cmd.spawn().map_err(|e| err(None, format!("spawn {}: {e}", bin.display())))?;
            if let Some(mut pipe) = child.stdin.take() {
                // A plugin may exit without reading stdin: a broken pipe is not the error to report.
                let _ = pipe.write_all(&input).await;
            }
            child.wait_with_output().await.map_err(|e| err(None, format!("wait: {e}")))
        };
        let out = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| err(None, format!("timed out after {:?}", self.timeout)))??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed: Option<Value> = if stdout.trim().is_empty() { None } else { serde_json::from_str(&stdout).ok() };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let (code, msg) = match &parsed {
                Some(v) => (
                    v.get("code").and_then(Value::as_u64),
                    format!(
                        "{}{}",
                        v.get("msg").and_then(Value::as_str).unwrap_or("error"),
                        v.get("details").and_then(Value::as_str).map(|d| format!(" ({d})")).unwrap_or_default()
                    ),
                ),
                None => (None, format!("{} {}", stdout.trim(), stderr.trim()).trim().to_string()),
            };
            return Err(err(code, format!("{msg} [exit status {}]", out.status)));
        }
        match parsed {
            Some(v) => Ok(v),
            None if stdout.trim().is_empty() => Ok(Value::Null),
            None => Err(err(None, format!("invalid JSON result: {stdout}"))),
        }
    }

    /// DEL over a config list in reverse order; every plugin is tried, the first error returned.
    async fn del(&self, list: &ConfList, entry: &CacheEntry) -> Result<()> {
        let prev = if version_at_least(&list.cni_version, 0, 4) { entry.result.as_ref() } else { None };
        let mut first_err = None;
        for plugin in list.plugins.iter().rev() {
            let t = plugin.get("type").and_then(Value::as_str).unwrap_or_default();
            let stdin = Self::plugin_stdin(list, plugin, prev, &entry.runtime_config);
            if let Err(e) = self.exec(t, "DEL", entry, &stdin).await {
                tracing::warn!(pod = %entry.container_id, error = %e, "CNI DEL failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The cache record of a pod's network before its ADD (no result yet).
    fn new_entry(req: &PodNetworkRequest, list: &ConfList) -> CacheEntry {
        CacheEntry {
            version: CACHE_VERSION,
            container_id: req.id.clone(),
            if_name: IFNAME.into(),
            netns: req.netns_path.clone(),
            network_name: list.name.clone(),
            config: list.to_json(),
            result: None,
            cni_args: Self::cni_args(req),
            runtime_config: Self::runtime_config(req),
        }
    }

    async fn do_setup(&self, req: &PodNetworkRequest) -> Result<PodNetworkStatus> {
        static PORT_MAPPING_ADD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let list = self.load_config().map_err(NetworkError::NotReady)?;
        let mut entry = Self::new_entry(req, &list);
        // Pending record first: a crash during ADD still leaves what DEL needs.
        self.write_cache(&entry)?;
        let mut prev: Option<Value> = None;
        let mut failure = None;
        for plugin in &list.plugins {
            let t = plugin.get("type").and_then(Value::as_str).unwrap_or_default();
            let stdin = Self::plugin_stdin(&list, plugin, prev.as_ref(), &entry.runtime_config);
            // The plugin that maps host ports (portmap) creates shared top-level chains on the
            // node's first mapping and fails when two ADDs race to create them ("File exists"
            // from iptables-nft): one such ADD at a time in this process, the node's only caller.
            let maps_ports = !req.port_mappings.is_empty()
                && plugin.get("capabilities").and_then(|c| c.get("portMappings")).and_then(Value::as_bool)
                    == Some(true);
            let _one = match maps_ports {
                true => Some(PORT_MAPPING_ADD.lock().await),
                false => None,
            };
            match self.exec(t, "ADD", &entry, &stdin).await {
                Ok(v) => prev = Some(v),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let result = match (failure, prev) {
            (None, Some(r)) if r.is_object() => r,
            (None, _) => {
                self.rollback(&list, &entry).await;
                return Err(NetworkError::Cni {
                    plugin: list.name.clone(),
                    command: "ADD".into(),
                    code: None,
                    message: "the last plugin returned no result".into(),
                });
            }
            (Some(e), _) => {
                self.rollback(&list, &entry).await;
                return Err(e);
            }
        };
        let ips = result_ips(&result);
        entry.result = Some(result);
        if let Err(e) = self.write_cache(&entry) {
            self.rollback(&list, &entry).await;
            return Err(e);
        }
        if ips.is_empty() {
            tracing::warn!(pod = %req.id, network = %list.name, "CNI result has no IP addresses");
        }
        Ok(PodNetworkStatus { ips, interface: IFNAME.into() })
    }

    async fn rollback(&self, list: &ConfList, entry: &CacheEntry) {
        match self.del(list, entry).await {
            Ok(()) => {
                if let Err(e) = remove_durable(&self.cache_path(&entry.container_id)) {
                    tracing::warn!(error = %e, "remove CNI cache");
                }
            }
            Err(e) => {
                // Keep the cache so that teardown/recover retry the DEL.
                tracing::error!(pod = %entry.container_id, error = %e, "CNI DEL after failed ADD failed");
            }
        }
    }

    async fn do_teardown(&self, req: &PodNetworkRequest) -> Result<()> {
        let (list, entry) = match self.read_cache(&req.id)? {
            Some(mut entry) => {
                let list = ConfList::from_json(&self.cache_path(&req.id), entry.config.clone())
                    .map_err(|e| NetworkError::Internal(format!("cached CNI config of {}: {e}", req.id)))?;
                if !req.netns_path.as_os_str().is_empty() {
                    entry.netns = req.netns_path.clone();
                }
                (list, entry)
            }
            None => {
                // Nothing recorded: DEL with the current config (like containerd), if there is one.
                let Ok(list) = self.load_config() else { return Ok(()) };
                let entry = Self::new_entry(req, &list);
                (list, entry)
            }
        };
        self.del(&list, &entry).await?;
        remove_durable(&self.cache_path(&req.id))
    }

    /// CNI CHECK of a pod's attachment (0.4.0+; a no-op when `disableCheck` or older versions).
    pub async fn check(&self, req: &PodNetworkRequest) -> Result<()> {
        validate_id(&req.id)?;
        let entry = self
            .read_cache(&req.id)?
            .ok_or_else(|| NetworkError::InvalidArgument(format!("pod {} has no CNI attachment", req.id)))?;
        let list = ConfList::from_json(&self.cache_path(&req.id), entry.config.clone())
            .map_err(|e| NetworkError::Internal(format!("cached CNI config of {}: {e}", req.id)))?;
        if list.disable_check || !version_at_least(&list.cni_version, 0, 4) {
            return Ok(());
        }
        for plugin in &list.plugins {
            let t = plugin.get("type").and_then(Value::as_str).unwrap_or_default();
            let stdin = Self::plugin_stdin(&list, plugin, entry.result.as_ref(), &entry.runtime_config);
            self.exec(t, "CHECK", &entry, &stdin).await?;
        }
        Ok(())
    }

    async fn do_status(&self) -> std::result::Result<(), NotReady> {
        let list = self.load_config()?;
        if version_at_least(&list.cni_version, 1, 1) {
            let entry = CacheEntry {
                version: CACHE_VERSION,
                container_id: String::new(),
                if_name: String::new(),
                netns: PathBuf::new(),
                network_name: list.name.clone(),
                config: Value::Null,
                result: None,
                cni_args: String::new(),
                runtime_config: Map::new(),
            };
            for plugin in &list.plugins {
                let t = plugin.get("type").and_then(Value::as_str).unwrap_or_default();
                let stdin = Self::plugin_stdin(&list, plugin, None, &Map::new());
                self.exec(t, "STATUS", &entry, &stdin)
                    .await
                    .map_err(|e| NotReady::new("CniPluginNotReady", format!("{}: {e}", list.file.display())))?;
            }
        }
        Ok(())
    }

    /// Pod ids with a cached attachment.
    fn cached_pods(&self) -> Result<Vec<String>> {
        let rd = match std::fs::read_dir(&self.cache_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(NetworkError::io("read directory", &self.cache_dir, e)),
        };
        Ok(rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name().to_str().and_then(|n| n.strip_suffix(&format!("-{IFNAME}.json")).map(String::from))
            })
            .filter(|id| !id.starts_with('.'))
            .collect())
    }

    async fn do_recover(&self, live: &HashSet<String>) -> Result<()> {
        let mut errors = Vec::new();
        for id in self.cached_pods()? {
            if live.contains(&id) {
                continue;
            }
            let req = PodNetworkRequest { id: id.clone(), ..Default::default() };
            match self.do_teardown(&req).await {
                Ok(()) => tracing::info!(pod = %id, "released CNI attachment of a dead pod"),
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(NetworkError::Multiple(errors)),
        }
    }
}

/// The pod's addresses from a CNI result (IPv4 first). Addresses on interfaces inside the sandbox
/// are preferred when the result says which interface an address belongs to.
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    let parse = |s: &str| s.split('/').next().and_then(|a| a.parse::<IpAddr>().ok());
    let mut ips: Vec<IpAddr> = Vec::new();
    if let Some(list) = result.get("ips").and_then(Value::as_array) {
        let ifaces = result.get("interfaces").and_then(Value::as_array);
        let in_sandbox = |ip: &Value| -> Option<bool> {
            let i = ip.get("interface")?.as_u64()? as usize;
            let iface = ifaces?.get(i)?;
            Some(iface.get("sandbox").and_then(Value::as_str).is_some_and(|s| !s.is_empty()))
        };
        let all: Vec<(IpAddr, Option<bool>)> =
            list.iter().filter_map(|ip| Some((parse(ip.get("address")?.as_str()?)?, in_sandbox(ip)))).collect();
        let sandbox: Vec<IpAddr> = all.iter().filter(|(_, s)| *s == Some(true)).map(|(ip, _)| *ip).collect();
        ips = if sandbox.is_empty() { all.into_iter().map(|(ip, _)| ip).collect() } else { sandbox };
    } else {
        for k in ["ip4", "ip6"] {
            if let Some(ip) = result.get(k).and_then(|o| o.get("ip")).and_then(Value::as_str).and_then(parse) {
                ips.push(ip);
            }
        }
    }
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips.dedup();
    ips
}

impl NetworkPlugin for CniNetwork {
    fn name(&self) -> &'static str {
        "cni"
    }

    fn setup<'a>(&'a self, req: &'a PodNetworkRequest) -> BoxFuture<'a, Result<PodNetworkStatus>> {
        Box::pin(async move {
            validate_request(req)?;
            let st = self.do_setup(req).await?;
            tracing::info!(pod = %req.id, ips = ?st.ips, "pod network set up by CNI");
            Ok(st)
        })
    }

    fn teardown<'a>(&'a self, req: &'a PodNetworkRequest) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            validate_id(&req.id)?;
            self.do_teardown(req).await
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<(), NotReady>> {
        Box::pin(self.do_status())
    }

    fn recover<'a>(&'a self, live_pod_ids: &'a HashSet<String>) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.do_recover(live_pod_ids))
    }

    fn pod_ips<'a>(&'a self, pod_id: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>>> {
        Box::pin(async move {
            validate_id(pod_id)?;
            Ok(self.read_cache(pod_id)?.and_then(|e| e.result).map(|r| result_ips(&r)).unwrap_or_default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_from_results() {
        let r1: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/x"}],
               "ips":[{"address":"fd00::5/64","interface":2},{"address":"10.1.0.5/24","gateway":"10.1.0.1","interface":2},
                      {"address":"10.9.9.9/24","interface":0}]}"#,
        )
        .unwrap();
        assert_eq!(result_ips(&r1), vec!["10.1.0.5".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
        let r2: Value = serde_json::from_str(r#"{"ips":[{"version":"4","address":"10.2.0.3/16"}]}"#).unwrap();
        assert_eq!(result_ips(&r2), vec!["10.2.0.3".parse::<IpAddr>().unwrap()]);
        let r3: Value = serde_json::from_str(r#"{"ip4":{"ip":"10.3.0.4/16"}}"#).unwrap();
        assert_eq!(result_ips(&r3), vec!["10.3.0.4".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn config_loading() {
        let d = tempfile::tempdir().unwrap();
        let cfg = NetworkConfig {
            cni_conf_dir: d.path().join("net.d"),
            cni_bin_dirs: vec!["/usr/lib/cni".into()],
            ..Default::default()
        };
        let cni = CniNetwork::new(&cfg, d.path()).unwrap();
        let nr = cni.load_config().unwrap_err();
        assert_eq!(nr.reason, "NoCniConfig");
        std::fs::create_dir_all(d.path().join("net.d")).unwrap();
        assert_eq!(cni.load_config().unwrap_err().reason, "NoCniConfig");
        std::fs::write(d.path().join("net.d/20-b.conflist"), "{bad").unwrap();
        let nr = cni.load_config().unwrap_err();
        assert_eq!(nr.reason, "InvalidCniConfig");
        assert!(nr.message.contains("20-b.conflist"), "{nr}");
        std::fs::write(d.path().join("net.d/10-a.conf"), r#"{"cniVersion":"0.4.0","name":"a","type":"loopback"}"#)
            .unwrap();
        let l = cni.load_config().unwrap();
        assert_eq!(l.name, "a");
        assert_eq!(l.plugins.len(), 1);
        std::fs::write(
            d.path().join("net.d/05-c.conflist"),
            r#"{"cniVersion":"1.0.0","name":"c","plugins":[{"type":"nonexistent-plugin"}]}"#,
        )
        .unwrap();
        let nr = cni.load_config().unwrap_err();
        assert_eq!(nr.reason, "CniPluginMissing");
        assert!(nr.message.contains("nonexistent-plugin") && nr.message.contains("05-c.conflist"), "{nr}");
        std::fs::write(
            d.path().join("net.d/01-v.conflist"),
            r#"{"cniVersion":"9.9.9","name":"v","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert!(cni.load_config().unwrap_err().message.contains("cniVersion"));
    }

    #[test]
    fn stdin_has_runtime_config_only_for_capabilities() {
        let list = ConfList {
            file: "x".into(),
            name: "n".into(),
            cni_version: "1.0.0".into(),
            disable_check: false,
            plugins: vec![],
        };
        let req = PodNetworkRequest {
            id: "p".into(),
            port_mappings: vec![crate::PortMapping {
                protocol: crate::Protocol::Tcp,
                container_port: 80,
                host_port: 8080,
                host_ip: None,
            }],
            ..Default::default()
        };
        let rc = CniNetwork::runtime_config(&req);
        let pm: Map<String, Value> =
            serde_json::from_str(r#"{"type":"portmap","capabilities":{"portMappings":true}}"#).unwrap();
        let s = CniNetwork::plugin_stdin(&list, &pm, Some(&json!({"ips":[]})), &rc);
        assert_eq!(s["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert_eq!(s["prevResult"], json!({"ips":[]}));
        assert_eq!(s["name"], "n");
        let br: Map<String, Value> = serde_json::from_str(r#"{"type":"bridge"}"#).unwrap();
        assert!(CniNetwork::plugin_stdin(&list, &br, None, &rc).get("runtimeConfig").is_none());
        assert_eq!(
            CniNetwork::cni_args(&PodNetworkRequest {
                id: "i".into(),
                name: "a".into(),
                namespace: "b".into(),
                ..Default::default()
            }),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=b;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=i"
        );
    }
}
