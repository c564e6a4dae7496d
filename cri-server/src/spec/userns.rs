//! CRI `NamespaceOption.userns_options`: what skiff accepts.
//!
//! NODE (or unset) is the node's user namespace. POD is a user namespace of the pod's own, with
//! the mappings as the kubelet allocates them: one uid and one gid mapping, each starting at
//! container id 0, of a non-zero length that does not overflow. A privileged pod or container
//! cannot have one (as the kubelet refuses it). CONTAINER and TARGET are refused as the CRI
//! says. A container's options, when it has any, must be its pod's (it always runs in its pod's
//! user namespace). Everything refused is InvalidArgument with the reason.

use proto::cri;

use super::SpecError;

fn check_mappings(what: &str, maps: &[cri::IdMapping]) -> Result<(), SpecError> {
    let field = format!("userns_options.{what}");
    if maps.len() != 1 {
        return Err(SpecError::invalid(
            field,
            format!("exactly one mapping is supported (the kubelet allocates one range), got {}", maps.len()),
        ));
    }
    let m = &maps[0];
    if m.length == 0 {
        return Err(SpecError::invalid(field, "the mapping has length 0"));
    }
    if m.container_id != 0 {
        return Err(SpecError::invalid(
            field,
            format!("container id 0 is not mapped (it starts at {})", m.container_id),
        ));
    }
    if u64::from(m.host_id) + u64::from(m.length) > u64::from(u32::MAX) {
        return Err(SpecError::invalid(field, "host_id + length overflows the id range"));
    }
    Ok(())
}

/// Checks a pod's (or a container's) user namespace options; `privileged` is the pod's or the
/// container's security context.
pub fn check(nso: &cri::NamespaceOption, privileged: bool) -> Result<(), SpecError> {
    let Some(u) = nso.userns_options.as_ref() else { return Ok(()) };
    match cri::NamespaceMode::try_from(u.mode) {
        Ok(cri::NamespaceMode::Node) => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return Err(SpecError::invalid("userns_options", "mode NODE takes no uid/gid mappings"));
            }
            Ok(())
        }
        Ok(cri::NamespaceMode::Pod) => {
            check_mappings("uids", &u.uids)?;
            check_mappings("gids", &u.gids)?;
            if privileged {
                return Err(SpecError::invalid(
                    "userns_options",
                    "a privileged pod or container cannot have a user namespace",
                ));
            }
            Ok(())
        }
        Ok(cri::NamespaceMode::Container) => Err(SpecError::invalid(
            "userns_options",
            "mode CONTAINER is not supported (the CRI allows only POD and NODE)",
        )),
        Ok(cri::NamespaceMode::Target) => {
            Err(SpecError::invalid("userns_options", "mode TARGET is not supported (the CRI allows only POD and NODE)"))
        }
        Err(_) => Err(SpecError::invalid("userns_options", format!("unknown namespace mode {}", u.mode))),
    }
}

fn idmap(m: &cri::IdMapping) -> runtime::namespaces::IdMap {
    runtime::namespaces::IdMap { container_id: m.container_id, host_id: m.host_id, length: m.length }
}

/// The (uid, gid) mappings of a checked mode POD user namespace; `None` for NODE or unset.
pub fn pod_mappings(nso: &cri::NamespaceOption) -> Option<(runtime::namespaces::IdMap, runtime::namespaces::IdMap)> {
    let u = nso.userns_options.as_ref()?;
    if u.mode != cri::NamespaceMode::Pod as i32 {
        return None;
    }
    Some((idmap(u.uids.first()?), idmap(u.gids.first()?)))
}

/// One mapping in OCI form (`linux.uidMappings`, a mount's `uidMappings`).
pub fn oci_mapping(m: runtime::namespaces::IdMap) -> Result<oci_spec::runtime::LinuxIdMapping, SpecError> {
    Ok(oci_spec::runtime::LinuxIdMappingBuilder::default()
        .container_id(m.container_id)
        .host_id(m.host_id)
        .size(m.length)
        .build()?)
}

/// The host ids of the pod's root (container uid 0, gid 0), for a pod with a user namespace.
pub fn host_root(nso: &cri::NamespaceOption) -> Option<(u32, u32)> {
    pod_mappings(nso).map(|(u, g)| (u.host_id, g.host_id))
}

/// A container's `userns_options` against its pod's: unset (it gets the pod's), or the same
/// mode and mappings as the pod's.
pub fn check_container(container: Option<&cri::NamespaceOption>, pod: &cri::NamespaceOption) -> Result<(), SpecError> {
    let Some(c) = container.and_then(|c| c.userns_options.as_ref()) else { return Ok(()) };
    let node = cri::UserNamespace { mode: cri::NamespaceMode::Node as i32, ..Default::default() };
    let p = pod.userns_options.as_ref().unwrap_or(&node);
    let same = c.mode == p.mode && c.uids == p.uids && c.gids == p.gids;
    if !same {
        return Err(SpecError::invalid(
            "userns_options",
            "the container's user namespace options differ from its pod sandbox's (a container runs in its pod's user namespace)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(mode: cri::NamespaceMode, uids: Vec<cri::IdMapping>) -> cri::NamespaceOption {
        cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace { mode: mode as i32, gids: uids.clone(), uids }),
            ..Default::default()
        }
    }

    fn map(c: u32, h: u32, l: u32) -> cri::IdMapping {
        cri::IdMapping { container_id: c, host_id: h, length: l }
    }

    fn refused(o: cri::NamespaceOption, privileged: bool, what: &str) {
        let e = check(&o, privileged).unwrap_err();
        assert_eq!(e.kind(), runtime::ErrorKind::InvalidArgument);
        assert!(e.to_string().contains(what), "{e} does not say {what:?}");
    }

    #[test]
    fn modes() {
        assert!(check(&cri::NamespaceOption::default(), false).is_ok());
        assert!(check(&opts(cri::NamespaceMode::Node, vec![]), false).is_ok());
        refused(opts(cri::NamespaceMode::Node, vec![map(0, 1000, 10)]), false, "no uid/gid mappings");
        refused(opts(cri::NamespaceMode::Container, vec![]), false, "CONTAINER");
        refused(opts(cri::NamespaceMode::Target, vec![]), false, "TARGET");
        refused(opts(cri::NamespaceMode::Pod, vec![map(0, 1000, 65536), map(65536, 1, 1)]), false, "exactly one");
        refused(opts(cri::NamespaceMode::Pod, vec![]), false, "exactly one");
        refused(opts(cri::NamespaceMode::Pod, vec![map(1, 1000, 65536)]), false, "container id 0");
        refused(opts(cri::NamespaceMode::Pod, vec![map(0, u32::MAX - 5, 65536)]), false, "overflows");
        refused(opts(cri::NamespaceMode::Pod, vec![map(0, 1000, 65536)]), true, "privileged");
        assert!(check(&opts(cri::NamespaceMode::Pod, vec![map(0, 1000, 65536)]), false).is_ok());
        let m = pod_mappings(&opts(cri::NamespaceMode::Pod, vec![map(0, 1000, 65536)])).unwrap();
        assert_eq!((m.0.host_id, m.0.length, m.1.container_id), (1000, 65536, 0));
        assert!(pod_mappings(&opts(cri::NamespaceMode::Node, vec![])).is_none());
    }

    #[test]
    fn container_follows_the_pod() {
        let pod = opts(cri::NamespaceMode::Pod, vec![map(0, 1000, 65536)]);
        assert!(check_container(None, &pod).is_ok());
        assert!(check_container(Some(&cri::NamespaceOption::default()), &pod).is_ok());
        assert!(check_container(Some(&pod), &pod).is_ok());
        let other = opts(cri::NamespaceMode::Pod, vec![map(0, 2000, 65536)]);
        assert!(check_container(Some(&other), &pod).unwrap_err().to_string().contains("differ"));
        let node = opts(cri::NamespaceMode::Node, vec![]);
        assert!(check_container(Some(&node), &pod).is_err());
        assert!(check_container(Some(&node), &cri::NamespaceOption::default()).is_ok());
        assert!(check_container(Some(&pod), &cri::NamespaceOption::default()).is_err());
    }
}
