//! A software clock for clockless devices.
//!
//! Real sound cards pace their callbacks: capture can never run ahead of the
//! wall clock, and playback only runs ahead by the device buffer, which it
//! then plays out. ALSA's `file` and `null` plugins have no clock at all and
//! deliver or consume audio as fast as the CPU allows, which would turn a
//! 10-second speech file into a 5 ms burst (and playback into gigabytes of
//! silence).
//!
//! [`ClockGuard::after`] is called at the end of each callback. It does
//! nothing unless the device has run ahead of the wall clock by more than its
//! slack plus 1% of the elapsed time, which no clocked device does: clock
//! drift is parts per million, a capture device can lead by at most one
//! period ([`CAPTURE_SLACK`]), and a playback device by its buffer, which it
//! plays out before the margin is reached ([`PLAYBACK_SLACK`]). Past that
//! point the device is latched as clockless and the callback sleeps until
//! the device leads the wall clock by no more than its pace (a device
//! whose pace is below its slack is re-based at that moment instead of
//! sleeping the lead away)
//! ([`CAPTURE_SLACK`] for capture, whose lead makes the audio early, never
//! late; [`PLAYBACK_PACE`] for playback, whose lead is pure added latency:
//! a file written ahead of the clock plays every sample that much later).
//! Only a clockless device ever sleeps, and it has no deadline to miss.
//!
//! A re-based playback device still has the lead it ran before it was
//! found clockless (about [`PLAYBACK_SLACK`] of silence already in its
//! file). [`ClockGuard::after_quiet`] drains that lead in the silent
//! callbacks before the first audio, while the decoder has no stream to
//! play (`PlaybackShared::source_idle`): each sleeps up to its own length
//! once more, so the device falls back to the wall clock without stalling
//! audio or a jitter buffer that is filling.
//! What is left when audio starts stays (moving the playout in a pause of
//! speech is the jitter buffer's business, and PESQ hears it).

use std::time::{Duration, Instant};

/// Lead allowed to a capture device (a few 10 ms periods).
pub const CAPTURE_SLACK: Duration = Duration::from_millis(30);
/// Lead allowed to a playback device before it is found clockless (its
/// buffer, prefilled at start).
pub const PLAYBACK_SLACK: Duration = Duration::from_millis(100);
/// Lead kept by a playback device found clockless: none beyond the
/// callback's own buffer. It was [`PLAYBACK_SLACK`] until issue 17's
/// latency budget. The 100 ms a file device runs free before it is found
/// clockless are drained in silent callbacks only
/// ([`ClockGuard::after_quiet`]): one sleep of all of it would stall the
/// decoder while audio may already flow.
pub const PLAYBACK_PACE: Duration = Duration::ZERO;

/// Paces a callback to the wall clock when its device has no clock.
#[derive(Debug)]
pub struct ClockGuard {
    rate: f64,
    slack: Duration,
    pace: Duration,
    start: Option<Instant>,
    frames: u64,
    clockless: bool,
    /// Lead at the latch still to be drained in silent callbacks.
    debt: Duration,
    /// Lead drained so far (added to the media position).
    drained: Duration,
}

impl ClockGuard {
    /// A guard for a device running at `rate` frames per second that may
    /// legitimately lead the wall clock by `slack`.
    pub fn new(rate: u32, slack: Duration) -> Self {
        Self::with_pace(rate, slack, slack)
    }

    /// A guard that, once the device is found clockless (a lead over
    /// `slack`), keeps it at most `pace` ahead of the wall clock.
    pub fn with_pace(rate: u32, slack: Duration, pace: Duration) -> Self {
        ClockGuard {
            rate: f64::from(rate.max(1)),
            slack,
            pace: pace.min(slack),
            start: None,
            frames: 0,
            clockless: false,
            debt: Duration::ZERO,
            drained: Duration::ZERO,
        }
    }

    /// Whether the device was found to have no clock.
    pub fn is_clockless(&self) -> bool {
        self.clockless
    }

    /// Account for `frames` just delivered or consumed; sleeps only on a
    /// clockless device. Returns true the first time the device is latched
    /// as clockless.
    #[inline]
    pub fn after(&mut self, frames: usize) -> bool {
        self.after_quiet(frames, false)
    }

    /// As [`after`](Self::after), for a callback whose `frames` were all
    /// silence when `silent`: on a re-based clockless device it also
    /// drains up to their length of the lead it ran before the latch.
    #[inline]
    pub fn after_quiet(&mut self, frames: usize, silent: bool) -> bool {
        let now = Instant::now();
        let start = *self.start.get_or_insert(now);
        self.frames += frames as u64;
        if self.clockless && !self.debt.is_zero() {
            if silent {
                let d = Duration::from_secs_f64(frames as f64 / self.rate).min(self.debt);
                self.debt -= d;
                self.drained += d;
            } else {
                // Audio flows: what is left stays (a pause later is not the
                // place to move the playout, the jitter buffer is).
                self.debt = Duration::ZERO;
            }
        }
        let media = Duration::from_secs_f64(self.frames as f64 / self.rate) + self.drained;
        let wall = now - start;
        let mut latched = false;
        if !self.clockless && media > wall + self.slack + wall / 100 {
            self.clockless = true;
            latched = true;
            if self.pace < self.slack {
                // What it ran ahead (silence, before any audio) stays
                // written; from here it keeps only its pace, without one
                // long sleep that would stall whatever feeds it.
                self.debt = media.saturating_sub(wall + self.pace);
                self.start = Some(now);
                self.frames = 0;
                return latched;
            }
        }
        if self.clockless && media > wall + self.pace {
            std::thread::sleep(media - wall - self.pace);
        }
        latched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_device_never_latches() {
        let mut g = ClockGuard::new(48_000, CAPTURE_SLACK);
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(10));
            assert!(!g.after(480));
        }
        assert!(!g.is_clockless());
    }

    #[test]
    fn clockless_device_is_paced_to_real_time() {
        let mut g = ClockGuard::new(48_000, PLAYBACK_SLACK);
        let t0 = Instant::now();
        // 400 ms of audio delivered as fast as possible.
        for _ in 0..40 {
            g.after(480);
        }
        assert!(g.is_clockless());
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(280), "{took:?}");
        assert!(took < Duration::from_millis(600), "{took:?}");
    }

    #[test]
    fn clockless_playback_keeps_only_its_pace() {
        let mut g = ClockGuard::with_pace(48_000, PLAYBACK_SLACK, PLAYBACK_PACE);
        let t0 = Instant::now();
        // 400 ms of audio consumed as fast as possible: it runs free until
        // 100 ms + 1% ahead (11 callbacks), then the rest (29 callbacks,
        // 290 ms) is paced with no lead: no sleep of the 110 ms it gained.
        let mut latched_at = None;
        for i in 0..40 {
            if g.after(480) {
                latched_at = Some(i);
            }
        }
        assert_eq!(latched_at, Some(10));
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(280), "{took:?}");
        assert!(took < Duration::from_millis(390), "{took:?}");
    }

    #[test]
    fn clockless_playback_drains_its_lead_in_silence_before_audio() {
        // As above: 110 ms of lead at the latch. The silent callbacks after
        // it sleep the lead away, one extra callback length each at most.
        let mut g = ClockGuard::with_pace(48_000, PLAYBACK_SLACK, PLAYBACK_PACE);
        for _ in 0..11 {
            g.after_quiet(480, true);
        }
        assert!(g.is_clockless());
        let t0 = Instant::now();
        for _ in 0..5 {
            g.after_quiet(480, true);
        }
        // 50 ms of silence and 50 ms of the lead.
        let quiet = t0.elapsed();
        assert!(quiet >= Duration::from_millis(95), "{quiet:?}");
        assert!(quiet < Duration::from_millis(150), "{quiet:?}");
        // Audio: real time, and the 60 ms left of the lead stay.
        let t1 = Instant::now();
        for _ in 0..5 {
            g.after_quiet(480, false);
        }
        for _ in 0..10 {
            g.after_quiet(480, true);
        }
        let rest = t1.elapsed();
        assert!(rest >= Duration::from_millis(145), "{rest:?}");
        assert!(rest < Duration::from_millis(200), "{rest:?}");
    }
}
