//! The lock-free hand-over between a real-time audio callback and a worker
//! thread: a heapless SPSC queue of mono samples plus a small queue of
//! timing marks.
//!
//! The queues are allocated once and live for the whole process (a capture or
//! playback path is set up once per `run`). The producer half moves into the
//! device callback; when a device is closed, [`Returning`] hands the producer
//! back so that the reopened device reuses the same queue. Enqueue and dequeue
//! are single atomic loads and stores: no allocation, no lock, no syscall.

use heapless::spsc::{Consumer, Producer, Queue};
use std::sync::mpsc;
use std::time::Instant;

/// Capacity of the capture ring in samples (170 ms at 48 kHz, the rate the
/// gateway asks every device for). The encoder drains it every frame, so it
/// holds one device period and a frame at most; the rest absorbs the
/// encoder thread's scheduling hiccups. Every slot is written in turn, so
/// every page of the ring stays resident: it was 32,768 samples (680 ms,
/// 128 KiB) until the static binary's memory was measured (issue 17).
pub const CAPTURE_RING_SAMPLES: usize = 8_192;
/// Capacity of the playback ring in samples (170 ms at 48 kHz). The
/// decoder thread keeps it one device callback plus
/// `gateway::downlink::RING_MARGIN` full, and adds a frame (at most 120 ms)
/// at a time; it never adds a frame that would not fit
/// ([`RingTx::room`]).
pub const PLAYBACK_RING_SAMPLES: usize = 8_192;
/// Timing marks kept in flight.
pub const MARKS: usize = 256;

/// When the callback that delivered the sample with index `end - 1` ran.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    /// Samples delivered through the ring up to and including this callback.
    pub end: u64,
    /// When the callback ran.
    pub at: Instant,
}

/// Producer side: owned by the device callback.
pub struct RingTx {
    /// Samples.
    pub samples: Producer<'static, f32>,
    /// Timing marks.
    pub marks: Producer<'static, Mark>,
}

/// Consumer side: owned by the worker thread.
pub struct RingRx {
    /// Samples.
    pub samples: Consumer<'static, f32>,
    /// Timing marks.
    pub marks: Consumer<'static, Mark>,
}

impl std::fmt::Debug for RingTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RingTx({} samples queued)", self.samples.len())
    }
}

impl std::fmt::Debug for RingRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RingRx({} samples queued)", self.samples.len())
    }
}

impl RingTx {
    /// Samples that can be enqueued now.
    pub fn room(&self) -> usize {
        self.samples.capacity() - self.samples.len()
    }
}

/// Allocate the queues for one audio path (once per process per direction,
/// and again if a reopened device did not hand its half back) with room for
/// `N` samples: [`CAPTURE_RING_SAMPLES`] or [`PLAYBACK_RING_SAMPLES`].
pub fn ring<const N: usize>() -> (RingTx, RingRx) {
    let samples: &'static mut Queue<f32, N> = Box::leak(Box::new(Queue::new()));
    let marks: &'static mut Queue<Mark, MARKS> = Box::leak(Box::new(Queue::new()));
    let (sp, sc) = samples.split();
    let (mp, mc) = marks.split();
    (
        RingTx {
            samples: sp,
            marks: mp,
        },
        RingRx {
            samples: sc,
            marks: mc,
        },
    )
}

/// Wraps a value moved into a device callback and sends it back when the
/// callback is dropped (which the audio backend does off the real-time path,
/// when the stream is closed).
#[derive(Debug)]
pub struct Returning<T> {
    inner: Option<T>,
    home: mpsc::Sender<T>,
}

impl<T> Returning<T> {
    /// Wrap `value`; it comes back through `home` on drop.
    pub fn new(value: T, home: mpsc::Sender<T>) -> Self {
        Returning {
            inner: Some(value),
            home,
        }
    }

    /// The wrapped value.
    pub fn get(&mut self) -> &mut T {
        // Only `Drop` takes the value out.
        self.inner.as_mut().expect("value present until drop")
    }
}

impl<T> Drop for Returning<T> {
    fn drop(&mut self) {
        if let Some(v) = self.inner.take() {
            let _ = self.home.send(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_comes_home_on_drop() {
        let (tx, mut rx) = ring::<16>();
        let (home, back) = mpsc::channel();
        let mut r = Returning::new(tx, home);
        r.get().samples.enqueue(0.5).unwrap();
        drop(r);
        let mut tx = back.try_recv().expect("producer returned");
        tx.samples.enqueue(0.25).unwrap();
        assert_eq!(rx.samples.dequeue(), Some(0.5));
        assert_eq!(rx.samples.dequeue(), Some(0.25));
        assert_eq!(rx.samples.dequeue(), None);
    }

    #[test]
    fn room_counts_down_to_zero() {
        let (mut tx, mut rx) = ring::<8>();
        // heapless keeps one slot free: N - 1 samples fit.
        assert_eq!(tx.room(), 7);
        for i in 0..7 {
            tx.samples.enqueue(i as f32).unwrap();
        }
        assert_eq!(tx.room(), 0);
        assert!(tx.samples.enqueue(9.0).is_err());
        rx.samples.dequeue();
        assert_eq!(tx.room(), 1);
    }
}
