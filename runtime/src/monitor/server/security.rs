//! Process attributes applied in the forked child just before exec: rlimits, oom_score_adj,
//! capabilities (bounding, then user switch with KEEPCAPS, then effective/permitted/
//! inheritable/ambient), no_new_privs, seccomp, and the executable lookup.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, LinuxCapabilities, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, PosixRlimitType, Process,
};

use super::util::{bail, diag, Ctx, Result};

const CAP_NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Capability number of an OCI capability (`None`: unknown to this kernel table).
pub fn cap_number(c: &oci_spec::runtime::Capability) -> Option<u32> {
    let name = c.to_string();
    let name = name.trim_start_matches("CAP_");
    CAP_NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

fn mask(set: &Option<oci_spec::runtime::Capabilities>) -> u64 {
    let mut m = 0u64;
    for c in set.iter().flatten() {
        match cap_number(c) {
            Some(n) if n < 64 => m |= 1 << n,
            _ => diag!("unknown capability {c}, ignored"),
        }
    }
    m
}

pub fn rlimits(p: &Process) -> Result<()> {
    for r in p.rlimits().as_deref().unwrap_or_default() {
        let res = match r.typ() {
            PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
            PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
            PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
            PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
            PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
            PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
            PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
            PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
            PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
            PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
            PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
            PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
            PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
            PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
            PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
            PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
            #[allow(unreachable_patterns)]
            _ => continue,
        };
        let lim = libc::rlimit { rlim_cur: r.soft(), rlim_max: r.hard() };
        // SAFETY: setrlimit reads the `rlimit` above, alive across the call.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            bail!("setrlimit {:?}: {}", r.typ(), std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets oom_score_adj; without CAP_SYS_RESOURCE it cannot go below our own (skiffd's) value,
/// so it is clamped to it (like containerd's restrict_oom_score_adj) and that is logged.
pub fn oom_score_adj(p: &Process) -> Result<()> {
    let Some(want) = p.oom_score_adj() else { return Ok(()) };
    let cur: i32 =
        std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let mut v = want.clamp(-1000, 1000);
    if v < cur && !has_cap(24)? {
        diag!("oom_score_adj {want} clamped to {cur} (no CAP_SYS_RESOURCE)");
        v = cur;
    }
    match std::fs::write("/proc/self/oom_score_adj", v.to_string()) {
        Ok(()) => Ok(()),
        Err(e) if v < cur => {
            diag!("oom_score_adj {v}: {e}; keeping {cur}");
            Ok(())
        }
        Err(e) => bail!("oom_score_adj {v}: {e}"),
    }
}

fn has_cap(n: u32) -> Result<bool> {
    let data = capget()?;
    Ok(data[(n / 32) as usize].effective & (1 << (n % 32)) != 0)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// Our own capability sets.
fn capget() -> Result<[CapData; 2]> {
    let mut h = CapHeader { version: CAP_V3, pid: 0 };
    let mut d = [CapData::default(); 2];
    // SAFETY: `h` and `d` are `#[repr(C)]` and alive across the call; version 3 of the
    // header takes exactly two `CapData`.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut CapHeader, d.as_mut_ptr()) };
    if r != 0 {
        bail!("capget: {}", std::io::Error::last_os_error());
    }
    Ok(d)
}

/// Drops every capability not in the bounding set (needs CAP_SETPCAP: before the user switch).
pub fn bounding(caps: Option<&LinuxCapabilities>) -> Result<()> {
    let Some(caps) = caps else { return Ok(()) };
    let keep = mask(caps.bounding());
    for n in 0..=last_cap() {
        if n < 64 && keep & (1 << n) == 0 {
            // SAFETY: prctl with integer arguments only.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, n as libc::c_ulong, 0, 0, 0) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINVAL) {
                    bail!("drop capability {n} from bounding set: {e}");
                }
            }
        }
    }
    Ok(())
}

/// setgroups/setgid/setuid, keeping the permitted capabilities across the switch.
pub fn switch_user(p: &Process) -> Result<()> {
    let u = p.user();
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        bail!("prctl(PR_SET_KEEPCAPS): {}", std::io::Error::last_os_error());
    }
    let groups: Vec<nix::unistd::Gid> =
        u.additional_gids().as_deref().unwrap_or_default().iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).ctx(|| "setgroups".into())?;
    let gid = nix::unistd::Gid::from_raw(u.gid());
    nix::unistd::setresgid(gid, gid, gid).ctx(|| format!("setgid {}", u.gid()))?;
    let uid = nix::unistd::Uid::from_raw(u.uid());
    nix::unistd::setresuid(uid, uid, uid).ctx(|| format!("setuid {}", u.uid()))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) } != 0 {
        bail!("prctl(PR_SET_KEEPCAPS): {}", std::io::Error::last_os_error());
    }
    if let Some(m) = u.umask() {
        // SAFETY: umask takes an integer and cannot fail.
        unsafe { libc::umask(m as libc::mode_t) };
    }
    Ok(())
}

/// Effective, permitted, inheritable (one capset) and ambient.
pub fn capabilities(caps: Option<&LinuxCapabilities>) -> Result<()> {
    let Some(caps) = caps else { return Ok(()) };
    // Only what the kernel allows: permitted within ours (the node may lack some, e.g.
    // CAP_SYS_RESOURCE), effective within permitted, inheritable within ours or the bounding
    // set. Asking for more would fail the whole start with EPERM; log what is left out.
    let cur = capget()?;
    let cur_p = cur[0].permitted as u64 | (cur[1].permitted as u64) << 32;
    let cur_i = cur[0].inheritable as u64 | (cur[1].inheritable as u64) << 32;
    let mut bset = 0u64;
    for n in 0..=last_cap().min(63) {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_READ, n as libc::c_ulong, 0, 0, 0) } == 1 {
            bset |= 1 << n;
        }
    }
    let want_p = mask(caps.permitted());
    let want_i = mask(caps.inheritable());
    let p = want_p & cur_p;
    let e = mask(caps.effective()) & p;
    let i = want_i & (cur_i | bset);
    if p != want_p || i != want_i {
        diag!(
            "capabilities not available here, left out: permitted {:#x}, inheritable {:#x}",
            want_p & !p,
            want_i & !i
        );
    }
    let mut h = CapHeader { version: CAP_V3, pid: 0 };
    let d = [
        CapData { effective: e as u32, permitted: p as u32, inheritable: i as u32 },
        CapData { effective: (e >> 32) as u32, permitted: (p >> 32) as u32, inheritable: (i >> 32) as u32 },
    ];
    // SAFETY: `h` and `d` are `#[repr(C)]` and alive across the call; version 3 of the
    // header reads exactly two `CapData`.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut CapHeader, d.as_ptr()) };
    if r != 0 {
        bail!("capset: {}", std::io::Error::last_os_error());
    }
    // Ambient caps must be permitted and inheritable.
    let a = mask(caps.ambient()) & p & i;
    for n in 0..64u32 {
        if a & (1 << n) != 0 {
            // SAFETY: prctl with integer arguments only.
            let r = unsafe {
                libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong, n as libc::c_ulong, 0, 0)
            };
            if r != 0 {
                diag!("raise ambient capability {n}: {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

pub fn no_new_privs() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        bail!("no_new_privs: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> libseccomp::ScmpAction {
    use libseccomp::ScmpAction as A;
    match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => A::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => A::KillProcess,
        LinuxSeccompAction::ScmpActTrap => A::Trap,
        LinuxSeccompAction::ScmpActErrno => A::Errno(errno.unwrap_or(libc::EPERM as u32) as i32),
        LinuxSeccompAction::ScmpActNotify => A::Notify,
        LinuxSeccompAction::ScmpActTrace => A::Trace(errno.unwrap_or(libc::EPERM as u32) as u16),
        LinuxSeccompAction::ScmpActLog => A::Log,
        LinuxSeccompAction::ScmpActAllow => A::Allow,
    }
}

fn arch(a: &Arch) -> Option<libseccomp::ScmpArch> {
    let s = serde_json::to_value(a).ok()?;
    s.as_str()?.parse().ok()
}

/// Loads `linux.seccomp` with libseccomp (must be the last step before exec).
pub fn seccomp(s: &LinuxSeccomp) -> Result<()> {
    use libseccomp::{ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
    let default = action(s.default_action(), s.default_errno_ret());
    let mut ctx = ScmpFilterContext::new(default).ctx(|| "seccomp init".into())?;
    ctx.set_ctl_nnp(false).ctx(|| "seccomp nnp".into())?;
    for a in s.architectures().as_deref().unwrap_or_default() {
        if let Some(a) = arch(a) {
            if let Err(e) = ctx.add_arch(a) {
                diag!("seccomp arch {a:?}: {e}");
            }
        }
    }
    for sc in s.syscalls().as_deref().unwrap_or_default() {
        let act = action(sc.action(), sc.errno_ret());
        if act == default {
            continue;
        }
        let conds: Vec<ScmpArgCompare> = sc
            .args()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let op = match a.op() {
                    LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
                    LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
                    LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
                    LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
                    LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
                    LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
                    LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(a.value()),
                };
                let datum = if matches!(a.op(), LinuxSeccompOperator::ScmpCmpMaskedEq) {
                    a.value_two().unwrap_or(0)
                } else {
                    a.value()
                };
                ScmpArgCompare::new(a.index() as u32, op, datum)
            })
            .collect();
        for name in sc.names() {
            let Ok(nr) = ScmpSyscall::from_name(name) else {
                continue; // not on this architecture
            };
            let r = if conds.is_empty() { ctx.add_rule(act, nr) } else { ctx.add_rule_conditional(act, nr, &conds) };
            if let Err(e) = r {
                diag!("seccomp rule {name}: {e}");
            }
        }
    }
    ctx.load().ctx(|| "load seccomp filter".into())
}

/// Finds the executable like execvp, with PATH from the container's env (after pivot_root
/// and the user switch, so paths and permissions are the container's).
pub fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf> {
    if arg0.is_empty() {
        bail!("no command given");
    }
    if arg0.contains('/') {
        return Ok(PathBuf::from(arg0));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let cand = Path::new(dir).join(arg0);
        let Ok(md) = std::fs::metadata(&cand) else { continue };
        if !md.is_file() {
            continue;
        }
        let Ok(c) = CString::new(cand.as_os_str().as_encoded_bytes()) else { continue };
        // SAFETY: `c` is a NUL-terminated string alive across the call.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(cand);
        }
    }
    bail!("exec: {arg0:?}: executable file not found in $PATH")
}

/// The final execve. Only returns on failure.
pub fn exec(path: &Path, args: &[String], env: &[String]) -> super::util::Error {
    let to_c = |v: &[String]| -> Vec<CString> { v.iter().filter_map(|s| CString::new(s.as_bytes()).ok()).collect() };
    let Ok(p) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return super::util::Error(format!("exec: bad path {}", path.display()));
    };
    let e = nix::unistd::execve(&p, &to_c(args), &to_c(env));
    let e = match e {
        Err(e) => e,
        Ok(never) => match never {},
    };
    super::util::Error(format!("exec {:?}: {}", path, e.desc()))
}
