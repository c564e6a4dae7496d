//! Seccomp profiles for the OCI spec: the `RuntimeDefault` profile (an allowlist in the spirit
//! of docker's and containerd's default profiles, with capability-dependent additions),
//! `Unconfined` (no filter) and `Localhost` profiles loaded from a JSON file (docker/containerd
//! profile format or plain OCI `LinuxSeccomp`).

use std::path::Path;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator,
    LinuxSyscall, LinuxSyscallBuilder,
};
use serde::Deserialize;

use crate::error::ErrorKind;

/// Errors while building or loading a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile {path}: {reason}")]
    BadProfile { path: String, reason: String },
    #[error("unsupported seccomp profile {0:?}")]
    Unsupported(String),
    #[error("building seccomp profile: {0}")]
    Build(String),
}

impl SeccompError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SeccompError::Build(_) => ErrorKind::Internal,
            _ => ErrorKind::InvalidArgument,
        }
    }
}

/// Syscalls every container may use (ptrace & co. included, as docker does on kernels ≥ 4.8).
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kcmp",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "process_vm_readv",
    "process_vm_writev",
    "pselect6",
    "pselect6_time64",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls allowed when the container holds a capability (bounding set).
const BY_CAP: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["name_to_handle_at", "open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "name_to_handle_at",
            "pivot_root",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_PTRACE", &["pidfd_getfd", "process_madvise"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

const EPERM: u32 = libc::EPERM as u32;
const ENOSYS: u32 = libc::ENOSYS as u32;
const CLONE_NS_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

fn native_arches() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

fn allow(names: &[&str]) -> Result<LinuxSyscall, SeccompError> {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()
        .map_err(|e| SeccompError::Build(e.to_string()))
}

fn personality(value: u64) -> Result<LinuxSyscall, SeccompError> {
    let arg = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(value)
        .op(LinuxSeccompOperator::ScmpCmpEq)
        .build()
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    LinuxSyscallBuilder::default()
        .names(vec!["personality".to_string()])
        .action(LinuxSeccompAction::ScmpActAllow)
        .args(vec![arg])
        .build()
        .map_err(|e| SeccompError::Build(e.to_string()))
}

/// The RuntimeDefault profile for a container whose bounding set is `bounding` (capability
/// names like `CAP_SYS_ADMIN`). Default action: EPERM.
pub fn default_profile(bounding: &[String]) -> Result<LinuxSeccomp, SeccompError> {
    let has = |c: &str| bounding.iter().any(|b| b == c);
    let mut syscalls = vec![allow(ALLOWED)?];
    // socket: everything but AF_VSOCK (40) as docker does; simpler: allow all families.
    syscalls.push(allow(&["socket"])?);
    for v in [0x0u64, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(personality(v)?);
    }
    if cfg!(target_arch = "x86_64") {
        syscalls.push(allow(&["arch_prctl", "modify_ldt"])?);
    } else if cfg!(target_arch = "aarch64") {
        syscalls.push(allow(&[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ])?);
    }
    for (cap, names) in BY_CAP {
        if has(cap) {
            syscalls.push(allow(names)?);
        }
    }
    if !has("CAP_SYS_ADMIN") {
        // clone without namespace flags; clone3 cannot be filtered by flags: ENOSYS makes libc
        // fall back to clone.
        let arg = LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(CLONE_NS_FLAGS)
            .value_two(0u64)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()
            .map_err(|e| SeccompError::Build(e.to_string()))?;
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![arg])
                .build()
                .map_err(|e| SeccompError::Build(e.to_string()))?,
        );
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(ENOSYS)
                .build()
                .map_err(|e| SeccompError::Build(e.to_string()))?,
        );
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(native_arches())
        .syscalls(syscalls)
        .build()
        .map_err(|e| SeccompError::Build(e.to_string()))
}

/// A profile file in docker/containerd format (a superset of OCI `LinuxSeccomp` for the fields
/// that matter): `defaultAction`, `defaultErrnoRet`, `architectures` or `archMap`, `syscalls`
/// with `name` or `names`, `action`, `errnoRet`, `args`. `includes`/`excludes` conditions are
/// not evaluated (rules carrying them are kept only when they have no `excludes`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileFile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Option<Vec<Arch>>,
    #[serde(default)]
    arch_map: Option<Vec<ArchMap>>,
    #[serde(default)]
    flags: Option<Vec<oci_spec::runtime::LinuxSeccompFilterFlag>>,
    #[serde(default)]
    syscalls: Option<Vec<ProfileSyscall>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Vec<Arch>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileSyscall {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<oci_spec::runtime::LinuxSeccompArg>>,
    #[serde(default)]
    excludes: Option<serde_json::Value>,
}

/// Parses a Localhost profile.
pub fn parse_profile(json: &[u8], origin: &str) -> Result<LinuxSeccomp, SeccompError> {
    let bad = |reason: String| SeccompError::BadProfile { path: origin.to_string(), reason };
    let p: ProfileFile = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let mut arches = p.architectures.unwrap_or_default();
    if arches.is_empty() {
        let native = native_arches();
        for m in p.arch_map.unwrap_or_default() {
            if native.first() == Some(&m.architecture) {
                arches.push(m.architecture);
                arches.extend(m.sub_architectures);
            }
        }
    }
    let mut syscalls = Vec::new();
    for s in p.syscalls.unwrap_or_default() {
        if s.excludes.as_ref().map(|e| !e.is_null() && e != &serde_json::json!({})).unwrap_or(false) {
            continue;
        }
        let mut names = s.names;
        if let Some(n) = s.name {
            names.push(n);
        }
        if names.is_empty() {
            return Err(bad("a syscall rule has no names".into()));
        }
        let mut b = LinuxSyscallBuilder::default().names(names).action(s.action);
        if let Some(e) = s.errno_ret {
            b = b.errno_ret(e);
        }
        if let Some(a) = s.args.filter(|a| !a.is_empty()) {
            b = b.args(a);
        }
        syscalls.push(b.build().map_err(|e| bad(e.to_string()))?);
    }
    let mut b = LinuxSeccompBuilder::default().default_action(p.default_action).syscalls(syscalls);
    if !arches.is_empty() {
        b = b.architectures(arches);
    }
    if let Some(e) = p.default_errno_ret {
        b = b.default_errno_ret(e);
    }
    if let Some(f) = p.flags.filter(|f| !f.is_empty()) {
        b = b.flags(f);
    }
    b.build().map_err(|e| bad(e.to_string()))
}

/// Loads a Localhost profile from `path` (must be absolute).
pub fn load_profile(path: &Path) -> Result<LinuxSeccomp, SeccompError> {
    let origin = path.display().to_string();
    if !path.is_absolute() {
        return Err(SeccompError::BadProfile { path: origin, reason: "path is not absolute".into() });
    }
    let bytes = read_profile_file(path, MAX_PROFILE_SIZE)
        .map_err(|reason| SeccompError::BadProfile { path: origin.clone(), reason })?;
    parse_profile(&bytes, &origin)
}

/// Largest Localhost profile read (docker's default profile is about 20 KiB).
pub const MAX_PROFILE_SIZE: u64 = 1024 * 1024;

/// Reads a profile file: opened with `O_NONBLOCK` (a FIFO does not block the open), refused
/// unless it is a regular file (`/dev/zero`, a FIFO, a directory), and at most `max` bytes.
pub fn read_profile_file(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let bytes = crate::util::read_regular_head(path, max.saturating_add(1), false).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than the limit of {max} bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_depends_on_caps() {
        let p = default_profile(&["CAP_CHOWN".into()]).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        let sc = p.syscalls().as_ref().unwrap();
        let allowed = |n: &str| {
            sc.iter().any(|s| {
                s.names().iter().any(|x| x == n) && s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none()
            })
        };
        assert!(allowed("read") && allowed("execve"));
        assert!(!allowed("mount") && !allowed("unshare") && !allowed("bpf"));
        let admin = default_profile(&["CAP_SYS_ADMIN".into()]).unwrap();
        let sc = admin.syscalls().as_ref().unwrap();
        assert!(sc.iter().any(|s| s.names().iter().any(|x| x == "mount")));
        // serializes to what runtimes expect
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(j["defaultAction"], "SCMP_ACT_ERRNO");
    }

    #[test]
    fn profile_files_are_regular_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_profile(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("a device"), "{e}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = load_profile(&fifo).unwrap_err().to_string();
        assert!(e.contains("a FIFO"), "{e}");
        let e = load_profile(dir.path()).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_PROFILE_SIZE as usize + 1]).unwrap();
        let e = load_profile(&big).unwrap_err().to_string();
        assert!(e.contains("the limit of"), "{e}");
    }

    #[test]
    fn localhost_docker_format() {
        let j = br#"{"defaultAction":"SCMP_ACT_ALLOW","archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]}],
            "syscalls":[{"names":["chmod","fchmod"],"action":"SCMP_ACT_ERRNO","errnoRet":1},{"name":"mkdir","action":"SCMP_ACT_ERRNO","args":[]}]}"#;
        let p = parse_profile(j, "t").unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(p.syscalls().as_ref().unwrap().len(), 2);
        assert!(parse_profile(b"{", "t").is_err());
        assert_eq!(parse_profile(b"{}", "t").unwrap_err().kind(), ErrorKind::InvalidArgument);
    }
}
