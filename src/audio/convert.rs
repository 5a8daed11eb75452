//! Sample conversion between device formats and the 48 kHz mono pipeline.
//!
//! [`downmix`] and [`upmix`] run inside real-time callbacks: they only read
//! and write the slices they are given. [`Resampler`] runs on worker threads
//! and allocates its buffers once, at construction.

use cpal::{FromSample, Sample};
use rubato::{FftFixedIn, Resampler as _};

/// Average interleaved frames of `channels` into mono f32, calling `out` per
/// sample.
#[inline]
pub fn downmix<T>(data: &[T], channels: usize, mut out: impl FnMut(f32))
where
    T: Sample,
    f32: FromSample<T>,
{
    let channels = channels.max(1);
    let scale = 1.0 / channels as f32;
    for frame in data.chunks_exact(channels) {
        let sum: f32 = frame.iter().map(|s| f32::from_sample(*s)).sum();
        out(sum * scale);
    }
}

/// Fill interleaved `data` of `channels` from mono samples produced by `next`
/// (which returns `None` on underrun: the rest is left as silence). Returns
/// the frames filled from `next`.
#[inline]
pub fn upmix<T>(data: &mut [T], channels: usize, mut next: impl FnMut() -> Option<f32>) -> usize
where
    T: Sample + FromSample<f32>,
{
    let channels = channels.max(1);
    let mut filled = 0;
    for frame in data.chunks_exact_mut(channels) {
        let Some(v) = next() else { break };
        let s = T::from_sample(v.clamp(-1.0, 1.0));
        frame.fill(s);
        filled += 1;
    }
    filled
}

/// Convert f32 in [-1, 1] to i16 with saturation.
#[inline]
pub fn to_i16(v: f32) -> i16 {
    (v * 32_767.0).round().clamp(-32_768.0, 32_767.0) as i16
}

/// Fixed-ratio resampler between a device rate and 48 kHz (or back), fed a
/// sample at a time. A pass-through when the rates match.
pub struct Resampler {
    inner: Option<FftFixedIn<f32>>,
    input: Vec<Vec<f32>>,
    output: Vec<Vec<f32>>,
    chunk: usize,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("active", &self.inner.is_some())
            .field("chunk", &self.chunk)
            .finish()
    }
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32) -> Result<Self, rubato::ResamplerConstructionError> {
        if from == to {
            return Ok(Resampler {
                inner: None,
                input: Vec::new(),
                output: Vec::new(),
                chunk: 0,
            });
        }
        // 10 ms chunks keep the added latency small.
        let chunk = (from / 100) as usize;
        let r = FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 1, 1)?;
        let output = r.output_buffer_allocate(true);
        Ok(Resampler {
            inner: Some(r),
            input: vec![Vec::with_capacity(chunk)],
            output,
            chunk,
        })
    }

    /// Whether samples pass straight through.
    pub fn is_passthrough(&self) -> bool {
        self.inner.is_none()
    }

    /// Feed one input sample; converted samples are handed to `out`.
    #[inline]
    pub fn push(&mut self, v: f32, mut out: impl FnMut(f32)) {
        let Some(r) = self.inner.as_mut() else {
            out(v);
            return;
        };
        self.input[0].push(v);
        if self.input[0].len() == self.chunk {
            if let Ok((_, produced)) = r.process_into_buffer(&self.input, &mut self.output, None) {
                for &s in &self.output[0][..produced] {
                    out(s);
                }
            }
            self.input[0].clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downmix_averages_channels_of_any_format() {
        let mut got = Vec::new();
        downmix(&[i16::MAX, 0, i16::MIN, i16::MIN], 2, |v| got.push(v));
        assert_eq!(got.len(), 2);
        assert!(
            (got[0] - 0.5).abs() < 1e-3 && (got[1] + 1.0).abs() < 1e-3,
            "{got:?}"
        );
        got.clear();
        downmix(&[0u8, 255u8, 128u8], 1, |v| got.push(v));
        assert!(
            got[0] < -0.99 && got[1] > 0.98 && got[2].abs() < 0.01,
            "{got:?}"
        );
        got.clear();
        downmix(&[0.5f32, 0.25, 0.0, -1.0, 1.0, 0.0], 3, |v| got.push(v));
        assert_eq!(got, vec![0.25, 0.0]);
    }

    #[test]
    fn upmix_fills_and_reports_underrun() {
        let mut data = [0i16; 6];
        let mut src = [1.0f32, -0.5].into_iter();
        assert_eq!(upmix(&mut data, 2, || src.next()), 2);
        assert_eq!(data, [32_767, 32_767, -16_384, -16_384, 0, 0]);
    }

    #[test]
    fn resampler_preserves_duration_and_tone() {
        for from in [44_100u32, 16_000, 96_000] {
            let mut r = Resampler::new(from, 48_000).unwrap();
            let secs = 1.0;
            let n = (from as f64 * secs) as usize;
            let mut out = Vec::new();
            for i in 0..n {
                let t = i as f32 / from as f32;
                r.push((2.0 * std::f32::consts::PI * 440.0 * t).sin() * 0.5, |v| {
                    out.push(v)
                });
            }
            // Output lags by at most a chunk plus the filter delay.
            assert!(
                (46_000..=48_000).contains(&out.len()),
                "{from}: {} samples",
                out.len()
            );
            // Zero crossings of a 440 Hz tone over the settled second half.
            let half = &out[out.len() / 2..];
            let crossings = half
                .windows(2)
                .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
                .count();
            let expect = 440.0 * half.len() as f64 / 48_000.0;
            assert!(
                (crossings as f64 - expect).abs() < 3.0,
                "{from}: {crossings} vs {expect}"
            );
        }
        assert!(Resampler::new(48_000, 48_000).unwrap().is_passthrough());
    }
}
