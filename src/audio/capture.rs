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
use cpal::traits::{DeviceTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};
use tracing::info;

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
    /// Set once a device was latched as clockless.
    pub clockless: AtomicBool,
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
/// waking `encoder` after each callback.
pub fn start(
    name: Option<String>,
    tx: RingTx,
    encoder: Thread,
    new_rings: mpsc::Sender<RingRx>,
    shared: Arc<CaptureShared>,
) -> std::io::Result<Capture> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = thread::Builder::new()
        .name("capture-ctl".into())
        .spawn(move || supervise(name, tx, encoder, new_rings, shared, stop2))?;
    Ok(Capture {
        thread: Some(thread),
        stop,
    })
}

fn supervise(
    name: Option<String>,
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
        10,
        move || progress_of.delivered.load(Relaxed),
        opens,
        stop,
        &mut open,
        &mut || {
            let (tx, rx) = super::ring::ring();
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
    let dev = device::find(name, Dir::Capture)?;
    let cfg = device::choose_config(&dev, Dir::Capture)?;
    let dev_name = dev.to_string();
    let backend = |source| DeviceError::Backend {
        dir: Dir::Capture,
        name: dev_name.clone(),
        source,
    };
    shared.rate.store(cfg.sample_rate(), Relaxed);
    let stream = match cfg.sample_format() {
        SampleFormat::F32 => build::<f32>(&dev, &cfg, ring, encoder, shared, errors, period_ms),
        SampleFormat::I16 => build::<i16>(&dev, &cfg, ring, encoder, shared, errors, period_ms),
        SampleFormat::I32 => build::<i32>(&dev, &cfg, ring, encoder, shared, errors, period_ms),
        SampleFormat::F64 => build::<f64>(&dev, &cfg, ring, encoder, shared, errors, period_ms),
        SampleFormat::U16 => build::<u16>(&dev, &cfg, ring, encoder, shared, errors, period_ms),
        SampleFormat::I8 => build::<i8>(&dev, &cfg, ring, encoder, shared, errors, period_ms),
        SampleFormat::U8 => build::<u8>(&dev, &cfg, ring, encoder, shared, errors, period_ms),
        other => {
            return Err(DeviceError::NoConfig {
                dir: Dir::Capture,
                name: dev_name,
                reason: format!("sample format {other} is not supported"),
            });
        }
    }
    .map_err(backend)?;
    stream.play().map_err(backend)?;
    info!(device = %dev_name, rate = cfg.sample_rate(), channels = cfg.channels(),
          format = %cfg.sample_format(), "capture device open");
    Ok(stream)
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
        shared_cb.delivered.store(end, Relaxed);
        let _ = tx.marks.enqueue(Mark { end, at });
        if dropped > 0 {
            shared_cb.overruns.add(dropped);
        }
        encoder.unpark();
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
