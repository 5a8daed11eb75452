//! Real-time scheduling for the audio worker threads (encoder, decoder).
//!
//! Real audio software (JACK, PipeWire, baresip) runs the threads that must
//! meet a per-period deadline at `SCHED_FIFO`, so that a busy CPU (another
//! process compiling, a TLS handshake on the runtime) cannot delay them by a
//! scheduler time slice. A thread asks for it itself, after the privilege
//! drop and the sandbox (the seccomp allow-list has `sched_setscheduler`):
//! the kernel grants it to root with `CAP_SYS_NICE`, or when the priority is
//! within `RLIMIT_RTPRIO` (systemd's `LimitRTPRIO=`). When it is refused the
//! thread keeps the normal policy and says so once, at `info`: audio still
//! works, with more wake-up jitter. The policy has `SCHED_RESET_ON_FORK`, and
//! the kernel's real-time throttling (`sched_rt_runtime_us`) still leaves the
//! rest of the system 5% of every second should a thread ever spin.

use super::sys;
use tracing::info;

/// Priority of the encoder and decoder threads: modest, the same as
/// rtkit-era audio clients ask for, below the kernel's threaded interrupt
/// handlers (50) and PipeWire's or JACK's own data threads.
pub const AUDIO_PRIORITY: i32 = 10;

/// The outcome of [`promote_current_thread`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// The thread now runs `SCHED_FIFO` at this priority.
    Fifo(i32),
    /// The kernel refused; the thread keeps the normal policy.
    Refused,
}

/// Switch the calling thread to `SCHED_FIFO` at `priority` if permitted, and
/// log the outcome (`thread` names it). Never fails: refusal is logged.
pub fn promote_current_thread(thread: &str, priority: i32) -> Promotion {
    match sys::set_fifo_current_thread(priority) {
        Ok(()) => {
            info!(thread, priority, "real-time scheduling (SCHED_FIFO) on");
            Promotion::Fifo(priority)
        }
        Err(e) => {
            let limit = sys::rtprio_limit()
                .map(|l| l.to_string())
                .unwrap_or_else(|e| format!("unknown ({e})"));
            info!(thread, priority, error = %e, rlimit_rtprio = %limit,
                "real-time scheduling not permitted; the thread keeps the normal policy (give the service LimitRTPRIO={priority} to allow it)");
            Promotion::Refused
        }
    }
}
