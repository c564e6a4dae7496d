//! Pod sandbox requests: RunPodSandbox (metadata, labels, annotations, log directory, hostname,
//! DNS, port mappings, namespaces, sysctls, resources) and the ID-only pod RPCs.

#![deny(clippy::arithmetic_side_effects)]

use std::net::IpAddr;

use proto::cri::*;
use tonic::Status;

use super::common::*;
use super::resources::check_resources;

/// RunPodSandbox.
pub fn run_pod_sandbox(req: &RunPodSandboxRequest) -> Result<(), Status> {
    check_str("runtime_handler", &req.runtime_handler, MAX_NAME)?;
    let Some(c) = &req.config else { return Err(invalid("config", "is required")) };
    pod_config(c)
}

/// A pod's config (also as sent again with CreateContainer).
pub fn pod_config(c: &PodSandboxConfig) -> Result<(), Status> {
    let Some(md) = &c.metadata else { return Err(invalid("config.metadata", "is required")) };
    check_required("metadata.name", &md.name, MAX_NAME)?;
    check_str("metadata.namespace", &md.namespace, MAX_NAME)?;
    check_str("metadata.uid", &md.uid, MAX_NAME)?;
    check_hostname(&c.hostname)?;
    check_abs_path_no_dotdot("log_directory", &c.log_directory, true)?;
    check_labels("labels", &c.labels)?;
    check_annotations("annotations", &c.annotations)?;
    if let Some(dns) = &c.dns_config {
        check_dns(dns)?;
    }
    check_count("port_mappings", c.port_mappings.len(), MAX_PORT_MAPPINGS)?;
    for p in &c.port_mappings {
        check_port_mapping(p)?;
    }
    if let Some(l) = &c.linux {
        check_str("linux.cgroup_parent", &l.cgroup_parent, MAX_PATH)?;
        let ns = l.security_context.as_ref().and_then(|s| s.namespace_options.clone()).unwrap_or_default();
        let net = check_namespace_mode("namespace_options.network", ns.network)?;
        let pid = check_namespace_mode("namespace_options.pid", ns.pid)?;
        let ipc = check_namespace_mode("namespace_options.ipc", ns.ipc)?;
        if pid == NamespaceMode::Target {
            return Err(invalid("namespace_options.pid", "TARGET is for containers, not pods"));
        }
        if net == NamespaceMode::Target || ipc == NamespaceMode::Target {
            return Err(invalid("namespace_options", "network and IPC cannot be TARGET"));
        }
        let privileged = l.security_context.as_ref().map(|s| s.privileged).unwrap_or(false);
        crate::spec::userns::check(&ns, privileged).map_err(|e| invalid("namespace_options", e))?;
        check_sysctls(&l.sysctls, net == NamespaceMode::Node, ipc == NamespaceMode::Node)?;
        if let Some(sc) = &l.security_context {
            check_groups(
                "security_context",
                sc.run_as_user.as_ref(),
                sc.run_as_group.as_ref(),
                &sc.supplemental_groups,
            )?;
            check_profile("security_context.seccomp", sc.seccomp.as_ref())?;
            check_profile("security_context.apparmor", sc.apparmor.as_ref())?;
        }
        if let Some(r) = &l.overhead {
            check_resources("linux.overhead", r)?;
        }
        if let Some(r) = &l.resources {
            check_resources("linux.resources", r)?;
        }
    }
    Ok(())
}

fn check_hostname(h: &str) -> Result<(), Status> {
    if h.len() > MAX_HOSTNAME {
        return Err(invalid("hostname", format!("{} bytes, the limit is {MAX_HOSTNAME}", h.len())));
    }
    // It goes into /etc/hosts and /etc/hostname: no whitespace, no control characters.
    if let Some(c) = h.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))) {
        return Err(invalid("hostname", format!("{h:?} has the character {c:?}")));
    }
    Ok(())
}

fn check_dns(dns: &DnsConfig) -> Result<(), Status> {
    for (field, list) in [
        ("dns_config.servers", &dns.servers),
        ("dns_config.searches", &dns.searches),
        ("dns_config.options", &dns.options),
    ] {
        check_count(field, list.len(), MAX_DNS_ENTRIES)?;
        for s in list {
            // Each is one word of resolv.conf.
            check_required(field, s, MAX_DNS_ENTRY)?;
            if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(field, format!("{s:?} has whitespace or control characters")));
            }
        }
    }
    for s in &dns.servers {
        // An IPv6 link-local server may carry its zone (`fe80::1%eth0`).
        let addr = s.split_once('%').map_or(s.as_str(), |(a, _)| a);
        if addr.parse::<IpAddr>().is_err() {
            return Err(invalid("dns_config.servers", format!("{s:?} is not an IP address")));
        }
    }
    Ok(())
}

fn check_port_mapping(p: &PortMapping) -> Result<(), Status> {
    if Protocol::try_from(p.protocol).is_err() {
        return Err(invalid("port_mappings.protocol", format!("unknown protocol {}", p.protocol)));
    }
    if !(1..=65535).contains(&p.container_port) {
        return Err(invalid("port_mappings.container_port", format!("{} is outside [1, 65535]", p.container_port)));
    }
    if !(0..=65535).contains(&p.host_port) {
        return Err(invalid("port_mappings.host_port", format!("{} is outside [0, 65535]", p.host_port)));
    }
    if !p.host_ip.is_empty() && p.host_ip.parse::<IpAddr>().is_err() {
        return Err(invalid("port_mappings.host_ip", format!("{:?} is not an IP address", truncated(&p.host_ip))));
    }
    Ok(())
}

/// uid/gid values: an unsigned 32-bit id other than -1 (4294967295).
pub fn check_groups(
    what: &str,
    user: Option<&Int64Value>,
    group: Option<&Int64Value>,
    supplemental: &[i64],
) -> Result<(), Status> {
    let id = |field: &str, v: i64| {
        if !(0..=4_294_967_294).contains(&v) {
            return Err(invalid(&format!("{what}.{field}"), format!("{v} is not a valid id")));
        }
        Ok(())
    };
    if let Some(u) = user {
        id("run_as_user", u.value)?;
    }
    if let Some(g) = group {
        id("run_as_group", g.value)?;
    }
    check_count(&format!("{what}.supplemental_groups"), supplemental.len(), MAX_GROUPS)?;
    for g in supplemental {
        id("supplemental_groups", *g)?;
    }
    Ok(())
}

/// A seccomp or AppArmor profile: a known type; a Localhost seccomp profile is an absolute path.
pub fn check_profile(field: &str, p: Option<&SecurityProfile>) -> Result<(), Status> {
    let Some(p) = p else { return Ok(()) };
    let t = security_profile::ProfileType::try_from(p.profile_type)
        .map_err(|_| invalid(field, format!("unknown profile type {}", p.profile_type)))?;
    check_str(&format!("{field}.localhost_ref"), &p.localhost_ref, MAX_PATH)?;
    if t == security_profile::ProfileType::Localhost && field.ends_with("seccomp") {
        check_abs_path(&format!("{field}.localhost_ref"), &p.localhost_ref, false)?;
    }
    Ok(())
}

/// The sysctls a pod may set: only namespaced ones (as runc's validator: the IPC ones
/// `kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`; `net.*`; the UTS ones
/// `kernel.hostname`, `kernel.domainname`), not net.* on the host network, not the IPC ones in
/// the host's IPC namespace; values of the IPC ones in the kernel's ranges.
pub fn check_sysctls(
    sysctls: &std::collections::HashMap<String, String>,
    host_net: bool,
    host_ipc: bool,
) -> Result<(), Status> {
    check_count("linux.sysctls", sysctls.len(), MAX_SYSCTLS)?;
    for (k0, v) in sysctls {
        let field = format!("sysctl {:?}", truncated(k0));
        check_required(&field, k0, 256)?;
        check_str(&field, v, MAX_SYSCTL_VALUE)?;
        if v.contains('\n') {
            return Err(invalid(&field, "value has a newline"));
        }
        let k = crate::spec::sysctl_dots(k0);
        if k.contains("..") || k.starts_with('.') || k.ends_with('.') {
            return Err(invalid(&field, "malformed name"));
        }
        let ipc = k.starts_with("kernel.shm")
            || k.starts_with("kernel.msg")
            || k == "kernel.sem"
            || k.starts_with("fs.mqueue.");
        let net = k.starts_with("net.");
        let uts = k == "kernel.hostname" || k == "kernel.domainname";
        if !(ipc || net || uts) {
            return Err(invalid(&field, "not a namespaced sysctl (only kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*, kernel.hostname and kernel.domainname are)"));
        }
        if net && host_net {
            return Err(invalid(&field, "the pod uses the host's network namespace: it would change the host"));
        }
        if ipc && host_ipc {
            return Err(invalid(&field, "the pod uses the host's IPC namespace: it would change the host"));
        }
        if uts && host_net {
            return Err(invalid(&field, "the pod uses the host's UTS namespace: it would change the host"));
        }
        if ipc {
            check_ipc_sysctl_value(&field, &k, v)?;
        }
    }
    Ok(())
}

/// The kernel's ranges for the IPC sysctls (ipc/ipc_sysctl.c, ipc/mq_sysctl.c).
fn check_ipc_sysctl_value(field: &str, k: &str, v: &str) -> Result<(), Status> {
    const INT_MAX: i128 = i32::MAX as i128;
    const IPCMNI: i128 = 32768;
    let (lo, hi): (i128, i128) = match k {
        "kernel.shmmax" | "kernel.shmall" => (0, u64::MAX as i128),
        "kernel.shmmni" | "kernel.msgmni" => (0, IPCMNI),
        "kernel.shm_rmid_forced" => (0, 1),
        "kernel.msgmax" | "kernel.msgmnb" => (0, INT_MAX),
        "kernel.sem" => {
            let parts: Vec<&str> = v.split_whitespace().collect();
            if parts.len() != 4 || parts.iter().any(|p| p.parse::<i32>().map_or(true, |n| n < 0)) {
                return Err(invalid(
                    field,
                    format!("{v:?} is not four non-negative integers (semmsl semmns semopm semmni)"),
                ));
            }
            return Ok(());
        }
        "fs.mqueue.queues_max" => (0, INT_MAX),
        "fs.mqueue.msg_max" | "fs.mqueue.msg_default" => (1, 65536),
        "fs.mqueue.msgsize_max" | "fs.mqueue.msgsize_default" => (128, 16 * 1024 * 1024),
        _ => return Ok(()),
    };
    match v.trim().parse::<i128>() {
        Ok(n) if n >= lo && n <= hi => Ok(()),
        _ => Err(invalid(field, format!("{v:?} is not an integer in [{lo}, {hi}]"))),
    }
}

/// StopPodSandbox, RemovePodSandbox, PodSandboxStatus, PodSandboxStats: the ID.
pub fn pod_id(id: &str) -> Result<(), Status> {
    check_id("pod_sandbox_id", id)
}

/// ListPodSandbox.
pub fn list_pod_sandbox(req: &ListPodSandboxRequest) -> Result<(), Status> {
    if let Some(f) = &req.filter {
        check_id("filter.id", &f.id)?;
        check_count("filter.label_selector", f.label_selector.len(), 1024)?;
    }
    Ok(())
}

/// UpdateRuntimeConfig: the node's pod CIDR (logged only).
pub fn update_runtime_config(req: &UpdateRuntimeConfigRequest) -> Result<(), Status> {
    let cidr = req.runtime_config.as_ref().and_then(|r| r.network_config.as_ref()).map(|n| n.pod_cidr.as_str());
    check_str("runtime_config.network_config.pod_cidr", cidr.unwrap_or(""), 1024)
}

/// ListPodSandboxStats.
pub fn list_pod_sandbox_stats(req: &ListPodSandboxStatsRequest) -> Result<(), Status> {
    if let Some(f) = &req.filter {
        check_id("filter.id", &f.id)?;
        check_count("filter.label_selector", f.label_selector.len(), 1024)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use tonic::Code;

    fn pod(f: impl FnOnce(&mut PodSandboxConfig)) -> RunPodSandboxRequest {
        let mut c = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "p".into(),
                namespace: "ns".into(),
                uid: "u".into(),
                attempt: 0,
            }),
            hostname: "p".into(),
            log_directory: "/var/log/pods/ns_p_u".into(),
            linux: Some(LinuxPodSandboxConfig::default()),
            ..Default::default()
        };
        f(&mut c);
        RunPodSandboxRequest { config: Some(c), runtime_handler: String::new() }
    }

    fn refused(req: RunPodSandboxRequest, needle: &str) {
        let e = run_pod_sandbox(&req).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(needle), "{:?} does not mention {needle:?}", e.message());
    }

    fn sysctl(k: &str, v: &str) -> impl FnOnce(&mut PodSandboxConfig) {
        let (k, v) = (k.to_string(), v.to_string());
        move |c| c.linux.as_mut().unwrap().sysctls = HashMap::from([(k, v)])
    }

    fn ns(network: NamespaceMode, ipc: NamespaceMode) -> impl FnOnce(&mut PodSandboxConfig) {
        move |c| {
            c.linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: network as i32,
                    ipc: ipc as i32,
                    ..Default::default()
                }),
                ..Default::default()
            })
        }
    }

    #[test]
    fn accepted() {
        run_pod_sandbox(&pod(|_| {})).unwrap();
        run_pod_sandbox(&pod(|c| c.log_directory.clear())).unwrap();
        run_pod_sandbox(&pod(sysctl("kernel.shm_rmid_forced", "1"))).unwrap();
        run_pod_sandbox(&pod(sysctl("net.ipv4.ip_unprivileged_port_start", "0"))).unwrap();
        run_pod_sandbox(&pod(sysctl("kernel/shm_rmid_forced", "1"))).unwrap();
        run_pod_sandbox(&pod(sysctl("kernel.sem", "250 32000 32 128"))).unwrap();
        run_pod_sandbox(&pod(sysctl("net.ipv4.ip_local_port_range", "1024 65535"))).unwrap();
        run_pod_sandbox(&pod(|c| {
            c.dns_config = Some(DnsConfig {
                servers: vec!["10.96.0.10".into(), "fe80::1%eth0".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            })
        }))
        .unwrap();
    }

    #[test]
    fn refused_pods() {
        refused(pod(|c| c.log_directory = "relative/logs".into()), "log_directory");
        refused(pod(|c| c.log_directory = "/var/log/../../etc".into()), "log_directory");
        refused(pod(|c| c.metadata.as_mut().unwrap().name.clear()), "metadata.name");
        refused(pod(|c| c.metadata.as_mut().unwrap().name = "n".repeat(254)), "metadata.name");
        refused(pod(|c| c.hostname = "a\nb".into()), "hostname");
        refused(pod(|c| c.hostname = "h".repeat(65)), "hostname");
        refused(pod(|c| c.labels = HashMap::from([("k".into(), "v".repeat(7 << 20))])), "labels");
        refused(pod(|c| c.annotations = HashMap::from([("k".into(), "v".repeat(7 << 20))])), "annotations");
        refused(
            pod(|c| {
                c.dns_config =
                    Some(DnsConfig { servers: vec!["1.1.1.1\nnameserver 6.6.6.6".into()], ..Default::default() })
            }),
            "dns_config.servers",
        );
        refused(
            pod(|c| c.port_mappings = vec![PortMapping { container_port: 70000, ..Default::default() }]),
            "container_port",
        );
        refused(pod(|c| c.metadata = None), "config.metadata");
    }

    #[test]
    fn sysctls() {
        refused(pod(sysctl("kernel.panic", "1")), "not a namespaced sysctl");
        refused(pod(sysctl("kernel.msgmax", "-1")), "kernel.msgmax");
        refused(pod(sysctl("kernel.shm_rmid_forced", "2")), "kernel.shm_rmid_forced");
        refused(pod(sysctl("kernel.sem", "1 2 3")), "kernel.sem");
        run_pod_sandbox(&pod(sysctl("kernel.domainname", "x"))).unwrap();
        let mut p = pod(sysctl("net.ipv4.ip_forward", "1"));
        ns(NamespaceMode::Node, NamespaceMode::Pod)(p.config.as_mut().unwrap());
        refused(p, "host's network");
        let mut p = pod(sysctl("kernel.shmmax", "1000000"));
        ns(NamespaceMode::Pod, NamespaceMode::Node)(p.config.as_mut().unwrap());
        refused(p, "host's IPC");
        let mut p = pod(sysctl("kernel.shmmax", "1000000"));
        ns(NamespaceMode::Node, NamespaceMode::Pod)(p.config.as_mut().unwrap());
        run_pod_sandbox(&p).unwrap();
    }

    #[test]
    fn namespaces() {
        let mut p = pod(|_| {});
        p.config.as_mut().unwrap().linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption { pid: NamespaceMode::Target as i32, ..Default::default() }),
            ..Default::default()
        });
        refused(p, "namespace_options.pid");
        let mut p = pod(|_| {});
        p.config.as_mut().unwrap().linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption { network: 42, ..Default::default() }),
            ..Default::default()
        });
        refused(p, "unknown namespace mode");
    }
}
