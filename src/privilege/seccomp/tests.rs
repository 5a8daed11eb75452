//! The filter of every architecture, run by a small classic-BPF
//! interpreter over `seccomp_data`: qemu-user cannot load a seccomp filter,
//! so this is how the aarch64 and armv7 programs are exercised at all.

use super::*;

/// What the filter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    Errno(i32),
    Kill,
}

/// `struct seccomp_data` as the kernel lays it out (little-endian).
fn seccomp_data(nr: u32, arch: u32, args: [u64; 6]) -> [u8; 64] {
    let mut d = [0u8; 64];
    d[0..4].copy_from_slice(&nr.to_le_bytes());
    d[4..8].copy_from_slice(&arch.to_le_bytes());
    // instruction_pointer at 8..16 stays 0.
    for (i, a) in args.iter().enumerate() {
        d[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    d
}

/// Run `prog` the way the kernel's seccomp runs a classic BPF filter, for
/// the instructions the filter uses; anything else fails the test.
fn run(prog: &[Insn], data: &[u8; 64]) -> Verdict {
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    for _ in 0..=prog.len() {
        let insn = prog
            .get(pc)
            .unwrap_or_else(|| panic!("pc {pc} ran off the end"));
        pc += 1;
        let cond = |taken: bool| if taken { insn.jt } else { insn.jf } as usize;
        match insn.code {
            LD_W_ABS => {
                let k = insn.k as usize;
                assert!(k.is_multiple_of(4) && k + 4 <= 64, "load at {k}");
                acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
            }
            JEQ_K => pc += cond(acc == insn.k),
            JGE_K => pc += cond(acc >= insn.k),
            JSET_K => pc += cond(acc & insn.k != 0),
            RET_K => {
                return match insn.k & 0xffff_0000 {
                    SECCOMP_RET_ALLOW => Verdict::Allow,
                    SECCOMP_RET_ERRNO => Verdict::Errno((insn.k & 0xffff) as i32),
                    SECCOMP_RET_KILL_PROCESS => Verdict::Kill,
                    other => panic!("unexpected return {other:#x}"),
                };
            }
            code => panic!("unexpected opcode {code:#x} at {}", pc - 1),
        }
    }
    panic!("no return: a loop is impossible in classic BPF")
}

const ARCHES: [Arch; 3] = [Arch::X86_64, Arch::Aarch64, Arch::Arm];

/// Syscalls the filter must refuse, by their numbers on each architecture
/// (x86_64, aarch64, arm): creating namespaces, entering them, tracing,
/// mounting, loading BPF or kernel code.
const REFUSED: &[(&str, [u32; 3])] = &[
    ("unshare", [272, 97, 337]),
    ("setns", [308, 268, 375]),
    ("ptrace", [101, 117, 26]),
    ("mount", [165, 40, 21]),
    ("bpf", [321, 280, 386]),
    ("personality", [135, 92, 136]),
    ("process_vm_readv", [310, 270, 376]),
    ("kexec_load", [246, 104, 347]),
    ("init_module", [175, 105, 128]),
];

fn column(arch: Arch) -> usize {
    ARCHES.iter().position(|a| *a == arch).unwrap()
}

fn verdict(arch: Arch, name: &str, args: [u64; 6]) -> Verdict {
    let nr = arch
        .nr(name)
        .or_else(|| {
            REFUSED
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, nrs)| nrs[column(arch)])
        })
        .unwrap_or_else(|| panic!("{name}: no number on {arch:?}"));
    run(&program_for(arch), &seccomp_data(nr, arch.audit(), args))
}

fn a0(x: u64) -> [u64; 6] {
    [x, 0, 0, 0, 0, 0]
}

// linux/sched.h
const CLONE_VM: u64 = 0x100;
const CLONE_FS: u64 = 0x200;
const CLONE_FILES: u64 = 0x400;
const CLONE_SIGHAND: u64 = 0x800;
const CLONE_THREAD: u64 = 0x1_0000;
const CLONE_SYSVSEM: u64 = 0x4_0000;
const CLONE_SETTLS: u64 = 0x8_0000;
const CLONE_PARENT_SETTID: u64 = 0x10_0000;
const CLONE_CHILD_CLEARTID: u64 = 0x20_0000;
const SIGCHLD: u64 = 17;
/// The flags glibc's and musl's pthread_create pass to clone.
const THREAD: u64 = CLONE_VM
    | CLONE_FS
    | CLONE_FILES
    | CLONE_SIGHAND
    | CLONE_THREAD
    | CLONE_SYSVSEM
    | CLONE_SETTLS
    | CLONE_PARENT_SETTID
    | CLONE_CHILD_CLEARTID;

#[test]
fn every_allowed_syscall_passes_on_every_architecture() {
    for arch in ARCHES {
        let n = arch.allowed().count();
        assert!(n > 100, "{arch:?}: {n} syscalls");
        for (name, _) in arch.allowed() {
            // Zero arguments: a plain clone, AF_UNSPEC and prctl option 0
            // are refused by their argument checks, tested below.
            if ["socket", "socketpair", "prctl"].contains(&name) {
                continue;
            }
            let v = match name {
                "clone3" => Verdict::Errno(libc::ENOSYS),
                _ => Verdict::Allow,
            };
            assert_eq!(verdict(arch, name, a0(0)), v, "{arch:?} {name}");
        }
    }
}

#[test]
fn namespaces_tracing_and_kernel_loading_are_refused() {
    for arch in ARCHES {
        for (name, _) in REFUSED {
            assert_eq!(arch.nr(name), None, "{name} is in the table");
            assert_eq!(
                verdict(arch, name, a0(0x5000_0000)),
                Verdict::Errno(libc::EPERM),
                "{arch:?} {name}"
            );
        }
    }
}

#[test]
fn clone_makes_threads_and_processes_but_no_namespace() {
    let new = [
        ("CLONE_NEWNS", 0x2_0000),
        ("CLONE_NEWCGROUP", 0x200_0000),
        ("CLONE_NEWUTS", 0x400_0000),
        ("CLONE_NEWIPC", 0x800_0000),
        ("CLONE_NEWUSER", 0x1000_0000),
        ("CLONE_NEWPID", 0x2000_0000),
        ("CLONE_NEWNET", 0x4000_0000),
    ];
    for arch in ARCHES {
        assert_eq!(verdict(arch, "clone", a0(THREAD)), Verdict::Allow);
        // musl adds CLONE_DETACHED (0x400000).
        assert_eq!(
            verdict(arch, "clone", a0(THREAD | 0x40_0000)),
            Verdict::Allow
        );
        assert_eq!(verdict(arch, "clone", a0(SIGCHLD)), Verdict::Allow);
        // The kernel ignores the high half of clone's flags; so does the
        // filter, which must not be fooled by it either way.
        assert_eq!(
            verdict(arch, "clone", a0(0xffff_ffff_0000_0000 | THREAD)),
            Verdict::Allow
        );
        for (flag, bit) in new {
            for base in [THREAD, SIGCHLD, 0] {
                assert_eq!(
                    verdict(arch, "clone", a0(base | bit)),
                    Verdict::Errno(libc::EPERM),
                    "{arch:?} clone {flag}"
                );
            }
        }
        // clone3 passes its flags in memory the filter cannot read: ENOSYS
        // sends the C libraries back to clone.
        assert_eq!(
            verdict(arch, "clone3", [0x7ff0_0000, 88, 0, 0, 0, 0]),
            Verdict::Errno(libc::ENOSYS)
        );
    }
}

#[test]
fn sockets_open_only_unix_and_ip_families() {
    let refused = [
        ("AF_UNSPEC", 0),
        ("AF_NETLINK", 16),
        ("AF_PACKET", 17),
        ("AF_BLUETOOTH", 31),
        ("AF_ALG", 38),
        ("AF_VSOCK", 40),
        ("AF_XDP", 44),
    ];
    for arch in ARCHES {
        for family in [1u64, 2, 10] {
            let args = [family, 2 /* SOCK_DGRAM */, 0, 0, 0, 0];
            assert_eq!(verdict(arch, "socket", args), Verdict::Allow);
        }
        for (name, family) in refused {
            for high in [0, 0x1_0000_0000u64] {
                let args = [family | high, 3 /* SOCK_RAW */, 0, 0, 0, 0];
                assert_eq!(
                    verdict(arch, "socket", args),
                    Verdict::Errno(libc::EAFNOSUPPORT),
                    "{arch:?} socket({name})"
                );
            }
        }
        assert_eq!(verdict(arch, "socketpair", a0(1)), Verdict::Allow);
        for family in [2u64, 10, 30 /* AF_TIPC */] {
            assert_eq!(
                verdict(arch, "socketpair", a0(family)),
                Verdict::Errno(libc::EAFNOSUPPORT),
                "{arch:?} socketpair({family})"
            );
        }
    }
}

#[test]
fn prctl_only_names_threads() {
    let refused = [
        ("PR_SET_PDEATHSIG", 1),
        ("PR_SET_DUMPABLE", 4),
        ("PR_SET_KEEPCAPS", 8),
        ("PR_SET_SECCOMP", 22),
        ("PR_CAPBSET_DROP", 24),
        ("PR_SET_MM", 35),
        ("PR_SET_CHILD_SUBREAPER", 36),
        ("PR_SET_NO_NEW_PRIVS", 38),
        ("PR_CAP_AMBIENT", 47),
        ("PR_SET_PTRACER", 0x5961_6d61),
    ];
    for arch in ARCHES {
        for option in [3u64, 15, 16] {
            assert_eq!(verdict(arch, "prctl", a0(option)), Verdict::Allow);
        }
        for (name, option) in refused {
            assert_eq!(
                verdict(arch, "prctl", [option, 1, 0, 0, 0, 0]),
                Verdict::Errno(libc::EPERM),
                "{arch:?} prctl({name})"
            );
        }
        // PR_SET_NAME in the low word with garbage above is still allowed,
        // as the kernel reads an int; PR_SET_DUMPABLE likewise refused.
        assert_eq!(
            verdict(arch, "prctl", a0(0xdead_0000_0000_000f)),
            Verdict::Allow
        );
        assert_eq!(
            verdict(arch, "prctl", a0(0xdead_0000_0000_0004)),
            Verdict::Errno(libc::EPERM)
        );
    }
}

#[test]
fn a_foreign_abi_is_killed() {
    for arch in ARCHES {
        let read = arch.nr("read").unwrap();
        for other in ARCHES.iter().filter(|a| **a != arch) {
            let d = seccomp_data(read, other.audit(), [0; 6]);
            assert_eq!(run(&program_for(arch), &d), Verdict::Kill);
        }
        // i386 on an x86_64 kernel, 32-bit arm on aarch64.
        let d = seccomp_data(read, 0x4000_0003, [0; 6]);
        assert_eq!(run(&program_for(arch), &d), Verdict::Kill);
    }
    // x32 shares x86_64's arch value and sets bit 30 of the number.
    let d = seccomp_data(0x4000_0000, Arch::X86_64.audit(), [0; 6]);
    assert_eq!(run(&program_for(Arch::X86_64), &d), Verdict::Kill);
}

#[test]
fn unknown_numbers_are_refused_not_killed() {
    for arch in ARCHES {
        for nr in [999, 0x0f_0006, 0x3fff_ffff] {
            let d = seccomp_data(nr, arch.audit(), [0; 6]);
            assert_eq!(
                run(&program_for(arch), &d),
                Verdict::Errno(libc::EPERM),
                "{arch:?} {nr}"
            );
        }
    }
}

#[test]
fn the_native_column_matches_libc() {
    let table: Vec<(&str, u32)> = Arch::NATIVE.allowed().collect();
    for (name, nr) in libc_check::LIBC {
        assert!(
            table.contains(&(name, *nr as u32)),
            "{name} = {nr} differs from the table"
        );
    }
    assert_eq!(
        table.len(),
        libc_check::LIBC.len() + usize::from(Arch::NATIVE == Arch::Arm) * 11,
        "the table allows calls libc_check does not list"
    );
}

#[test]
fn ioctl_cannot_type_into_a_terminal() {
    for arch in ARCHES {
        // ALSA's and the sockets' requests pass.
        for request in [
            0x541b,     /* FIONREAD */
            0xc0684113, /* SNDRV_PCM_IOCTL_HW_PARAMS */
            0x5401,
        ] {
            assert_eq!(
                verdict(arch, "ioctl", [3, request, 0, 0, 0, 0]),
                Verdict::Allow,
                "{arch:?} ioctl({request:#x})"
            );
        }
        for request in [
            0x5412u64, /* TIOCSTI */
            0x541c,    /* TIOCLINUX */
            0xffff_ffff_0000_5412,
        ] {
            assert_eq!(
                verdict(arch, "ioctl", [0, request, 0, 0, 0, 0]),
                Verdict::Errno(libc::EPERM),
                "{arch:?} ioctl({request:#x})"
            );
        }
    }
}
