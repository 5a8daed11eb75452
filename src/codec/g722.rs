//! G.722 (ITU-T G.722) at 64 kb/s: 16 kHz wideband speech, one byte per two
//! samples, RTP payload type 9. RFC 3551 §4.5.2 keeps its RTP clock at 8000
//! Hz for historical reasons, so a 20 ms packet has 160 bytes, 320 samples
//! and advances the RTP timestamp by 160.
//!
//! The codec is ezk-g722's translation of the public-domain libg722
//! (SpanDSP/CMU); this wrapper fixes the mode (64 kb/s, unpacked, 16 kHz) and
//! copies into caller-owned buffers.

use ezk_g722::libg722::{Bitrate, decoder::Decoder, encoder::Encoder};

/// Audio samples per second.
pub const SAMPLE_RATE: u32 = 16_000;
/// RTP timestamp units per second (RFC 3551 §4.5.2).
pub const RTP_CLOCK: u32 = 8_000;

/// A G.722 encoder (state carries across packets of one stream).
pub struct G722Encoder(Encoder);

impl std::fmt::Debug for G722Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("G722Encoder")
    }
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Encoder {
    /// 64 kb/s, 16 kHz input.
    pub fn new() -> Self {
        // Encoder::new(rate, eight_k, packed)
        G722Encoder(Encoder::new(Bitrate::Mode1_64000, false, false))
    }

    /// Encode 16 kHz `pcm` (an even number of samples) into `out`; returns
    /// the bytes written, `pcm.len() / 2` when `out` is large enough.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> usize {
        let pcm = &pcm[..pcm.len().min(out.len() * 2) & !1];
        let coded = self.0.encode(pcm);
        let n = coded.len().min(out.len());
        out[..n].copy_from_slice(&coded[..n]);
        n
    }
}

/// A G.722 decoder.
pub struct G722Decoder(Decoder);

impl std::fmt::Debug for G722Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("G722Decoder")
    }
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    /// 64 kb/s, 16 kHz output.
    pub fn new() -> Self {
        // Decoder::new(rate, packed, eight_k)
        G722Decoder(Decoder::new(Bitrate::Mode1_64000, false, false))
    }

    /// Decode `data` into `out` (two samples per byte); returns the samples written.
    pub fn decode(&mut self, data: &[u8], out: &mut [i16]) -> usize {
        let data = &data[..data.len().min(out.len() / 2)];
        let pcm = self.0.decode(data);
        let n = pcm.len().min(out.len());
        out[..n].copy_from_slice(&pcm[..n]);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = i as f32 / SAMPLE_RATE as f32;
                ((2.0 * std::f32::consts::PI * hz * t).sin() * 8000.0) as i16
            })
            .collect()
    }

    /// Normalised cross-correlation at the best lag up to `max_lag`.
    fn best_correlation(a: &[i16], b: &[i16], max_lag: usize) -> f64 {
        (0..max_lag)
            .map(|lag| {
                let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
                for (x, y) in a.iter().zip(&b[lag..]) {
                    let (x, y) = (f64::from(*x), f64::from(*y));
                    ab += x * y;
                    aa += x * x;
                    bb += y * y;
                }
                ab / (aa.sqrt() * bb.sqrt()).max(1.0)
            })
            .fold(f64::MIN, f64::max)
    }

    #[test]
    fn wideband_tone_survives_a_round_trip() {
        // 5 kHz is above G.711's band; G.722 carries it.
        for hz in [440.0, 5_000.0] {
            let pcm = tone(hz, 3200);
            let mut enc = G722Encoder::new();
            let mut dec = G722Decoder::new();
            let mut decoded = Vec::new();
            for chunk in pcm.chunks(320) {
                let mut coded = [0u8; 160];
                assert_eq!(enc.encode(chunk, &mut coded), 160);
                let mut out = [0i16; 320];
                assert_eq!(dec.decode(&coded, &mut out), 320);
                decoded.extend_from_slice(&out);
            }
            // Skip the adaptation start; compare with the codec's delay allowed.
            let c = best_correlation(&pcm[800..2800], &decoded[800..], 64);
            assert!(c > 0.95, "{hz} Hz: correlation {c}");
        }
    }

    #[test]
    fn arbitrary_bytes_decode_without_panicking() {
        // Debug builds check integer overflow: random input must not trip it.
        let mut dec = G722Decoder::new();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut out = [0i16; 640];
        for _ in 0..200 {
            let data: Vec<u8> = (0..rng.usize(0..=320)).map(|_| rng.u8(..)).collect();
            let n = dec.decode(&data, &mut out);
            assert_eq!(n, data.len() * 2);
        }
        // Full-scale square waves drive the predictor hardest.
        let mut enc = G722Encoder::new();
        let loud: Vec<i16> = (0..3200)
            .map(|i| if (i / 7) % 2 == 0 { i16::MAX } else { i16::MIN })
            .collect();
        let mut coded = [0u8; 1600];
        assert_eq!(enc.encode(&loud, &mut coded), 1600);
        assert_eq!(dec.decode(&coded, &mut out[..]), 640);
    }

    #[test]
    fn short_output_buffers_bound_the_work() {
        let mut enc = G722Encoder::new();
        let mut small = [0u8; 10];
        assert_eq!(enc.encode(&[0; 320], &mut small), 10);
        let mut dec = G722Decoder::new();
        let mut pcm = [0i16; 7];
        assert_eq!(dec.decode(&[0; 100], &mut pcm), 6);
    }
}
