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

#[cfg(test)]
mod tests {
    use super::*;
    use caps::{CapSet, Capability};

    /// (policy, real-time priority) of the calling thread (stat fields 41, 40).
    fn own_policy() -> (u64, u64) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        (f[38].parse().unwrap(), f[37].parse().unwrap())
    }

    #[test]
    fn promotes_when_permitted_and_keeps_the_normal_policy_when_refused() {
        assert!(nix::unistd::Uid::effective().is_root(), "tests run as root");
        // Capabilities are per thread: each case runs on a thread of its own.
        let granted = std::thread::spawn(|| {
            let p = promote_current_thread("test", AUDIO_PRIORITY);
            (p, own_policy())
        })
        .join()
        .unwrap();
        let fifo = (libc::SCHED_FIFO as u64, AUDIO_PRIORITY as u64);
        assert_eq!(granted, (Promotion::Fifo(AUDIO_PRIORITY), fifo));
        let refused = std::thread::spawn(|| {
            caps::drop(None, CapSet::Effective, Capability::CAP_SYS_NICE).unwrap();
            // Above RLIMIT_RTPRIO and without CAP_SYS_NICE: refused.
            let limit = sys::rtprio_limit().unwrap();
            assert!(limit < 99, "RLIMIT_RTPRIO {limit} leaves nothing to refuse");
            let p = promote_current_thread("test", limit as i32 + 1);
            (p, own_policy())
        })
        .join()
        .unwrap();
        assert_eq!(refused, (Promotion::Refused, (libc::SCHED_OTHER as u64, 0)));
    }
}
