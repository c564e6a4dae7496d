//! The host side of a pod sandbox in one place: [`setup_pod`] pins the namespaces, writes
//! resolv.conf/hosts/hostname, mounts the shm and creates the pod cgroup, rolling back
//! everything it did when a step fails; [`teardown_pod`] undoes it idempotently. Blocking: call
//! from `spawn_blocking`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroups::{normalize, CgroupError, CgroupManager};
use crate::namespaces::{self, NsType};
use crate::podfiles::{self, PodPaths};
use crate::Error;

/// What [`setup_pod`] needs.
#[derive(Debug, Clone)]
pub struct PodSetupRequest<'a> {
    /// STATE (e.g. /run/skiff); the pod lives in `STATE/pods/<pod_id>`.
    pub state_dir: &'a Path,
    pub pod_id: &'a str,
    /// Share the node's network (and UTS) namespace instead of pinning new ones.
    pub host_network: bool,
    /// Share the node's IPC namespace (and its /dev/shm).
    pub host_ipc: bool,
    /// The hostname asked for (empty: the pod id's prefix; ignored with `host_network`).
    pub hostname: &'a str,
    /// The pod's DNS settings; `None` copies `host_resolv_conf`.
    pub dns: Option<&'a podfiles::DnsSettings>,
    /// The cgroup parent asked for (cgroupfs form; empty: `<default_cgroup_parent>/<pod_id>`).
    pub cgroup_parent: &'a str,
    /// The node's resolv.conf, copied when the pod has no DNS config (normally /etc/resolv.conf).
    pub host_resolv_conf: &'a Path,
    /// Size of the pod's /dev/shm tmpfs ([`podfiles::DEFAULT_SHM_SIZE`]).
    pub shm_size: u64,
    /// Parent of the pod cgroup when the config names none (skiffd's
    /// `runtime.default_cgroup_parent`, normally `/skiff`).
    pub default_cgroup_parent: &'a str,
    /// A user namespace of the pod's own with these (uid, gid) mappings, created before the
    /// other namespaces so that they are owned by it (CRI `userns_options` mode POD); `None`:
    /// the node's.
    pub userns: Option<(namespaces::IdMap, namespaces::IdMap)>,
}

/// What a pod holds on the host; store it in the pod record (serde) and hand its parts to
/// skiffd's spec generation and to netplugin (`namespaces.net`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodResources {
    /// `STATE/pods/<pod-id>`
    pub dir: PathBuf,
    /// Pinned namespaces; `None` = the node's (NODE mode).
    pub namespaces: PodNamespacePaths,
    /// The files to bind-mount into containers (shm = the pod tmpfs, or /dev/shm for IPC=NODE).
    pub files: PodFilePaths,
    /// The pod cgroup, cgroupfs form (CRI cgroup_parent or `<default parent>/<pod-id>`).
    pub cgroup_parent: String,
    /// The hostname the pod's containers see.
    pub hostname: String,
}

/// The pod's pinned namespaces to join; `None` = the host's namespace (CRI NODE).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodNamespacePaths {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// The pod's user namespace pin (`<pod>/ns/user`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<PathBuf>,
}

/// The pod's files bind-mounted into each container (`None` leaves that mount out).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodFilePaths {
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    pub hostname: Option<PathBuf>,
    /// The pod's shm dir (a tmpfs), or the host's `/dev/shm` for IPC=NODE pods.
    pub shm: Option<PathBuf>,
}

/// The pod cgroup in cgroupfs form: the CRI cgroup_parent, or `<default_parent>/<pod-id>` when
/// empty. systemd slice names are refused (skiff manages cgroupfs paths only).
pub fn cgroup_parent(requested: &str, pod_id: &str, default_parent: &str) -> Result<String, CgroupError> {
    let p = requested;
    if p.is_empty() {
        return Ok(format!("/{}/{pod_id}", normalize(default_parent)?));
    }
    if p.ends_with(".slice") || p.contains(".slice/") {
        return Err(CgroupError::InvalidPath {
            path: p.to_string(),
            reason: "systemd slices are not supported: use the kubelet's cgroupfs driver",
        });
    }
    Ok(format!("/{}", normalize(p)?))
}

/// Sets up the pod's namespaces, files, shm and cgroup. On error everything done so far is
/// undone (LIFO) and the error is returned.
pub fn setup_pod(cgroups: &CgroupManager, req: &PodSetupRequest<'_>) -> Result<PodResources, Error> {
    let paths = PodPaths::new(req.state_dir, req.pod_id);
    let (host_net, host_ipc) = (req.host_network, req.host_ipc);
    let cg = cgroup_parent(req.cgroup_parent, req.pod_id, req.default_cgroup_parent)?;
    let hostname = podfiles::pod_hostname(if host_net { "" } else { req.hostname });

    let mut undo: Vec<Box<dyn FnOnce() + '_>> = Vec::new();
    let res = (|| -> Result<PodResources, Error> {
        std::fs::create_dir_all(&paths.dir).map_err(|e| podfiles::PodFilesError::io("create", &paths.dir, e))?;
        let dir = paths.dir.clone();
        undo.push(Box::new(move || {
            let _ = std::fs::remove_dir(&dir);
        }));

        let mut types = Vec::new();
        if !host_net {
            types.push(NsType::Net);
            types.push(NsType::Uts);
        }
        if !host_ipc {
            types.push(NsType::Ipc);
        }
        let (user, pins) = match req.userns {
            Some((uid, gid)) => {
                let (user, pins) =
                    namespaces::pin_in_user_namespace(&paths.ns_dir(), &types, Some(&hostname), uid, gid)?;
                (Some(user), pins)
            }
            None => (None, namespaces::pin(&paths.ns_dir(), &types, Some(&hostname))?),
        };
        let ns_dir = paths.ns_dir();
        undo.push(Box::new(move || {
            if let Err(e) = namespaces::unpin(&ns_dir) {
                tracing::warn!(error = %e, "rollback: unpin namespaces");
            }
        }));

        podfiles::write_resolv_conf(&paths.resolv_conf(), req.dns, req.host_resolv_conf)?;
        podfiles::write_hosts(
            &paths.hosts(),
            &hostname,
            &[],
            if host_net { Some(Path::new("/etc/hosts")) } else { None },
        )?;
        podfiles::write_hostname(&paths.hostname(), &hostname)?;
        let files_paths = paths.clone();
        undo.push(Box::new(move || {
            for p in [files_paths.resolv_conf(), files_paths.hosts(), files_paths.hostname()] {
                let _ = std::fs::remove_file(p);
            }
        }));

        if !host_ipc {
            podfiles::mount_shm(&paths.shm(), req.shm_size)?;
            let shm = paths.shm();
            undo.push(Box::new(move || {
                if let Err(e) = podfiles::unmount_shm(&shm) {
                    tracing::warn!(error = %e, "rollback: unmount shm");
                }
            }));
        }

        let existed = cgroups.exists(&cg)?;
        cgroups.create(&cg)?;
        if !existed {
            let cg2 = cg.clone();
            undo.push(Box::new(move || {
                if let Err(e) = cgroups.remove(&cg2) {
                    tracing::warn!(error = %e, "rollback: remove pod cgroup");
                }
            }));
        }

        Ok(PodResources {
            dir: paths.dir.clone(),
            namespaces: PodNamespacePaths { net: pins.net, ipc: pins.ipc, uts: pins.uts, user },
            files: paths.files(host_ipc),
            cgroup_parent: cg.clone(),
            hostname: hostname.clone(),
        })
    })();
    match res {
        Ok(r) => {
            tracing::debug!(pod = req.pod_id, cgroup = %r.cgroup_parent, "pod set up");
            Ok(r)
        }
        Err(e) => {
            while let Some(u) = undo.pop() {
                u();
            }
            Err(e)
        }
    }
}

/// Undoes [`setup_pod`]: unmounts the shm, unpins the namespaces, removes the files and the pod
/// dir, and removes the pod cgroup (only if skiff created it, and only once its container
/// cgroups are gone). Idempotent; every step is attempted, the first error is returned.
/// Containers must be stopped first.
pub fn teardown_pod(cgroups: &CgroupManager, state_dir: &Path, pod_id: &str, cgroup_parent: &str) -> Result<(), Error> {
    let paths = PodPaths::new(state_dir, pod_id);
    let mut first: Option<Error> = None;
    let mut keep = |r: Result<(), Error>| {
        if let Err(e) = r {
            tracing::warn!(pod = pod_id, error = %e, "pod teardown step failed");
            first.get_or_insert(e);
        }
    };
    keep(podfiles::unmount_shm(&paths.shm()).map_err(Into::into));
    keep(namespaces::unpin(&paths.ns_dir()).map_err(Into::into));
    keep(podfiles::remove_pod_files(&paths).map_err(Into::into));
    if !cgroup_parent.is_empty() {
        keep(cgroups.remove(cgroup_parent).map_err(Into::into));
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
