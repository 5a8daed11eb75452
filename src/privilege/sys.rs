//! The one place with `unsafe` for process start and thread set-up:
//! installing a seccomp BPF filter and switching a thread to real-time
//! scheduling (no safe wrapper in nix or std covers either); and reading
//! the kernel clock's discipline (`adjtimex` with no modes: a read, which
//! `voxgate check` uses).
#![allow(unsafe_code)]

use std::io;

/// A classic-BPF instruction as the kernel reads it.
pub type Insn = libc::sock_filter;

/// Install `prog` as a seccomp filter on every thread of the process
/// (TSYNC). no_new_privs must already be set.
pub fn install_filter(prog: &[Insn]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "filter too long"))?,
        filter: prog.as_ptr() as *mut Insn,
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel
    // copies the program and keeps no reference to our memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `SCHED_RESET_ON_FORK` (linux/sched.h): children do not inherit the policy.
const SCHED_RESET_ON_FORK: libc::c_int = 0x4000_0000;

/// The kernel's `struct sched_param` (uapi linux/sched/types.h). musl's
/// libc type has extra fields, glibc's does not; the syscall reads only this.
#[repr(C)]
struct KernelSchedParam {
    sched_priority: libc::c_int,
}

/// Switch the calling thread (not the process) to `SCHED_FIFO` at
/// `priority`. The raw syscall is used because musl's `sched_setscheduler`
/// is a stub that returns ENOSYS.
pub fn set_fifo_current_thread(priority: i32) -> io::Result<()> {
    let param = KernelSchedParam {
        sched_priority: priority,
    };
    // SAFETY: `param` has the kernel's `struct sched_param` layout and
    // outlives the call; pid 0 is the calling thread; the kernel only reads
    // the struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            libc::SCHED_FIFO | SCHED_RESET_ON_FORK,
            &param as *const KernelSchedParam,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The soft `RLIMIT_RTPRIO`: the highest real-time priority an unprivileged
/// thread may ask for.
pub fn rtprio_limit() -> io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit` that outlives the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &mut lim) };
    if rc == 0 {
        Ok(lim.rlim_cur)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The kernel clock's discipline, read with `adjtimex(2)` (modes 0: nothing
/// is changed): the clock state it returns (`TIME_OK` .. `TIME_ERROR`),
/// the status word (`STA_UNSYNC`, ...) and the maximum error in
/// microseconds.
pub fn adjtimex_read() -> io::Result<(i32, i32, i64)> {
    // SAFETY: all-zero bytes are a valid `timex` (integers only), and
    // modes 0 asks the kernel to change nothing.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = 0;
    // SAFETY: `tx` is a valid, writable `timex` that outlives the call.
    let rc = unsafe { libc::adjtimex(&mut tx) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((rc, tx.status, tx.maxerror as i64))
}
