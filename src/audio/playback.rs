//! The speaker: a cpal output stream fed from the playback ring by the
//! decoder thread, reopened with backoff when the device fails.
//!
//! The data callback dequeues mono samples, expands them to the device's
//! channels and format, fills underruns with silence (counted), and wakes the
//! decoder thread. It does not allocate, lock, log or block (clockless
//! devices excepted, see [`super::clock`]).

use super::clock::{self, ClockGuard};
use super::convert::upmix;
use super::device::{self, DeviceError, Dir};
use super::ring::{Returning, RingRx, RingTx};
use super::supervisor;
use crate::telemetry::metrics::Counter;
use cpal::traits::DeviceTrait;
use cpal::{FromSample, SampleFormat, SizedSample};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;

/// The period asked of the device (one callback): the decoder keeps one
/// callback's worth in the ring plus a margin, so the period is latency.
/// It was 20 ms until the latency budget of docs/BENCHMARKS.md; a device
/// that refuses it gets its default.
pub const PERIOD_MS: u32 = 10;

/// State the playback thread shares with the decoder and with metrics.
#[derive(Debug)]
pub struct PlaybackShared {
    /// Device rate the decoder must produce for.
    pub rate: AtomicU32,
    /// Samples handed to the device since start.
    pub played: AtomicU64,
    /// Frames the device took in its last callback (the decoder keeps that
    /// much in the ring, plus a margin); 0 until the first callback.
    pub chunk: AtomicU32,
    /// Samples of silence inserted because the ring ran dry.
    pub underruns: Arc<Counter>,
    /// Times the device was (re)opened.
    pub opens: Arc<Counter>,
    /// Samples handed to the device (its position; `played` is per run).
    pub samples: Arc<Counter>,
    /// Set once a device was latched as clockless.
    pub clockless: AtomicBool,
    /// Set by the decoder while it has no stream to play (its jitter
    /// buffer idle): a clockless device drains its start-up lead only then.
    pub source_idle: AtomicBool,
}

/// A running playback thread.
#[derive(Debug)]
pub struct Playback {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Playback {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Start playing to `name` (default device when `None`) from `rx`, waking
/// `decoder` after each callback.
pub fn start(
    name: Option<String>,
    rx: RingRx,
    decoder: Thread,
    new_rings: mpsc::Sender<RingTx>,
    shared: Arc<PlaybackShared>,
) -> std::io::Result<Playback> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = thread::Builder::new()
        .name("playback-ctl".into())
        .spawn(move || supervise(name, rx, decoder, new_rings, shared, stop2))?;
    Ok(Playback {
        thread: Some(thread),
        stop,
    })
}

fn supervise(
    name: Option<String>,
    ring: RingRx,
    decoder: Thread,
    new_rings: mpsc::Sender<RingTx>,
    shared: Arc<PlaybackShared>,
    stop: Arc<AtomicBool>,
) {
    let label = name.clone().unwrap_or_else(|| "default".into());
    let progress_of = shared.clone();
    let opens = shared.opens.clone();
    let mut open = move |ring: Returning<RingRx>, errors, period| {
        open(
            name.as_deref(),
            ring,
            decoder.clone(),
            &shared,
            errors,
            period,
        )
    };
    supervisor::supervise(
        Dir::Playback,
        label,
        ring,
        PERIOD_MS,
        move || progress_of.played.load(Relaxed),
        opens,
        stop,
        &mut open,
        &mut || {
            let (tx, rx) = super::ring::ring::<{ super::ring::PLAYBACK_RING_SAMPLES }>();
            // The worker gets its half; the device keeps the other.
            let _ = new_rings.send(tx);
            rx
        },
    );
}

fn open(
    name: Option<&str>,
    ring: Returning<RingRx>,
    decoder: Thread,
    shared: &Arc<PlaybackShared>,
    errors: mpsc::Sender<cpal::Error>,
    period_ms: Option<u32>,
) -> Result<cpal::Stream, DeviceError> {
    device::open_stream(name, Dir::Playback, &shared.rate, |dev, cfg| {
        Some(match cfg.sample_format() {
            SampleFormat::F32 => build::<f32>(dev, cfg, ring, decoder, shared, errors, period_ms),
            SampleFormat::I16 => build::<i16>(dev, cfg, ring, decoder, shared, errors, period_ms),
            SampleFormat::I32 => build::<i32>(dev, cfg, ring, decoder, shared, errors, period_ms),
            SampleFormat::F64 => build::<f64>(dev, cfg, ring, decoder, shared, errors, period_ms),
            SampleFormat::U16 => build::<u16>(dev, cfg, ring, decoder, shared, errors, period_ms),
            SampleFormat::I8 => build::<i8>(dev, cfg, ring, decoder, shared, errors, period_ms),
            SampleFormat::U8 => build::<u8>(dev, cfg, ring, decoder, shared, errors, period_ms),
            _ => return None,
        })
    })
}

fn build<T>(
    dev: &cpal::Device,
    cfg: &cpal::SupportedStreamConfig,
    mut ring: Returning<RingRx>,
    decoder: Thread,
    shared: &Arc<PlaybackShared>,
    errors: mpsc::Sender<cpal::Error>,
    period_ms: Option<u32>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + FromSample<f32>,
{
    let channels = usize::from(cfg.channels()).max(1);
    let shared_cb = shared.clone();
    let mut clock = ClockGuard::with_pace(
        cfg.sample_rate(),
        clock::PLAYBACK_SLACK,
        clock::PLAYBACK_PACE,
    );
    let data = move |data: &mut [T], _: &cpal::OutputCallbackInfo| {
        let rx = ring.get();
        let frames = data.len() / channels;
        let mut silent = shared_cb.source_idle.load(Relaxed);
        let filled = upmix(data, channels, || {
            let v = rx.samples.dequeue();
            silent &= v.is_none_or(|x| x == 0.0);
            v
        });
        shared_cb.played.fetch_add(frames as u64, Relaxed);
        shared_cb.chunk.store(frames as u32, Relaxed);
        shared_cb.samples.add(frames as u64);
        if filled < frames {
            shared_cb.underruns.add((frames - filled) as u64);
        }
        decoder.unpark();
        if clock.after_quiet(frames, silent) {
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
    dev.build_output_stream::<T, _, _>(sc, data, err, Some(Duration::from_secs(5)))
}
