//! Keeps one audio device open for the life of the process: opens it, watches
//! its errors and its progress, and reopens it with backoff when it fails,
//! disappears or stalls. The process never exits because of a device.
//!
//! Errors that mean the stream is gone (device unplugged, host gone, stream
//! invalidated, permission revoked) reopen at once. Transient ones (xruns,
//! a burst of I/O errors at start-up, reroutes) are logged at most once a
//! second; if they keep the stream from moving, the stall watchdog reopens it.
//!
//! Closing a stream joins the backend's device thread, and a driver can wedge
//! that thread for ever (seen: ALSA's pulse plugin deadlocks when the sound
//! server dies). The supervisor therefore closes streams on a reaper thread
//! with a deadline; past it, the stuck thread and its ring are abandoned (an
//! error is logged) and the device is reopened with a fresh ring, whose other
//! half goes to the worker thread through `fresh`.

use super::device::{DeviceError, Dir};
use super::ring::Returning;
use crate::telemetry::metrics::Counter;
use cpal::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};
use tracing::{debug, error, warn};

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const STALL: Duration = Duration::from_secs(2);
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// Whether a stream error means the stream must be rebuilt.
pub fn is_fatal(e: &cpal::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::DeviceNotAvailable
            | ErrorKind::HostUnavailable
            | ErrorKind::StreamInvalidated
            | ErrorKind::PermissionDenied
    )
}

/// How to open the device once; gets the ring (which comes home through the
/// `Returning` when the stream is dropped), the error channel, and the period
/// to ask for (`None`: the device's default).
pub type Opener<R> = dyn FnMut(Returning<R>, mpsc::Sender<cpal::Error>, Option<u32>) -> Result<cpal::Stream, DeviceError>
    + Send;

/// Supervise a device until `stop` is set.
#[allow(clippy::too_many_arguments)]
pub fn supervise<R: Send + 'static>(
    dir: Dir,
    label: String,
    ring: R,
    period_ms: u32,
    progress: impl Fn() -> u64,
    opens: Arc<Counter>,
    stop: Arc<AtomicBool>,
    open: &mut Opener<R>,
    fresh: &mut dyn FnMut() -> R,
) {
    let (mut home, mut back) = mpsc::channel::<R>();
    let mut ring = Some(ring);
    let mut backoff = BACKOFF_MIN;
    // Ask for a short fixed period first; a device that refuses it gets its
    // own default on the next attempt.
    let mut fixed_period = true;
    while !stop.load(Relaxed) {
        let Some(r) = ring.take().or_else(|| back.recv_timeout(STALL).ok()) else {
            warn!(%dir, device = %label, "ring not returned by the closed stream; retrying");
            continue;
        };
        let (err_tx, err_rx) = mpsc::channel::<cpal::Error>();
        match open(
            Returning::new(r, home.clone()),
            err_tx,
            fixed_period.then_some(period_ms),
        ) {
            Ok(stream) => {
                opens.inc();
                let reason = watch(&err_rx, &progress, &stop);
                if let Some(why) = &reason {
                    warn!(%dir, device = %label, error = %why, "audio device failed; reopening");
                    backoff = BACKOFF_MIN;
                }
                if !close(stream) {
                    error!(%dir, device = %label,
                           "the audio driver's thread is stuck and was abandoned; continuing with a new ring");
                    ring = Some(fresh());
                    // If the stuck thread ever wakes, its ring goes nowhere.
                    (home, back) = mpsc::channel::<R>();
                }
                if reason.is_none() {
                    break;
                }
            }
            Err(e @ DeviceError::Backend { .. }) if fixed_period => {
                warn!(%dir, device = %label, error = %e,
                      "device refused a {period_ms} ms period; using its default");
                fixed_period = false;
                continue;
            }
            Err(e) => {
                warn!(%dir, device = %label, error = %e, retry_in_ms = backoff.as_millis() as u64,
                      "cannot open audio device; will retry");
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 4));
        thread::park_timeout(backoff + jitter);
    }
}

/// Drop `stream` on a reaper thread; false if it did not finish in time.
fn close(stream: cpal::Stream) -> bool {
    let (done, finished) = mpsc::channel();
    let reaper = thread::Builder::new()
        .name("audio-close".into())
        .spawn(move || {
            drop(stream);
            let _ = done.send(());
        });
    reaper.is_ok() && finished.recv_timeout(CLOSE_DEADLINE).is_ok()
}

/// Wait until the stream fails or stalls (`Some(reason)`) or we are told to
/// stop (`None`).
fn watch(
    errors: &mpsc::Receiver<cpal::Error>,
    progress: &impl Fn() -> u64,
    stop: &AtomicBool,
) -> Option<String> {
    let mut last = progress();
    let mut last_progress = Instant::now();
    let mut transient = 0u64;
    let mut last_log: Option<Instant> = None;
    loop {
        if stop.load(Relaxed) {
            return None;
        }
        match errors.recv_timeout(Duration::from_millis(250)) {
            Ok(e) if is_fatal(&e) => return Some(e.to_string()),
            Ok(e) => {
                transient += 1;
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    debug!(error = %e, count = transient, "transient audio stream error");
                    last_log = Some(Instant::now());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Some("stream ended".into()),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = progress();
        if now != last {
            last = now;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL {
            return Some(format!("no audio moved for {} s", STALL.as_secs()));
        }
    }
}
