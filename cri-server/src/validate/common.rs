//! Limits and the checks shared by every request family.

#![deny(clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::path::{Component, Path};

use tonic::Status;

/// Longest object name (pod, container) and pod namespace or UID: a DNS subdomain.
pub const MAX_NAME: usize = 253;
/// Longest label key: a DNS-subdomain prefix (253), `/`, a name (63).
pub const MAX_LABEL_KEY: usize = 253 + 1 + 63;
/// Longest label key prefix (before the `/`).
pub const MAX_LABEL_PREFIX: usize = 253;
/// Longest label key name (after the `/`).
pub const MAX_LABEL_NAME: usize = 63;
/// Longest label value. Kubernetes caps values at 63, but the kubelet puts the pod's name
/// (a DNS subdomain, up to 253) into the `io.kubernetes.pod.name` label.
pub const MAX_LABEL_VALUE: usize = 253;
/// All labels of one object (keys and values).
pub const MAX_LABELS_TOTAL: usize = 64 * 1024;
/// All annotations of one object (keys and values): Kubernetes' 256 KiB plus room for what the
/// kubelet adds.
pub const MAX_ANNOTATIONS_TOTAL: usize = 256 * 1024 + 16 * 1024;
/// Longest path (PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Longest hostname (HOST_NAME_MAX).
pub const MAX_HOSTNAME: usize = 64;
/// Longest single argument or environment string (the kernel's MAX_ARG_STRLEN).
pub const MAX_ARG: usize = 128 * 1024;
/// Command, arguments and environment together (half the kernel's default ARG_MAX).
pub const MAX_ARGS_TOTAL: usize = 1024 * 1024;
/// Most arguments (command + args, or an ExecSync cmd) and most environment variables.
pub const MAX_ARGS_COUNT: usize = 16 * 1024;
/// Most mounts, devices, CDI devices, masked or read-only paths of one container.
pub const MAX_MOUNTS: usize = 1024;
/// Most port mappings of one pod.
pub const MAX_PORT_MAPPINGS: usize = 1024;
/// Most sysctls of one pod.
pub const MAX_SYSCTLS: usize = 256;
/// Longest sysctl value.
pub const MAX_SYSCTL_VALUE: usize = 4096;
/// Most DNS servers, searches and options.
pub const MAX_DNS_ENTRIES: usize = 64;
/// Longest DNS entry (a search domain is at most 253).
pub const MAX_DNS_ENTRY: usize = 253;
/// Most supplemental groups (NGROUPS_MAX).
pub const MAX_GROUPS: usize = 65536;
/// Most capabilities added or dropped.
pub const MAX_CAPS: usize = 128;
/// Longest image reference.
pub const MAX_IMAGE_REF: usize = 4096;
/// Longest object ID or ID prefix in a request (IDs are 64 hex digits).
pub const MAX_ID: usize = 128;
/// Longest credential string of a pull.
pub const MAX_AUTH: usize = 64 * 1024;

/// INVALID_ARGUMENT naming the field.
pub fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

/// A string of at most `max` bytes, without NUL.
pub fn check_str(field: &str, s: &str, max: usize) -> Result<(), Status> {
    if s.len() > max {
        return Err(invalid(field, format!("{} bytes, the limit is {max}", s.len())));
    }
    if s.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

/// A non-empty string of at most `max` bytes, without NUL.
pub fn check_required(field: &str, s: &str, max: usize) -> Result<(), Status> {
    if s.is_empty() {
        return Err(invalid(field, "is required"));
    }
    check_str(field, s, max)
}

/// An object ID or ID prefix (may be empty: the lookup then finds nothing).
pub fn check_id(field: &str, id: &str) -> Result<(), Status> {
    check_str(field, id, MAX_ID)
}

/// At most `max` entries.
pub fn check_count(field: &str, n: usize, max: usize) -> Result<(), Status> {
    if n > max {
        return Err(invalid(field, format!("{n} entries, the limit is {max}")));
    }
    Ok(())
}

/// An absolute path of at most [`MAX_PATH`] bytes without NUL (empty allowed when `optional`).
pub fn check_abs_path(field: &str, p: &str, optional: bool) -> Result<(), Status> {
    if p.is_empty() {
        return if optional { Ok(()) } else { Err(invalid(field, "is required")) };
    }
    check_str(field, p, MAX_PATH)?;
    if !p.starts_with('/') {
        return Err(invalid(field, format!("{p:?} is not an absolute path")));
    }
    Ok(())
}

/// An absolute path without `..` components.
pub fn check_abs_path_no_dotdot(field: &str, p: &str, optional: bool) -> Result<(), Status> {
    check_abs_path(field, p, optional)?;
    if Path::new(p).components().any(|c| c == Component::ParentDir) {
        return Err(invalid(field, format!("{p:?} has a \"..\" component")));
    }
    Ok(())
}

/// A relative path that stays below the directory it is relative to: only plain components
/// (and `.`), at least one, no `..`, not absolute.
pub fn check_relative_below(field: &str, p: &str) -> Result<(), Status> {
    check_str(field, p, MAX_PATH)?;
    if p.starts_with('/') {
        return Err(invalid(field, format!("{p:?} must be relative to the pod's log directory")));
    }
    let mut plain = 0usize;
    for c in Path::new(p).components() {
        match c {
            Component::Normal(_) => plain = plain.saturating_add(1),
            Component::CurDir => {}
            _ => return Err(invalid(field, format!("{p:?} leaves the pod's log directory"))),
        }
    }
    if plain == 0 || p.ends_with('/') {
        return Err(invalid(field, format!("{p:?} names no file")));
    }
    Ok(())
}

/// The pod's log directory of a container whose log file is `log_path` (the directory joined
/// with the config's relative `config_log_path`), for the monitor to open the log beneath it.
/// `None` when `log_path` does not end with `config_log_path` (a record of an older skiffd).
pub fn log_dir_of(log_path: &str, config_log_path: &str) -> Option<std::path::PathBuf> {
    if log_path.is_empty() || check_relative_below("log_path", config_log_path).is_err() {
        return None;
    }
    let n = Path::new(config_log_path).components().filter(|c| matches!(c, Component::Normal(_))).count();
    let full = Path::new(log_path);
    let dir = full.ancestors().nth(n)?;
    let rel = full.strip_prefix(dir).ok()?;
    let want: Vec<_> = Path::new(config_log_path).components().filter(|c| matches!(c, Component::Normal(_))).collect();
    let got: Vec<_> = rel.components().collect();
    (want == got && dir.is_absolute()).then(|| dir.to_path_buf())
}

fn total<'a>(m: impl Iterator<Item = (&'a String, &'a String)>) -> usize {
    m.fold(0usize, |acc, (k, v)| acc.saturating_add(k.len()).saturating_add(v.len()))
}

/// Labels: key lengths as Kubernetes (prefix ≤ 253, name ≤ 63), values ≤ [`MAX_LABEL_VALUE`],
/// all together ≤ [`MAX_LABELS_TOTAL`].
pub fn check_labels(field: &str, labels: &HashMap<String, String>) -> Result<(), Status> {
    let sum = total(labels.iter());
    if sum > MAX_LABELS_TOTAL {
        return Err(invalid(field, format!("{sum} bytes in all, the limit is {MAX_LABELS_TOTAL}")));
    }
    for (k, v) in labels {
        let key = |why: String| invalid(&format!("{field} key {:?}", truncated(k)), why);
        if k.is_empty() {
            return Err(invalid(field, "empty key"));
        }
        if k.len() > MAX_LABEL_KEY {
            return Err(key(format!("{} bytes, the limit is {MAX_LABEL_KEY}", k.len())));
        }
        let (prefix, name) = match k.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", k.as_str()),
        };
        if prefix.len() > MAX_LABEL_PREFIX {
            return Err(key(format!("prefix of {} bytes, the limit is {MAX_LABEL_PREFIX}", prefix.len())));
        }
        if name.is_empty() || name.len() > MAX_LABEL_NAME {
            return Err(key(format!("name of {} bytes, it must have 1 to {MAX_LABEL_NAME}", name.len())));
        }
        if k.contains('\0') {
            return Err(key("contains a NUL byte".into()));
        }
        check_str(&format!("{field}[{:?}]", truncated(k)), v, MAX_LABEL_VALUE)?;
    }
    Ok(())
}

/// Annotations: all keys and values together ≤ [`MAX_ANNOTATIONS_TOTAL`], keys non-empty.
pub fn check_annotations(field: &str, annotations: &HashMap<String, String>) -> Result<(), Status> {
    let sum = total(annotations.iter());
    if sum > MAX_ANNOTATIONS_TOTAL {
        return Err(invalid(field, format!("{sum} bytes in all, the limit is {MAX_ANNOTATIONS_TOTAL}")));
    }
    for (k, v) in annotations {
        check_required(&format!("{field} key"), k, MAX_ANNOTATIONS_TOTAL)?;
        check_str(&format!("{field}[{:?}]", truncated(k)), v, MAX_ANNOTATIONS_TOTAL)?;
    }
    Ok(())
}

/// The first 64 characters of a string, for error messages about huge inputs.
pub fn truncated(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_owned();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    format!("{}…", &s[..end])
}

/// A NamespaceMode value the enum knows.
pub fn check_namespace_mode(field: &str, m: i32) -> Result<proto::cri::NamespaceMode, Status> {
    proto::cri::NamespaceMode::try_from(m).map_err(|_| invalid(field, format!("unknown namespace mode {m}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        for ok in ["a.log", "c/0.log", "./c/0.log", "a/./b"] {
            check_relative_below("log_path", ok).unwrap();
        }
        for bad in ["../../../../tmp/pwned.log", "/etc/x", "a/../../b", "a/..", "", ".", "a/", "a\0b"] {
            assert_eq!(
                check_relative_below("log_path", bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn log_dirs() {
        assert_eq!(log_dir_of("/var/log/pods/x/c/0.log", "c/0.log").unwrap(), Path::new("/var/log/pods/x"));
        assert_eq!(log_dir_of("/var/log/pods/x/./c/0.log", "./c/0.log").unwrap(), Path::new("/var/log/pods/x"));
        assert_eq!(log_dir_of("/etc/x", "/etc/x"), None);
        assert_eq!(log_dir_of("/a/b.log", "c.log"), None);
        assert_eq!(log_dir_of("", "c.log"), None);
    }

    #[test]
    fn labels() {
        let ok = HashMap::from([
            ("io.kubernetes.pod.name".to_string(), "x".repeat(253)),
            (format!("{}/{}", "p".repeat(253), "n".repeat(63)), String::new()),
        ]);
        check_labels("labels", &ok).unwrap();
        let e = check_labels("labels", &HashMap::from([("k".into(), "v".repeat(7 << 20))])).unwrap_err();
        assert!(e.message().contains("limit is 65536"), "{}", e.message());
        for k in ["", "a/", &"n".repeat(64), &format!("{}/n", "p".repeat(254))] {
            assert!(check_labels("labels", &HashMap::from([(k.to_string(), "v".into())])).is_err(), "{k}");
        }
        assert!(check_labels("labels", &HashMap::from([("k".into(), "v".repeat(254))])).is_err());
    }

    #[test]
    fn annotations() {
        check_annotations("annotations", &HashMap::from([("k".into(), "v".repeat(200 * 1024))])).unwrap();
        let e = check_annotations("annotations", &HashMap::from([("k".into(), "v".repeat(7 << 20))])).unwrap_err();
        assert!(e.message().starts_with("annotations:"), "{}", e.message());
    }

    #[test]
    fn strings_and_paths() {
        assert!(check_str("f", "a\0", 10).is_err());
        assert!(check_str("f", "abc", 2).is_err());
        assert!(check_required("f", "", 2).is_err());
        check_abs_path("p", "", true).unwrap();
        assert!(check_abs_path("p", "", false).is_err());
        assert!(check_abs_path("p", "relative/logs", true).is_err());
        assert!(check_abs_path_no_dotdot("p", "/a/../b", true).is_err());
        check_abs_path_no_dotdot("p", "/var/log/pods/x", true).unwrap();
        assert_eq!(truncated(&"é".repeat(100)).chars().count(), 33);
    }
}
