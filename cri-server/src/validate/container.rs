//! Container requests: CreateContainer (metadata, command, environment, mounts, devices, log
//! path, security context, resources, the PID namespace target), UpdateContainerResources,
//! ExecSync and the ID-only container RPCs.

#![deny(clippy::arithmetic_side_effects)]

use std::path::{Component, Path};
use std::sync::Arc;

use proto::cri::*;
use tonic::Status;

use super::common::*;
use super::pod::{check_groups, check_profile};
use super::resources::check_resources;
use crate::context::Context;
use crate::store::Lookup;

/// Files under /proc that may be bind-mounted over (as runc allows, for lxcfs).
const PROC_FILES_ALLOWED: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
];

/// CreateContainer: the request alone, then (with the daemon's state) the PID namespace target.
pub async fn create_container(ctx: &Arc<Context>, req: &CreateContainerRequest) -> Result<(), Status> {
    create_container_request(req)?;
    pid_target(ctx, req).await
}

/// CreateContainer, the checks of the request alone.
pub fn create_container_request(req: &CreateContainerRequest) -> Result<(), Status> {
    check_id("pod_sandbox_id", &req.pod_sandbox_id)?;
    let Some(c) = &req.config else { return Err(invalid("config", "is required")) };
    container_config(c)
}

/// A container's config.
pub fn container_config(c: &ContainerConfig) -> Result<(), Status> {
    let Some(md) = &c.metadata else { return Err(invalid("config.metadata", "is required")) };
    check_required("metadata.name", &md.name, MAX_NAME)?;
    if let Some(i) = &c.image {
        check_str("image.image", &i.image, MAX_IMAGE_REF)?;
        check_annotations("image.annotations", &i.annotations)?;
    }
    check_args(&c.command, &c.args, &c.envs)?;
    check_abs_path("working_dir", &c.working_dir, true)?;
    check_count("mounts", c.mounts.len(), MAX_MOUNTS)?;
    for m in &c.mounts {
        check_mount(m)?;
    }
    check_count("devices", c.devices.len(), MAX_MOUNTS)?;
    for d in &c.devices {
        check_abs_path("devices.container_path", &d.container_path, false)?;
        check_abs_path("devices.host_path", &d.host_path, false)?;
        if d.permissions.len() > 3 || !d.permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(invalid(
                "devices.permissions",
                format!("{:?} is not a subset of \"rwm\"", truncated(&d.permissions)),
            ));
        }
    }
    check_count("cdi_devices", c.cdi_devices.len(), MAX_MOUNTS)?;
    for d in &c.cdi_devices {
        check_str("cdi_devices.name", &d.name, MAX_NAME)?;
    }
    check_labels("labels", &c.labels)?;
    check_annotations("annotations", &c.annotations)?;
    if !c.log_path.is_empty() {
        check_relative_below("log_path", &c.log_path)?;
    }
    if let Some(l) = &c.linux {
        if let Some(r) = &l.resources {
            check_resources("linux.resources", r)?;
        }
        if let Some(sc) = &l.security_context {
            check_security_context(sc)?;
        }
    }
    Ok(())
}

/// Command, arguments and environment: what execve accepts.
fn check_args(command: &[String], args: &[String], envs: &[KeyValue]) -> Result<(), Status> {
    check_count("command and args", command.len().saturating_add(args.len()), MAX_ARGS_COUNT)?;
    check_count("envs", envs.len(), MAX_ARGS_COUNT)?;
    let mut sum = 0usize;
    for (field, list) in [("command", command), ("args", args)] {
        for a in list {
            check_str(field, a, MAX_ARG)?;
            sum = sum.saturating_add(a.len()).saturating_add(1);
        }
    }
    for e in envs {
        check_required("envs.key", &e.key, MAX_ARG)?;
        if e.key.contains('=') {
            return Err(invalid("envs.key", format!("{:?} contains '='", truncated(&e.key))));
        }
        check_str(&format!("envs[{:?}]", truncated(&e.key)), &e.value, MAX_ARG)?;
        sum = sum.saturating_add(e.key.len()).saturating_add(e.value.len()).saturating_add(2);
    }
    if sum > MAX_ARGS_TOTAL {
        return Err(invalid("command, args and envs", format!("{sum} bytes in all, the limit is {MAX_ARGS_TOTAL}")));
    }
    Ok(())
}

/// Lexically cleaned absolute path.
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or("")),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}

fn check_mount(m: &Mount) -> Result<(), Status> {
    check_abs_path("mounts.container_path", &m.container_path, false)?;
    check_str("mounts.host_path", &m.host_path, MAX_PATH)?;
    if m.host_path.is_empty() && m.image.as_ref().is_none_or(|i| i.image.is_empty()) {
        return Err(invalid(&format!("mounts {:?}", truncated(&m.container_path)), "empty host path"));
    }
    let dest = clean(&m.container_path);
    if (dest == "/proc" || dest.starts_with("/proc/")) && !PROC_FILES_ALLOWED.contains(&dest.as_str()) {
        return Err(invalid(
            &format!("mounts {:?}", truncated(&m.container_path)),
            "cannot mount over /proc or inside it (only the lxcfs files /proc/cpuinfo, meminfo, stat... may be)",
        ));
    }
    if MountPropagation::try_from(m.propagation).is_err() {
        return Err(invalid("mounts.propagation", format!("unknown propagation {}", m.propagation)));
    }
    Ok(())
}

fn check_security_context(sc: &LinuxContainerSecurityContext) -> Result<(), Status> {
    check_groups("security_context", sc.run_as_user.as_ref(), sc.run_as_group.as_ref(), &sc.supplemental_groups)?;
    check_str("security_context.run_as_username", &sc.run_as_username, 256)?;
    if let Some(ns) = &sc.namespace_options {
        check_namespace_mode("namespace_options.network", ns.network)?;
        check_namespace_mode("namespace_options.ipc", ns.ipc)?;
        let pid = check_namespace_mode("namespace_options.pid", ns.pid)?;
        check_id("namespace_options.target_id", &ns.target_id)?;
        if pid == NamespaceMode::Target && ns.target_id.is_empty() {
            return Err(invalid("namespace_options.target_id", "is required with pid TARGET"));
        }
    }
    if let Some(caps) = &sc.capabilities {
        for (field, list) in [
            ("capabilities.add_capabilities", &caps.add_capabilities),
            ("capabilities.drop_capabilities", &caps.drop_capabilities),
            ("capabilities.add_ambient_capabilities", &caps.add_ambient_capabilities),
        ] {
            check_count(field, list.len(), MAX_CAPS)?;
            for c in list {
                check_str(field, c, 64)?;
            }
        }
    }
    for (field, list) in [("masked_paths", &sc.masked_paths), ("readonly_paths", &sc.readonly_paths)] {
        check_count(field, list.len(), MAX_MOUNTS)?;
        for p in list {
            check_abs_path(field, p, false)?;
        }
    }
    check_profile("security_context.seccomp", sc.seccomp.as_ref())?;
    check_profile("security_context.apparmor", sc.apparmor.as_ref())?;
    #[allow(deprecated)]
    {
        check_str("security_context.seccomp_profile_path", &sc.seccomp_profile_path, MAX_PATH)?;
        check_str("security_context.apparmor_profile", &sc.apparmor_profile, MAX_PATH)?;
    }
    Ok(())
}

/// A PID namespace TARGET must be an existing container of the same pod.
async fn pid_target(ctx: &Arc<Context>, req: &CreateContainerRequest) -> Result<(), Status> {
    let ns = req
        .config
        .as_ref()
        .and_then(|c| c.linux.as_ref())
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let Some(ns) = ns.filter(|n| n.pid == NamespaceMode::Target as i32) else { return Ok(()) };
    let target = match ctx.containers.lookup(&ns.target_id) {
        Lookup::Found(t) => t,
        Lookup::NotFound => {
            return Err(Status::not_found(format!(
                "namespace_options.target_id: container {:?} not found",
                truncated(&ns.target_id)
            )))
        }
        Lookup::Ambiguous => {
            return Err(invalid("namespace_options.target_id", format!("ID prefix {:?} is ambiguous", ns.target_id)))
        }
    };
    let pod = match ctx.pods.lookup(&req.pod_sandbox_id) {
        Lookup::Found(p) => p,
        // CreateContainer itself reports the missing or ambiguous pod.
        _ => return Ok(()),
    };
    let pod_id = pod.get().id;
    let (target_id, target_pod) = {
        let t = target.get();
        (t.id, t.pod_id)
    };
    if target_pod != pod_id {
        return Err(invalid(
            "namespace_options.target_id",
            format!("container {target_id} belongs to pod {target_pod}, not to pod {pod_id}: TARGET is only within the same pod"),
        ));
    }
    Ok(())
}

/// UpdateContainerResources.
pub fn update_container_resources(req: &UpdateContainerResourcesRequest) -> Result<(), Status> {
    check_id("container_id", &req.container_id)?;
    if let Some(r) = &req.linux {
        check_resources("linux", r)?;
    }
    check_annotations("annotations", &req.annotations)
}

/// ExecSync: a command execve accepts.
pub fn exec_sync(req: &ExecSyncRequest) -> Result<(), Status> {
    check_id("container_id", &req.container_id)?;
    match req.cmd.first() {
        None => return Err(invalid("cmd", "is required")),
        Some(c) if c.is_empty() => return Err(invalid("cmd", "the command (cmd[0]) is empty")),
        Some(_) => {}
    }
    check_args(&req.cmd, &[], &[])
}

/// Start, stop, remove, status, stats, reopen-log: the container ID.
pub fn container_id(id: &str) -> Result<(), Status> {
    check_id("container_id", id)
}

/// ListContainers.
pub fn list_containers(req: &ListContainersRequest) -> Result<(), Status> {
    if let Some(f) = &req.filter {
        check_id("filter.id", &f.id)?;
        check_id("filter.pod_sandbox_id", &f.pod_sandbox_id)?;
        check_count("filter.label_selector", f.label_selector.len(), 1024)?;
    }
    Ok(())
}

/// ListContainerStats.
pub fn list_container_stats(req: &ListContainerStatsRequest) -> Result<(), Status> {
    if let Some(f) = &req.filter {
        check_id("filter.id", &f.id)?;
        check_id("filter.pod_sandbox_id", &f.pod_sandbox_id)?;
        check_count("filter.label_selector", f.label_selector.len(), 1024)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use tonic::Code;

    fn ctr(f: impl FnOnce(&mut ContainerConfig)) -> CreateContainerRequest {
        let mut c = ContainerConfig {
            metadata: Some(ContainerMetadata { name: "c".into(), attempt: 0 }),
            image: Some(ImageSpec { image: "busybox".into(), ..Default::default() }),
            command: vec!["sh".into()],
            log_path: "c/0.log".into(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        f(&mut c);
        CreateContainerRequest { pod_sandbox_id: "abc".into(), config: Some(c), sandbox_config: None }
    }

    fn refused(req: CreateContainerRequest, needle: &str) {
        let e = create_container_request(&req).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(needle), "{:?} does not mention {needle:?}", e.message());
    }

    fn mount(path: &str) -> Mount {
        Mount { container_path: path.into(), host_path: "/tmp".into(), ..Default::default() }
    }

    fn sc(c: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
        c.linux.as_mut().unwrap().security_context.as_mut().unwrap()
    }

    #[test]
    fn accepted() {
        create_container_request(&ctr(|_| {})).unwrap();
        create_container_request(&ctr(|c| c.mounts = vec![mount("/data"), mount("/proc/cpuinfo")])).unwrap();
        create_container_request(&ctr(|c| c.log_path.clear())).unwrap();
    }

    #[test]
    fn refused_containers() {
        refused(ctr(|c| c.log_path = "../../../../tmp/pwned.log".into()), "log_path");
        refused(ctr(|c| c.log_path = "/etc/x".into()), "log_path");
        refused(ctr(|c| c.mounts = vec![mount("/proc")]), "/proc");
        refused(ctr(|c| c.mounts = vec![mount("/proc/sys/kernel")]), "/proc");
        refused(ctr(|c| c.mounts = vec![mount("/x/../proc/")]), "/proc");
        refused(ctr(|c| c.mounts = vec![mount("relative")]), "mounts.container_path");
        refused(ctr(|c| c.labels = HashMap::from([("k".into(), "v".repeat(7 << 20))])), "labels");
        refused(ctr(|c| c.annotations = HashMap::from([("k".into(), "v".repeat(7 << 20))])), "annotations");
        refused(ctr(|c| c.args = vec!["a".repeat(MAX_ARG + 1)]), "args");
        refused(ctr(|c| c.args = vec!["a".repeat(100_000); 11]), "limit is 1048576");
        refused(ctr(|c| c.args = vec!["a\0b".into()]), "NUL");
        refused(ctr(|c| c.envs = vec![KeyValue { key: "A=B".into(), value: String::new() }]), "envs.key");
        refused(ctr(|c| c.envs = vec![KeyValue::default()]), "envs.key");
        refused(ctr(|c| c.working_dir = "rel".into()), "working_dir");
        refused(ctr(|c| c.mounts = vec![mount("/m"); MAX_MOUNTS + 1]), "mounts");
        refused(
            ctr(|c| {
                c.linux.as_mut().unwrap().resources =
                    Some(LinuxContainerResources { oom_score_adj: 5000, ..Default::default() })
            }),
            "oom_score_adj",
        );
        refused(ctr(|c| sc(c).run_as_user = Some(Int64Value { value: -1 })), "run_as_user");
        refused(
            ctr(|c| {
                sc(c).namespace_options =
                    Some(NamespaceOption { pid: NamespaceMode::Target as i32, ..Default::default() })
            }),
            "target_id",
        );
        refused(
            ctr(|c| {
                sc(c).seccomp = Some(SecurityProfile {
                    profile_type: security_profile::ProfileType::Localhost as i32,
                    localhost_ref: "profile.json".into(),
                })
            }),
            "localhost_ref",
        );
        refused(ctr(|c| c.metadata = None), "config.metadata");
    }

    #[test]
    fn exec() {
        let req = |cmd: &[&str]| ExecSyncRequest {
            container_id: "c".into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: i64::MAX,
        };
        exec_sync(&req(&["true"])).unwrap();
        for bad in [&[][..], &[""], &["sh", "a\0"]] {
            assert_eq!(exec_sync(&req(bad)).unwrap_err().code(), Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn update() {
        let req = |r: LinuxContainerResources| UpdateContainerResourcesRequest {
            container_id: "c".into(),
            linux: Some(r),
            ..Default::default()
        };
        update_container_resources(&req(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }))
        .unwrap();
        for r in [
            LinuxContainerResources { memory_limit_in_bytes: 1, ..Default::default() },
            LinuxContainerResources { cpu_period: 1, ..Default::default() },
            LinuxContainerResources { cpuset_cpus: "0-999".into(), ..Default::default() },
            LinuxContainerResources { oom_score_adj: 5000, ..Default::default() },
        ] {
            super::super::resources::init_host_limits();
            assert_eq!(update_container_resources(&req(r.clone())).unwrap_err().code(), Code::InvalidArgument, "{r:?}");
        }
    }
}
