//! Resolving the container user like containerd: `run_as_user`, `run_as_username`,
//! `run_as_group` and the image config `User` (`name`, `uid`, `uid:gid`, `name:group`, …),
//! looked up in the rootfs' `/etc/passwd` and `/etc/group` (read inside the rootfs: symlinks are
//! resolved with the rootfs as `/`, never on the host), plus supplemental groups from
//! `/etc/group` membership and CRI `supplemental_groups`.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::ErrorKind;
use crate::mounts::resolve_in_root;

/// Files bigger than this are not user databases.
const MAX_DB: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
    #[error("invalid user specification {0:?}")]
    Invalid(String),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl UserError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            UserError::Io { .. } => ErrorKind::Internal,
            _ => ErrorKind::InvalidArgument,
        }
    }
}

/// What the CRI config and the image say about the user.
#[derive(Debug, Clone, Default)]
pub struct UserRequest<'a> {
    /// `run_as_user` (takes precedence).
    pub run_as_user: Option<i64>,
    /// `run_as_username` (used when run_as_user is not set).
    pub run_as_username: &'a str,
    /// `run_as_group` (overrides the primary group).
    pub run_as_group: Option<i64>,
    /// The image config `User` (used when neither of the above is set).
    pub image_user: &'a str,
    /// CRI `supplemental_groups`.
    pub supplemental_groups: &'a [i64],
    /// CRI `supplemental_groups_policy` Strict: do not add groups from /etc/group.
    pub strict_supplemental_groups: bool,
}

/// The resolved identity of the container process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplemental gids, starting with the primary gid (as containerd 2 does), no duplicates.
    pub additional_gids: Vec<u32>,
    /// The passwd entry name, when there is one.
    pub username: Option<String>,
    /// The passwd home directory (`/` when unknown), for HOME.
    pub home: String,
}

#[derive(Debug, Clone)]
struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug, Clone)]
struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Reads a file of the rootfs safely (symlinks resolved inside `rootfs`, final open with
/// O_NOFOLLOW); a missing file reads as empty.
fn read_in_root(rootfs: &Path, path: &str) -> Result<String, UserError> {
    let io = |source| UserError::Io { path: path.to_string(), source };
    let p = resolve_in_root(rootfs, Path::new(path)).map_err(|e| io(std::io::Error::other(e.to_string())))?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&p);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(String::new()),
        Err(e) => return Err(io(e)),
    };
    if !f.metadata().map_err(io)?.is_file() {
        return Ok(String::new());
    }
    let mut buf = Vec::new();
    f.take(MAX_DB).read_to_end(&mut buf).map_err(io)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn parse_passwd(text: &str) -> Vec<Passwd> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(Passwd {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).filter(|s| !s.is_empty()).unwrap_or_else(|| "/".into()),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<Group> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(Group {
                name: f[0].to_string(),
                gid: f[2].trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| m.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn to_id(v: i64, what: &str) -> Result<u32, UserError> {
    u32::try_from(v).map_err(|_| UserError::Invalid(format!("{what} {v}")))
}

/// Reads a file from an unmounted overlay stack: the top-most layer holding it wins; an
/// overlay whiteout (char device 0:0) hides it. Symlinks are resolved within each layer only.
fn read_in_layers(layers: &[std::path::PathBuf], path: &str) -> Result<String, UserError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for layer in layers {
        let p = resolve_in_root(layer, Path::new(path))
            .map_err(|e| UserError::Io { path: path.to_string(), source: std::io::Error::other(e.to_string()) })?;
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_char_device() && m.rdev() == 0 => return Ok(String::new()),
            Ok(m) if m.is_file() => return read_in_root(layer, path),
            _ => {}
        }
        // an opaque directory on the way hides the lower layers
        if p.ancestors().skip(1).take_while(|a| a.starts_with(layer) && *a != layer).any(is_opaque) {
            return Ok(String::new());
        }
    }
    Ok(String::new())
}

/// Whether `dir` carries overlayfs' `trusted.overlay.opaque=y`.
fn is_opaque(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    let mut buf = [0u8; 4];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

/// Resolves the user for a container whose rootfs is at `rootfs` (any directory showing the
/// image's files, e.g. the mounted overlay).
pub fn resolve(rootfs: &Path, req: &UserRequest<'_>) -> Result<ResolvedUser, UserError> {
    resolve_from(&read_in_root(rootfs, "/etc/passwd")?, &read_in_root(rootfs, "/etc/group")?, req)
}

/// Like [`resolve`], but reads the image's layers directly (overlay `lowerdir` order, top-most
/// first), for CreateContainer before the rootfs is mounted.
pub fn resolve_in_layers(layers: &[std::path::PathBuf], req: &UserRequest<'_>) -> Result<ResolvedUser, UserError> {
    resolve_from(&read_in_layers(layers, "/etc/passwd")?, &read_in_layers(layers, "/etc/group")?, req)
}

/// The `/etc/passwd` and `/etc/group` of layer stacks, read once per stack, for
/// [`resolve_in_layers`] without reading the files again: the layers are content-addressed
/// snapshots (a stack's directories name its chain), which never change while they exist and
/// are the same when made again. At most [`LayerUserFiles::MAX`] stacks are kept (all are
/// dropped when it is reached); a read that fails is not kept.
#[derive(Default)]
pub struct LayerUserFiles {
    stacks: std::sync::Mutex<std::collections::HashMap<Vec<std::path::PathBuf>, std::sync::Arc<UserFiles>>>,
}

/// The contents of a layer stack's `/etc/passwd` and `/etc/group` (empty when absent).
type UserFiles = (String, String);

impl LayerUserFiles {
    /// Stacks kept at most.
    pub const MAX: usize = 256;

    /// [`resolve_in_layers`], with the files of `layers` read only the first time (blocking).
    pub fn resolve(&self, layers: &[std::path::PathBuf], req: &UserRequest<'_>) -> Result<ResolvedUser, UserError> {
        let cached = self.stacks.lock().ok().and_then(|m| m.get(layers).cloned());
        let files = match cached {
            Some(f) => f,
            None => {
                let f = std::sync::Arc::new((
                    read_in_layers(layers, "/etc/passwd")?,
                    read_in_layers(layers, "/etc/group")?,
                ));
                if let Ok(mut m) = self.stacks.lock() {
                    if m.len() >= Self::MAX {
                        m.clear();
                    }
                    m.insert(layers.to_vec(), f.clone());
                }
                f
            }
        };
        resolve_from(&files.0, &files.1, req)
    }

    /// How many stacks are kept.
    pub fn len(&self) -> usize {
        self.stacks.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn resolve_from(passwd: &str, group: &str, req: &UserRequest<'_>) -> Result<ResolvedUser, UserError> {
    let passwd = parse_passwd(passwd);
    let groups = parse_group(group);
    let by_uid = |uid: u32| passwd.iter().find(|p| p.uid == uid);
    let by_name = |n: &str| passwd.iter().find(|p| p.name == n);

    let (uid, mut gid, entry): (u32, u32, Option<&Passwd>);
    let mut group_from_spec: Option<u32> = None;
    if let Some(u) = req.run_as_user {
        let u = to_id(u, "uid")?;
        let e = by_uid(u);
        (uid, gid, entry) = (u, e.map(|e| e.gid).unwrap_or(0), e);
    } else if !req.run_as_username.is_empty() {
        let e = by_name(req.run_as_username).ok_or_else(|| UserError::UnknownUser(req.run_as_username.to_string()))?;
        (uid, gid, entry) = (e.uid, e.gid, Some(e));
    } else if !req.image_user.is_empty() {
        let (u, g) = match req.image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (req.image_user, None),
        };
        if u.is_empty() || g == Some("") {
            return Err(UserError::Invalid(req.image_user.to_string()));
        }
        match u.parse::<u32>() {
            Ok(n) => {
                let e = by_uid(n);
                (uid, gid, entry) = (n, e.map(|e| e.gid).unwrap_or(0), e);
            }
            Err(_) => {
                let e = by_name(u).ok_or_else(|| UserError::UnknownUser(u.to_string()))?;
                (uid, gid, entry) = (e.uid, e.gid, Some(e));
            }
        }
        if let Some(g) = g {
            let n = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => groups
                    .iter()
                    .find(|x| x.name == g)
                    .map(|x| x.gid)
                    .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
            };
            group_from_spec = Some(n);
        }
    } else {
        let e = by_uid(0);
        (uid, gid, entry) = (0, e.map(|e| e.gid).unwrap_or(0), e);
    }
    if let Some(g) = group_from_spec {
        gid = g;
    }
    if let Some(g) = req.run_as_group {
        gid = to_id(g, "gid")?;
    }
    let username = entry.map(|e| e.name.clone());
    let mut additional = vec![gid];
    if !req.strict_supplemental_groups {
        if let Some(name) = &username {
            for g in &groups {
                if g.members.iter().any(|m| m == name) && !additional.contains(&g.gid) {
                    additional.push(g.gid);
                }
            }
        }
    }
    for g in req.supplemental_groups {
        let g = to_id(*g, "supplemental group")?;
        if !additional.contains(&g) {
            additional.push(g);
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
        username,
        home: entry.map(|e| e.home.clone()).unwrap_or_else(|| "/".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nwww:x:33:\nalice:x:1000:\nstaff:x:50:alice,bob\naudio:x:29:alice\n",
        )
        .unwrap();
        d
    }

    fn req<'a>() -> UserRequest<'a> {
        UserRequest::default()
    }

    #[test]
    fn forms() {
        let d = rootfs();
        let r = |q: UserRequest| resolve(d.path(), &q);
        let u = r(req()).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        let u = r(UserRequest { image_user: "alice", ..req() }).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![1000, 50, 29]);
        let u = r(UserRequest { image_user: "33", ..req() }).unwrap();
        assert_eq!((u.uid, u.gid, u.username.as_deref()), (33, 33, Some("www")));
        let u = r(UserRequest { image_user: "4242", ..req() }).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        let u = r(UserRequest { image_user: "1000:50", ..req() }).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        let u = r(UserRequest { image_user: "www:staff", ..req() }).unwrap();
        assert_eq!((u.uid, u.gid), (33, 50));
        let u = r(UserRequest { run_as_user: Some(1000), image_user: "www", supplemental_groups: &[7, 50], ..req() })
            .unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![1000, 50, 29, 7]);
        let u = r(UserRequest { run_as_username: "www", run_as_group: Some(9), ..req() }).unwrap();
        assert_eq!((u.uid, u.gid), (33, 9));
        let u = r(UserRequest { image_user: "alice", strict_supplemental_groups: true, ..req() }).unwrap();
        assert_eq!(u.additional_gids, vec![1000]);
        for bad in ["nobody", "alice:nogroup", ":1", "1:"] {
            let e = r(UserRequest { image_user: bad, ..req() }).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
        assert!(r(UserRequest { run_as_username: "ghost", ..req() }).is_err());
    }

    #[test]
    fn layers() {
        let top = tempfile::tempdir().unwrap();
        let bottom = rootfs();
        std::fs::create_dir_all(top.path().join("etc")).unwrap();
        std::fs::write(top.path().join("etc/passwd"), "app:x:500:500::/app:/bin/sh\n").unwrap();
        let layers = vec![top.path().to_path_buf(), bottom.path().to_path_buf()];
        let u = resolve_in_layers(&layers, &UserRequest { image_user: "app", ..req() }).unwrap();
        assert_eq!((u.uid, u.gid), (500, 500));
        // /etc/group comes from the lower layer
        let u = resolve_in_layers(&layers, &UserRequest { image_user: "app:staff", ..req() }).unwrap();
        assert_eq!(u.gid, 50);
        assert!(resolve_in_layers(&layers, &UserRequest { image_user: "alice", ..req() }).is_err());
        // an opaque /etc in the top layer hides the lower /etc/group (needs root for trusted.*)
        let etc = std::ffi::CString::new(top.path().join("etc").to_str().unwrap()).unwrap();
        // SAFETY: valid strings and value buffer.
        let r = unsafe {
            libc::lsetxattr(
                etc.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr() as *const libc::c_void,
                1,
                0,
            )
        };
        if nix::unistd::geteuid().is_root() {
            assert_eq!(r, 0, "set trusted.overlay.opaque");
        }
        if r == 0 {
            assert!(resolve_in_layers(&layers, &UserRequest { image_user: "app:staff", ..req() }).is_err());
        }
    }

    #[test]
    fn layer_stacks_read_once() {
        let top = tempfile::tempdir().unwrap();
        let bottom = rootfs();
        std::fs::create_dir_all(top.path().join("etc")).unwrap();
        std::fs::write(top.path().join("etc/passwd"), "app:x:500:500::/app:/bin/sh\n").unwrap();
        let stack = vec![top.path().to_path_buf(), bottom.path().to_path_buf()];
        let lower = vec![bottom.path().to_path_buf()];
        let files = LayerUserFiles::default();
        let app = UserRequest { image_user: "app:staff", ..req() };
        let u = files.resolve(&stack, &app).unwrap();
        assert_eq!((u.uid, u.gid), (500, 50), "the same as resolve_in_layers");
        assert_eq!(
            files.resolve(&stack, &UserRequest { image_user: "alice", ..req() }).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(files.len(), 1, "one stack, read once for both requests");
        // Kept: the files are not read again (snapshots never change while they exist).
        std::fs::write(top.path().join("etc/passwd"), "other:x:501:501::/:/bin/sh\n").unwrap();
        assert_eq!(files.resolve(&stack, &app).unwrap().uid, 500);
        // Another stack is read on its own.
        assert_eq!(files.resolve(&lower, &UserRequest { image_user: "alice", ..req() }).unwrap().uid, 1000);
        assert_eq!(files.len(), 2);
        // Bounded.
        for i in 0..LayerUserFiles::MAX + 3 {
            let _ = files.resolve(&[bottom.path().join(format!("none-{i}"))], &req());
        }
        assert!(files.len() <= LayerUserFiles::MAX);
    }

    #[test]
    fn no_host_escape() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        // an absolute symlink must resolve inside the rootfs, not to the host's /etc/passwd
        std::os::unix::fs::symlink("/etc/passwd-real", d.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../../../nonexistent/group", d.path().join("etc/group")).unwrap();
        let e = resolve(d.path(), &UserRequest { image_user: "root", ..UserRequest::default() }).unwrap_err();
        assert!(matches!(e, UserError::UnknownUser(_)), "{e}");
        std::fs::write(d.path().join("etc/passwd-real"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        let u = resolve(d.path(), &UserRequest { image_user: "root", ..UserRequest::default() }).unwrap();
        assert_eq!(u.uid, 0);
    }
}
