//! The seccomp allow-list of the daemons.
//!
//! The allowed syscalls and their numbers for x86_64, aarch64 and armv7 are
//! in one table (`table.rs`); [`program_for`] builds the filter of any of the
//! three, so a unit test can run the aarch64 and arm filters, which
//! qemu-user cannot (`tests.rs` interprets the BPF over `seccomp_data`).
//!
//! What the filter guarantees, on every architecture:
//!
//! - a syscall not in the table fails with EPERM rather than killing the
//!   process: a library that tries something unexpected gets an error it
//!   can report, and the box does not crash-loop, while the call itself is
//!   still refused;
//! - `clone` with any `CLONE_NEW*` flag fails with EPERM (threads and plain
//!   forks still work); `unshare` and `setns` are not in the table;
//! - `clone3` fails with ENOSYS, so glibc and musl fall back to `clone`,
//!   whose flags the filter can read (clone3 passes them in memory);
//! - `socket` opens only AF_UNIX (sd_notify, PulseAudio), AF_INET and
//!   AF_INET6 (QUIC, SIP, metrics, DNS); any other family fails with
//!   EAFNOSUPPORT, as under the units' `RestrictAddressFamilies=`. glibc's
//!   resolver tries a netlink socket to sort answers and, refused, assumes
//!   both IPv4 and IPv6;
//! - `socketpair` only makes AF_UNIX pairs;
//! - `ioctl` refuses TIOCSTI and TIOCLINUX (EPERM): a daemon started from
//!   a root shell keeps that terminal open, and TIOCSTI would type commands
//!   into it; every other request (ALSA's, the sockets') passes;
//! - `prctl` allows only naming threads (`PR_SET_NAME`, `PR_GET_NAME`,
//!   what std, tokio and the audio threads do after the drop) and reading
//!   the dumpable flag; anything else, such as making the process dumpable
//!   again, fails with EPERM;
//! - a foreign syscall ABI (x32, or 32-bit calls on x86_64) kills the process.
//!
//! Only the low 32 bits of an argument are compared: the kernel reads
//! these arguments as `int` (or, for `clone`, their low 32 bits), so the
//! high half cannot smuggle a flag past the filter.

mod table;

#[cfg(test)]
mod libc_check;
#[cfg(test)]
mod tests;

use super::sys::{self, Insn};
use std::io;

// BPF opcodes (linux/filter.h).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;

// struct seccomp_data offsets; the low word of args[i] (little-endian, as
// all three targets are).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_low(i: u32) -> u32 {
    16 + 8 * i
}

/// Every `CLONE_NEW*` flag `clone` accepts (linux/sched.h): NEWNS,
/// NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET. CLONE_NEWTIME
/// (0x80) only exists for `clone3` and `unshare`; in `clone` that bit is
/// part of the exit signal.
pub const CLONE_NEW_MASK: u32 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

/// The socket families the daemons open.
pub const SOCKET_FAMILIES: [u32; 3] = [
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
];

/// The `prctl` options allowed after the drop: PR_GET_DUMPABLE (3),
/// PR_SET_NAME (15), PR_GET_NAME (16).
pub const PRCTL_OPTIONS: [u32; 3] = [3, 15, 16];

/// `ioctl` requests refused: TIOCSTI (0x5412) pushes input into a
/// terminal, TIOCLINUX (0x541C) reaches the console's selection; a daemon
/// started from a root shell still holds that shell's terminal. The same
/// numbers on all three architectures (asm-generic).
pub const IOCTL_REFUSED: [u32; 2] = [0x5412, 0x541c];

/// An architecture the filter is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86_64 (AUDIT_ARCH_X86_64).
    X86_64,
    /// aarch64 (AUDIT_ARCH_AARCH64).
    Aarch64,
    /// 32-bit arm EABI (AUDIT_ARCH_ARM).
    Arm,
}

impl Arch {
    /// The architecture being built.
    #[cfg(target_arch = "x86_64")]
    pub const NATIVE: Arch = Arch::X86_64;
    /// The architecture being built.
    #[cfg(target_arch = "aarch64")]
    pub const NATIVE: Arch = Arch::Aarch64;
    /// The architecture being built.
    #[cfg(target_arch = "arm")]
    pub const NATIVE: Arch = Arch::Arm;

    /// `seccomp_data.arch` for this architecture (linux/audit.h).
    pub const fn audit(self) -> u32 {
        match self {
            Arch::X86_64 => 0xc000_003e,
            Arch::Aarch64 => 0xc000_00b7,
            Arch::Arm => 0x4000_0028,
        }
    }

    const fn column(self) -> usize {
        match self {
            Arch::X86_64 => 0,
            Arch::Aarch64 => 1,
            Arch::Arm => 2,
        }
    }

    /// The number of the allowed syscall `name` here, if it has one.
    pub fn nr(self, name: &str) -> Option<u32> {
        table::SYSCALLS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, nrs)| nrs[self.column()])
            .filter(|nr| *nr != table::NONE)
    }

    /// The allowed syscalls of this architecture, name and number.
    pub fn allowed(self) -> impl Iterator<Item = (&'static str, u32)> {
        table::SYSCALLS
            .iter()
            .map(move |(n, nrs)| (*n, nrs[self.column()]))
            .filter(|(_, nr)| *nr != table::NONE)
    }
}

fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

fn ret_errno(errno: i32) -> Insn {
    stmt(RET_K, SECCOMP_RET_ERRNO | errno as u32)
}

/// A forward jump of `n` instructions; the filter is laid out so that every
/// jump is shorter than 256, which the tests check for every architecture.
fn offset(n: usize) -> u8 {
    u8::try_from(n).expect("seccomp jump longer than 255 instructions")
}

/// Return `errno` when the low word of argument `arg` is one of `values`,
/// else allow.
fn arg_none_of(arg: u32, values: &[u32], errno: i32) -> Vec<Insn> {
    let mut b = vec![stmt(LD_W_ABS, off_arg_low(arg))];
    for (i, v) in values.iter().enumerate() {
        b.push(jump(JEQ_K, *v, offset(values.len() - i), 0));
    }
    b.push(stmt(RET_K, SECCOMP_RET_ALLOW));
    b.push(ret_errno(errno));
    b
}

/// Allow when the low word of argument `arg` is one of `values`, else
/// return `errno`.
fn arg_one_of(arg: u32, values: &[u32], errno: i32) -> Vec<Insn> {
    let mut b = vec![stmt(LD_W_ABS, off_arg_low(arg))];
    for (i, v) in values.iter().enumerate() {
        b.push(jump(JEQ_K, *v, offset(values.len() - i), 0));
    }
    b.push(ret_errno(errno));
    b.push(stmt(RET_K, SECCOMP_RET_ALLOW));
    b
}

/// The syscalls whose arguments are checked, each with its own block.
fn checked_blocks() -> Vec<(&'static str, Vec<Insn>)> {
    vec![
        (
            "clone",
            vec![
                stmt(LD_W_ABS, off_arg_low(0)),
                jump(JSET_K, CLONE_NEW_MASK, 0, 1),
                ret_errno(libc::EPERM),
                stmt(RET_K, SECCOMP_RET_ALLOW),
            ],
        ),
        ("clone3", vec![ret_errno(libc::ENOSYS)]),
        (
            "socket",
            arg_one_of(0, &SOCKET_FAMILIES, libc::EAFNOSUPPORT),
        ),
        (
            "socketpair",
            arg_one_of(0, &[libc::AF_UNIX as u32], libc::EAFNOSUPPORT),
        ),
        ("prctl", arg_one_of(0, &PRCTL_OPTIONS, libc::EPERM)),
        ("ioctl", arg_none_of(1, &IOCTL_REFUSED, libc::EPERM)),
    ]
}

/// Build the filter program for `arch`.
pub fn program_for(arch: Arch) -> Vec<Insn> {
    let mut p = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JEQ_K, arch.audit(), 1, 0),
        stmt(RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, OFF_NR),
    ];
    if arch == Arch::X86_64 {
        // x32 syscalls share the arch value: refuse them by number.
        p.push(jump(JGE_K, 0x4000_0000, 0, 1));
        p.push(stmt(RET_K, SECCOMP_RET_KILL_PROCESS));
    }
    let blocks: Vec<(u32, Vec<Insn>)> = checked_blocks()
        .into_iter()
        .filter_map(|(name, b)| arch.nr(name).map(|nr| (nr, b)))
        .collect();
    let checked: Vec<u32> = blocks.iter().map(|(nr, _)| *nr).collect();
    let plain: Vec<u32> = arch
        .allowed()
        .map(|(_, nr)| nr)
        .filter(|nr| !checked.contains(nr))
        .collect();
    // Dispatch: the checked syscalls jump to their blocks, which follow the
    // final ALLOW; the plain ones jump to that ALLOW.
    let dispatch = blocks.len() + plain.len();
    let mut block_at = dispatch + 2; // past the deny and the allow
    for (i, (nr, b)) in blocks.iter().enumerate() {
        p.push(jump(JEQ_K, *nr, offset(block_at - i - 1), 0));
        block_at += b.len();
    }
    for (j, nr) in plain.iter().enumerate() {
        let i = blocks.len() + j;
        p.push(jump(JEQ_K, *nr, offset(dispatch - i), 0));
    }
    p.push(ret_errno(libc::EPERM));
    p.push(stmt(RET_K, SECCOMP_RET_ALLOW));
    for (_, b) in blocks {
        p.extend(b);
    }
    p
}

/// The filter of the architecture being built.
pub fn program() -> Vec<Insn> {
    program_for(Arch::NATIVE)
}

/// Install the allow-list on every thread; returns how many syscalls it
/// allows.
pub fn apply() -> io::Result<usize> {
    sys::install_filter(&program())?;
    Ok(Arch::NATIVE.allowed().count())
}
