//! Namespace pins and the pod shm, for real (needs root).

use std::path::Path;

use runtime::namespaces::{self, NsType};
use runtime::podfiles;

fn uniq() -> String {
    format!(
        "{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() & 0xffffff
    )
}

fn mounted(p: &Path) -> bool {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.contains(&format!(" {} ", p.display()))
}

#[test]
fn pin_and_unpin() {
    if !common::prerequisite(nix::unistd::geteuid().is_root(), "root") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(format!("pod-{}", uniq())).join("ns");
    let host_net = namespaces::ns_inode(Path::new("/proc/thread-self/ns/net")).unwrap();
    let host_uts = namespaces::ns_inode(Path::new("/proc/thread-self/ns/uts")).unwrap();
    let host_name = nix::unistd::gethostname().unwrap();
    let pins = namespaces::pin(&dir, &NsType::ALL, Some("skiff-pod-test")).unwrap();
    let net = pins.net.clone().unwrap();
    for p in [&net, pins.ipc.as_ref().unwrap(), pins.uts.as_ref().unwrap()] {
        assert!(mounted(p), "{} mounted", p.display());
    }
    // new namespaces, and this thread (and the process) did not move
    assert_ne!(namespaces::ns_inode(&net).unwrap(), host_net);
    assert_ne!(namespaces::ns_inode(pins.uts.as_ref().unwrap()).unwrap(), host_uts);
    assert_eq!(namespaces::ns_inode(Path::new("/proc/thread-self/ns/net")).unwrap(), host_net);
    assert_eq!(namespaces::ns_inode(Path::new("/proc/self/ns/uts")).unwrap(), host_uts);
    assert_eq!(nix::unistd::gethostname().unwrap(), host_name);
    // inside: lo is up, the hostname is set
    let (lo_up, ifaces) = namespaces::run_in_netns(&net, || {
        let flags = std::fs::read_to_string("/sys/class/net/lo/flags").ok();
        // /sys shows the mounting ns' view; ask the kernel via a socket instead
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(b"x", s.local_addr().unwrap()).unwrap();
        let mut b = [0u8; 1];
        let ok = s.recv(&mut b).is_ok();
        (ok, flags)
    })
    .unwrap();
    assert!(lo_up);
    let _ = ifaces;
    let name = namespaces::run_in_ns(pins.uts.as_ref().unwrap(), nix::sched::CloneFlags::CLONE_NEWUTS, || {
        nix::unistd::gethostname().unwrap()
    })
    .unwrap();
    assert_eq!(name.to_str().unwrap(), "skiff-pod-test");
    // interface counters come from the pod's namespace: only lo there
    let devs = namespaces::net_dev_stats(&net).unwrap();
    assert_eq!(devs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), vec!["lo"]);
    assert!(devs[0].rx_bytes > 0, "the UDP packet above went over lo");
    assert!(namespaces::net_dev_stats(Path::new("/nonexistent/ns")).is_err());
    // pinning twice is refused
    assert!(namespaces::pin(&dir, &[NsType::Net], None).is_err());
    namespaces::unpin(&dir).unwrap();
    assert!(!mounted(&net));
    assert!(!dir.exists());
    namespaces::unpin(&dir).unwrap();
}

#[test]
fn pin_subset_and_bad_hostname() {
    if !common::prerequisite(nix::unistd::geteuid().is_root(), "root") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ns");
    assert_eq!(
        namespaces::pin(&dir, &NsType::ALL, Some("bad host name")).unwrap_err().kind(),
        runtime::ErrorKind::InvalidArgument
    );
    let pins = namespaces::pin(&dir, &[NsType::Ipc], None).unwrap();
    assert!(pins.net.is_none() && pins.uts.is_none());
    assert!(mounted(pins.ipc.as_ref().unwrap()));
    namespaces::unpin(&dir).unwrap();
    assert!(!dir.exists());
}

#[test]
fn shm_mount() {
    if !common::prerequisite(nix::unistd::geteuid().is_root(), "root") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = podfiles::PodPaths::new(tmp.path(), &format!("pod-{}", uniq()));
    podfiles::mount_shm(&p.shm(), podfiles::DEFAULT_SHM_SIZE).unwrap();
    podfiles::mount_shm(&p.shm(), podfiles::DEFAULT_SHM_SIZE).unwrap(); // idempotent
    assert!(podfiles::is_mountpoint(&p.shm()));
    let st = nix::sys::statvfs::statvfs(&p.shm()).unwrap();
    assert_eq!(st.blocks() as u64 * st.fragment_size() as u64, 64 << 20);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(p.shm()).unwrap().permissions().mode() & 0o7777, 0o1777);
    podfiles::unmount_shm(&p.shm()).unwrap();
    assert!(!p.shm().exists());
    podfiles::unmount_shm(&p.shm()).unwrap();
}

#[test]
fn many_pods_in_parallel() {
    if !common::prerequisite(nix::unistd::geteuid().is_root(), "root") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let host_net = namespaces::ns_inode(Path::new("/proc/self/ns/net")).unwrap();
    let dirs: Vec<std::path::PathBuf> = (0..16).map(|i| tmp.path().join(format!("p{i}")).join("ns")).collect();
    let inodes: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = dirs
            .iter()
            .map(|d| {
                s.spawn(move || {
                    let p = namespaces::pin(d, &NsType::ALL, Some("x")).unwrap();
                    namespaces::ns_inode(p.net.as_ref().unwrap()).unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut uniq = inodes.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 16, "every pod has its own netns");
    assert!(!inodes.contains(&host_net));
    assert_eq!(namespaces::ns_inode(Path::new("/proc/self/ns/net")).unwrap(), host_net);
    for d in &dirs {
        namespaces::unpin(d).unwrap();
    }
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&*tmp.path().to_string_lossy()));
}

/// The owning user namespace of the namespace at `p` (NS_GET_USERNS), as an inode number.
fn owner_inode(p: &Path) -> u64 {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    let f = std::fs::File::open(p).unwrap();
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd.
    let fd = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_USERNS as _) };
    assert!(fd >= 0, "NS_GET_USERNS {}: {}", p.display(), std::io::Error::last_os_error());
    // SAFETY: the ioctl returned a fresh fd owned here.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    std::fs::File::from(owned).metadata().unwrap().ino()
}

#[test]
fn pin_in_user_namespace_owns_the_others() {
    if !common::prerequisite(nix::unistd::geteuid().is_root(), "root") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(format!("pod-{}", uniq())).join("ns");
    let map = namespaces::IdMap { container_id: 0, host_id: 3_000_000, length: 65536 };
    let (user, pins) =
        namespaces::pin_in_user_namespace(&dir, &NsType::ALL, Some("skiff-userns-test"), map, map).unwrap();
    let host_user = namespaces::ns_inode(Path::new("/proc/self/ns/user")).unwrap();
    let user_ino = namespaces::ns_inode(&user).unwrap();
    assert_ne!(user_ino, host_user, "a new user namespace");
    for p in [pins.net.as_ref().unwrap(), pins.ipc.as_ref().unwrap(), pins.uts.as_ref().unwrap()] {
        assert!(mounted(p), "{} mounted", p.display());
        assert_eq!(owner_inode(p), user_ino, "{} owned by the pod's user namespace", p.display());
    }
    let name = namespaces::run_in_ns(pins.uts.as_ref().unwrap(), nix::sched::CloneFlags::CLONE_NEWUTS, || {
        nix::unistd::gethostname().unwrap()
    })
    .unwrap();
    assert_eq!(name.to_str(), Some("skiff-userns-test"));
    // a second pin on the same dir is refused, and nothing of the first is lost
    let again = namespaces::pin_in_user_namespace(&dir, &[NsType::Net], None, map, map);
    assert!(matches!(again, Err(namespaces::NamespaceError::AlreadyPinned(_))), "{again:?}");
    namespaces::unpin(&dir).unwrap();
    assert!(!dir.exists());
    assert!(!mounted(&user));
}
