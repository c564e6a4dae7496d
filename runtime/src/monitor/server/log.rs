//! The CRI container log: `<RFC3339Nano> <stdout|stderr> <P|F> <text>\n`, as the kubelet
//! reads it. Lines longer than 16 KiB are split into `P` (partial) records; a last line
//! without newline is written as `P` at EOF (both as containerd does).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The longest content of one record.
pub const MAX_LINE: usize = 16 * 1024;

/// RFC 3339 with nanoseconds in UTC, trailing zeros of the fraction trimmed (Go's
/// `time.RFC3339Nano`).
pub fn format_timestamp(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", sod / 3600, (sod % 3600) / 60, sod % 60);
    if frac != 0 {
        let f = format!("{frac:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The log file (reopened on request).
pub struct CriLog {
    path: Option<PathBuf>,
    /// The directory `path` must stay beneath (the pod's log directory).
    dir: Option<PathBuf>,
    file: Option<File>,
}

impl CriLog {
    pub fn open(path: Option<PathBuf>, dir: Option<PathBuf>) -> std::io::Result<CriLog> {
        let mut l = CriLog { path, dir, file: None };
        l.reopen()?;
        Ok(l)
    }

    /// (Re)opens the file in append mode, creating it. Beneath the log directory no symlink is
    /// followed (`openat2` `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so that neither `..` nor a
    /// symlink planted in the directory sends the container's output to another host file.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        let Some(p) = &self.path else { return Ok(()) };
        self.file = Some(open_log(p, self.dir.as_deref())?);
        Ok(())
    }
    fn record(&mut self, stream: &str, tag: char, content: &[u8]) {
        let Some(f) = &mut self.file else { return };
        let ts = format_timestamp(super::util::now_nanos());
        let mut line = Vec::with_capacity(ts.len() + content.len() + 12);
        line.extend_from_slice(ts.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_bytes());
        line.push(b' ');
        line.push(tag as u8);
        line.push(b' ');
        line.extend_from_slice(content);
        line.push(b'\n');
        // One write per record (O_APPEND): readers never see half records from us.
        if let Err(e) = f.write_all(&line) {
            super::util::diag_line(&format!("write log: {e}"));
        }
    }
}

/// Opens `path` for appending: beneath `dir` without following symlinks when `dir` is given
/// and contains it (the directories between are created the same way), otherwise with
/// `O_NOFOLLOW` on the last component.
pub fn open_log(path: &Path, dir: Option<&Path>) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some((dir, rel)) = dir.and_then(|d| path.strip_prefix(d).ok().map(|r| (d, r))) {
        match open_beneath(dir, rel) {
            // Kernels before 5.6: the O_NOFOLLOW open below.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV)) => {
                return Err(std::io::Error::other(format!(
                    "{} leaves the log directory {} or goes through a symlink",
                    path.display(),
                    dir.display()
                )))
            }
            other => return other,
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
}

/// `rel` (plain components only) beneath `dir`: each directory on the way made with `mkdirat`
/// and entered with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, then the file opened the
/// same way. `dir` itself (the pod's log directory, the kubelet's) is created if missing.
fn open_beneath(dir: &Path, rel: &Path) -> std::io::Result<File> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::Mode;
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Component;
    let resolve = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    std::fs::create_dir_all(dir)?;
    let root = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(dir)?;
    let mut cur: OwnedFd = root.into();
    let mut names: Vec<&std::ffi::OsStr> = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => names.push(n),
            Component::CurDir => {}
            _ => return Err(std::io::Error::from_raw_os_error(libc::EXDEV)),
        }
    }
    let Some((file, parents)) = names.split_last() else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"));
    };
    for name in parents {
        match nix::sys::stat::mkdirat(cur.as_fd(), *name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).resolve(resolve);
        cur = openat2(cur.as_fd(), *name, how)?;
    }
    let flags = OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let how = OpenHow::new().flags(flags).mode(Mode::from_bits_truncate(0o640)).resolve(resolve);
    Ok(File::from(openat2(cur.as_fd(), *file, how)?))
}

/// Splits one stream into CRI records.
pub struct LineSplitter {
    stream: &'static str,
    buf: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: &'static str) -> Self {
        LineSplitter { stream, buf: Vec::new() }
    }

    /// Feeds output; complete records are emitted through `emit(stream, tag, content)`.
    pub fn feed_with(&mut self, data: &[u8], mut emit: impl FnMut(&str, char, &[u8])) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        loop {
            match self.buf[start..].iter().position(|b| *b == b'\n') {
                Some(i) => {
                    let mut line = &self.buf[start..start + i];
                    while line.len() > MAX_LINE {
                        emit(self.stream, 'P', &line[..MAX_LINE]);
                        line = &line[MAX_LINE..];
                    }
                    if let Some(l) = line.strip_suffix(b"\r") {
                        line = l;
                    }
                    emit(self.stream, 'F', line);
                    start += i + 1;
                }
                None => {
                    while self.buf.len() - start > MAX_LINE {
                        emit(self.stream, 'P', &self.buf[start..start + MAX_LINE]);
                        start += MAX_LINE;
                    }
                    break;
                }
            }
        }
        self.buf.drain(..start);
        if self.buf.capacity() > 4 * MAX_LINE && self.buf.len() < MAX_LINE {
            self.buf.shrink_to(MAX_LINE);
        }
    }

    /// At EOF: the unterminated rest as a partial record.
    pub fn flush_with(&mut self, mut emit: impl FnMut(&str, char, &[u8])) {
        if !self.buf.is_empty() {
            emit(self.stream, 'P', &self.buf);
            self.buf = Vec::new();
        }
    }

    pub fn feed(&mut self, data: &[u8], log: &mut CriLog) {
        self.feed_with(data, |s, t, c| log.record(s, t, c));
    }

    pub fn flush(&mut self, log: &mut CriLog) {
        self.flush_with(|s, t, c| log.record(s, t, c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_stays_beneath_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("logs");
        std::fs::create_dir_all(dir.join("c")).unwrap();
        let outside = tmp.path().join("outside.log");
        // a plain file beneath the directory, its directories created
        open_log(&dir.join("c/0.log"), Some(&dir)).unwrap();
        assert!(dir.join("c/0.log").is_file());
        open_log(&dir.join("new/sub/0.log"), Some(&dir)).unwrap();
        assert!(dir.join("new/sub/0.log").is_file());
        // `..`, a symlinked file, a symlinked directory: refused, nothing written outside
        assert!(open_log(&dir.join("../outside.log"), Some(&dir)).is_err());
        std::os::unix::fs::symlink(&outside, dir.join("link.log")).unwrap();
        assert!(open_log(&dir.join("link.log"), Some(&dir)).is_err());
        std::os::unix::fs::symlink(tmp.path(), dir.join("d")).unwrap();
        assert!(open_log(&dir.join("d/outside.log"), Some(&dir)).is_err());
        // no directory is made through a symlinked one either
        assert!(open_log(&dir.join("d/made/0.log"), Some(&dir)).is_err());
        assert!(!tmp.path().join("made").exists());
        // without a directory, the last component still does not follow a symlink
        assert!(open_log(&dir.join("link.log"), None).is_err());
        assert!(!outside.exists());
    }

    fn split(chunks: &[&[u8]]) -> Vec<(char, Vec<u8>)> {
        let mut s = LineSplitter::new("stdout");
        let mut out = Vec::new();
        for c in chunks {
            s.feed_with(c, |_, t, d| out.push((t, d.to_vec())));
        }
        s.flush_with(|_, t, d| out.push((t, d.to_vec())));
        out
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_timestamp(1_700_000_000_123_000_000), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_timestamp(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
    }

    #[test]
    fn lines() {
        let out = split(&[b"a\nb", b"c\r\n\n", b"tail"]);
        assert_eq!(
            out,
            vec![('F', b"a".to_vec()), ('F', b"bc".to_vec()), ('F', b"".to_vec()), ('P', b"tail".to_vec())]
        );
    }

    #[test]
    fn long_lines() {
        let exact = vec![b'x'; MAX_LINE];
        let mut l = exact.clone();
        l.push(b'\n');
        assert_eq!(split(&[&l]), vec![('F', exact.clone())]);
        let mut l = vec![b'y'; MAX_LINE * 2 + 5];
        l.push(b'\n');
        let out = split(&[&l[..100], &l[100..]]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], ('P', vec![b'y'; MAX_LINE]));
        assert_eq!(out[1], ('P', vec![b'y'; MAX_LINE]));
        assert_eq!(out[2], ('F', vec![b'y'; 5]));
    }
}
