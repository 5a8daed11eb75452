//! The decoder thread: downlink packets → jitter buffer → Opus (decode, FEC
//! or PLC) → playback ring.
//!
//! The thread is clocked by the speaker: it is woken after each playback
//! callback and decodes frames while the ring holds less than its target, so
//! the ring level, not the wall clock, decides when a frame is due. Device
//! and relay clock drift is absorbed by the jitter buffer's adaptation.

use super::metrics::GatewayMetrics;
use crate::audio::convert::Resampler;
use crate::audio::device::PIPELINE_RATE;
use crate::audio::playback::PlaybackShared;
use crate::audio::ring::RingTx;
use crate::codec::OpusDecoder;
use crate::media::jitter::{JitterBuffer, JitterConfig, Playout, QUIET_RUN, is_quiet};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// What the network side hands the decoder thread.
#[derive(Debug)]
pub enum DownEvent {
    /// The relay opened a downlink flow: reset the jitter buffer.
    Open {
        /// Frame duration in 48 kHz samples.
        frame_samples: u32,
    },
    /// One RTP packet of the downlink flow.
    Packet {
        /// When the datagram was read (the jitter buffer's arrival time: the
        /// decoder thread drains its channel only when the speaker wakes it).
        at: Instant,
        /// Sequence number.
        seq: u16,
        /// RTP timestamp.
        ts: u32,
        /// Opus payload.
        payload: Bytes,
    },
}

/// Everything the decoder thread owns.
#[derive(Debug)]
pub struct Downlink {
    /// Packets and flow events from the network task.
    pub events: Receiver<DownEvent>,
    /// Producer half of the playback ring.
    pub tx: RingTx,
    /// Replacement rings, sent when a wedged device had to be abandoned.
    pub new_rings: std::sync::mpsc::Receiver<RingTx>,
    /// Playback device rate and counters.
    pub playback: Arc<PlaybackShared>,
    /// Jitter buffer bounds.
    pub min_delay: Duration,
    /// Jitter buffer bounds.
    pub max_delay: Duration,
    /// Counters.
    pub metrics: Arc<GatewayMetrics>,
    /// Set to stop the thread.
    pub stop: Arc<AtomicBool>,
}

/// Keep this much audio queued for the speaker beyond what one device
/// callback takes (device buffer aside): the decoder thread's scheduling
/// margin. The ring was held at a fixed 40 ms (two 20 ms callbacks) until
/// the latency budget of docs/BENCHMARKS.md measured it.
pub const RING_MARGIN: Duration = Duration::from_millis(10);
/// The ring's target before the device's callback size is known.
const RING_START: Duration = Duration::from_millis(40);

impl Downlink {
    fn jitter(&self, frame_samples: u32) -> JitterBuffer {
        JitterBuffer::new(JitterConfig {
            frame_samples,
            clock_rate: crate::media::jitter::CLOCK_RATE,
            min_delay: self.min_delay,
            max_delay: self.max_delay,
            capacity: 64,
            adaptive_floor: true,
        })
    }

    /// Run until `stop` is set.
    pub fn run(mut self) {
        let origin = Instant::now();
        let mut frame_samples = 960u32;
        let mut jb = self.jitter(frame_samples);
        let mut dec = match OpusDecoder::new() {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "no Opus decoder; downlink disabled");
                return;
            }
        };
        let mut rate = 0;
        let mut resampler = Resampler::new(PIPELINE_RATE, PIPELINE_RATE).expect("passthrough");
        let mut reported = jb.stats();
        let silence = vec![0i16; 5760];
        // Decoded frames in a row that were quiet (`is_quiet`).
        let mut quiet_run = 0u32;
        while !self.stop.load(Relaxed) {
            let now = origin.elapsed();
            loop {
                match self.events.try_recv() {
                    Ok(DownEvent::Open { frame_samples: f }) => {
                        debug!(frame_samples = f, "downlink flow opened");
                        frame_samples = f.clamp(120, 5760);
                        jb = self.jitter(frame_samples);
                        reported = jb.stats();
                    }
                    Ok(DownEvent::Packet {
                        at,
                        seq,
                        ts,
                        payload,
                    }) => {
                        jb.push(at.saturating_duration_since(origin), seq, ts, &payload);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if let Ok(tx) = self.new_rings.try_recv() {
                self.tx = tx;
            }
            let r = self.playback.rate.load(Relaxed);
            if r == 0 {
                thread::park_timeout(Duration::from_millis(20));
                continue;
            }
            if r != rate {
                match Resampler::new(PIPELINE_RATE, r) {
                    Ok(rs) => {
                        resampler = rs;
                        rate = r;
                    }
                    Err(e) => {
                        warn!(rate = r, error = %e, "cannot resample to the playback rate");
                        thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            let chunk = self.playback.chunk.load(Relaxed) as usize;
            let target = if chunk == 0 {
                RING_START.as_millis() as usize * rate as usize / 1000
            } else {
                chunk + RING_MARGIN.as_millis() as usize * rate as usize / 1000
            };
            // A frame at the device's rate (rounded up, the resampler's
            // carry included): never decode one the ring cannot take whole
            // (a frame longer than the whole ring, 120 ms at 96 kHz, goes
            // into an empty one and loses its tail rather than stalling).
            let frame_at_rate =
                ((frame_samples as usize * rate as usize).div_ceil(PIPELINE_RATE as usize) + 1)
                    .min(self.tx.samples.capacity());
            while self.tx.samples.len() < target && self.tx.room() >= frame_at_rate {
                let n = frame_samples as usize;
                // No stream yet (or none any more), nothing prebuffering:
                // a clockless device may drain its start-up lead.
                self.playback.source_idle.store(jb.is_idle(), Relaxed);
                let (pcm, decoded): (&[i16], bool) = match jb.pop(now) {
                    Playout::Packet(p) => (dec.decode(p).unwrap_or(&silence[..n]), true),
                    Playout::Fec(next) => (dec.decode_fec(next, n).unwrap_or(&silence[..n]), false),
                    Playout::Conceal => (dec.conceal(n).unwrap_or(&silence[..n]), false),
                    Playout::Idle => (&silence[..n], false),
                };
                // The delay is to shrink and this frame is deep in a pause:
                // drop it (decoded, so the decoder's state runs on) and play
                // the next.
                quiet_run = if is_quiet(pcm) { quiet_run + 1 } else { 0 };
                if decoded && quiet_run >= QUIET_RUN && jb.wants_quiet_skip() {
                    jb.quiet_skipped();
                    continue;
                }
                // Stage figures of the latency budget (docs/BENCHMARKS.md).
                if let Some(arrival) = jb.played_arrival() {
                    let hold = origin.elapsed().saturating_sub(arrival);
                    self.metrics.jitter_hold.observe_us(hold.as_micros() as u64);
                    let queued = self.tx.samples.len() as u64 * 1_000_000 / u64::from(rate);
                    self.metrics.playback_queue.observe_us(queued);
                }
                let tx = &mut self.tx;
                for &s in pcm {
                    resampler.push(f32::from(s) / 32_768.0, |v| {
                        let _ = tx.samples.enqueue(v);
                    });
                }
            }
            let s = jb.stats();
            let m = &self.metrics;
            m.down_received.add(s.received - reported.received);
            m.down_lost.add(s.lost - reported.lost);
            m.down_late.add(s.late - reported.late);
            m.down_concealed.add(s.concealed - reported.concealed);
            m.down_fec.add(s.fec_recovered - reported.fec_recovered);
            m.down_duplicates.add(s.duplicates - reported.duplicates);
            m.down_skipped.add(s.skipped - reported.skipped);
            m.down_resyncs.add(s.resyncs - reported.resyncs);
            m.down_jitter.set(s.jitter_ms / 1000.0);
            m.jitter_target.set(s.target_delay.as_secs_f64());
            reported = s;
            thread::park_timeout(Duration::from_millis(10));
        }
    }
}
