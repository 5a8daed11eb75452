//! The `voxgate` binary: the CLI (`voxgate::cli`).
//!
//! The static musl builds allocate through mimalloc: musl's malloc
//! (mallocng) is slower per call than glibc's, and Rust's many small
//! per-packet allocations (quinn, tokio) made the static gateway cost more
//! CPU than the glibc build. C code linked in (libopus, alsa-lib) keeps
//! musl's malloc; glibc builds keep glibc's. Transparent huge pages are
//! off for the process, before anything else runs: a kernel that hands
//! mimalloc's arenas 2 MiB pages (THP `always`) would make every thread's
//! first page a resident 2 MiB (RSS 23 MiB instead of 10 here).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Best effort: a kernel without THP has nothing to turn off.
    #[cfg(target_env = "musl")]
    let _ = nix::sys::prctl::set_thp_disable(true);
    voxgate::cli::main()
}
