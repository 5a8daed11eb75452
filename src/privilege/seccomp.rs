//! The seccomp allow-list of the daemons.
//!
//! Syscall numbers come from `libc::SYS_*` for the target being built, so the
//! same list compiles for x86_64, aarch64 and armv7. Anything not listed fails
//! with EPERM rather than killing the process: a library that tries
//! something unexpected gets an error it can report, and the box does not
//! crash-loop, while the call itself is still refused. A foreign syscall ABI
//! (e.g. x32 or 32-bit calls on x86_64) kills the process.

use super::sys::{self, Insn};
use std::io;

// BPF opcodes (linux/filter.h).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;

// struct seccomp_data offsets.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(target_arch = "arm")]
const AUDIT_ARCH: u32 = 0x4000_0028;

/// 32-bit arm (EABI) syscall numbers the `libc` crate does not define for
/// musl: the time64 family every 32-bit libc now uses (asm-generic numbers,
/// linux/arch/arm/tools/syscall.tbl), rseq, and the ARM-private set_tls
/// (`__ARM_NR_BASE` 0x0f0000 + 5).
#[cfg(target_arch = "arm")]
mod arm {
    use libc::c_long;
    pub const RSEQ: c_long = 398;
    pub const CLOCK_GETTIME64: c_long = 403;
    pub const CLOCK_GETRES_TIME64: c_long = 406;
    pub const CLOCK_NANOSLEEP_TIME64: c_long = 407;
    pub const TIMERFD_GETTIME64: c_long = 410;
    pub const TIMERFD_SETTIME64: c_long = 411;
    pub const PSELECT6_TIME64: c_long = 413;
    pub const PPOLL_TIME64: c_long = 414;
    pub const RECVMMSG_TIME64: c_long = 417;
    pub const FUTEX_TIME64: c_long = 422;
    pub const SET_TLS: c_long = 0x0f_0005;
}

/// Syscalls the gateway and relay use after the sandbox is applied: memory,
/// threads and futexes, time, files (state dir, ALSA config and plugins),
/// sockets (QUIC over UDP, metrics over TCP, the PulseAudio or systemd
/// unix sockets), polling, and ALSA's ioctls.
fn allowed() -> Vec<libc::c_long> {
    use libc::*;
    let mut v = vec![
        SYS_read,
        SYS_write,
        SYS_readv,
        SYS_writev,
        SYS_pread64,
        SYS_pwrite64,
        SYS_close,
        SYS_openat,
        SYS_lseek,
        SYS_fstat,
        SYS_statx,
        SYS_fcntl,
        SYS_dup,
        SYS_dup3,
        SYS_ioctl,
        SYS_getdents64,
        SYS_readlinkat,
        SYS_faccessat,
        SYS_faccessat2,
        SYS_mkdirat,
        SYS_unlinkat,
        // rename(2) on aarch64 and arm (glibc and musl): certificate renewal.
        SYS_renameat,
        SYS_renameat2,
        SYS_ftruncate,
        SYS_fsync,
        SYS_fdatasync,
        SYS_fstatfs,
        SYS_statfs,
        SYS_getcwd,
        SYS_memfd_create,
        SYS_munmap,
        SYS_mprotect,
        SYS_madvise,
        SYS_mremap,
        SYS_brk,
        SYS_rt_sigaction,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_sigaltstack,
        SYS_futex,
        SYS_clone,
        SYS_clone3,
        SYS_set_robust_list,
        SYS_exit,
        SYS_exit_group,
        SYS_sched_yield,
        SYS_sched_getaffinity,
        SYS_sched_setscheduler,
        SYS_sched_getparam,
        SYS_sched_getscheduler,
        SYS_nanosleep,
        SYS_clock_nanosleep,
        SYS_clock_gettime,
        SYS_clock_getres,
        SYS_gettimeofday,
        SYS_getrandom,
        SYS_getpid,
        SYS_gettid,
        SYS_getppid,
        SYS_getuid,
        SYS_geteuid,
        SYS_getgid,
        SYS_getegid,
        SYS_getresuid,
        SYS_getresgid,
        SYS_getgroups,
        SYS_setuid,
        SYS_setgid,
        SYS_prctl,
        SYS_tgkill,
        SYS_uname,
        SYS_sysinfo,
        SYS_prlimit64,
        SYS_getrusage,
        SYS_socket,
        SYS_socketpair,
        SYS_connect,
        SYS_bind,
        SYS_listen,
        SYS_accept4,
        SYS_getsockname,
        SYS_getpeername,
        SYS_sendto,
        SYS_recvfrom,
        SYS_sendmsg,
        SYS_recvmsg,
        SYS_sendmmsg,
        SYS_recvmmsg,
        SYS_setsockopt,
        SYS_getsockopt,
        SYS_shutdown,
        SYS_ppoll,
        SYS_pselect6,
        SYS_epoll_create1,
        SYS_epoll_ctl,
        SYS_epoll_pwait,
        SYS_eventfd2,
        SYS_pipe2,
        SYS_timerfd_create,
        SYS_timerfd_settime,
        SYS_timerfd_gettime,
        SYS_restart_syscall,
        SYS_membarrier,
        SYS_wait4,
        SYS_kill,
    ];
    // 64-bit only: 32-bit arm has fstatat64 and mmap2 instead.
    #[cfg(not(target_arch = "arm"))]
    v.extend([SYS_newfstatat, SYS_mmap, SYS_rseq]);
    #[cfg(target_arch = "x86_64")]
    v.extend([
        SYS_open,
        SYS_stat,
        SYS_lstat,
        SYS_access,
        SYS_poll,
        SYS_select,
        SYS_epoll_wait,
        SYS_epoll_create,
        SYS_pipe,
        SYS_readlink,
        SYS_mkdir,
        SYS_unlink,
        SYS_rename,
        SYS_arch_prctl,
        SYS_getdents,
        SYS_time,
        SYS_eventfd,
        SYS_dup2,
    ]);
    #[cfg(target_arch = "arm")]
    v.extend([
        SYS_open,
        SYS_stat64,
        SYS_fstat64,
        SYS_lstat64,
        SYS_fstatat64,
        SYS_access,
        SYS_poll,
        SYS_epoll_wait,
        SYS_pipe,
        SYS_readlink,
        SYS_mmap2,
        SYS__llseek,
        SYS_fcntl64,
        arm::RSEQ,
        arm::CLOCK_GETRES_TIME64,
        arm::CLOCK_GETTIME64,
        arm::CLOCK_NANOSLEEP_TIME64,
        arm::FUTEX_TIME64,
        arm::PPOLL_TIME64,
        arm::RECVMMSG_TIME64,
        arm::SET_TLS,
        SYS_ugetrlimit,
        SYS_getuid32,
        SYS_geteuid32,
        SYS_getgid32,
        SYS_getegid32,
        SYS_getresuid32,
        SYS_getresgid32,
        SYS_setuid32,
        SYS_sigreturn,
        SYS_send,
        SYS_recv,
        SYS_dup2,
        SYS_statfs64,
        SYS_fstatfs64,
        SYS_ftruncate64,
        arm::TIMERFD_SETTIME64,
        arm::TIMERFD_GETTIME64,
        arm::PSELECT6_TIME64,
    ]);
    v
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

/// Build the filter program.
pub fn program() -> Vec<Insn> {
    let nrs = allowed();
    let mut p = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, OFF_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        // x32 syscalls share the arch value: refuse them by number.
        p.push(jump(0x35 /* JGE_K */, 0x4000_0000, 0, 1));
        p.push(stmt(RET_K, SECCOMP_RET_KILL_PROCESS));
    }
    // One compare per syscall: match jumps to the ALLOW at the end.
    let n = nrs.len();
    for (i, nr) in nrs.iter().enumerate() {
        let to_allow = (n - i) as u8; // skip the remaining compares and the deny
        p.push(jump(JEQ_K, *nr as u32, to_allow, 0));
    }
    p.push(stmt(RET_K, SECCOMP_RET_ERRNO | (libc::EPERM as u32)));
    p.push(stmt(RET_K, SECCOMP_RET_ALLOW));
    p
}

/// Install the allow-list on every thread.
pub fn apply() -> io::Result<usize> {
    let p = program();
    sys::install_filter(&p)?;
    Ok(allowed().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_allow() {
        let p = program();
        let n = allowed().len();
        assert!(n < 250, "jump offsets are u8");
        let allow_at = p.len() - 1;
        for (i, insn) in p.iter().enumerate().skip(p.len() - 2 - n).take(n) {
            assert_eq!(i + 1 + insn.jt as usize, allow_at, "insn {i}");
        }
        assert_eq!(p[allow_at].k, SECCOMP_RET_ALLOW);
    }
}
