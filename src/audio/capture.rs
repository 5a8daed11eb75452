//! The microphone: a cpal input stream that feeds the ring, reopened with
//! backoff when the device fails or disappears. The process never exits
//! because of the device.
//!
//! The data callback converts whatever the device delivers to mono f32,
//! enqueues it, drops a timing mark, and wakes the encoder thread. It does
//! not allocate, lock, log or block (see [`super::clock`] for the one
//! exception: a device without a clock).

use super::clock::{self, ClockGuard};
use super::convert::downmix;
use super::device::{self, DeviceError, Dir};
use super::ring::{Mark, Returning, RingRx, RingTx};
use super::supervisor;
use crate::telemetry::metrics::Counter;
use cpal::traits::DeviceTrait;
use cpal::{FromSample, SampleFormat, SizedSample};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// State the capture thread shares with the encoder and with metrics.
#[derive(Debug)]
pub struct CaptureShared {
    /// Device rate of the samples currently in the ring.
    pub rate: AtomicU32,
    /// Samples delivered through the ring since start (all device openings).
    pub delivered: AtomicU64,
    /// Samples dropped because the ring was full.
    pub overruns: Arc<Counter>,
    /// Times the device was (re)opened.
    pub opens: Arc<Counter>,
    /// Samples the device delivered, dropped ones included (its position).
    pub samples: Arc<Counter>,
    /// Set once a device was latched as clockless.
    pub clockless: AtomicBool,
    /// The encoder asks to be woken once `delivered` reaches this count
    /// (a whole frame is in the ring): the callback does not wake it for
    /// every period of a frame. 0 wakes it after every callback.
    pub wake_at: AtomicU64,
}

impl CaptureShared {
    /// Fresh state that counts overruns, device openings and delivered
    /// samples into the given counters.
    pub fn new(overruns: Arc<Counter>, opens: Arc<Counter>, samples: Arc<Counter>) -> Self {
        CaptureShared {
            rate: AtomicU32::new(0),
            delivered: AtomicU64::new(0),
            overruns,
            opens,
            samples,
            clockless: AtomicBool::new(false),
            wake_at: AtomicU64::new(0),
        }
    }
}

/// A running capture thread.
#[derive(Debug)]
pub struct Capture {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Start capturing from `name` (default device when `None`) into `tx`,
/// asking the device for callbacks every `period_ms`, and waking `encoder`
/// when it has a whole frame ([`CaptureShared::wake_at`]).
pub fn start(
    name: Option<String>,
    period_ms: u32,
    tx: RingTx,
    encoder: Thread,
    new_rings: mpsc::Sender<RingRx>,
    shared: Arc<CaptureShared>,
) -> std::io::Result<Capture> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = thread::Builder::new()
        .name("capture-ctl".into())
        .spawn(move || supervise(name, period_ms, tx, encoder, new_rings, shared, stop2))?;
    Ok(Capture {
        thread: Some(thread),
        stop,
    })
}

fn supervise(
    name: Option<String>,
    period_ms: u32,
    ring: RingTx,
    encoder: Thread,
    new_rings: mpsc::Sender<RingRx>,
    shared: Arc<CaptureShared>,
    stop: Arc<AtomicBool>,
) {
    let label = name.clone().unwrap_or_else(|| "default".into());
    let progress_of = shared.clone();
    let opens = shared.opens.clone();
    let mut open = move |ring: Returning<RingTx>, errors, period| {
        open(
            name.as_deref(),
            ring,
            encoder.clone(),
            &shared,
            errors,
            period,
        )
    };
    supervisor::supervise(
        Dir::Capture,
        label,
        ring,
        period_ms,
        move || progress_of.delivered.load(Relaxed),
        opens,
        stop,
        &mut open,
        &mut || {
            let (tx, rx) = super::ring::ring::<{ super::ring::CAPTURE_RING_SAMPLES }>();
            // The worker gets its half; the device keeps the other.
            let _ = new_rings.send(rx);
            tx
        },
    );
}

fn open(
    name: Option<&str>,
    ring: Returning<RingTx>,
    encoder: Thread,
    shared: &Arc<CaptureShared>,
    errors: mpsc::Sender<cpal::Error>,
    period_ms: Option<u32>,
) -> Result<cpal::Stream, DeviceError> {
    device::open_stream(name, Dir::Capture, &shared.rate, |dev, cfg| {
        Some(match cfg.sample_format() {
            SampleFormat::F32 => build::<f32>(dev, cfg, ring, encoder, shared, errors, period_ms),
            SampleFormat::I16 => build::<i16>(dev, cfg, ring, encoder, shared, errors, period_ms),
            SampleFormat::I32 => build::<i32>(dev, cfg, ring, encoder, shared, errors, period_ms),
            SampleFormat::F64 => build::<f64>(dev, cfg, ring, encoder, shared, errors, period_ms),
            SampleFormat::U16 => build::<u16>(dev, cfg, ring, encoder, shared, errors, period_ms),
            SampleFormat::I8 => build::<i8>(dev, cfg, ring, encoder, shared, errors, period_ms),
            SampleFormat::U8 => build::<u8>(dev, cfg, ring, encoder, shared, errors, period_ms),
            _ => return None,
        })
    })
}

fn build<T>(
    dev: &cpal::Device,
    cfg: &cpal::SupportedStreamConfig,
    mut ring: Returning<RingTx>,
    encoder: Thread,
    shared: &Arc<CaptureShared>,
    errors: mpsc::Sender<cpal::Error>,
    period_ms: Option<u32>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let channels = usize::from(cfg.channels());
    let shared_cb = shared.clone();
    let mut clock = ClockGuard::new(cfg.sample_rate(), clock::CAPTURE_SLACK);
    let data = move |data: &[T], _: &cpal::InputCallbackInfo| {
        let at = Instant::now();
        let tx = ring.get();
        let mut pushed = 0u64;
        let mut dropped = 0u64;
        downmix(data, channels, |v| match tx.samples.enqueue(v) {
            Ok(()) => pushed += 1,
            Err(_) => dropped += 1,
        });
        let end = shared_cb.delivered.load(Relaxed) + pushed;
        // SeqCst pairs with the encoder's store of `wake_at` and load of
        // `delivered` before it parks: one of the two sides sees the other.
        shared_cb.delivered.store(end, SeqCst);
        let _ = tx.marks.enqueue(Mark { end, at });
        if dropped > 0 {
            shared_cb.overruns.add(dropped);
        }
        shared_cb.samples.add(pushed + dropped);
        if end >= shared_cb.wake_at.load(SeqCst) {
            encoder.unpark();
        }
        if clock.after(data.len() / channels.max(1)) {
            shared_cb.clockless.store(true, Relaxed);
        }
    };
    let err = move |e: cpal::Error| {
        let _ = errors.send(e);
    };
    let sc = match period_ms {
        Some(ms) => device::stream_config(cfg, ms),
        None => cfg.config(),
    };
    dev.build_input_stream::<T, _, _>(sc, data, err, Some(Duration::from_secs(5)))
}
