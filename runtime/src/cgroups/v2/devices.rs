//! v2 device control: cgroup v2 has no devices.allow file; the rules become a small
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the cgroup (as runc does). The rules are
//! checked last to first and the first match decides (= the last matching rule wins, as in
//! v1); no match denies. An allow rule matches when every requested access is in the rule, a
//! deny rule when any is.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::cgroups::CgroupError;

// bpf(2) commands, program/attach types and flags (linux/bpf.h)
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

// bpf_cgroup_dev_ctx.access_type: type in the low 16 bits, access in the high 16 bits
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// One eBPF instruction.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8, // dst in the low nibble, src in the high nibble
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | (dst & 0x0f), off, imm }
}

const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU_AND_K: u8 = 0x54; // dst &= imm (32 bit)
const ALU_RSH_K: u8 = 0x74; // dst >>= imm (32 bit)
const ALU_MOV_K: u8 = 0xb4; // dst = imm (32 bit)
const ALU_MOV_X: u8 = 0xbc; // dst = src (32 bit)
const JMP_JNE_K: u8 = 0x55; // if dst != imm goto +off
const JMP_JNE_X: u8 = 0x5d; // if dst != src goto +off
const JMP_JEQ_K: u8 = 0x15; // if dst == imm goto +off
const EXIT: u8 = 0x95;

fn access_bits(access: &str) -> Result<i32, CgroupError> {
    let mut bits = 0;
    for c in access.chars() {
        bits |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => return Err(CgroupError::InvalidResource(format!("device access {access:?}"))),
        };
    }
    Ok(bits)
}

/// Compiles OCI device rules into the program. Registers: R2 = type, R3 = access, R4 = major,
/// R5 = minor.
pub fn compile(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Insn>, CgroupError> {
    let mut prog = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        let mut block: Vec<Insn> = Vec::new();
        // conditions jump to the end of the block ("next rule"); patched below
        let typ = match r.typ() {
            None | Some(LinuxDeviceType::A) => None,
            Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Some(DEV_CHAR),
            Some(LinuxDeviceType::P) => {
                return Err(CgroupError::InvalidResource("device cgroup rules cannot name FIFOs".into()))
            }
        };
        if let Some(t) = typ {
            block.push(insn(JMP_JNE_K, 2, 0, 0, t));
        }
        let acc = access_bits(r.access().as_deref().filter(|a| !a.is_empty()).unwrap_or("rwm"))?;
        if acc != ACC_READ | ACC_WRITE | ACC_MKNOD {
            block.push(insn(ALU_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU_AND_K, 1, 0, 0, acc));
            if r.allow() {
                // every requested bit must be allowed
                block.push(insn(JMP_JNE_X, 1, 3, 0, 0));
            } else {
                // any requested bit denied
                block.push(insn(JMP_JEQ_K, 1, 0, 0, 0));
            }
        }
        if let Some(m) = r.major().filter(|m| *m >= 0) {
            block.push(insn(JMP_JNE_K, 4, 0, 0, m as i32));
        }
        if let Some(m) = r.minor().filter(|m| *m >= 0) {
            block.push(insn(JMP_JNE_K, 5, 0, 0, m as i32));
        }
        let catch_all = block.is_empty();
        block.push(insn(ALU_MOV_K, 0, 0, 0, i32::from(r.allow())));
        block.push(insn(EXIT, 0, 0, 0, 0));
        if catch_all {
            // matches everything: earlier rules and the default are unreachable (and the
            // verifier refuses unreachable code)
            prog.extend(block);
            return Ok(prog);
        }
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if matches!(ins.code, JMP_JNE_K | JMP_JNE_X | JMP_JEQ_K) {
                ins.off = (len - i - 1) as i16;
            }
        }
        prog.extend(block);
    }
    prog.push(insn(ALU_MOV_K, 0, 0, 0, 0));
    prog.push(insn(EXIT, 0, 0, 0, 0));
    Ok(prog)
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a properly laid out, zero-padded bpf_attr prefix of the given size.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr as *mut T as *mut libc::c_void, std::mem::size_of::<T>() as u32)
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn load(prog: &[Insn]) -> Result<OwnedFd, CgroupError> {
    let license = b"Apache-2.0\0";
    let mut log = vec![0u8; 4096];
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"skiff_devcg");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: the kernel returned a new fd.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            let msg = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)]).into_owned();
            Err(CgroupError::io(
                "load device eBPF program",
                Path::new("bpf"),
                std::io::Error::new(e.kind(), format!("{e}: {msg}")),
            ))
        }
    }
}

/// The ids of the device programs attached to the cgroup.
fn attached(cg: &OwnedFd) -> Vec<u32> {
    let mut ids = [0u32; 64];
    let mut q = QueryAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    match bpf(BPF_PROG_QUERY, &mut q) {
        Ok(_) => ids[..(q.prog_cnt as usize).min(ids.len())].to_vec(),
        Err(_) => Vec::new(),
    }
}

/// Loads the rules as a device program, attaches it to the cgroup at `dir`, and detaches the
/// device programs attached before (so that an update replaces the rules).
pub fn apply(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
    let prog = compile(rules)?;
    let cg: OwnedFd = std::fs::File::open(dir).map_err(|e| CgroupError::io("open", dir, e))?.into();
    let old = attached(&cg);
    let fd = load(&prog)?;
    let mut a = AttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut a).map_err(|e| CgroupError::io("attach device eBPF program", dir, e))?;
    for id in old {
        let mut g = GetFdAttr { prog_id: id, ..Default::default() };
        let Ok(ofd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut g) else { continue };
        // SAFETY: the kernel returned a new fd.
        let ofd = unsafe { OwnedFd::from_raw_fd(ofd as i32) };
        let mut d = AttachAttr {
            target_fd: cg.as_raw_fd() as u32,
            attach_bpf_fd: ofd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        if let Err(e) = bpf(BPF_PROG_DETACH, &mut d) {
            tracing::warn!(dir = %dir.display(), error = %e, "detach old device program");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    #[test]
    fn compiles() {
        let rules = vec![
            LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().unwrap(),
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(1i64)
                .minor(3i64)
                .access("rw")
                .build()
                .unwrap(),
        ];
        let p = compile(&rules).unwrap();
        // prologue 6, allow rule: type, 3 access, major, minor, mov, exit = 8, deny-all: mov, exit = 2
        // (it matches everything, so no default follows)
        assert_eq!(p.len(), 6 + 8 + 2);
        assert_eq!(p[6], insn(JMP_JNE_K, 2, 0, 7, DEV_CHAR));
        assert_eq!(p[9], insn(JMP_JNE_X, 1, 3, 4, 0));
        assert_eq!(p[12], insn(ALU_MOV_K, 0, 0, 0, 1));
        assert_eq!(p[14], insn(ALU_MOV_K, 0, 0, 0, 0));
    }
}
