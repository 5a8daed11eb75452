//! Setup's audio checks on the box itself: a live level meter of the
//! microphone, and a test tone on the speaker. The cpal callbacks only
//! touch atomics (the peak of what arrived, the samples played), as the
//! daemon's do; the meter is drawn by the calling thread.

use crate::audio::device::{self, Dir};
use cpal::traits::{DeviceTrait, StreamTrait};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Full scale of the peak as the callback stores it.
const FULL: f32 = 32768.0;

/// dBFS of a peak in [0, 1] (silence is -96).
pub fn dbfs(peak: f32) -> f32 {
    if peak <= 1.0 / FULL {
        -96.0
    } else {
        20.0 * peak.log10()
    }
}

/// A bar of `width` cells for `db` between -60 and 0 dBFS.
pub fn bar(db: f32, width: usize) -> String {
    let filled = (((db + 60.0) / 60.0).clamp(0.0, 1.0) * width as f32).round() as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// Listen to the capture device `name` (`None`: the default) for `time`,
/// calling `show` with the peak (0..1) of every 100 ms; returns the
/// loudest peak.
pub fn meter(
    name: Option<&str>,
    time: Duration,
    stop: &AtomicBool,
    mut show: impl FnMut(f32),
) -> Result<f32, String> {
    let dev = device::find(name, Dir::Capture).map_err(|e| e.to_string())?;
    let cfg = device::choose_config(&dev, Dir::Capture).map_err(|e| e.to_string())?;
    let sc = device::stream_config(&cfg, 20);
    let peak = Arc::new(AtomicU32::new(0));
    let p = peak.clone();
    let stream = dev
        .build_input_stream_raw(
            sc,
            cfg.sample_format(),
            move |d: &cpal::Data, _: &cpal::InputCallbackInfo| {
                let m = if let Some(s) = d.as_slice::<i16>() {
                    s.iter().map(|x| x.unsigned_abs() as u32).max()
                } else if let Some(s) = d.as_slice::<f32>() {
                    s.iter().map(|x| (x.abs().min(1.0) * FULL) as u32).max()
                } else {
                    None
                };
                if let Some(m) = m {
                    p.fetch_max(m, Ordering::Relaxed);
                }
            },
            |_| {},
            Some(Duration::from_secs(2)),
        )
        .map_err(|e| format!("cannot open the microphone: {e}"))?;
    stream
        .play()
        .map_err(|e| format!("cannot start the microphone: {e}"))?;
    let end = Instant::now() + time;
    let mut loudest = 0f32;
    while Instant::now() < end && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        let v = peak.swap(0, Ordering::Relaxed) as f32 / FULL;
        loudest = loudest.max(v);
        show(v);
    }
    drop(stream);
    Ok(loudest)
}

/// Play a 440 Hz tone at -12 dBFS for `time` on the playback device
/// `name` (`None`: the default); returns the seconds of it played.
pub fn tone(name: Option<&str>, time: Duration) -> Result<f64, String> {
    let dev = device::find(name, Dir::Playback).map_err(|e| e.to_string())?;
    let cfg = device::choose_config(&dev, Dir::Playback).map_err(|e| e.to_string())?;
    let sc = device::stream_config(&cfg, 20);
    let rate = sc.sample_rate as f32;
    let channels = usize::from(sc.channels.max(1));
    let total = (time.as_secs_f32() * rate) as u64;
    let played = Arc::new(AtomicU64::new(0));
    let n = played.clone();
    let sample = move |i: u64| {
        if i >= total {
            0.0
        } else {
            0.25 * (i as f32 * 440.0 * std::f32::consts::TAU / rate).sin()
        }
    };
    let stream = dev
        .build_output_stream_raw(
            sc,
            cfg.sample_format(),
            move |d: &mut cpal::Data, _: &cpal::OutputCallbackInfo| {
                let start = n.load(Ordering::Relaxed);
                let frames = if let Some(s) = d.as_slice_mut::<i16>() {
                    for (k, f) in s.chunks_mut(channels).enumerate() {
                        f.fill((sample(start + k as u64) * 32767.0) as i16);
                    }
                    s.len() / channels
                } else if let Some(s) = d.as_slice_mut::<f32>() {
                    for (k, f) in s.chunks_mut(channels).enumerate() {
                        f.fill(sample(start + k as u64));
                    }
                    s.len() / channels
                } else {
                    0
                };
                n.store(start + frames as u64, Ordering::Relaxed);
            },
            |_| {},
            Some(Duration::from_secs(2)),
        )
        .map_err(|e| format!("cannot open the speaker: {e}"))?;
    stream
        .play()
        .map_err(|e| format!("cannot start the speaker: {e}"))?;
    let end = Instant::now() + time + Duration::from_millis(200);
    while Instant::now() < end && played.load(Ordering::Relaxed) < total {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A clocked device plays what is queued; a clockless one is done.
    std::thread::sleep(Duration::from_millis(100));
    drop(stream);
    Ok(played.load(Ordering::Relaxed).min(total) as f64 / f64::from(rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_bars() {
        assert_eq!(dbfs(0.0), -96.0);
        assert!((dbfs(1.0)).abs() < 1e-6);
        assert!((dbfs(8000.0 / FULL) + 12.25).abs() < 0.1);
        assert_eq!(bar(0.0, 10), "[##########]");
        assert_eq!(bar(-96.0, 10), "[..........]");
        assert_eq!(bar(-30.0, 10), "[#####.....]");
        assert_eq!(bar(5.0, 4), "[####]");
    }
}
