//! Unpack tests with hand-built (hostile) tar streams. They run as root (mknod, chown,
//! trusted.* xattrs), as the whole project's tests do.

use super::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

/// A tiny tar writer that does not sanitise paths (the `tar` builder refuses `..`).
struct T {
    b: tar::Builder<Vec<u8>>,
}

impl T {
    fn new() -> Self {
        T { b: tar::Builder::new(Vec::new()) }
    }
    fn hdr(path: &str, kind: EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        let name = &mut h.as_ustar_mut().unwrap().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }
    fn put(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }
    fn dir(&mut self, p: &str) -> &mut Self {
        self.put(Self::hdr(p, EntryType::Directory, 0o755, 0), b"")
    }
    fn file(&mut self, p: &str, data: &[u8]) -> &mut Self {
        self.put(Self::hdr(p, EntryType::Regular, 0o644, data.len() as u64), data)
    }
    fn link(&mut self, p: &str, kind: EntryType, target: &str) -> &mut Self {
        let mut h = Self::hdr(p, kind, 0o777, 0);
        h.set_link_name_literal(target).unwrap();
        self.put(h, b"")
    }
    fn done(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.b, tar::Builder::new(Vec::new())).into_inner().unwrap()
    }
}

fn run(tar: &[u8]) -> (tempfile::TempDir, Result<UnpackStats>) {
    let d = tempfile::tempdir().unwrap();
    let r = unpack("test", tar, d.path());
    (d, r)
}

#[test]
fn preserves_metadata() {
    let mut t = T::new();
    t.dir("bin/");
    let mut h = T::hdr("bin/su", EntryType::Regular, 0o4755, 3);
    h.set_uid(1000);
    h.set_gid(1001);
    t.put(h, b"abc");
    t.link("bin/sh", EntryType::Symlink, "/bin/busybox");
    t.link("bin/su2", EntryType::Link, "bin/su");
    t.put(T::hdr("dev/null", EntryType::Char, 0o666, 0), b"");
    t.put(T::hdr("fifo", EntryType::Fifo, 0o640, 0), b"");
    // xattr through a PAX header
    let mut pax = Vec::new();
    let rec = "user.test=hello";
    let line = format!("{} SCHILY.xattr.{}\n", 0, rec);
    let _ = line;
    let body = "SCHILY.xattr.user.test=hello\n";
    let len = body.len() + 3; // "NN " prefix
    let rec = format!("{len} {body}");
    assert_eq!(rec.len(), len);
    pax.extend_from_slice(rec.as_bytes());
    t.put(T::hdr("././@PaxHeader", EntryType::XHeader, 0o644, pax.len() as u64), &pax);
    t.file("xattr-file", b"x");
    let tar = t.done();
    let (d, r) = run(&tar);
    let st = r.unwrap();
    assert_eq!(st.bytes, 4);
    let p = d.path();
    let m = std::fs::metadata(p.join("bin/su")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
    assert_eq!((m.uid(), m.gid()), (1000, 1001));
    assert_eq!(m.mtime(), 1_600_000_000);
    assert_eq!(std::fs::read_link(p.join("bin/sh")).unwrap(), Path::new("/bin/busybox"));
    assert_eq!(std::fs::metadata(p.join("bin/su2")).unwrap().ino(), m.ino());
    let dn = std::fs::symlink_metadata(p.join("dev/null")).unwrap();
    assert!(dn.file_type().is_char_device());
    assert!(std::fs::symlink_metadata(p.join("fifo")).unwrap().file_type().is_fifo());
    assert_eq!(std::fs::metadata(p.join("bin")).unwrap().mtime(), 1_600_000_000, "dir mtime set last");
    let mut buf = [0u8; 16];
    let path = std::ffi::CString::new(p.join("xattr-file").as_os_str().as_bytes()).unwrap();
    let key = std::ffi::CString::new("user.test").unwrap();
    let n = unsafe { libc::lgetxattr(path.as_ptr(), key.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n >= 0 {
        assert_eq!(&buf[..n as usize], b"hello");
    } // tmpfs without user xattrs: the unpacker warns and goes on
}

#[test]
fn dotdot_and_absolute_paths_stay_inside() {
    let tag = format!("skiff-unpack-test-{}", std::process::id());
    let mut t = T::new();
    t.file(&format!("../../../../tmp/{tag}-a"), b"1");
    t.file(&format!("/tmp/{tag}-b"), b"2");
    t.file(&format!("x/../../{tag}-c"), b"3");
    let (d, r) = run(&t.done());
    r.unwrap();
    assert!(d.path().join(format!("tmp/{tag}-a")).is_file());
    assert!(d.path().join(format!("tmp/{tag}-b")).is_file());
    assert!(d.path().join(format!("{tag}-c")).is_file());
    for s in ["a", "b"] {
        assert!(!Path::new(&format!("/tmp/{tag}-{s}")).exists());
    }
}

#[test]
fn symlinked_parent_resolves_inside() {
    let tag = format!("skiff-unpack-test-{}-sym", std::process::id());
    let mut t = T::new();
    t.link("evil", EntryType::Symlink, "/tmp");
    t.file(&format!("evil/{tag}"), b"gotcha");
    t.link("up", EntryType::Symlink, "../../../../../../");
    t.file(&format!("up/tmp/{tag}-2"), b"gotcha");
    let (d, r) = run(&t.done());
    r.unwrap();
    assert!(!Path::new(&format!("/tmp/{tag}")).exists());
    assert!(!Path::new(&format!("/tmp/{tag}-2")).exists());
    assert!(d.path().join(format!("tmp/{tag}")).is_file());
    assert!(d.path().join(format!("tmp/{tag}-2")).is_file());
}

#[test]
fn file_replaces_symlink_instead_of_writing_through() {
    let victim = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(victim.path(), b"original").unwrap();
    let mut t = T::new();
    t.link("f", EntryType::Symlink, victim.path().to_str().unwrap());
    t.file("f", b"overwritten?");
    let (d, r) = run(&t.done());
    r.unwrap();
    assert_eq!(std::fs::read(victim.path()).unwrap(), b"original");
    assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"overwritten?");
}

#[test]
fn a_later_entry_replaces_a_file_or_a_directory_of_the_same_name() {
    let mut t = T::new();
    t.file("f", b"first, longer");
    let mut h = T::hdr("f", EntryType::Regular, 0o640, 6);
    h.set_mtime(1_000_000);
    t.put(h, b"second");
    t.dir("d/");
    t.file("d/inner", b"x");
    t.file("d", b"a file now");
    let (d, r) = run(&t.done());
    r.unwrap();
    let f = d.path().join("f");
    assert_eq!(std::fs::read(&f).unwrap(), b"second");
    let md = std::fs::symlink_metadata(&f).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o640, "the second entry's mode");
    assert_eq!(md.mtime(), 1_000_000, "the second entry's mtime");
    assert_eq!(std::fs::read(d.path().join("d")).unwrap(), b"a file now");
}

#[test]
fn hard_link_outside_fails_naming_entry() {
    let mut t = T::new();
    t.link("passwd", EntryType::Link, "/etc/passwd");
    let (_d, r) = run(&t.done());
    let e = r.unwrap_err();
    assert!(matches!(e, ImageError::Unpack { .. }));
    assert!(e.to_string().contains("\"passwd\"") && e.to_string().contains("/etc/passwd"), "{e}");

    let mut t = T::new();
    t.link("esc", EntryType::Symlink, "/etc");
    t.link("pw", EntryType::Link, "esc/passwd");
    let (_d, r) = run(&t.done());
    assert!(r.unwrap_err().to_string().contains("\"pw\""));

    let mut t = T::new();
    t.link("pw", EntryType::Link, "../../../../etc/passwd");
    let (_d, r) = run(&t.done());
    assert!(r.is_err());
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let mut t = T::new();
    t.dir("etc/");
    t.file("etc/.wh.hosts", b"");
    t.dir("var/");
    t.file("var/.wh..wh..opq", b"");
    t.file("var/keep", b"k");
    let (d, r) = run(&t.done());
    r.unwrap();
    let wh = std::fs::symlink_metadata(d.path().join("etc/hosts")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!d.path().join("etc/.wh.hosts").exists());
    let path = std::ffi::CString::new(d.path().join("var").as_os_str().as_bytes()).unwrap();
    let key = std::ffi::CString::new("trusted.overlay.opaque").unwrap();
    let mut buf = [0u8; 4];
    let n = unsafe { libc::lgetxattr(path.as_ptr(), key.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(n, 1);
    assert_eq!(buf[0], b'y');
    assert!(d.path().join("var/keep").is_file());
    assert!(!d.path().join("var/.wh..wh..opq").exists());
}

#[test]
fn compressed_layers_and_diff_id() {
    let mut t = T::new();
    t.file("hello", b"world");
    let raw = t.done();
    let diff = crate::reference::Digest::of(&raw);
    let dir = tempfile::tempdir().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut gz, &raw).unwrap();
    let gz = gz.finish().unwrap();
    let zs = zstd::encode_all(&raw[..], 1).unwrap();
    for (i, blob) in [raw.clone(), gz, zs].into_iter().enumerate() {
        let bp = dir.path().join(format!("blob{i}"));
        std::fs::write(&bp, &blob).unwrap();
        let dest = dir.path().join(format!("out{i}"));
        std::fs::create_dir(&dest).unwrap();
        unpack_layer_file("l", &bp, &diff, &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("hello")).unwrap(), b"world");
        let dest2 = dir.path().join(format!("bad{i}"));
        std::fs::create_dir(&dest2).unwrap();
        let wrong = crate::reference::Digest::of(b"x");
        assert!(matches!(unpack_layer_file("l", &bp, &wrong, &dest2), Err(ImageError::DigestMismatch { .. })));
    }
}

#[test]
fn clean_path_clamps() {
    assert_eq!(join(&clean_path(Path::new("/a/../../b/./c"))), PathBuf::from("b/c"));
    assert!(clean_path(Path::new("../..")).is_empty());
}

#[test]
fn whiteouts_hide_lower_layers_under_overlay() {
    // Layer 1: files and a directory; layer 2: deletes a file, makes a dir opaque, adds files.
    let mut t = T::new();
    t.dir("etc/");
    t.file("etc/gone", b"1");
    t.file("etc/stays", b"1");
    t.dir("var/");
    t.file("var/old", b"1");
    let l1 = t.done();
    let mut t = T::new();
    t.dir("etc/");
    t.file("etc/.wh.gone", b"");
    t.dir("var/");
    t.file("var/.wh..wh..opq", b"");
    t.file("var/new", b"2");
    let l2 = t.done();
    let base = tempfile::tempdir().unwrap();
    let (d1, d2) = (base.path().join("l1"), base.path().join("l2"));
    for (d, l) in [(&d1, &l1), (&d2, &l2)] {
        std::fs::create_dir(d).unwrap();
        unpack("t", &l[..], d).unwrap();
    }
    let m = crate::snapshot::RootfsMount {
        lowerdirs: vec![d2.clone(), d1.clone()],
        upperdir: base.path().join("upper"),
        workdir: base.path().join("work"),
        volatile: true,
    };
    std::fs::create_dir(&m.upperdir).unwrap();
    std::fs::create_dir(&m.workdir).unwrap();
    let target = base.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    m.mount(&target).unwrap();
    let seen = (
        target.join("etc/gone").exists(),
        target.join("etc/stays").exists(),
        target.join("var/old").exists(),
        target.join("var/new").exists(),
    );
    crate::snapshot::RootfsMount::unmount(&target).unwrap();
    assert_eq!(seen, (false, true, false, true));
    // A volatile work dir used before mounts again (its mark is cleared first).
    m.mount(&target).unwrap();
    assert!(target.join("var/new").exists());
    crate::snapshot::RootfsMount::unmount(&target).unwrap();
}

#[test]
fn directory_replaced_by_symlink_is_resolved_again() {
    // The unpacker reuses the previous entry's parent directory; a replaced directory must not
    // keep receiving files (the old fd), and the new symlink resolves inside the layer.
    let tag = format!("skiff-unpack-test-{}-swap", std::process::id());
    let mut t = T::new();
    t.dir("a");
    t.file("a/x", b"1");
    t.link("a", EntryType::Symlink, "/tmp");
    t.file(&format!("a/{tag}"), b"gotcha");
    t.file("a/y", b"2");
    let (d, r) = run(&t.done());
    r.unwrap();
    assert!(!Path::new(&format!("/tmp/{tag}")).exists(), "wrote through to the host");
    assert!(d.path().join(format!("tmp/{tag}")).is_file());
    assert!(d.path().join("tmp/y").is_file());
    assert!(std::fs::symlink_metadata(d.path().join("a")).unwrap().file_type().is_symlink(), "a replaced directory");
}

#[test]
fn pipelined_layer_reports_the_source_error() {
    // unpack_layer: a failing source is reported as such, not as a tar or gzip error.
    struct Broken(usize);
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("network went away"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(0);
            self.0 -= n;
            Ok(n)
        }
    }
    let d = tempfile::tempdir().unwrap();
    let diff = crate::reference::Digest::of(b"");
    match unpack_layer("l", Broken(100_000), &diff, d.path()) {
        Err(UnpackError::Read(e)) => assert!(e.to_string().contains("network went away"), "{e}"),
        other => panic!("expected the source's error, got {other:?}"),
    }
    // A complete layer through the pipeline, many pieces long.
    let mut t = T::new();
    let big = vec![7u8; 3 * 1024 * 1024 + 17];
    t.file("big", &big);
    t.file("small", b"s");
    let tar = t.done();
    let diff = crate::reference::Digest::of(&tar);
    let d = tempfile::tempdir().unwrap();
    let stats = unpack_layer("l", &tar[..], &diff, d.path()).map_err(|e| format!("{e:?}")).unwrap();
    assert_eq!(stats.entries, 2);
    assert_eq!(std::fs::read(d.path().join("big")).unwrap(), big);
}
