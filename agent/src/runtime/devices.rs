//! The device allow-list on cgroup v2: an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE`
//! attached to the container's cgroup (cgroup v2 has no `devices.allow` file; this is what runc
//! and crun do). The program is generated from the same rule lines v1 takes (`"c 1:3 rwm"`,
//! `"b *:* m"`): it returns 1 (allow) for the first matching rule, else 0 (deny).
//!
//! The generator is pure and unit-tested; [`attach`] loads the program (`bpf(BPF_PROG_LOAD)`)
//! and attaches it (`bpf(BPF_PROG_ATTACH)`, `BPF_CGROUP_DEVICE`). The attachment holds the
//! program: it lives as long as the cgroup.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// One rule: type (`None` = any), major/minor (`None` = `*`), access bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: Option<DeviceKind>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `ACC_MKNOD | ACC_READ | ACC_WRITE` bits.
    pub access: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Block,
    Char,
}

// The kernel's bpf_cgroup_dev_ctx encoding.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// Parses a v1-style rule line: `a`, or `<c|b|a> <major|*>:<minor|*> <rwm>`.
pub fn parse_rule(line: &str) -> Result<DeviceRule, String> {
    let bad = || format!("invalid device rule {line:?} (expected e.g. \"c 1:3 rwm\")");
    let parts: Vec<&str> = line.split_whitespace().collect();
    if parts == ["a"] {
        return Ok(DeviceRule {
            kind: None,
            major: None,
            minor: None,
            access: ACC_ALL,
        });
    }
    let [kind, numbers, access] = parts[..] else {
        return Err(bad());
    };
    let kind = match kind {
        "a" => None,
        "b" => Some(DeviceKind::Block),
        "c" => Some(DeviceKind::Char),
        _ => return Err(bad()),
    };
    let (major, minor) = numbers.split_once(':').ok_or_else(bad)?;
    let number = |s: &str| -> Result<Option<u32>, String> {
        if s == "*" {
            Ok(None)
        } else {
            s.parse().map(Some).map_err(|_| bad())
        }
    };
    let mut bits = 0;
    for c in access.chars() {
        bits |= match c {
            'm' => ACC_MKNOD,
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            _ => return Err(bad()),
        };
    }
    if bits == 0 {
        return Err(bad());
    }
    Ok(DeviceRule {
        kind,
        major: number(major)?,
        minor: number(minor)?,
        access: bits,
    })
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst_reg (low 4 bits) | src_reg (high 4 bits).
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// Opcodes.
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_X: u8 = 0xbc;
const ALU64_MOV_K: u8 = 0xb7;
const JMP_JNE_K: u8 = 0x55;
const JMP_EXIT: u8 = 0x95;

/// The program for `rules` (first match allows; nothing matches → deny).
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    // r1 = ctx: { u32 access_type (access << 16 | type); u32 major; u32 minor; }
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff), // r2 = type
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16), // r3 = access
        insn(LDX_MEM_W, 4, 1, 4, 0),    // r4 = major
        insn(LDX_MEM_W, 5, 1, 8, 0),    // r5 = minor
    ];
    for r in rules {
        // Each check jumps past the rest of this rule's block when it fails.
        let mut checks: Vec<Vec<Insn>> = Vec::new();
        if let Some(kind) = r.kind {
            let t = match kind {
                DeviceKind::Block => DEV_BLOCK,
                DeviceKind::Char => DEV_CHAR,
            };
            checks.push(vec![insn(JMP_JNE_K, 2, 0, 0, t)]);
        }
        if r.access & ACC_ALL != ACC_ALL {
            // Any requested access bit outside the rule's → no match.
            checks.push(vec![
                insn(ALU32_MOV_X, 6, 3, 0, 0),
                insn(ALU32_AND_K, 6, 0, 0, (!r.access & ACC_ALL) as i32),
                insn(JMP_JNE_K, 6, 0, 0, 0),
            ]);
        }
        if let Some(major) = r.major {
            checks.push(vec![insn(JMP_JNE_K, 4, 0, 0, major as i32)]);
        }
        if let Some(minor) = r.minor {
            checks.push(vec![insn(JMP_JNE_K, 5, 0, 0, minor as i32)]);
        }
        let allow = [insn(ALU64_MOV_K, 0, 0, 0, 1), insn(JMP_EXIT, 0, 0, 0, 0)];
        let total: usize = checks.iter().map(Vec::len).sum::<usize>() + allow.len();
        let mut emitted = 0;
        for check in checks {
            emitted += check.len();
            let mut check = check;
            if let Some(last) = check.last_mut() {
                // Jump offsets count from the next instruction.
                last.off = (total - emitted) as i16;
            }
            p.extend(check);
        }
        p.extend(allow);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

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
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: bpf(2) with a properly laid out, zero-padded attribute struct of the given size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// Loads the program for `rules` and attaches it to the cgroup v2 directory `cgroup_dir`.
pub fn attach(cgroup_dir: &Path, rules: &[DeviceRule]) -> Result<(), String> {
    let insns = program(rules);
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"shoal_devcg");
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..ProgLoadAttr::default()
    };
    // Without a verifier log first (a log that does not fit fails the load with ENOSPC); on
    // failure once more with the log, for the error message.
    let prog = match bpf(BPF_PROG_LOAD, &mut load) {
        Ok(fd) => fd,
        Err(e) => {
            let mut log = vec![0u8; 1 << 20];
            load.log_level = 1;
            load.log_size = log.len() as u32;
            load.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut load);
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            let tail: String = text
                .chars()
                .rev()
                .take(400)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(format!(
                "load the device filter (BPF_PROG_LOAD): {e}; verifier: {tail}"
            ));
        }
    };
    // SAFETY: the kernel just returned this fd.
    let prog = unsafe { OwnedFd::from_raw_fd(prog as i32) };
    let dir = fs::File::open(cgroup_dir).map_err(|e| {
        format!(
            "attach the device filter: open {}: {e}",
            cgroup_dir.display()
        )
    })?;
    let mut at = ProgAttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut at).map_err(|e| {
        format!(
            "attach the device filter to {} (BPF_PROG_ATTACH): {e}",
            cgroup_dir.display()
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter of the generated subset, to check the program's decisions.
    fn run(p: &[Insn], kind: i32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16) | kind as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1);
                    r[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                ALU32_RSH_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                ALU32_MOV_X => r[dst] = r[src] as u32 as u64,
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                JMP_JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn rules_parse_like_v1() {
        assert_eq!(
            parse_rule("c 1:3 rwm"),
            Ok(DeviceRule {
                kind: Some(DeviceKind::Char),
                major: Some(1),
                minor: Some(3),
                access: ACC_ALL
            })
        );
        assert_eq!(
            parse_rule("b *:* m"),
            Ok(DeviceRule {
                kind: Some(DeviceKind::Block),
                major: None,
                minor: None,
                access: ACC_MKNOD
            })
        );
        assert_eq!(parse_rule("a").map(|r| r.kind), Ok(None));
        for bad in ["", "x 1:3 rwm", "c 1 rwm", "c 1:3 rwx", "c a:3 r", "c 1:3"] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn docker_default_program_decides_like_the_v1_list() {
        let rules: Vec<DeviceRule> = crate::runtime::security::DEFAULT_DEVICE_RULES
            .iter()
            .map(|l| parse_rule(l).expect("rule"))
            .collect();
        let p = program(&rules);
        let (c, b) = (DEV_CHAR, DEV_BLOCK);
        // /dev/null, /dev/tty, pts, tun: read and write.
        for (maj, min) in [(1, 3), (1, 9), (5, 0), (5, 2), (136, 7), (10, 200)] {
            assert_eq!(run(&p, c, ACC_READ | ACC_WRITE, maj, min), 1, "{maj}:{min}");
        }
        // mknod of anything is allowed, opening it is not.
        assert_eq!(run(&p, b, ACC_MKNOD, 8, 0), 1);
        assert_eq!(run(&p, c, ACC_MKNOD, 1, 1), 1);
        assert_eq!(run(&p, b, ACC_READ, 8, 0), 0);
        assert_eq!(run(&p, b, ACC_WRITE, 7, 0), 0);
        assert_eq!(run(&p, c, ACC_READ, 1, 1), 0, "/dev/mem");
        assert_eq!(run(&p, c, ACC_READ | ACC_WRITE, 10, 229), 0, "/dev/fuse");
        assert_eq!(run(&p, c, ACC_READ | ACC_MKNOD, 4, 1), 0);
        // Nothing allowed → everything denied.
        assert_eq!(run(&program(&[]), c, ACC_READ, 1, 3), 0);
        // "a" → everything allowed.
        let all = program(&[parse_rule("a").expect("a")]);
        assert_eq!(run(&all, b, ACC_ALL, 8, 0), 1);
    }
}
