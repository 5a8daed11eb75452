//! The one place with `unsafe` for the sandbox: installing a seccomp BPF
//! filter (no safe wrapper in nix or std covers it).
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
