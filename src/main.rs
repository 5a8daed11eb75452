//! The `voxgate` binary: the CLI (`voxgate::cli`).
//!
//! The static musl builds allocate Rust's memory through dlmalloc. musl's
//! malloc (mallocng) is slower per call than glibc's, and Rust's many small
//! per-packet allocations (quinn, tokio) made the static gateway cost more
//! CPU per audio second than the glibc build; with dlmalloc it costs less,
//! with less resident memory than mallocng (docs/BENCHMARKS.md). One lock
//! guards the heap, as in mallocng. C code linked in (libopus, alsa-lib)
//! keeps musl's malloc; glibc builds keep glibc's.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() -> std::process::ExitCode {
    voxgate::cli::main()
}
