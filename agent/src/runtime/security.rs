//! Container hardening: capabilities, no_new_privs, the seccomp filter, masked and read-only
//! paths, the device allow-list and the sysctl policy. Docker's defaults, written down here.
//!
//! The pure parts (capability names and sets, the syscall rule table, the sysctl
//! classification) are unit-tested; the `apply_*` / `install_*` functions run in the
//! container's init (see `init.rs` for the order).
//!
//! # Capabilities
//! Docker's default set ([`DEFAULT_CAPABILITIES`]), changed by `cap_add` / `cap_drop` exactly as
//! Docker's `TweakCapabilities` does: `cap_add: [ALL]` → every capability but the dropped ones;
//! `cap_drop: [ALL]` → only the added ones; else default − drop + add. Names are
//! case-insensitive, with or without `CAP_`. `privileged` → every capability.
//! Sets at exec: bounding = the set; inheritable and ambient = empty (Docker since
//! CVE-2022-24769); effective = permitted = the set for uid 0, empty for any other user (the
//! kernel gives a non-root process no capabilities across exec; as Docker). A capability the
//! agent itself does not hold cannot be granted and is silently absent (e.g. a host whose
//! bounding set lacks it).
//!
//! # seccomp
//! A deny-list filter (`EPERM`) over the syscalls Docker's default profile does not allow,
//! with Docker's capability exceptions (e.g. `cap_add: [SYS_PTRACE]` allows ptrace,
//! `SYS_TIME` the clock setters, `SYS_ADMIN` mount/unshare/setns/clone with namespace flags).
//! Stricter than Docker where the issue asked: ptrace is denied on every kernel unless
//! SYS_PTRACE; adjtimex/clock_adjtime are denied unless SYS_TIME; io_uring is denied (as in
//! Docker ≥ 25). `clone3` returns `ENOSYS` (so libc falls back to `clone`, whose flags the
//! filter can inspect). Only the native architecture's syscalls are accepted: an i386 or x32
//! syscall kills the process (i386) or fails with `EPERM` (x32), where Docker allows 32-bit
//! binaries. When the host has no device cgroup (a v1 host without the devices hierarchy),
//! `mknod` of block and character devices is refused by the filter instead (so, there, only
//! with the filter: `seccomp_unconfined` leaves devices unguarded).
//! The filter is installed last, right before `execve`, after no_new_privs (when
//! no_new_privs is turned off it is installed before the user switch, while the init still
//! holds CAP_SYS_ADMIN, which the kernel then requires).

use std::collections::BTreeMap;
use std::str::FromStr;

use caps::{CapSet, Capability};
use nix::errno::Errno;
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// A capability name as a user writes it: `net_admin`, `CAP_NET_ADMIN`, `ALL` (→ `None`).
pub fn parse_capability(name: &str) -> Result<Option<Capability>, String> {
    let trimmed = name.trim();
    if trimmed.eq_ignore_ascii_case("ALL") {
        return Ok(None);
    }
    let canonical = caps::to_canonical(trimmed);
    Capability::from_str(&canonical).map(Some).map_err(|_| {
        format!(
            "unknown capability {name:?} (expected a name like NET_ADMIN or CAP_NET_ADMIN, or ALL)"
        )
    })
}

/// Every capability this build knows, as a mask.
pub fn all_capabilities() -> u64 {
    caps::all().iter().fold(0, |m, c| m | c.bitmask())
}

fn mask_of(list: &[Capability]) -> u64 {
    list.iter().fold(0, |m, c| m | c.bitmask())
}

/// The container's capability set (a mask of `1 << cap`), Docker's rules (see the module docs).
pub fn capability_mask(
    cap_add: &[String],
    cap_drop: &[String],
    privileged: bool,
) -> Result<u64, String> {
    // Parse both lists first: an unknown name is an error even when privileged.
    let parse = |list: &[String]| -> Result<(bool, u64), String> {
        let mut all = false;
        let mut mask = 0;
        for name in list {
            match parse_capability(name)? {
                None => all = true,
                Some(c) => mask |= c.bitmask(),
            }
        }
        Ok((all, mask))
    };
    let (add_all, add) = parse(cap_add)?;
    let (drop_all, drop) = parse(cap_drop)?;
    if privileged {
        return Ok(all_capabilities());
    }
    Ok(if add_all {
        all_capabilities() & !drop
    } else if drop_all {
        add
    } else {
        (mask_of(DEFAULT_CAPABILITIES) & !drop) | add
    })
}

/// Names (`CAP_...`) of the capabilities in `mask`, lowest bit first.
pub fn capability_names(mask: u64) -> Vec<String> {
    let mut all: Vec<Capability> = caps::all().into_iter().collect();
    all.sort_by_key(|c| c.index());
    all.into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .map(|c| c.to_string())
        .collect()
}

/// The five capability sets of the workload at exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// Docker's sets for a container whose capability set is `mask`, running as `uid`.
pub fn cap_sets(mask: u64, uid: u32) -> CapSets {
    let granted = if uid == 0 { mask } else { 0 };
    CapSets {
        bounding: mask,
        effective: granted,
        permitted: granted,
        inheritable: 0,
        ambient: 0,
    }
}

/// Drops every capability outside `mask` from the bounding set. Needs CAP_SETPCAP: call while
/// still root, before the user switch.
pub(crate) fn drop_bounding(mask: u64) -> Result<(), String> {
    for cap in caps::all() {
        if mask & cap.bitmask() != 0 {
            continue;
        }
        match caps::has_cap(None, CapSet::Bounding, cap) {
            Ok(false) => continue,
            // Unknown to the running kernel: nothing to drop.
            Err(_) => continue,
            Ok(true) => {}
        }
        caps::drop(None, CapSet::Bounding, cap)
            .map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
    }
    Ok(())
}

/// Sets effective, permitted and inheritable (capset) and clears the ambient set. Never
/// raises: what the process does not hold stays absent.
pub(crate) fn apply_cap_sets(sets: &CapSets) -> Result<(), String> {
    let have = caps::read(None, CapSet::Permitted)
        .map_err(|e| format!("read the permitted set: {e}"))?
        .iter()
        .fold(0u64, |m, c| m | c.bitmask());
    let permitted = sets.permitted & have;
    let effective = sets.effective & permitted;
    let inheritable = sets.inheritable & permitted;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let lo = |m: u64| (m & 0xffff_ffff) as u32;
    let hi = |m: u64| (m >> 32) as u32;
    let data = [
        Data {
            effective: lo(effective),
            permitted: lo(permitted),
            inheritable: lo(inheritable),
        },
        Data {
            effective: hi(effective),
            permitted: hi(permitted),
            inheritable: hi(inheritable),
        },
    ];
    // SAFETY: capset(2) with a v3 header and two data structs, as the kernel expects.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if r != 0 {
        return Err(format!("capset: {}", Errno::last().desc()));
    }
    if sets.ambient == 0 {
        // PR_CAP_AMBIENT_CLEAR_ALL; EINVAL on kernels without ambient sets is fine.
        // SAFETY: prctl with integer arguments.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        };
        if r != 0 && Errno::last() != Errno::EINVAL {
            return Err(format!("clear the ambient set: {}", Errno::last().desc()));
        }
    } else {
        for cap in caps::all() {
            if sets.ambient & cap.bitmask() != 0 {
                caps::raise(None, CapSet::Ambient, cap)
                    .map_err(|e| format!("raise {cap} in the ambient set: {e}"))?;
            }
        }
    }
    Ok(())
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub(crate) fn set_no_new_privs() -> Result<(), Errno> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// seccomp

/// What part of a syscall's arguments the rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgMatch {
    /// Denied whatever the arguments.
    Always,
    /// `clone`: denied when the flags (arg 0) ask for a new namespace.
    NamespaceFlags,
    /// `personality`: denied unless arg 0 is one of [`PERSONALITY_ALLOWED`].
    Personality,
    /// `mknod`/`mknodat`: denied for block and character devices; the mode is argument `n`.
    DeviceNode(u8),
}

/// The namespace flags of clone(2) (Docker's mask 0x7E020000).
pub const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// The personalities Docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the
/// query 0xffffffff.
pub const PERSONALITY_ALLOWED: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// One deny rule: the syscall, when it is denied, and the capabilities any one of which lifts
/// it (Docker's `includes.caps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallRule {
    pub name: &'static str,
    pub nr: i64,
    pub arg: ArgMatch,
    pub unless: &'static [Capability],
}

macro_rules! deny {
    ($name:ident) => {
        deny!($name, ArgMatch::Always, [])
    };
    ($name:ident, [$($cap:ident),*]) => {
        deny!($name, ArgMatch::Always, [$($cap),*])
    };
    ($name:ident, $arg:expr, [$($cap:ident),*]) => {
        SyscallRule {
            name: stringify!($name),
            nr: nr::$name,
            arg: $arg,
            unless: &[$(Capability::$cap),*],
        }
    };
}

/// Syscall numbers of the native architecture under their plain names.
#[allow(non_upper_case_globals)]
mod nr {
    macro_rules! nrs {
        ($($name:ident = $sys:ident),* $(,)?) => {
            $(pub const $name: i64 = libc::$sys as i64;)*
        };
    }
    nrs!(
        acct = SYS_acct,
        add_key = SYS_add_key,
        adjtimex = SYS_adjtimex,
        bpf = SYS_bpf,
        clock_adjtime = SYS_clock_adjtime,
        clock_settime = SYS_clock_settime,
        clone = SYS_clone,
        clone3 = SYS_clone3,
        delete_module = SYS_delete_module,
        fanotify_init = SYS_fanotify_init,
        finit_module = SYS_finit_module,
        fsconfig = SYS_fsconfig,
        fsmount = SYS_fsmount,
        fsopen = SYS_fsopen,
        fspick = SYS_fspick,
        get_mempolicy = SYS_get_mempolicy,
        init_module = SYS_init_module,
        io_uring_enter = SYS_io_uring_enter,
        io_uring_register = SYS_io_uring_register,
        io_uring_setup = SYS_io_uring_setup,
        kcmp = SYS_kcmp,
        kexec_file_load = SYS_kexec_file_load,
        kexec_load = SYS_kexec_load,
        keyctl = SYS_keyctl,
        lookup_dcookie = SYS_lookup_dcookie,
        mbind = SYS_mbind,
        mknodat = SYS_mknodat,
        mount = SYS_mount,
        mount_setattr = SYS_mount_setattr,
        move_mount = SYS_move_mount,
        move_pages = SYS_move_pages,
        nfsservctl = SYS_nfsservctl,
        open_by_handle_at = SYS_open_by_handle_at,
        open_tree = SYS_open_tree,
        perf_event_open = SYS_perf_event_open,
        personality = SYS_personality,
        pidfd_getfd = SYS_pidfd_getfd,
        pivot_root = SYS_pivot_root,
        process_madvise = SYS_process_madvise,
        process_vm_readv = SYS_process_vm_readv,
        process_vm_writev = SYS_process_vm_writev,
        ptrace = SYS_ptrace,
        quotactl = SYS_quotactl,
        quotactl_fd = SYS_quotactl_fd,
        reboot = SYS_reboot,
        request_key = SYS_request_key,
        set_mempolicy = SYS_set_mempolicy,
        set_mempolicy_home_node = SYS_set_mempolicy_home_node,
        setdomainname = SYS_setdomainname,
        sethostname = SYS_sethostname,
        setns = SYS_setns,
        settimeofday = SYS_settimeofday,
        swapoff = SYS_swapoff,
        swapon = SYS_swapon,
        syslog = SYS_syslog,
        umount2 = SYS_umount2,
        unshare = SYS_unshare,
        userfaultfd = SYS_userfaultfd,
        vhangup = SYS_vhangup,
    );
    #[cfg(target_arch = "x86_64")]
    nrs!(
        _sysctl = SYS__sysctl,
        ioperm = SYS_ioperm,
        iopl = SYS_iopl,
        mknod = SYS_mknod,
        modify_ldt = SYS_modify_ldt,
        sysfs = SYS_sysfs,
        uselib = SYS_uselib,
        ustat = SYS_ustat,
    );
    // Obsolete module syscalls that libc no longer names (x86_64 numbers).
    #[cfg(target_arch = "x86_64")]
    pub const create_module: i64 = 174;
    #[cfg(target_arch = "x86_64")]
    pub const get_kernel_syms: i64 = 177;
    #[cfg(target_arch = "x86_64")]
    pub const query_module: i64 = 178;
}

/// The deny table (Docker's default profile, inverted; see the module docs).
pub fn syscall_rules() -> Vec<SyscallRule> {
    let mut rules = vec![
        // Namespaces and mounts.
        deny!(clone, ArgMatch::NamespaceFlags, [CAP_SYS_ADMIN]),
        deny!(unshare, [CAP_SYS_ADMIN]),
        deny!(setns, [CAP_SYS_ADMIN]),
        deny!(mount, [CAP_SYS_ADMIN]),
        deny!(umount2, [CAP_SYS_ADMIN]),
        deny!(pivot_root, [CAP_SYS_ADMIN]),
        deny!(open_tree, [CAP_SYS_ADMIN]),
        deny!(move_mount, [CAP_SYS_ADMIN]),
        deny!(fsopen, [CAP_SYS_ADMIN]),
        deny!(fsconfig, [CAP_SYS_ADMIN]),
        deny!(fsmount, [CAP_SYS_ADMIN]),
        deny!(fspick, [CAP_SYS_ADMIN]),
        deny!(mount_setattr, [CAP_SYS_ADMIN]),
        deny!(sethostname, [CAP_SYS_ADMIN]),
        deny!(setdomainname, [CAP_SYS_ADMIN]),
        deny!(quotactl, [CAP_SYS_ADMIN]),
        deny!(quotactl_fd, [CAP_SYS_ADMIN]),
        deny!(lookup_dcookie, [CAP_SYS_ADMIN]),
        deny!(fanotify_init, [CAP_SYS_ADMIN]),
        deny!(swapon),
        deny!(swapoff),
        // Kernel modules, kexec, reboot.
        deny!(init_module, [CAP_SYS_MODULE]),
        deny!(finit_module, [CAP_SYS_MODULE]),
        deny!(delete_module, [CAP_SYS_MODULE]),
        deny!(kexec_load),
        deny!(kexec_file_load),
        deny!(reboot, [CAP_SYS_BOOT]),
        // Clocks.
        deny!(settimeofday, [CAP_SYS_TIME]),
        deny!(clock_settime, [CAP_SYS_TIME]),
        deny!(clock_adjtime, [CAP_SYS_TIME]),
        deny!(adjtimex, [CAP_SYS_TIME]),
        // Keyrings (not namespaced).
        deny!(keyctl),
        deny!(add_key),
        deny!(request_key),
        // Kernel introspection and attack surface.
        deny!(bpf, [CAP_SYS_ADMIN, CAP_BPF]),
        deny!(perf_event_open, [CAP_SYS_ADMIN, CAP_PERFMON]),
        deny!(userfaultfd),
        deny!(open_by_handle_at, [CAP_DAC_READ_SEARCH]),
        deny!(syslog, [CAP_SYS_ADMIN, CAP_SYSLOG]),
        deny!(acct, [CAP_SYS_PACCT]),
        deny!(vhangup, [CAP_SYS_TTY_CONFIG]),
        deny!(nfsservctl),
        deny!(io_uring_setup),
        deny!(io_uring_enter),
        deny!(io_uring_register),
        // Other processes.
        deny!(ptrace, [CAP_SYS_PTRACE]),
        deny!(process_vm_readv, [CAP_SYS_PTRACE]),
        deny!(process_vm_writev, [CAP_SYS_PTRACE]),
        deny!(process_madvise, [CAP_SYS_PTRACE]),
        deny!(kcmp, [CAP_SYS_PTRACE]),
        deny!(pidfd_getfd, [CAP_SYS_PTRACE]),
        // NUMA policy.
        deny!(get_mempolicy, [CAP_SYS_NICE]),
        deny!(set_mempolicy, [CAP_SYS_NICE]),
        deny!(set_mempolicy_home_node, [CAP_SYS_NICE]),
        deny!(mbind, [CAP_SYS_NICE]),
        deny!(move_pages, [CAP_SYS_NICE]),
        deny!(personality, ArgMatch::Personality, []),
    ];
    #[cfg(target_arch = "x86_64")]
    rules.extend([
        deny!(iopl, [CAP_SYS_RAWIO]),
        deny!(ioperm, [CAP_SYS_RAWIO]),
        deny!(modify_ldt),
        deny!(_sysctl),
        deny!(sysfs),
        deny!(uselib),
        deny!(ustat),
        deny!(create_module),
        deny!(get_kernel_syms),
        deny!(query_module),
    ]);
    rules
}

/// The rules that apply to a container with capability set `caps`; with `guard_devices` (no
/// device cgroup) mknod of device nodes is denied too.
pub fn active_rules(caps: u64, guard_devices: bool) -> Vec<SyscallRule> {
    let mut rules: Vec<SyscallRule> = syscall_rules()
        .into_iter()
        .filter(|r| !r.unless.iter().any(|c| caps & c.bitmask() != 0))
        .collect();
    if guard_devices {
        rules.push(deny!(mknodat, ArgMatch::DeviceNode(2), []));
        #[cfg(target_arch = "x86_64")]
        rules.push(deny!(mknod, ArgMatch::DeviceNode(1), []));
    }
    rules
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

fn target_arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("seccomp: unsupported architecture: {e:?}"))
}

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, len, op, value).map_err(|e| format!("seccomp condition: {e}"))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conds).map_err(|e| format!("seccomp rule: {e}"))
}

/// The BPF programs to install (all of them), for a container with capability set `caps`.
pub fn seccomp_programs(caps: u64, guard_devices: bool) -> Result<Vec<BpfProgram>, String> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for r in active_rules(caps, guard_devices) {
        let chain = match r.arg {
            ArgMatch::Always => Vec::new(),
            ArgMatch::NamespaceFlags => CLONE_NAMESPACE_FLAGS
                .iter()
                .map(|&f| {
                    rule(vec![cond(
                        0,
                        SeccompCmpArgLen::Qword,
                        SeccompCmpOp::MaskedEq(f),
                        f,
                    )?])
                })
                .collect::<Result<_, _>>()?,
            ArgMatch::Personality => vec![rule(
                PERSONALITY_ALLOWED
                    .iter()
                    .map(|&v| cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, v))
                    .collect::<Result<_, _>>()?,
            )?],
            ArgMatch::DeviceNode(arg) => [libc::S_IFBLK, libc::S_IFCHR]
                .iter()
                .map(|&kind| {
                    rule(vec![cond(
                        arg,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::MaskedEq(u64::from(libc::S_IFMT)),
                        u64::from(kind),
                    )?])
                })
                .collect::<Result<_, _>>()?,
        };
        map.insert(r.nr, chain);
    }
    let filter = SeccompFilter::new(
        map,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target_arch()?,
    )
    .map_err(|e| format!("seccomp filter: {e}"))?;
    let main: BpfProgram = filter
        .try_into()
        .map_err(|e| format!("seccomp filter: {e}"))?;
    let clone3_allowed = caps & Capability::CAP_SYS_ADMIN.bitmask() != 0;
    Ok(vec![main, prefix_program(clone3_allowed)])
}

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The small hand-written filter next to the table: x32 syscalls (x86_64 numbers with bit 30)
/// → EPERM; clone3 → ENOSYS (unless allowed). Foreign architectures are left to the main filter.
fn prefix_program(clone3_allowed: bool) -> BpfProgram {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    // Layout: 0 ld arch; 1 jeq native ?:→allow; 2 ld nr; 3 jge x32 → eperm; 4 jeq clone3 →
    // enosys; 5 allow; 6 eperm; 7 enosys.
    let x32_bit: u32 = if cfg!(target_arch = "x86_64") {
        0x4000_0000
    } else {
        u32::MAX
    };
    let clone3 = if clone3_allowed {
        u32::MAX
    } else {
        nr::clone3 as u32
    };
    vec![
        stmt(LD_W_ABS, 4),
        jump(JEQ_K, AUDIT_ARCH, 0, 3),
        stmt(LD_W_ABS, 0),
        jump(JGE_K, x32_bit, 2, 0),
        jump(JEQ_K, clone3, 2, 0),
        stmt(RET_K, SECCOMP_RET_ALLOW),
        stmt(RET_K, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(RET_K, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ]
}

/// Installs the programs (seccomp(SECCOMP_SET_MODE_FILTER)). Needs no_new_privs or
/// CAP_SYS_ADMIN.
pub(crate) fn install_seccomp(programs: &[BpfProgram]) -> Result<(), Errno> {
    for p in programs {
        let len = u16::try_from(p.len()).map_err(|_| Errno::E2BIG)?;
        let prog = libc::sock_fprog {
            len,
            // seccompiler's sock_filter is repr(C) with the kernel's layout.
            filter: p.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the kernel copies the program; `p` outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                &prog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Paths and devices

/// Hidden from the container (Docker's list, plus /proc/interrupts): files get /dev/null bound
/// over them, directories an empty read-only tmpfs. Missing paths are skipped.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Bound read-only (Docker's list).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Docker's default device cgroup allow-list (written after `devices.deny a`).
pub const DEFAULT_DEVICE_RULES: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

// ---------------------------------------------------------------------------------------------
// sysctls

/// Whether `name` (`kernel.shmmax` or `kernel/shmmax`) is a namespaced sysctl a container may
/// set, Docker's rules: IPC (`kernel.msg*`, `kernel.sem`, `kernel.shm*`, `fs.mqueue.*`) always,
/// `net.*` only with a network namespace of its own. Returns the path under /proc/sys.
pub fn sysctl_path(name: &str, own_netns: bool) -> Result<String, String> {
    let dotted = name.replace('/', ".");
    let ok_chars = !dotted.is_empty()
        && dotted
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !dotted.split('.').any(|p| p.is_empty());
    if !ok_chars {
        return Err(format!("invalid sysctl name {name:?}"));
    }
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ]
    .contains(&dotted.as_str())
        || dotted.starts_with("fs.mqueue.");
    if ipc {
        return Ok(dotted.replace('.', "/"));
    }
    if dotted.starts_with("net.") {
        if !own_netns {
            return Err(format!(
                "sysctl {name:?} is not allowed with the host network (it would change the host)"
            ));
        }
        return Ok(dotted.replace('.', "/"));
    }
    Err(format!(
        "sysctl {name:?} is not allowed in a container: only namespaced sysctls (kernel.msg*, \
         kernel.sem, kernel.shm*, fs.mqueue.*, net.*) can be set"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn capability_names_parse_loosely_and_reject_unknown() {
        assert_eq!(
            parse_capability("net_admin"),
            Ok(Some(Capability::CAP_NET_ADMIN))
        );
        assert_eq!(
            parse_capability("CAP_SYS_PTRACE"),
            Ok(Some(Capability::CAP_SYS_PTRACE))
        );
        assert_eq!(
            parse_capability("Cap_Chown"),
            Ok(Some(Capability::CAP_CHOWN))
        );
        assert_eq!(parse_capability("all"), Ok(None));
        let err = parse_capability("NET_ADMINN").expect_err("unknown");
        assert!(err.contains("NET_ADMINN"), "{err}");
    }

    #[test]
    fn docker_default_set_and_tweaks() {
        let default = capability_mask(&[], &[], false).expect("default");
        assert_eq!(default.count_ones(), 14);
        assert_eq!(
            capability_names(default),
            [
                "CAP_CHOWN",
                "CAP_DAC_OVERRIDE",
                "CAP_FOWNER",
                "CAP_FSETID",
                "CAP_KILL",
                "CAP_SETGID",
                "CAP_SETUID",
                "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE",
                "CAP_NET_RAW",
                "CAP_SYS_CHROOT",
                "CAP_MKNOD",
                "CAP_AUDIT_WRITE",
                "CAP_SETFCAP"
            ]
        );
        // Docker's well-known mask for the default set.
        assert_eq!(default, 0xa8_0425fb);

        let m = capability_mask(
            &names(&["sys_ptrace"]),
            &names(&["NET_RAW", "cap_mknod"]),
            false,
        )
        .expect("tweak");
        assert_ne!(m & Capability::CAP_SYS_PTRACE.bitmask(), 0);
        assert_eq!(m & Capability::CAP_NET_RAW.bitmask(), 0);
        assert_eq!(m & Capability::CAP_MKNOD.bitmask(), 0);
        assert_eq!(m.count_ones(), 13);

        let only = capability_mask(&names(&["NET_BIND_SERVICE"]), &names(&["ALL"]), false)
            .expect("drop all");
        assert_eq!(only, Capability::CAP_NET_BIND_SERVICE.bitmask());
        assert_eq!(capability_mask(&[], &names(&["all"]), false), Ok(0));

        let all_but =
            capability_mask(&names(&["ALL"]), &names(&["SYS_ADMIN"]), false).expect("add all");
        assert_eq!(
            all_but,
            all_capabilities() & !Capability::CAP_SYS_ADMIN.bitmask()
        );

        assert_eq!(
            capability_mask(&[], &names(&["ALL"]), true),
            Ok(all_capabilities())
        );
        let err =
            capability_mask(&names(&["BOGUS"]), &[], true).expect_err("unknown even privileged");
        assert!(err.contains("BOGUS"));
        assert!(capability_mask(&[], &names(&["nope"]), false).is_err());
    }

    #[test]
    fn sets_follow_docker_for_root_and_others() {
        let m = capability_mask(&[], &[], false).expect("default");
        assert_eq!(
            cap_sets(m, 0),
            CapSets {
                bounding: m,
                effective: m,
                permitted: m,
                inheritable: 0,
                ambient: 0
            }
        );
        assert_eq!(
            cap_sets(m, 1000),
            CapSets {
                bounding: m,
                effective: 0,
                permitted: 0,
                inheritable: 0,
                ambient: 0
            }
        );
    }

    #[test]
    fn rule_table_covers_the_escapes_and_honours_capabilities() {
        let default = capability_mask(&[], &[], false).expect("default");
        let denied: Vec<&str> = active_rules(default, false)
            .iter()
            .map(|r| r.name)
            .collect();
        for must in [
            "unshare",
            "setns",
            "clone",
            "mount",
            "umount2",
            "pivot_root",
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "kexec_file_load",
            "reboot",
            "swapon",
            "swapoff",
            "clock_settime",
            "clock_adjtime",
            "settimeofday",
            "adjtimex",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "open_by_handle_at",
            "ptrace",
            "personality",
            "acct",
            "quotactl",
            "lookup_dcookie",
            "syslog",
            "fsopen",
            "open_tree",
            "move_mount",
            "mount_setattr",
        ] {
            assert!(denied.contains(&must), "{must} should be denied by default");
        }
        #[cfg(target_arch = "x86_64")]
        for must in ["iopl", "ioperm"] {
            assert!(denied.contains(&must), "{must}");
        }
        assert!(!denied.contains(&"mknodat"), "no device guard unless asked");

        let with = |cap: Capability| {
            active_rules(default | cap.bitmask(), false)
                .iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
        };
        assert!(!with(Capability::CAP_SYS_PTRACE).contains(&"ptrace"));
        assert!(!with(Capability::CAP_SYS_TIME).contains(&"clock_settime"));
        let admin = with(Capability::CAP_SYS_ADMIN);
        assert!(!admin.contains(&"mount") && !admin.contains(&"unshare"));
        // Never lifted by a capability.
        for cap_all in [all_capabilities()] {
            let d: Vec<&str> = active_rules(cap_all, false)
                .iter()
                .map(|r| r.name)
                .collect();
            for must in [
                "keyctl",
                "kexec_load",
                "userfaultfd",
                "swapon",
                "personality",
            ] {
                assert!(
                    d.contains(&must),
                    "{must} stays denied with every capability"
                );
            }
        }
        let guarded: Vec<&str> = active_rules(default, true).iter().map(|r| r.name).collect();
        assert!(guarded.contains(&"mknodat"));
        // Unique syscall numbers.
        let mut nrs: Vec<i64> = syscall_rules().iter().map(|r| r.nr).collect();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(nrs.len(), syscall_rules().len());
    }

    /// A classic-BPF interpreter for the instructions the filters use, over a `seccomp_data`.
    fn eval(prog: &[sock_filter], nr: i64, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&(nr as i32).to_le_bytes());
        data.extend_from_slice(&arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        for a in args {
            data.extend_from_slice(&a.to_le_bytes());
        }
        let word = |off: u32| {
            let o = off as usize;
            u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]])
        };
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
            let jump = |cond: bool| if cond { i.jt as usize } else { i.jf as usize };
            match i.code {
                0x20 => acc = word(i.k),            // ld [k]
                0x54 => acc &= i.k,                 // and #k
                0x05 => pc += i.k as usize,         // ja
                0x15 => pc += jump(acc == i.k),     // jeq
                0x25 => pc += jump(acc > i.k),      // jgt
                0x35 => pc += jump(acc >= i.k),     // jge
                0x45 => pc += jump(acc & i.k != 0), // jset
                0x06 => return i.k,                 // ret #k
                other => panic!("unexpected BPF opcode {other:#x}"),
            }
        }
    }

    /// The kernel's verdict over several filters: the highest-precedence action wins.
    fn verdict(progs: &[BpfProgram], nr: i64, args: [u64; 6]) -> u32 {
        verdict_arch(progs, nr, AUDIT_ARCH, args)
    }

    fn verdict_arch(progs: &[BpfProgram], nr: i64, arch: u32, args: [u64; 6]) -> u32 {
        progs
            .iter()
            .map(|p| eval(p, nr, arch, args))
            .min_by_key(|r| (r & 0xffff_0000) as i32)
            .expect("programs")
    }

    #[test]
    fn filters_decide_like_docker() {
        let eperm = SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let enosys = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let default = capability_mask(&[], &[], false).expect("default");
        let progs = seccomp_programs(default, false).expect("compiles");
        let no = [0u64; 6];
        let with0 = |a: u64| [a, 0, 0, 0, 0, 0];
        assert_eq!(verdict(&progs, libc::SYS_getpid, no), SECCOMP_RET_ALLOW);
        assert_eq!(verdict(&progs, libc::SYS_mount, no), eperm);
        assert_eq!(verdict(&progs, libc::SYS_unshare, with0(0)), eperm);
        assert_eq!(verdict(&progs, libc::SYS_keyctl, no), eperm);
        assert_eq!(verdict(&progs, libc::SYS_ptrace, no), eperm);
        assert_eq!(verdict(&progs, libc::SYS_clone3, no), enosys);
        // clone: plain fork and threads pass, any namespace flag is refused.
        let fork_flags =
            (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
        let thread_flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(
            verdict(&progs, libc::SYS_clone, with0(fork_flags)),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            verdict(&progs, libc::SYS_clone, with0(thread_flags)),
            SECCOMP_RET_ALLOW
        );
        for &ns in CLONE_NAMESPACE_FLAGS {
            assert_eq!(
                verdict(&progs, libc::SYS_clone, with0(fork_flags | ns)),
                eperm,
                "{ns:#x}"
            );
        }
        // personality: Docker's values only (a 32-bit compare: high bits are ignored).
        for &ok in PERSONALITY_ALLOWED {
            assert_eq!(
                verdict(&progs, libc::SYS_personality, with0(ok)),
                SECCOMP_RET_ALLOW
            );
        }
        assert_eq!(
            verdict(&progs, libc::SYS_personality, with0(0x0400000)),
            eperm
        );
        // mknod of devices only with the guard.
        let blk = [
            libc::AT_FDCWD as u64,
            0,
            u64::from(libc::S_IFBLK | 0o600),
            0,
            0,
            0,
        ];
        let fifo = [
            libc::AT_FDCWD as u64,
            0,
            u64::from(libc::S_IFIFO | 0o600),
            0,
            0,
            0,
        ];
        assert_eq!(verdict(&progs, libc::SYS_mknodat, blk), SECCOMP_RET_ALLOW);
        let guarded = seccomp_programs(default, true).expect("compiles");
        assert_eq!(verdict(&guarded, libc::SYS_mknodat, blk), eperm);
        assert_eq!(
            verdict(&guarded, libc::SYS_mknodat, fifo),
            SECCOMP_RET_ALLOW
        );
        // Capabilities lift their syscalls; SYS_ADMIN also clone3 and namespaces.
        let ptrace = seccomp_programs(default | Capability::CAP_SYS_PTRACE.bitmask(), false)
            .expect("compiles");
        assert_eq!(verdict(&ptrace, libc::SYS_ptrace, no), SECCOMP_RET_ALLOW);
        let admin = seccomp_programs(default | Capability::CAP_SYS_ADMIN.bitmask(), false)
            .expect("compiles");
        assert_eq!(verdict(&admin, libc::SYS_clone3, no), SECCOMP_RET_ALLOW);
        assert_eq!(verdict(&admin, libc::SYS_mount, no), SECCOMP_RET_ALLOW);
        assert_eq!(verdict(&admin, libc::SYS_keyctl, no), eperm);
        // Another architecture's syscalls kill the process; x32 numbers are refused.
        let kill = verdict_arch(&progs, libc::SYS_getpid, 0x4000_0003, no);
        assert_eq!(kill, libc::SECCOMP_RET_KILL_PROCESS);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(verdict(&progs, 0x4000_0000 | libc::SYS_getpid, no), eperm);
    }

    #[test]
    fn filters_compile_for_every_kind_of_container() {
        let default = capability_mask(&[], &[], false).expect("default");
        for (caps, guard) in [
            (default, false),
            (default, true),
            (all_capabilities(), false),
            (0, true),
        ] {
            let progs = seccomp_programs(caps, guard).expect("compiles");
            assert_eq!(progs.len(), 2);
            assert!(progs.iter().all(|p| !p.is_empty() && p.len() < 4096));
        }
        let prefix = prefix_program(false);
        assert_eq!(prefix[4].k, nr::clone3 as u32);
        assert_eq!(prefix_program(true)[4].k, u32::MAX);
    }

    #[test]
    fn sysctls_are_classified_like_docker() {
        assert_eq!(
            sysctl_path("kernel.shmmax", true),
            Ok("kernel/shmmax".into())
        );
        assert_eq!(
            sysctl_path("kernel/msgmax", false),
            Ok("kernel/msgmax".into())
        );
        assert_eq!(
            sysctl_path("fs.mqueue.msg_max", false),
            Ok("fs/mqueue/msg_max".into())
        );
        assert_eq!(
            sysctl_path("net.ipv4.ip_unprivileged_port_start", true),
            Ok("net/ipv4/ip_unprivileged_port_start".into())
        );
        let host = sysctl_path("net.ipv4.ip_forward", false).expect_err("host network");
        assert!(host.contains("host network"), "{host}");
        for bad in [
            "kernel.hostname",
            "vm.swappiness",
            "kernel.panic",
            "fs.file-max",
        ] {
            let e = sysctl_path(bad, true).expect_err(bad);
            assert!(e.contains("namespaced"), "{e}");
        }
        for bad in ["", "net..x", "net.ipv4/../../x y", "kernel.shm max"] {
            assert!(sysctl_path(bad, true).is_err(), "{bad}");
        }
        // "../" cannot sneak through.
        assert!(sysctl_path("net/../../etc", true).is_err());
    }
}
