//! OCI runtime spec generation from CRI inputs, in the manner of containerd's
//! `container_create_linux.go` and its spec opts.
//!
//! The lead calls [`generate`] at CreateContainer with a [`SpecInput`] and writes the result as
//! `STATE/containers/<id>/config.json`; the monitor executes it. [`resources_from_cri`] converts
//! CRI resources for [`runtime::cgroups::CgroupManager::apply`] (CreateContainer and
//! UpdateContainerResources). [`user_request`] + [`runtime::user::resolve`] give the user.

pub mod mounts;
mod process;
mod resources;
mod security;
pub mod signal;
pub mod userns;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, PosixRlimit, RootBuilder, Spec};
use proto::cri;

use runtime::user::{ResolvedUser, UserRequest};
use runtime::ErrorKind;

pub use mounts::{default_masked_paths, default_readonly_paths};
pub use process::merge_args;
pub use resources::{clamp_oom_score_adj, current_oom_score_adj, resources_from_cri};

/// Errors of spec generation. Most are the caller's fault (InvalidArgument).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command specified: neither the container config nor the image has one")]
    NoCommand,
    #[error("mount {container_path:?}: host path {host_path:?} does not exist")]
    MountSourceMissing { host_path: String, container_path: String },
    #[error("device {host_path:?}: {reason}")]
    BadDevice { host_path: String, reason: String },
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error(transparent)]
    Caps(#[from] runtime::caps::CapsError),
    #[error(transparent)]
    Seccomp(#[from] runtime::seccomp::SeccompError),
    #[error("building the spec: {0}")]
    Build(String),
}

impl SpecError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SpecError::Build(_) => ErrorKind::Internal,
            SpecError::Caps(e) => e.kind(),
            SpecError::Seccomp(e) => e.kind(),
            _ => ErrorKind::InvalidArgument,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        SpecError::Invalid { what: what.into(), reason: reason.into() }
    }
}

impl From<oci_spec::OciSpecError> for SpecError {
    fn from(e: oci_spec::OciSpecError) -> Self {
        SpecError::Build(e.to_string())
    }
}

/// Where the container's PID namespace comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// CRI POD: join the pod's PID namespace (path of the infra process' ns, `/proc/<pid>/ns/pid`).
    Pod(PathBuf),
    /// CRI CONTAINER: a new PID namespace of its own (the default).
    Container,
    /// CRI NODE: the host's PID namespace.
    Node,
    /// CRI TARGET: another container's namespace (`/proc/<target pid>/ns/pid`).
    Target(PathBuf),
}

pub use runtime::pod::{PodFilePaths, PodNamespacePaths};

/// The pod's namespace options (defaults: everything POD).
pub fn namespace_options(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

/// The pod's DNS config in the runtime's plain form.
pub fn dns_settings(config: &cri::PodSandboxConfig) -> Option<runtime::podfiles::DnsSettings> {
    config.dns_config.as_ref().map(|d| runtime::podfiles::DnsSettings {
        servers: d.servers.clone(),
        searches: d.searches.clone(),
        options: d.options.clone(),
    })
}

/// [`runtime::pod::setup_pod`] (through [`crate::backends::Sandboxes`]) for a CRI pod config: its namespace modes, hostname, DNS and
/// cgroup parent in the runtime's plain terms. Blocking.
pub fn setup_pod(
    sandboxes: &dyn crate::backends::Sandboxes,
    state_dir: &Path,
    pod_id: &str,
    config: &cri::PodSandboxConfig,
    host_resolv_conf: &Path,
    shm_size: u64,
    default_cgroup_parent: &str,
) -> Result<runtime::pod::PodResources, runtime::Error> {
    let node = |m: i32| cri::NamespaceMode::try_from(m) == Ok(cri::NamespaceMode::Node);
    let nso = namespace_options(config);
    let dns = dns_settings(config);
    crate::backends::Sandboxes::setup_pod(
        sandboxes,
        &runtime::pod::PodSetupRequest {
            state_dir,
            pod_id,
            host_network: node(nso.network),
            host_ipc: node(nso.ipc),
            hostname: &config.hostname,
            dns: dns.as_ref(),
            cgroup_parent: config.linux.as_ref().map(|l| l.cgroup_parent.as_str()).unwrap_or(""),
            host_resolv_conf,
            shm_size,
            default_cgroup_parent,
            userns: userns::pod_mappings(&nso),
        },
    )
}

/// Everything [`generate`] needs.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    pub container_id: &'a str,
    pub sandbox_id: &'a str,
    pub config: &'a cri::ContainerConfig,
    pub sandbox: &'a cri::PodSandboxConfig,
    /// The image's config (entrypoint, cmd, env, working dir, user); `None` = empty.
    pub image: Option<&'a ImageConfig>,
    /// The image name recorded in annotations.
    pub image_name: &'a str,
    /// `root.path`: the container's rootfs mount point (`STATE/containers/<id>/rootfs`).
    pub rootfs: &'a Path,
    pub pod_files: PodFilePaths,
    pub namespaces: PodNamespacePaths,
    pub pid: PidNamespace,
    /// `linux.cgroupsPath`, cgroupfs form (`<pod cgroup>/<ctr-id>`).
    pub cgroups_path: &'a str,
    /// The resolved user (see [`user_request`] and [`runtime::user::resolve`]).
    pub user: &'a ResolvedUser,
    /// The lowest oom_score_adj skiff may set (skiffd's own, see [`current_oom_score_adj`]).
    pub oom_score_adj_min: i32,
    /// Process rlimits to set (empty: inherited from the monitor).
    pub rlimits: Vec<PosixRlimit>,
    /// Whether the host uses cgroup v2 only (then a private cgroup namespace is added).
    pub cgroup_v2: bool,
}

/// The user request from the CRI config and image config, for [`runtime::user::resolve`].
pub fn user_request<'a>(config: &'a cri::ContainerConfig, image: Option<&'a ImageConfig>) -> UserRequest<'a> {
    let sc = config.linux.as_ref().and_then(|l| l.security_context.as_ref());
    UserRequest {
        run_as_user: sc.and_then(|s| s.run_as_user.as_ref()).map(|v| v.value),
        run_as_username: sc.map(|s| s.run_as_username.as_str()).unwrap_or(""),
        run_as_group: sc.and_then(|s| s.run_as_group.as_ref()).map(|v| v.value),
        image_user: image.and_then(|i| i.user().as_deref()).unwrap_or(""),
        supplemental_groups: sc.map(|s| s.supplemental_groups.as_slice()).unwrap_or(&[]),
        strict_supplemental_groups: sc
            .map(|s| s.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32)
            .unwrap_or(false),
    }
}

/// Builds the OCI runtime spec for a container.
pub fn generate(input: &SpecInput<'_>) -> Result<Spec, SpecError> {
    let config = input.config;
    let sc = config.linux.as_ref().and_then(|l| l.security_context.clone()).unwrap_or_default();
    let privileged = sc.privileged;
    let pod_privileged =
        input.sandbox.linux.as_ref().and_then(|l| l.security_context.as_ref()).map(|s| s.privileged).unwrap_or(false);
    if privileged && !pod_privileged {
        return Err(SpecError::invalid("security context", "a privileged container needs a privileged pod sandbox"));
    }
    if let Some(nso) = &sc.namespace_options {
        userns::check(nso, privileged)?;
    }
    let pod_nso = namespace_options(input.sandbox);
    userns::check_container(sc.namespace_options.as_ref(), &pod_nso)?;
    let pod_userns = match (&input.namespaces.user, userns::pod_mappings(&pod_nso)) {
        (Some(p), Some(maps)) => Some((p.clone(), maps)),
        (None, None) => None,
        _ => {
            return Err(SpecError::invalid(
                "userns_options",
                "the pod sandbox's user namespace is missing (or it has one it did not ask for)",
            ))
        }
    };
    if pod_userns.is_some() && privileged {
        return Err(SpecError::invalid("security context", "a privileged container cannot have a user namespace"));
    }
    let host_uts = input.namespaces.uts.is_none();
    let hostname = if host_uts {
        runtime::podfiles::pod_hostname("")
    } else {
        runtime::podfiles::pod_hostname(&input.sandbox.hostname)
    };

    let mut spec = Spec::default();
    spec.set_version("1.2.0".to_string());
    spec.set_root(Some(RootBuilder::default().path(input.rootfs.to_path_buf()).readonly(sc.readonly_rootfs).build()?));
    if !host_uts {
        spec.set_hostname(Some(hostname.clone()));
    } else {
        spec.set_hostname(None);
    }

    let (proc_, bounding) = process::build(input, &sc, &hostname)?;
    spec.set_process(Some(proc_));

    let (mount_list, rootfs_propagation) = mounts::build(input, &sc)?;
    spec.set_mounts(Some(mount_list));

    // namespaces
    let mut nss = Vec::new();
    let ns = |t: LinuxNamespaceType, p: Option<&PathBuf>| -> Result<_, SpecError> {
        let mut b = LinuxNamespaceBuilder::default().typ(t);
        if let Some(p) = p {
            b = b.path(p.clone());
        }
        Ok(b.build()?)
    };
    match &input.pid {
        PidNamespace::Container => nss.push(ns(LinuxNamespaceType::Pid, None)?),
        PidNamespace::Pod(p) | PidNamespace::Target(p) => nss.push(ns(LinuxNamespaceType::Pid, Some(p))?),
        PidNamespace::Node => {}
    }
    if let Some(p) = &input.namespaces.net {
        nss.push(ns(LinuxNamespaceType::Network, Some(p))?);
    }
    if let Some(p) = &input.namespaces.ipc {
        nss.push(ns(LinuxNamespaceType::Ipc, Some(p))?);
    }
    if let Some(p) = &input.namespaces.uts {
        nss.push(ns(LinuxNamespaceType::Uts, Some(p))?);
    }
    if let Some((p, _)) = &pod_userns {
        nss.push(ns(LinuxNamespaceType::User, Some(p))?);
    }
    nss.push(ns(LinuxNamespaceType::Mount, None)?);
    if input.cgroup_v2 && !privileged {
        nss.push(ns(LinuxNamespaceType::Cgroup, None)?);
    }

    let sysctls = sysctls(input)?;
    let res_cri = config.linux.as_ref().and_then(|l| l.resources.as_ref());
    let mut resources = res_cri.map(resources_from_cri).transpose()?.unwrap_or_default();
    let (devices, device_rules) = security::devices(config, privileged)?;
    resources.set_devices(Some(device_rules));

    let mut linux = LinuxBuilder::default()
        .namespaces(nss)
        .cgroups_path(PathBuf::from(input.cgroups_path))
        .resources(resources)
        .devices(devices)
        .build()?;
    linux.set_sysctl(if sysctls.is_empty() { None } else { Some(sysctls) });
    if let Some((_, (u, g))) = pod_userns {
        linux.set_uid_mappings(Some(vec![userns::oci_mapping(u)?]));
        linux.set_gid_mappings(Some(vec![userns::oci_mapping(g)?]));
    }
    linux.set_rootfs_propagation(rootfs_propagation);
    if privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    } else {
        let masked = if sc.masked_paths.is_empty() { default_masked_paths() } else { sc.masked_paths.clone() };
        let ro = if sc.readonly_paths.is_empty() { default_readonly_paths() } else { sc.readonly_paths.clone() };
        linux.set_masked_paths(Some(masked));
        linux.set_readonly_paths(Some(ro));
        linux.set_seccomp(security::seccomp(&sc, &bounding)?);
    }
    spec.set_linux(Some(linux));

    let mut ann: HashMap<String, String> = config.annotations.clone();
    ann.insert("io.kubernetes.cri.container-type".into(), "container".into());
    ann.insert("io.kubernetes.cri.sandbox-id".into(), input.sandbox_id.to_string());
    ann.insert("io.kubernetes.cri.container-id".into(), input.container_id.to_string());
    if let Some(m) = &config.metadata {
        ann.insert("io.kubernetes.cri.container-name".into(), m.name.clone());
    }
    if !input.image_name.is_empty() {
        ann.insert("io.kubernetes.cri.image-name".into(), input.image_name.to_string());
    }
    if let Some(m) = &input.sandbox.metadata {
        ann.insert("io.kubernetes.cri.sandbox-name".into(), m.name.clone());
        ann.insert("io.kubernetes.cri.sandbox-namespace".into(), m.namespace.clone());
        ann.insert("io.kubernetes.cri.sandbox-uid".into(), m.uid.clone());
    }
    spec.set_annotations(Some(ann));
    spec.set_hooks(None);
    Ok(spec)
}

/// Pod sysctls, refused when they would change the host (net.* with the host network, IPC
/// sysctls with the host IPC namespace, kernel.hostname/domainname with the host UTS).
fn sysctls(input: &SpecInput<'_>) -> Result<HashMap<String, String>, SpecError> {
    let Some(l) = input.sandbox.linux.as_ref() else { return Ok(HashMap::new()) };
    let mut out = HashMap::new();
    for (k0, v) in &l.sysctls {
        let k = &sysctl_dots(k0);
        let ipc = k.starts_with("kernel.shm")
            || k.starts_with("kernel.msg")
            || k == "kernel.sem"
            || k.starts_with("fs.mqueue.");
        let net = k.starts_with("net.");
        let uts = k == "kernel.hostname" || k == "kernel.domainname";
        let ok = (ipc && input.namespaces.ipc.is_some())
            || (net && input.namespaces.net.is_some())
            || (uts && input.namespaces.uts.is_some());
        if !ok {
            let why = if ipc || net || uts {
                "it would change the host (the pod shares that namespace with the node)"
            } else {
                "not a namespaced sysctl"
            };
            return Err(SpecError::invalid(format!("sysctl {k:?}"), why));
        }
        if k.contains("..") || k.starts_with('.') || k.ends_with('.') {
            return Err(SpecError::invalid(format!("sysctl {k0:?}"), "malformed name"));
        }
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

/// Kubernetes accepts `kernel/shm_rmid_forced` as well as dots; when the first separator is a
/// slash, slashes and dots swap roles (`net/ipv4/conf/eth0.100/rp_filter` →
/// `net.ipv4.conf.eth0/100.rp_filter`).
pub fn sysctl_dots(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests;
