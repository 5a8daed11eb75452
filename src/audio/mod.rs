//! Audio devices: capture and playback through cpal (ALSA on the box), the
//! lock-free rings between device callbacks and worker threads, and sample
//! conversion to and from the 48 kHz mono pipeline.
//!
//! Invariant: code that runs inside a device callback (`capture::build`,
//! `playback::build`, [`convert::downmix`], [`convert::upmix`], the ring
//! operations) never allocates, locks, logs or blocks; clockless devices are
//! paced by [`clock::ClockGuard`], the documented exception.

pub mod capture;
pub mod clock;
pub mod convert;
pub mod device;
pub mod playback;
pub mod ring;
pub mod supervisor;
