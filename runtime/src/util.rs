//! Shared helpers: atomic file writes (the workspace's one implementation, in `common::fs`),
//! bounded reads of files a client or a container named.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use common::fs::{fsync_dir, remove_durable, write_atomic, write_replace};

/// Opens `path` for reading only if it is a regular file: with `O_NONBLOCK` (a FIFO does not
/// block the open) and, when `nofollow`, `O_NOFOLLOW`; a FIFO, device or directory is refused
/// (`InvalidInput`, naming what it is). Returns the file and its size.
pub fn open_regular(path: &Path, nofollow: bool) -> std::io::Result<(std::fs::File, u64)> {
    use std::os::unix::fs::FileTypeExt;
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    if nofollow {
        flags |= libc::O_NOFOLLOW;
    }
    let f = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path)?;
    let md = f.metadata()?;
    let ft = md.file_type();
    if !ft.is_file() {
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("is {what}, not a regular file")));
    }
    Ok((f, md.len()))
}

/// The first `max` bytes (at most) of a regular file (see [`open_regular`]).
pub fn read_regular_head(path: &Path, max: u64, nofollow: bool) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let (f, _) = open_regular(path, nofollow)?;
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The last `max` bytes (at most) of a regular file (see [`open_regular`]).
pub fn read_regular_tail(path: &Path, max: u64, nofollow: bool) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let (mut f, len) = open_regular(path, nofollow)?;
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_reads_of_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(read_regular_head(&f, 4, true).unwrap(), b"0123");
        assert_eq!(read_regular_tail(&f, 4, true).unwrap(), b"6789");
        assert_eq!(read_regular_tail(&f, 100, true).unwrap(), b"0123456789");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_regular_head(&fifo, 4, true).unwrap_err().to_string().contains("FIFO"));
        assert!(read_regular_head(Path::new("/dev/zero"), 4, false).unwrap_err().to_string().contains("device"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(read_regular_head(&link, 4, true).is_err());
        assert_eq!(read_regular_head(&link, 4, false).unwrap(), b"0123");
    }
}
