//! The encoder thread: capture ring → 48 kHz → Opus → RTP → QUIC datagram.
//!
//! Woken by the capture callback, it drains the ring, resamples when the
//! device is not at 48 kHz, encodes each full frame, frames it as
//! RTP-over-QUIC into a buffer allocated once, and hands it to the current
//! relay connection. While no connection is up, frames are counted and
//! dropped: live audio is never queued behind a reconnect.

use super::metrics::GatewayMetrics;
use crate::audio::capture::CaptureShared;
use crate::audio::convert::{Resampler, to_i16};
use crate::audio::device::PIPELINE_RATE;
use crate::audio::ring::RingRx;
use crate::codec::OpusEncoder;
use crate::media::sender::RtpSender;
use crate::transport::link::ConnSlot;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::thread;
use std::time::{Duration, Instant};
use tracing::{error, warn};

/// Everything the encoder thread owns.
#[derive(Debug)]
pub struct Uplink {
    /// Consumer half of the capture ring.
    pub rx: RingRx,
    /// Replacement rings, sent when a wedged device had to be abandoned.
    pub new_rings: std::sync::mpsc::Receiver<RingRx>,
    /// Capture rate and overrun counters.
    pub capture: Arc<CaptureShared>,
    /// The Opus encoder.
    pub encoder: OpusEncoder,
    /// RTP state of the uplink flow.
    pub rtp: RtpSender,
    /// Where datagrams go.
    pub conn: Arc<ConnSlot>,
    /// Counters.
    pub metrics: Arc<GatewayMetrics>,
    /// Set to stop the thread.
    pub stop: Arc<AtomicBool>,
}

impl Uplink {
    /// Run until `stop` is set.
    pub fn run(mut self) {
        let n = self.encoder.frame_samples();
        let mut frame: Vec<i16> = Vec::with_capacity(n * 4);
        let mut datagram = vec![0u8; 1500];
        let mut rate = 0;
        let mut resampler = Resampler::new(PIPELINE_RATE, PIPELINE_RATE).expect("passthrough");
        let mut consumed: u64 = 0;
        let mut overruns_seen = self.capture.overruns.get();
        let mut conn_gen = 0;
        let mut conn = None;
        while !self.stop.load(Relaxed) {
            let r = self.capture.rate.load(Relaxed);
            if r != 0 && r != rate {
                match Resampler::new(r, PIPELINE_RATE) {
                    Ok(rs) => {
                        resampler = rs;
                        rate = r;
                    }
                    Err(e) => {
                        error!(rate = r, error = %e, "cannot resample capture rate");
                        thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            if let Ok(rx) = self.new_rings.try_recv() {
                self.rx = rx;
            }
            // Everything delivered up to here is in the ring, so once it
            // is drained, `delivered_before` samples have been consumed.
            let delivered_before = self.capture.delivered.load(SeqCst);
            let mut any = false;
            while let Some(v) = self.rx.samples.dequeue() {
                any = true;
                consumed += 1;
                resampler.push(v, |s| frame.push(to_i16(s)));
                while frame.len() >= n {
                    self.metrics.frames_captured.inc();
                    let at = self.mark_for(consumed);
                    let overruns = self.capture.overruns.get();
                    if overruns != overruns_seen {
                        let lost = (overruns - overruns_seen) * u64::from(PIPELINE_RATE)
                            / u64::from(rate.max(1));
                        self.rtp.skip(lost as u32);
                        overruns_seen = overruns;
                    }
                    let len = match self.encoder.encode(&frame[..n]) {
                        Ok(pkt) => {
                            self.metrics.frames_encoded.inc();
                            self.rtp.frame(pkt, n as u32, &mut datagram)
                        }
                        Err(e) => {
                            warn!(error = %e, "frame not encoded");
                            self.rtp.skip(n as u32);
                            None
                        }
                    };
                    frame.drain(..n);
                    let Some(len) = len else { continue };
                    if let Some(c) = self.conn.current_if_changed(&mut conn_gen) {
                        conn = c;
                    }
                    let sent = conn.as_ref().is_some_and(|c| {
                        c.send_datagram(bytes::Bytes::copy_from_slice(&datagram[..len]))
                            .is_ok()
                    });
                    if sent {
                        self.metrics.frames_sent.inc();
                        if let Some(at) = at {
                            self.metrics
                                .capture_to_send
                                .observe_us(at.elapsed().as_micros() as u64);
                        }
                    } else {
                        self.metrics.frames_unsent.inc();
                    }
                }
            }
            // Ask to be woken when the rest of the frame has arrived, in
            // device samples, rounded down by an eighth (early is only a
            // spurious wake-up, late would delay the frame by a period).
            // No device yet (rate 0): woken by every callback.
            let need = (n - frame.len().min(n)) as u64 * u64::from(rate) / u64::from(PIPELINE_RATE);
            let wake_at = if need == 0 {
                0
            } else {
                delivered_before + need - need / 8
            };
            self.capture.wake_at.store(wake_at, SeqCst);
            // Park unless the frame completed meanwhile (the callback either
            // sees this `wake_at` and unparks us, or we see its `delivered`).
            let ready = if wake_at == 0 {
                any
            } else {
                self.capture.delivered.load(SeqCst) >= wake_at
            };
            if !ready {
                thread::park_timeout(Duration::from_millis(50));
            }
        }
    }

    /// When the callback that delivered sample number `consumed` ran.
    fn mark_for(&mut self, consumed: u64) -> Option<Instant> {
        while let Some(m) = self.rx.marks.peek() {
            if m.end < consumed {
                self.rx.marks.dequeue();
            } else {
                return Some(m.at);
            }
        }
        None
    }
}
