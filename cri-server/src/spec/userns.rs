//! CRI `NamespaceOption.userns_options`: what skiff accepts.
//!
//! NODE (or unset) is the node's user namespace, skiff's behaviour so far. POD is checked as the
//! kubelet allocates it (one uid and one gid mapping, each starting at container id 0, of a
//! non-zero length that does not overflow) and then refused: skiff does not create pod user
//! namespaces yet and `Status` does not announce them, so a kubelet does not ask. CONTAINER and
//! TARGET are refused as the CRI says. Everything refused is InvalidArgument with the reason.

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
            Err(SpecError::invalid(
                "userns_options",
                "user namespaces (mode POD) are not supported by this runtime yet (Status does not announce them)",
            ))
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
        refused(opts(cri::NamespaceMode::Pod, vec![map(0, 1000, 65536)]), false, "not supported");
    }
}
