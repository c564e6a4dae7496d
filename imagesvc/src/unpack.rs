//! Hardened layer unpacking.
//!
//! A layer tar is applied to an empty directory that will hold only this layer's diff (overlayfs
//! stacks the layer directories as lowerdirs). Entries are iterated one by one with the `tar`
//! crate; every path is first cleaned lexically (absolute paths and `..` clamp at the layer root,
//! as containerd does) and its parent directory is then opened with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so a symlinked parent (`evil -> /tmp`,
//! `evil/file`) resolves inside the layer, never on the host. The final component is created
//! with `*at` calls relative to that parent fd, without following symlinks. A hard link's
//! target is resolved the same way and must exist inside the layer; otherwise unpacking fails
//! naming the entry.
//!
//! OCI whiteouts `.wh.<name>` become overlay whiteouts (character device 0:0) and `.wh..wh..opq`
//! sets `trusted.overlay.opaque=y` on its directory. Regular files, directories, symlinks, hard
//! links, character and block devices and fifos are created; ownership, mode (setuid/setgid/
//! sticky included), xattrs (`SCHILY.xattr.*`) and mtimes are preserved (directory mtimes are
//! set after all entries).

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use crate::error::{ImageError, Result};
use crate::sys;

/// Counts from one unpacked layer.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Cleans a tar path lexically inside a root: drops `/`, `.`, and resolves `..` without ever
/// leaving the root. Returns the normal components.
pub fn clean_path(p: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

/// Size of the copy buffer for file contents (fewer, larger writes than `io::copy`'s 8 KiB).
const COPY_BUF: usize = 256 * 1024;

/// Files at least this large have their writeback started when written, so that the pull's
/// final syncfs finds most of the data already on its way to the disk.
const WRITEBACK_FROM: u64 = 64 * 1024;

struct Unpacker<'a> {
    layer: &'a str,
    root: OwnedFd,
    dir_times: Vec<(Vec<OsString>, i64)>,
    /// The parent directory of the previous entry (tar streams list a directory's entries
    /// together), so that consecutive entries in one directory resolve it once. Dropped whenever
    /// an entry removes something: only a removal can change what a resolved path names (the
    /// descriptor itself stays open until the next entry's parent replaces it).
    parent: Option<(Option<Vec<OsString>>, OwnedFd)>,
    buf: Vec<u8>,
}

impl Unpacker<'_> {
    fn err(&self, entry: &Path, reason: impl std::fmt::Display) -> ImageError {
        ImageError::Unpack {
            layer: self.layer.to_string(),
            entry: entry.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// The parent directory `comps` inside the root, opened (creating missing directories, mode
    /// 0755) unless it is the previous entry's. A dangling symlink on the way has its target
    /// created inside the root, as containerd's root-relative `MkdirAll` does.
    fn open_parent(&mut self, comps: &[OsString]) -> io::Result<RawFd> {
        if let Some((Some(c), fd)) = &self.parent {
            if c.as_slice() == comps {
                return Ok(fd.as_raw_fd());
            }
        }
        let fd = self.open_parent_depth(comps, 0)?;
        let raw = fd.as_raw_fd();
        self.parent = Some((Some(comps.to_vec()), fd));
        Ok(raw)
    }

    /// Removes `name` in the directory `p` (and below), forgetting the cached parent.
    fn remove(&mut self, p: RawFd, name: &OsStr) -> io::Result<()> {
        let r = sys::remove_all_at(p, name);
        if let Some((key, _)) = &mut self.parent {
            *key = None;
        }
        r
    }

    /// Creates a regular file and writes its contents; returns it open, for its metadata. What is
    /// in the way (a file listed twice, a symlink) is removed first: found when the exclusive
    /// create fails, so that the usual case costs no lstat.
    fn regular<R: Read>(
        &mut self,
        raw: &Path,
        p: RawFd,
        name: &OsStr,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(u64, std::fs::File)> {
        let create = || sys::openat(p, name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600);
        let fd = match create() {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.remove(p, name).map_err(|e| self.err(raw, e))?;
                create()
            }
            r => r,
        }
        .map_err(|e| self.err(raw, e))?;
        let mut f = std::fs::File::from(fd);
        let mut bytes = 0u64;
        loop {
            // Fill the buffer before writing: decompressors return small pieces.
            let mut n = 0;
            while n < self.buf.len() {
                match entry.read(&mut self.buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.err(raw, e)),
                }
            }
            if n == 0 {
                break;
            }
            f.write_all(&self.buf[..n]).map_err(|e| self.err(raw, e))?;
            bytes += n as u64;
        }
        if bytes >= WRITEBACK_FROM {
            sys::start_writeback(f.as_raw_fd());
        }
        Ok((bytes, f))
    }

    fn open_parent_depth(&self, comps: &[OsString], depth: u32) -> io::Result<OwnedFd> {
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        if depth > 40 {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        match sys::open_in_root(self.root.as_raw_fd(), &join(comps), flags, 0) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let mut cur = sys::open_in_root(self.root.as_raw_fd(), Path::new("."), flags, 0)?;
        for i in 0..comps.len() {
            let next = match sys::open_in_root(self.root.as_raw_fd(), &join(&comps[..=i]), flags, 0) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    // `cur` was resolved in the root, comps[i] is one plain component.
                    match sys::mkdirat(cur.as_raw_fd(), &comps[i], 0o755) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                            // A dangling symlink: create its target (resolved in the root).
                            let link = std::fs::read_link(
                                Path::new("/proc/self/fd").join(cur.as_raw_fd().to_string()).join(&comps[i]),
                            )?;
                            let mut target: Vec<OsString> =
                                if link.is_absolute() { Vec::new() } else { comps[..i].to_vec() };
                            target.extend(clean_path(&join(&target).join(&link)));
                            let target = clean_path(&join(&target));
                            self.open_parent_depth(&target, depth + 1)?;
                        }
                        Err(e) => return Err(e),
                    }
                    sys::open_in_root(self.root.as_raw_fd(), &join(&comps[..=i]), flags, 0)?
                }
                Err(e) => return Err(e),
            };
            cur = next;
        }
        Ok(cur)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<u64> {
        let raw: PathBuf = entry.path().map_err(|e| self.err(Path::new("?"), e))?.into_owned();
        let comps = clean_path(&raw);
        let header = entry.header();
        let kind = header.entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            return Ok(0);
        }
        let uid = header.uid().map_err(|e| self.err(&raw, e))? as u32;
        let gid = header.gid().map_err(|e| self.err(&raw, e))? as u32;
        let mode = header.mode().map_err(|e| self.err(&raw, e))? & 0o7777;
        let mtime = header.mtime().unwrap_or(0) as i64;

        let Some((name, parent)) = comps.split_last() else {
            // The root itself ("./"): apply ownership and mode to the layer root.
            if kind == EntryType::Directory {
                let fd = self.root.as_raw_fd();
                sys::fchown(fd, uid, gid).map_err(|e| self.err(&raw, e))?;
                sys::fchmod(fd, mode).map_err(|e| self.err(&raw, e))?;
                self.dir_times.push((Vec::new(), mtime));
            }
            return Ok(0);
        };
        let p = self.open_parent(parent).map_err(|e| self.err(&raw, format!("parent directory: {e}")))?;
        let name_s = name.to_string_lossy();

        // Whiteouts.
        if name_s == OPAQUE {
            sys::lsetxattr_at(p, OsStr::new(""), "trusted.overlay.opaque", b"y")
                .map_err(|e| self.err(&raw, format!("set opaque xattr: {e}")))?;
            return Ok(0);
        }
        if let Some(target) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let target = OsStr::from_bytes(target);
            if target.is_empty() || target == "." || target == ".." {
                return Err(self.err(&raw, "invalid whiteout name"));
            }
            self.remove(p, target).map_err(|e| self.err(&raw, e))?;
            sys::mknodat(p, target, libc::S_IFCHR, sys::makedev(0, 0))
                .map_err(|e| self.err(&raw, format!("create whiteout: {e}")))?;
            return Ok(0);
        }

        let regular = matches!(kind, EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse);
        // Replace what is there, unless a directory meets a directory (a regular file finds out
        // when it is created).
        let mut existing_dir = false;
        if !regular {
            let existing = sys::lstatat(p, name).map_err(|e| self.err(&raw, e))?;
            existing_dir = existing.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
            if existing.is_some() && !(kind == EntryType::Directory && existing_dir) {
                self.remove(p, name).map_err(|e| self.err(&raw, e))?;
            }
        }

        let mut bytes = 0;
        // A regular file's metadata is set through its descriptor (no lookup of the name).
        let mut file = None;
        match kind {
            _ if regular => {
                let (n, f) = self.regular(&raw, p, name, entry)?;
                bytes = n;
                file = Some(f);
            }
            EntryType::Directory => {
                if !existing_dir {
                    sys::mkdirat(p, name, 0o700).map_err(|e| self.err(&raw, e))?;
                }
            }
            EntryType::Symlink => {
                let target =
                    entry.link_name_bytes().ok_or_else(|| self.err(&raw, "symlink without target"))?.into_owned();
                sys::symlinkat(OsStr::from_bytes(&target), p, name).map_err(|e| self.err(&raw, e))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.err(&raw, e))?
                    .ok_or_else(|| self.err(&raw, "hard link without target"))?
                    .into_owned();
                let tcomps = clean_path(&target);
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(self.err(&raw, format!("hard link to {} is not a file", target.display())));
                };
                let tfd = sys::open_in_root(self.root.as_raw_fd(), &join(tparent), libc::O_PATH | libc::O_DIRECTORY, 0)
                    .map_err(|e| self.err(&raw, format!("hard link target {} not in layer: {e}", target.display())))?;
                sys::linkat(tfd.as_raw_fd(), tname, p, name)
                    .map_err(|e| self.err(&raw, format!("hard link target {} not in layer: {e}", target.display())))?;
                // A hard link shares the target's inode: do not touch its metadata.
                return Ok(0);
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let t = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                sys::mknodat(p, name, t | 0o600, sys::makedev(major, minor)).map_err(|e| self.err(&raw, e))?;
            }
            other => {
                tracing::warn!(layer = self.layer, entry = %raw.display(), "skipping tar entry of type {other:?}");
                return Ok(0);
            }
        }

        // Ownership, xattrs, mode (after chown, which clears setuid), times.
        let fd = file.as_ref().map(|f| f.as_raw_fd());
        match fd {
            Some(fd) => sys::fchown(fd, uid, gid),
            None => sys::fchownat(p, name, uid, gid),
        }
        .map_err(|e| self.err(&raw, format!("chown: {e}")))?;
        if let Some(exts) = entry.pax_extensions().map_err(|e| self.err(&raw, e))? {
            for ext in exts {
                let ext = ext.map_err(|e| self.err(&raw, e))?;
                let Ok(key) = ext.key() else { continue };
                if let Some(xname) = key.strip_prefix("SCHILY.xattr.") {
                    if kind == EntryType::Symlink && xname.starts_with("user.") {
                        continue;
                    }
                    if let Err(e) = sys::lsetxattr_at(p, name, xname, ext.value_bytes()) {
                        if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) {
                            tracing::warn!(layer = self.layer, entry = %raw.display(), xattr = xname, "cannot set xattr: {e}");
                        } else {
                            return Err(self.err(&raw, format!("xattr {xname}: {e}")));
                        }
                    }
                }
            }
        }
        if kind != EntryType::Symlink {
            match fd {
                Some(fd) => sys::fchmod(fd, mode),
                None => sys::fchmodat(p, name, mode),
            }
            .map_err(|e| self.err(&raw, format!("chmod: {e}")))?;
        }
        if kind == EntryType::Directory {
            self.dir_times.push((comps.clone(), mtime));
        } else {
            match fd {
                Some(fd) => sys::utimensat(fd, OsStr::new(""), mtime, 0),
                None => sys::utimensat(p, name, mtime, 0),
            }
            .map_err(|e| self.err(&raw, format!("mtime: {e}")))?;
        }
        Ok(bytes)
    }

    fn finish(&mut self) -> Result<()> {
        for (comps, mtime) in self.dir_times.drain(..).rev() {
            let r = match comps.split_last() {
                None => sys::utimensat(self.root.as_raw_fd(), OsStr::new(""), mtime, 0),
                Some((name, parent)) => {
                    sys::open_in_root(self.root.as_raw_fd(), &join(parent), libc::O_PATH | libc::O_DIRECTORY, 0)
                        .and_then(|fd| sys::utimensat(fd.as_raw_fd(), name, mtime, 0))
                }
            };
            // A directory replaced by a later entry is gone: nothing to do.
            if let Err(e) = r {
                if e.raw_os_error() != Some(libc::ENOENT) && e.raw_os_error() != Some(libc::ENOTDIR) {
                    tracing::debug!(layer = self.layer, "directory mtime: {e}");
                }
            }
        }
        Ok(())
    }
}

/// Unpacks an uncompressed tar stream into `dest` (an existing, empty directory).
/// `layer` names the layer in errors.
pub fn unpack<R: Read>(layer: &str, reader: R, dest: &Path) -> Result<UnpackStats> {
    let root = sys::open_dir(dest).map_err(|e| ImageError::io("open layer directory", dest, e))?;
    let mut u = Unpacker { layer, root, dir_times: Vec::new(), parent: None, buf: vec![0; COPY_BUF] };
    let mut ar = tar::Archive::new(reader);
    let mut stats = UnpackStats::default();
    let entries = ar.entries().map_err(|e| u.err(Path::new(""), e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| u.err(Path::new("?"), format!("reading tar: {e}")))?;
        stats.bytes += u.entry(&mut entry)?;
        stats.entries += 1;
    }
    u.finish()?;
    // Drain trailing padding so that the caller's digest covers the whole stream.
    let mut rest = ar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| u.err(Path::new(""), format!("reading tar: {e}")))?;
    Ok(stats)
}

/// Wraps a possibly compressed layer stream (gzip, zstd, or plain tar, detected from its magic
/// bytes) in a decompressing reader.
pub fn decompress<'a, R: Read + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        let k = r.read(&mut magic[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let chained = io::Cursor::new(magic[..n].to_vec()).chain(r);
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(chained)))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Ok(Box::new(zstd::stream::read::Decoder::new(chained)?))
    } else {
        Ok(Box::new(chained))
    }
}

/// A reader that hashes (sha256) what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        use sha2::Digest as _;
        HashingReader { inner, hasher: sha2::Sha256::new(), count: 0 }
    }
    pub fn finish(self) -> (crate::reference::Digest, u64) {
        (crate::reference::Digest::from_hasher(self.hasher), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Unpacks a (compressed) layer blob into `dest`, verifying the uncompressed stream against
/// `diff_id`.
pub fn unpack_layer_file(
    layer: &str,
    blob: &Path,
    diff_id: &crate::reference::Digest,
    dest: &Path,
) -> Result<UnpackStats> {
    let f = std::fs::File::open(blob).map_err(|e| ImageError::io("open layer blob", blob, e))?;
    unpack_layer(layer, io::BufReader::with_capacity(256 * 1024, f), diff_id, dest).map_err(|e| match e {
        UnpackError::Read(e) => ImageError::io("read layer blob", blob, e),
        UnpackError::Other(e) => e,
    })
}

/// Why [`unpack_layer`] failed.
#[derive(Debug)]
pub enum UnpackError {
    /// The compressed stream could not be read (the source's own error, e.g. a download that
    /// broke off; the caller knows what it means).
    Read(io::Error),
    /// Decompression, the tar stream, the file system, or the diff ID.
    Other(ImageError),
}

/// Unpacks a (compressed) layer stream into `dest`, verifying the uncompressed stream against
/// `diff_id`. The whole of `reader` is consumed on success.
///
/// Two threads share the work: this one reads, decompresses and hashes, a scoped helper parses
/// the tar stream and creates the files, so that one layer keeps two cores busy (decompression
/// and file creation cost about the same).
pub fn unpack_layer<R: Read + Send>(
    layer: &str,
    reader: R,
    diff_id: &crate::reference::Digest,
    dest: &Path,
) -> std::result::Result<UnpackStats, UnpackError> {
    use std::sync::mpsc;
    const PIECE: usize = 256 * 1024;
    let mut src = ErrorTap { inner: reader, err: None };
    let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(8);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    let (produced, consumed) = std::thread::scope(|scope| {
        let consumer = scope.spawn(move || {
            let r = PieceReader { rx: full_rx, back: empty_tx, cur: Vec::new(), pos: 0 };
            unpack(layer, r, dest)
        });
        let produced = (|| {
            let mut dec = decompress(&mut src).map_err(|e| format!("reading layer: {e}"))?;
            let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
            loop {
                let mut buf = empty_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(PIECE));
                buf.resize(PIECE, 0);
                let mut n = 0;
                while n < PIECE {
                    match dec.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(format!("decompressing layer: {e}")),
                    }
                }
                if n == 0 {
                    return Ok(Some(crate::reference::Digest::from_hasher(hasher)));
                }
                buf.truncate(n);
                sha2::Digest::update(&mut hasher, &buf);
                if full_tx.send(buf).is_err() {
                    // The unpacker stopped (and says why).
                    return Ok(None);
                }
            }
        })();
        drop(full_tx);
        let consumed = consumer.join().unwrap_or_else(|_| Err(ImageError::Metadata("unpack thread panicked".into())));
        (produced, consumed)
    });
    if let Some(e) = src.err {
        return Err(UnpackError::Read(e));
    }
    let err = |reason: String| ImageError::Unpack { layer: layer.to_string(), entry: String::new(), reason };
    match (produced, consumed) {
        (Err(reason), _) => Err(UnpackError::Other(err(reason))),
        (Ok(_), Err(e)) => Err(UnpackError::Other(e)),
        (Ok(None), Ok(_)) => Err(UnpackError::Other(err("unpacker stopped early".into()))),
        (Ok(Some(got)), Ok(stats)) => {
            if &got != diff_id {
                return Err(UnpackError::Other(ImageError::DigestMismatch {
                    what: format!("uncompressed layer {layer} (diff id)"),
                    expected: diff_id.to_string(),
                    actual: got.to_string(),
                }));
            }
            Ok(stats)
        }
    }
}

/// The tar side of [`unpack_layer`]: reads the pieces the decompressing thread sends and
/// hands the buffers back for reuse.
struct PieceReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    back: std::sync::mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    let done = std::mem::replace(&mut self.cur, next);
                    let _ = self.back.send(done);
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Remembers the first read error of the source, so that it is reported as such rather than
/// as whatever the decompressor or tar reader made of it.
struct ErrorTap<R> {
    inner: R,
    err: Option<io::Error>,
}

impl<R: Read> Read for ErrorTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.err.get_or_insert(e);
                Err(copy)
            }
        }
    }
}

#[cfg(test)]
mod tests;
