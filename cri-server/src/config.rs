//! skiffd's configuration: a TOML file (`--config`, default `/etc/skiff/config.toml`) whose
//! sections are owned by the libraries (`[registry]` by imagesvc, `[network]` by netplugin) and
//! composed here, plus command-line overrides.
//!
//! `default-config.toml` is both the output of `skiffd config default` and the reference of every
//! key: tests check that it parses to [`Config::default`] and names every key.

use std::path::{Path, PathBuf};

use imagesvc::RegistryConfig;
use netplugin::NetworkConfig;
use serde::{Deserialize, Serialize};

/// The commented default configuration printed by `skiffd config default`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default-config.toml");

/// Where skiffd looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/skiff/config.toml";

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// More than one invalid value (one line each).
    #[error("{} problems:\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
    #[error("{path}{}: invalid value for `{key}`: {reason}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
        /// Where the key is set, when it comes from a file.
        line: Option<usize>,
    },
}

/// The 1-based line that sets the dotted `key` in a TOML text, or one of its entries
/// (`network.pod_cidr` is `pod_cidr = …` under `[network]`; a mirror of `registry.mirrors` is a
/// line under `[registry.mirrors]`), if any.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let normalize = |s: &str| s.replace(['"', ' '], "");
    let mut table = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            table = normalize(line.trim_matches(|c| c == '[' || c == ']'));
            continue;
        }
        let Some((k, _)) = line.split_once('=') else { continue };
        let k = normalize(k);
        let full = if table.is_empty() { k } else { format!("{table}.{k}") };
        if full == key || full.starts_with(&format!("{key}.")) {
            return Some(i + 1);
        }
    }
    None
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub root: PathBuf,
    pub state: PathBuf,
    /// The gRPC socket; empty = `<state>/skiff.sock`. Use [`Config::socket_path`].
    pub listen: PathBuf,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Append the log to this file instead of stderr; "" = stderr (systemd's journal).
    pub log_file: PathBuf,
    pub shutdown_timeout_secs: u64,
    pub runtime: RuntimeConfig,
    pub registry: RegistryConfig,
    pub network: NetworkConfig,
    pub streaming: StreamingConfig,
    pub metrics: MetricsConfig,
}

/// The `[metrics]` section: skiffd's own Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port` serving `/metrics`; "" = off.
    pub address: String,
}

/// The `[streaming]` section: the server of Exec, Attach and PortForward URLs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// `ip:port` to listen on; port 0 picks a free port. Loopback by default: the URLs carry
    /// tokens but no other authentication.
    pub address: String,
    /// A streaming connection without traffic for this long is closed (its exec'd process killed).
    pub idle_timeout_secs: u64,
    /// PEM certificate chain and private key: both set = HTTPS; both empty = plain HTTP.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:0".into(),
            idle_timeout_secs: 4 * 60 * 60,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
        }
    }
}

/// The `[runtime]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The monitor binary; empty = `skiff-monitor` beside the skiffd executable.
    pub monitor_path: PathBuf,
    pub cgroup_driver: String,
    pub default_cgroup_parent: String,
    /// Resource limits of every container's process, as CRI-O's `default_ulimits`:
    /// `"name=soft:hard"` or `"name=value"` (both limits), e.g. `"nofile=1048576:1048576"`.
    /// Empty: the process inherits the monitor's (that is, skiffd's) limits.
    pub default_ulimits: Vec<String>,
    /// Read by nothing: StopContainer always carries its own timeout (0 kills at once, as the
    /// CRI says). Still accepted so that older configuration files load; a warning says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout_secs: Option<u64>,
    /// Mount containers' root filesystems with overlayfs' `volatile` option: the writable
    /// layer is never synced (fsync inside a container returns at once, and the unmount at
    /// its exit does not sync the whole file system of `ROOT`). A writable layer does not
    /// outlive a power cut in Kubernetes anyway: every container of the node is gone, and
    /// the kubelet creates new ones, with new layers. `false` syncs as containerd does. Not
    /// yet for pods with a user namespace (their idmapped overlay is always synced).
    pub volatile_rootfs: bool,
    /// Fork the containers' monitors from a zygote (`skiff-monitor zygote`, one idle process,
    /// exec'd once at start: 1.6 MiB PSS alone, its pages shared with the monitors it forks) instead of spawning the monitor binary for every
    /// start: a StartContainer then waits for no executable's exec and loading (1-2 ms of CPU
    /// each). `false` spawns a monitor for every start. The zygote runs the monitor binary
    /// skiffd found at its start: after replacing the binary, restart skiffd.
    pub monitor_zygote: bool,
}

/// The `RLIMIT_*` names a ulimit may use, as in `ulimit`/CRI-O (`nofile`, `nproc`, ...).
const ULIMITS: &[(&str, oci_spec::runtime::PosixRlimitType, i32)] = {
    use oci_spec::runtime::PosixRlimitType as T;
    &[
        ("as", T::RlimitAs, libc::RLIMIT_AS as i32),
        ("core", T::RlimitCore, libc::RLIMIT_CORE as i32),
        ("cpu", T::RlimitCpu, libc::RLIMIT_CPU as i32),
        ("data", T::RlimitData, libc::RLIMIT_DATA as i32),
        ("fsize", T::RlimitFsize, libc::RLIMIT_FSIZE as i32),
        ("locks", T::RlimitLocks, libc::RLIMIT_LOCKS as i32),
        ("memlock", T::RlimitMemlock, libc::RLIMIT_MEMLOCK as i32),
        ("msgqueue", T::RlimitMsgqueue, libc::RLIMIT_MSGQUEUE as i32),
        ("nice", T::RlimitNice, libc::RLIMIT_NICE as i32),
        ("nofile", T::RlimitNofile, libc::RLIMIT_NOFILE as i32),
        ("nproc", T::RlimitNproc, libc::RLIMIT_NPROC as i32),
        ("rss", T::RlimitRss, libc::RLIMIT_RSS as i32),
        ("rtprio", T::RlimitRtprio, libc::RLIMIT_RTPRIO as i32),
        ("rttime", T::RlimitRttime, libc::RLIMIT_RTTIME as i32),
        ("sigpending", T::RlimitSigpending, libc::RLIMIT_SIGPENDING as i32),
        ("stack", T::RlimitStack, libc::RLIMIT_STACK as i32),
    ]
};

/// Parses one `default_ulimits` entry: (type, libc resource, soft, hard).
fn parse_ulimit(s: &str) -> Result<(oci_spec::runtime::PosixRlimitType, i32, u64, u64), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("{s:?} is not name=soft:hard"))?;
    let name = name.trim().to_ascii_lowercase();
    let name = name.strip_prefix("rlimit_").unwrap_or(&name);
    let &(_, typ, res) = ULIMITS
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| format!("{name:?} is not a resource limit (nofile, nproc, core, memlock, ...)"))?;
    let num = |v: &str| -> Result<u64, String> {
        match v.trim() {
            "unlimited" | "-1" => Ok(libc::RLIM_INFINITY),
            v => v.parse::<u64>().map_err(|_| format!("{v:?} in {s:?} is not a number")),
        }
    };
    let (soft, hard) = match value.split_once(':') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(value)?, num(value)?),
    };
    if soft > hard {
        return Err(format!("{s:?}: the soft limit is above the hard limit"));
    }
    Ok((typ, res, soft, hard))
}

impl RuntimeConfig {
    /// The containers' resource limits from `default_ulimits` (validated when loaded).
    pub fn rlimits(&self) -> Vec<oci_spec::runtime::PosixRlimit> {
        self.default_ulimits
            .iter()
            .filter_map(|u| parse_ulimit(u).ok())
            .filter_map(|(typ, _, soft, hard)| {
                oci_spec::runtime::PosixRlimitBuilder::default().typ(typ).soft(soft).hard(hard).build().ok()
            })
            .collect()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/var/lib/skiff"),
            state: PathBuf::from("/run/skiff"),
            listen: PathBuf::new(),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            log_file: PathBuf::new(),
            shutdown_timeout_secs: 10,
            runtime: RuntimeConfig::default(),
            registry: RegistryConfig::default(),
            network: NetworkConfig::default(),
            streaming: StreamingConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            monitor_path: PathBuf::new(),
            cgroup_driver: "cgroupfs".into(),
            default_cgroup_parent: "/skiff".into(),
            default_ulimits: Vec::new(),
            stop_timeout_secs: None,
            volatile_rootfs: true,
            monitor_zygote: true,
        }
    }
}

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub listen: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub log_file: Option<PathBuf>,
}

impl Config {
    /// Parses and validates a configuration text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string().trim_end().to_owned() })?;
        let with_line = |e: ConfigError| match e {
            ConfigError::Invalid { path, key, reason, .. } => {
                ConfigError::Invalid { line: line_of(text, key), path, key, reason }
            }
            other => other,
        };
        config.validate(path).map_err(|e| match e {
            ConfigError::Several(all) => ConfigError::Several(all.into_iter().map(with_line).collect()),
            other => with_line(other),
        })?;
        Ok(config)
    }

    /// Reads `path`; when `path` is the default location and does not exist, returns defaults.
    /// A file named explicitly must exist.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_owned(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Applies command-line overrides, then validates again.
    pub fn apply(&mut self, o: Overrides) -> Result<(), ConfigError> {
        if let Some(v) = o.root {
            self.root = v;
        }
        if let Some(v) = o.state {
            self.state = v;
        }
        if let Some(v) = o.listen {
            self.listen = v;
        }
        if let Some(v) = o.log_level {
            self.log_level = v;
        }
        if let Some(v) = o.log_format {
            self.log_format = v;
        }
        if let Some(v) = o.log_file {
            self.log_file = v;
        }
        self.validate(Path::new("command line"))
    }

    /// The socket path skiffd listens on.
    pub fn socket_path(&self) -> PathBuf {
        if self.listen.as_os_str().is_empty() {
            self.state.join("skiff.sock")
        } else {
            self.listen.clone()
        }
    }

    /// One value by its dotted key, with the derived values resolved (`listen`,
    /// `runtime.monitor_path`, `network.nft_table`); tables print as JSON.
    pub fn get(&self, key: &str) -> Result<String, ConfigError> {
        let unknown = || ConfigError::Invalid {
            path: PathBuf::from("command line"),
            key: "key",
            reason: format!("{key:?} is not a configuration key"),
            line: None,
        };
        let mut v = serde_json::to_value(self).map_err(|_| unknown())?;
        v["listen"] = self.socket_path().to_string_lossy().into_owned().into();
        v["runtime"]["monitor_path"] = self.monitor_path().to_string_lossy().into_owned().into();
        v["network"]["nft_table"] = self.network.nft_table_name().into();
        let mut cur = &v;
        for part in key.split('.') {
            cur = cur.get(part).ok_or_else(unknown)?;
        }
        Ok(match cur {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// The monitor binary skiffd spawns per container.
    pub fn monitor_path(&self) -> PathBuf {
        if !self.runtime.monitor_path.as_os_str().is_empty() {
            return self.runtime.monitor_path.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("skiff-monitor")))
            .unwrap_or_else(|| PathBuf::from("skiff-monitor"))
    }

    /// Checks every value; all problems are reported, not only the first.
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        let invalid =
            |key: &'static str, reason: String| ConfigError::Invalid { path: path.to_owned(), key, reason, line: None };
        for (key, p) in [("root", &self.root), ("state", &self.state)] {
            if !p.is_absolute() {
                errs.push(invalid(key, format!("{} is not an absolute path", p.display())));
            }
        }
        if !self.listen.as_os_str().is_empty() && !self.listen.is_absolute() {
            errs.push(invalid("listen", format!("{} is not an absolute path", self.listen.display())));
        }
        if !self.log_file.as_os_str().is_empty() && !self.log_file.is_absolute() {
            errs.push(invalid("log_file", format!("{} is not an absolute path", self.log_file.display())));
        }
        // A bare word must be a level; anything else is a tracing filter ("info,imagesvc=debug").
        const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
        let level = self.log_level.trim();
        if !level.contains(['=', ',']) && !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            errs.push(invalid(
                "log_level",
                format!("{level:?} is not one of {LEVELS:?} nor a filter such as \"info,imagesvc=debug\""),
            ));
        } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
            errs.push(invalid("log_level", e.to_string()));
        }
        if self.runtime.cgroup_driver != "cgroupfs" {
            errs.push(invalid(
                "runtime.cgroup_driver",
                format!("{:?} is not supported (only \"cgroupfs\")", self.runtime.cgroup_driver),
            ));
        }
        if !self.runtime.default_cgroup_parent.starts_with('/') {
            errs.push(invalid("runtime.default_cgroup_parent", "must start with /".into()));
        }
        for u in &self.runtime.default_ulimits {
            match parse_ulimit(u) {
                Err(e) => errs.push(invalid("runtime.default_ulimits", e)),
                Ok((_, res, _, hard)) => {
                    // Without CAP_SYS_RESOURCE no process may raise its hard limit above ours:
                    // refuse it here rather than fail every container start.
                    let mut ours = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                    // SAFETY: getrlimit writes the `rlimit` above, alive across the call.
                    let got = unsafe { libc::getrlimit(res as _, &mut ours) } == 0;
                    let may_raise = caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_RESOURCE)
                        .unwrap_or(false);
                    if got && !may_raise && hard > ours.rlim_max {
                        errs.push(invalid(
                            "runtime.default_ulimits",
                            format!(
                                "{u:?}: the hard limit is above skiffd's own ({}), which needs CAP_SYS_RESOURCE",
                                ours.rlim_max
                            ),
                        ));
                    }
                }
            }
        }
        if self.registry.max_concurrent_downloads == 0 {
            errs.push(invalid("registry.max_concurrent_downloads", "must be at least 1".into()));
        }
        if self.registry.stall_timeout_secs == 0 {
            errs.push(invalid("registry.stall_timeout_secs", "must be at least 1".into()));
        }
        for (host, endpoints) in &self.registry.mirrors {
            for e in endpoints {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    errs.push(ConfigError::Invalid {
                        path: path.to_owned(),
                        key: "registry.mirrors",
                        reason: format!("mirror {e:?} of {host:?} must start with http:// or https://"),
                        line: None,
                    });
                }
            }
        }
        if !self.network.pod_cidr.is_empty() && cidr_prefix(&self.network.pod_cidr, false).is_none() {
            errs.push(invalid(
                "network.pod_cidr",
                format!("{:?} is not an IPv4 CIDR such as 10.88.0.0/16", self.network.pod_cidr),
            ));
        }
        if !self.network.pod_cidr_v6.is_empty() && self.network.pod_cidr.is_empty() {
            errs.push(invalid("network.pod_cidr_v6", "needs network.pod_cidr (an IPv4 range) too".into()));
        }
        if !self.network.pod_cidr_v6.is_empty() && cidr_prefix(&self.network.pod_cidr_v6, true).is_none() {
            errs.push(invalid(
                "network.pod_cidr_v6",
                format!("{:?} is not an IPv6 CIDR such as fd00:88::/64", self.network.pod_cidr_v6),
            ));
        }
        if !(576..=65535).contains(&self.network.mtu) {
            errs.push(invalid("network.mtu", format!("{} is outside 576..65535", self.network.mtu)));
        }
        if self.streaming.address.parse::<std::net::SocketAddr>().is_err() {
            errs.push(invalid(
                "streaming.address",
                format!("{:?} is not ip:port such as 127.0.0.1:0 or [::1]:10010", self.streaming.address),
            ));
        }
        let (cert, key) = (&self.streaming.tls_cert, &self.streaming.tls_key);
        if cert.as_os_str().is_empty() != key.as_os_str().is_empty() {
            errs.push(invalid("streaming.tls_cert", "tls_cert and tls_key go together".into()));
        }
        if !self.metrics.address.is_empty() && self.metrics.address.parse::<std::net::SocketAddr>().is_err() {
            errs.push(invalid(
                "metrics.address",
                format!("{:?} is not ip:port such as 127.0.0.1:9102", self.metrics.address),
            ));
        }
        if self.streaming.idle_timeout_secs == 0 {
            errs.push(invalid("streaming.idle_timeout_secs", "must be at least 1".into()));
        }
        if self.network.bridge.is_empty() || self.network.bridge.len() > 15 {
            errs.push(invalid("network.bridge", "must be 1 to 15 characters".into()));
        }
        match errs.len() {
            0 => Ok(()),
            1 => Err(errs.remove(0)),
            _ => Err(ConfigError::Several(errs)),
        }
    }
}

/// The prefix length of an address/prefix string of the given family, if it is one.
fn cidr_prefix(s: &str, v6: bool) -> Option<u8> {
    let (addr, prefix) = s.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    let addr: std::net::IpAddr = addr.parse().ok()?;
    match (addr, v6) {
        (std::net::IpAddr::V4(_), false) if prefix <= 30 => Some(prefix),
        (std::net::IpAddr::V6(_), true) if prefix <= 126 => Some(prefix),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ulimits() {
        let (t, _, soft, hard) = parse_ulimit("nofile=1024:2048").unwrap();
        assert_eq!((t, soft, hard), (oci_spec::runtime::PosixRlimitType::RlimitNofile, 1024, 2048));
        assert_eq!(parse_ulimit("RLIMIT_CORE=unlimited").unwrap().2, libc::RLIM_INFINITY);
        assert_eq!(parse_ulimit("nproc=100").unwrap().3, 100);
        for bad in ["nofile", "bogus=1", "nofile=2:1", "nofile=x"] {
            assert!(parse_ulimit(bad).is_err(), "{bad}");
        }
        let c = Config::parse(
            "[runtime]\ndefault_ulimits = [\"nofile=1024:2048\"]\nstop_timeout_secs = 10\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.runtime.rlimits().len(), 1);
        let e =
            Config::parse("[runtime]\ndefault_ulimits = [\"nofile=9\", \"x=1\"]\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("runtime.default_ulimits"), "{e}");
    }

    #[test]
    fn monitor_zygote() {
        assert!(parse("").unwrap().runtime.monitor_zygote);
        assert!(!parse("[runtime]\nmonitor_zygote = false\n").unwrap().runtime.monitor_zygote);
        assert!(parse("[runtime]\nmonitor_zygote = 1\n").is_err());
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn default_template_parses_to_defaults() {
        assert_eq!(parse(DEFAULT_CONFIG_TOML).unwrap(), Config::default());
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    /// Every key of the configuration appears (uncommented) in the template, so that
    /// `skiffd config default` documents all of them.
    #[test]
    fn default_template_names_every_key() {
        fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    keys(&name, v, out);
                    out.push(name);
                }
            }
        }
        let mut want = Vec::new();
        keys("", &toml::Value::try_from(Config::default()).unwrap(), &mut want);
        let mut have = Vec::new();
        keys("", &toml::from_str::<toml::Value>(DEFAULT_CONFIG_TOML).unwrap(), &mut have);
        for k in want {
            assert!(have.contains(&k), "default-config.toml lacks `{k}`");
        }
    }

    #[test]
    fn overrides_from_file() {
        let c = parse(
            "root = \"/srv/skiff\"\nlog_level = \"debug\"\n[registry]\nmax_concurrent_downloads = 5\n\
             [registry.mirrors]\n\"registry.k8s.io\" = [\"http://127.0.0.1:5000\"]\n\
             [network]\nplugin = \"cni\"\n",
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/srv/skiff"));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.registry.max_concurrent_downloads, 5);
        assert_eq!(c.registry.mirrors["registry.k8s.io"], vec!["http://127.0.0.1:5000".to_string()]);
        assert_eq!(c.network.plugin, netplugin::PluginKind::Cni);
        assert_eq!(c.state, PathBuf::from("/run/skiff"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("root = \"/var/lib/skiff\"\n\n[network]\nbrige = \"x\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("brige"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
        let err = parse("colour = 1\n").unwrap_err().to_string();
        assert!(err.contains("colour") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        for (text, key) in [
            ("root = \"relative\"", "root"),
            ("log_level = \"verbose\"", "log_level"),
            ("[runtime]\ncgroup_driver = \"systemd\"", "runtime.cgroup_driver"),
            ("[registry]\nmax_concurrent_downloads = 0", "registry.max_concurrent_downloads"),
            ("[registry.mirrors]\n\"docker.io\" = [\"ftp://x\"]", "registry.mirrors"),
            ("[network]\npod_cidr = \"10.88.0.0\"", "network.pod_cidr"),
            ("[network]\npod_cidr_v6 = \"10.0.0.0/8\"", "network.pod_cidr_v6"),
            ("[network]\nmtu = 10", "network.mtu"),
            ("[streaming]\naddress = \"localhost\"", "streaming.address"),
            ("[streaming]\nidle_timeout_secs = 0", "streaming.idle_timeout_secs"),
            ("[streaming]\ntls_cert = \"/c.pem\"", "streaming.tls_cert"),
        ] {
            let msg = parse(text).unwrap_err().to_string();
            assert!(msg.contains(key), "{text}: {msg}");
        }
        // Semantic errors name the line too.
        let msg = parse("root = \"/a\"\n\n[network]\nmtu = 1500\npod_cidr = \"10.88.0.0\"\n").unwrap_err().to_string();
        assert!(msg.contains("network.pod_cidr") && msg.contains("line 5"), "{msg}");
        let msg = parse("[registry.mirrors]\n\"docker.io\" = [\"ftp://x\"]").unwrap_err().to_string();
        assert!(msg.contains("line 2"), "{msg}");
        let msg = parse("log_level = \"verbose\"").unwrap_err().to_string();
        assert!(msg.contains("line 1"), "{msg}");
        // A type error names the key and line.
        let msg = parse("[network]\nmtu = \"big\"").unwrap_err().to_string();
        assert!(msg.contains("line 2"), "{msg}");
        let msg = parse("shutdown_timeout_secs = -1").unwrap_err().to_string();
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn command_line_overrides_file() {
        let mut c = parse("root = \"/a\"\nstate = \"/b\"").unwrap();
        c.apply(Overrides { root: Some("/c".into()), log_format: Some(LogFormat::Json), ..Default::default() })
            .unwrap();
        assert_eq!(c.root, PathBuf::from("/c"));
        assert_eq!(c.state, PathBuf::from("/b"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.socket_path(), PathBuf::from("/b/skiff.sock"));
        assert!(c.apply(Overrides { listen: Some("rel.sock".into()), ..Default::default() }).is_err());
    }

    #[test]
    fn every_problem_is_reported() {
        let text = "root = \"rel\"\n[runtime]\ncgroup_driver = \"systemd\"\n[network]\nmtu = 10\n";
        let msg = parse(text).unwrap_err().to_string();
        assert!(msg.starts_with("3 problems:"), "{msg}");
        assert!(msg.contains("`root`") && msg.contains("line 1"), "{msg}");
        assert!(msg.contains("runtime.cgroup_driver") && msg.contains("line 3"), "{msg}");
        assert!(msg.contains("network.mtu") && msg.contains("line 5"), "{msg}");
    }

    #[test]
    fn missing_default_file_is_defaults_but_missing_named_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Config::load(Some(&dir.path().join("nope.toml"))).is_err());
    }
}
