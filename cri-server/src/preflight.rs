//! `skiffd check`: a preflight of the kernel features and host tools skiff needs, one line each.

use std::fs;
use std::path::Path;

use crate::config::Config;
use netplugin::PluginKind;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Missing, and skiff cannot work without it.
    Missing,
    /// Missing or off, but skiff works (perhaps with less).
    Warn,
    /// Informational.
    Info,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
    pub detail: String,
    pub hint: String,
}

fn check(name: &str, outcome: Outcome, detail: impl Into<String>, hint: &str) -> Check {
    Check { name: name.into(), outcome, detail: detail.into(), hint: hint.into() }
}

fn read(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// The cgroup mounts of this process: (fstype, mount point, super options).
fn cgroup_mounts() -> Vec<(String, String, String)> {
    read("/proc/self/mountinfo")
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?.to_owned();
            let mut r = right.split_whitespace();
            let fstype = r.next()?.to_owned();
            let _source = r.next()?;
            let opts = r.next().unwrap_or("").to_owned();
            (fstype == "cgroup" || fstype == "cgroup2").then_some((fstype, mount_point, opts))
        })
        .collect()
}

/// Runs every check for `config`.
pub fn run(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let release = read("/proc/sys/kernel/osrelease");
    out.push(check("kernel", Outcome::Info, release.trim(), ""));

    let filesystems = read("/proc/filesystems");
    let has_fs = |fs: &str| filesystems.lines().any(|l| l.split_whitespace().last() == Some(fs));
    out.push(if has_fs("overlay") || Path::new("/sys/module/overlay").exists() {
        check("overlayfs", Outcome::Ok, "", "")
    } else {
        check("overlayfs", Outcome::Missing, "not in /proc/filesystems", "modprobe overlay")
    });
    for fs in ["tmpfs", "proc", "sysfs", "devpts", "mqueue"] {
        out.push(if has_fs(fs) {
            check(&format!("filesystem {fs}"), Outcome::Ok, "", "")
        } else {
            check(
                &format!("filesystem {fs}"),
                Outcome::Missing,
                "not in /proc/filesystems",
                "rebuild the kernel with it",
            )
        });
    }

    for ns in ["mnt", "pid", "net", "ipc", "uts", "cgroup"] {
        let present = Path::new("/proc/self/ns").join(ns).exists();
        out.push(check(
            &format!("namespace {ns}"),
            if present { Outcome::Ok } else { Outcome::Missing },
            "",
            if present { "" } else { "enable the namespace in the kernel (CONFIG_*_NS)" },
        ));
    }

    let mounts = cgroup_mounts();
    let v2_root = mounts.iter().any(|(t, m, _)| t == "cgroup2" && m == "/sys/fs/cgroup");
    let v1: Vec<&(String, String, String)> = mounts.iter().filter(|(t, _, _)| t == "cgroup").collect();
    if v2_root {
        out.push(check("cgroups", Outcome::Ok, "v2 (unified)", ""));
        let controllers = read("/sys/fs/cgroup/cgroup.controllers");
        for c in ["cpu", "memory", "pids", "cpuset"] {
            let ok = controllers.split_whitespace().any(|x| x == c);
            out.push(check(
                &format!("cgroup controller {c}"),
                if ok { Outcome::Ok } else { Outcome::Missing },
                "",
                if ok { "" } else { "enable it in the root cgroup.subtree_control or the kernel" },
            ));
        }
    } else if !v1.is_empty() {
        out.push(check("cgroups", Outcome::Ok, "v1", ""));
        for c in ["cpu", "cpuacct", "memory", "pids", "cpuset", "devices", "freezer", "hugetlb"] {
            let ok = v1.iter().any(|(_, _, opts)| opts.split(',').any(|o| o == c));
            let required = matches!(c, "cpu" | "cpuacct" | "memory" | "pids");
            out.push(check(
                &format!("cgroup controller {c}"),
                match (ok, required) {
                    (true, _) => Outcome::Ok,
                    (false, true) => Outcome::Missing,
                    (false, false) => Outcome::Warn,
                },
                if ok { "mounted" } else { "not mounted" },
                if ok { "" } else { "mount the controller's hierarchy under /sys/fs/cgroup" },
            ));
        }
    } else {
        out.push(check("cgroups", Outcome::Missing, "no cgroup filesystem mounted", "mount cgroup2 on /sys/fs/cgroup"));
    }

    let seccomp = read("/proc/self/status").lines().any(|l| l.starts_with("Seccomp:"));
    out.push(check(
        "seccomp",
        if seccomp { Outcome::Ok } else { Outcome::Missing },
        "",
        if seccomp { "" } else { "enable CONFIG_SECCOMP_FILTER" },
    ));

    let monitor = config.monitor_path();
    out.push(if monitor.is_file() {
        check("monitor binary", Outcome::Ok, monitor.display().to_string(), "")
    } else {
        check(
            "monitor binary",
            Outcome::Missing,
            format!("{} not found", monitor.display()),
            "install skiff-monitor beside skiffd or set runtime.monitor_path",
        )
    });

    match config.network.plugin {
        PluginKind::Bridge => {
            for module in ["bridge", "veth"] {
                let loaded = Path::new("/sys/module").join(module).exists();
                out.push(check(
                    &format!("network {module}"),
                    if loaded { Outcome::Ok } else { Outcome::Warn },
                    if loaded { "loaded" } else { "module not loaded (it may load on demand)" },
                    if loaded { "" } else { "modprobe it if pod networking fails" },
                ));
            }
            let nft = which("nft");
            out.push(match nft {
                Some(p) => check("nftables", Outcome::Ok, p, ""),
                None => check("nftables", Outcome::Missing, "nft not found", "apt-get install nftables"),
            });
            let fwd = read("/proc/sys/net/ipv4/ip_forward");
            out.push(check(
                "ip forwarding",
                Outcome::Info,
                if fwd.trim() == "1" { "on" } else { "off (skiff turns it on)" },
                "",
            ));
        }
        PluginKind::Cni => {
            let dir = &config.network.cni_conf_dir;
            let has_conf = fs::read_dir(dir)
                .map(|d| {
                    d.flatten().any(|e| {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        n.ends_with(".conflist") || n.ends_with(".conf") || n.ends_with(".json")
                    })
                })
                .unwrap_or(false);
            out.push(check(
                "cni config",
                if has_conf { Outcome::Ok } else { Outcome::Missing },
                dir.display().to_string(),
                if has_conf { "" } else { "install a CNI network configuration there" },
            ));
            let bins = config.network.cni_bin_dirs.iter().any(|d| d.is_dir());
            out.push(check(
                "cni plugins",
                if bins { Outcome::Ok } else { Outcome::Missing },
                format!("{:?}", config.network.cni_bin_dirs),
                if bins { "" } else { "install CNI plugins (e.g. containernetworking-plugins)" },
            ));
        }
    }
    let rro = runtime::features::mount_setattr();
    out.push(check(
        "recursive read-only mounts",
        if rro { Outcome::Ok } else { Outcome::Warn },
        if rro { "mount_setattr(AT_RECURSIVE)" } else { "no mount_setattr (Linux 5.12+): not announced" },
        "",
    ));
    out.push(check("supplemental groups policy", Outcome::Ok, "Merge and Strict", ""));
    // What a user-namespaced pod would need: a user namespace and idmapped mounts of the image
    // layers' filesystem (overlayfs itself, in most kernels, cannot be idmapped: each lower dir
    // is) and of tmpfs (the pod's /dev/shm).
    for (what, r) in runtime::features::idmap_report(&config.root) {
        out.push(match r {
            Ok(()) => check(&format!("idmapped mounts: {what}"), Outcome::Info, "supported", ""),
            Err(e) => check(&format!("idmapped mounts: {what}"), Outcome::Info, format!("not supported ({e})"), ""),
        });
    }
    let userns = runtime::features::user_namespaces(&config.root, &config.state);
    out.push(match &userns {
        Ok(()) => check(
            "user namespaces",
            Outcome::Ok,
            "pods with a user namespace (mode POD): idmapped layers under the overlay, idmapped pod files; announced",
            "",
        ),
        Err(e) => check("user namespaces", Outcome::Warn, format!("not announced: {e}"), ""),
    });
    out.push(check("/dev/net/tun", Outcome::Info, "not needed", ""));
    out
}

fn which(name: &str) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// Prints the report; returns whether every required feature is present.
pub fn print(checks: &[Check]) -> bool {
    let mut ok = true;
    for c in checks {
        let word = match c.outcome {
            Outcome::Ok => "ok",
            Outcome::Missing => {
                ok = false;
                "missing"
            }
            Outcome::Warn => "warn",
            Outcome::Info => "info",
        };
        let mut line = format!("{word:<8} {}", c.name);
        if !c.detail.is_empty() {
            line.push_str(&format!(": {}", c.detail));
        }
        if !c.hint.is_empty() {
            line.push_str(&format!(" (hint: {})", c.hint));
        }
        println!("{line}");
    }
    ok
}
