//! Opus encoding and decoding with buffers allocated once.
//!
//! The encoder is set up for speech over a lossy network: VoIP application,
//! in-band FEC planned for the configured loss, optional DTX. The decoder
//! offers the three things a jitter buffer asks of it: decode, recover a lost
//! frame from the next packet's FEC, and conceal.

use opus::{Application, Bitrate, Channels, Decoder, Encoder};
use std::time::Duration;
use thiserror::Error;

/// Opus encoder settings.
#[derive(Debug, Clone, Copy)]
pub struct CodecConfig {
    /// Frame duration: 10, 20, 40 or 60 ms.
    pub frame: Duration,
    /// Target bitrate, bits per second (6000..=128000).
    pub bitrate: u32,
    /// In-band forward error correction.
    pub fec: bool,
    /// Discontinuous transmission during silence.
    pub dtx: bool,
    /// Loss the encoder plans FEC for, percent.
    pub expected_loss_percent: u8,
    /// Encoder complexity 0..=10.
    pub complexity: u8,
}

impl Default for CodecConfig {
    /// Speech over a lossy network, what `[codec]` defaults to: 20 ms
    /// frames, 24 kb/s, in-band FEC planned for 5% loss, no DTX, complexity 9.
    fn default() -> Self {
        CodecConfig {
            frame: Duration::from_millis(20),
            bitrate: 24_000,
            fec: true,
            dtx: false,
            expected_loss_percent: 5,
            complexity: 9,
        }
    }
}

impl CodecConfig {
    /// Samples per frame at 48 kHz.
    pub fn frame_samples(&self) -> usize {
        (self.frame.as_millis() as usize) * 48
    }
}

/// Largest Opus packet (RFC 6716 §3.4 R2: 1275 bytes per frame; we send one frame).
pub const MAX_PACKET: usize = 1275;
/// Samples in the longest frame we handle (120 ms at 48 kHz).
pub const MAX_FRAME_SAMPLES: usize = 5760;
/// The RTP payload type voxgate uses for Opus (dynamic range).
pub const OPUS_PAYLOAD_TYPE: u8 = 111;

pub mod g711;
pub mod g722;
pub mod opus_packet;
pub mod telephony;

/// A libopus failure, with the operation that failed.
#[derive(Debug, Error)]
#[error("opus {op}: {source}")]
pub struct CodecError {
    op: &'static str,
    #[source]
    source: opus::Error,
}

fn ctx(op: &'static str) -> impl FnOnce(opus::Error) -> CodecError {
    move |source| CodecError { op, source }
}

/// A mono 48 kHz Opus encoder with its output buffer.
#[derive(Debug)]
pub struct OpusEncoder {
    enc: Encoder,
    frame_samples: usize,
    out: Box<[u8; MAX_PACKET]>,
}

impl OpusEncoder {
    /// Create and configure an encoder.
    pub fn new(cfg: &CodecConfig) -> Result<Self, CodecError> {
        Self::with_rate(cfg, 48_000)
    }

    /// An encoder for input at `rate` Hz (8, 12, 16, 24 or 48 kHz): a phone
    /// leg feeds G.711's 8 kHz or G.722's 16 kHz straight in, with no
    /// resampling. The packets are ordinary Opus (RTP clock 48 kHz).
    pub fn with_rate(cfg: &CodecConfig, rate: u32) -> Result<Self, CodecError> {
        let mut enc =
            Encoder::new(rate, Channels::Mono, Application::Voip).map_err(ctx("create"))?;
        enc.set_bitrate(Bitrate::Bits(cfg.bitrate as i32))
            .map_err(ctx("set bitrate"))?;
        enc.set_inband_fec(cfg.fec).map_err(ctx("set fec"))?;
        enc.set_packet_loss_perc(i32::from(cfg.expected_loss_percent))
            .map_err(ctx("set loss"))?;
        enc.set_dtx(cfg.dtx).map_err(ctx("set dtx"))?;
        enc.set_complexity(i32::from(cfg.complexity))
            .map_err(ctx("set complexity"))?;
        Ok(OpusEncoder {
            enc,
            frame_samples: (cfg.frame.as_micros() as usize * rate as usize) / 1_000_000,
            out: Box::new([0; MAX_PACKET]),
        })
    }

    /// Samples per frame this encoder expects.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Encode exactly one frame; returns the packet (valid until the next call).
    pub fn encode(&mut self, pcm: &[i16]) -> Result<&[u8], CodecError> {
        let n = self
            .enc
            .encode(pcm, &mut self.out[..])
            .map_err(ctx("encode"))?;
        Ok(&self.out[..n])
    }
}

/// A mono 48 kHz Opus decoder with its output buffer.
#[derive(Debug)]
pub struct OpusDecoder {
    dec: Decoder,
    pcm: Box<[i16; MAX_FRAME_SAMPLES]>,
}

impl OpusDecoder {
    /// Create a decoder.
    pub fn new() -> Result<Self, CodecError> {
        Self::with_rate(48_000)
    }

    /// A decoder producing `rate` Hz (8, 12, 16, 24 or 48 kHz) output.
    pub fn with_rate(rate: u32) -> Result<Self, CodecError> {
        Ok(OpusDecoder {
            dec: Decoder::new(rate, Channels::Mono).map_err(ctx("create decoder"))?,
            pcm: Box::new([0; MAX_FRAME_SAMPLES]),
        })
    }

    /// Decode a packet.
    pub fn decode(&mut self, packet: &[u8]) -> Result<&[i16], CodecError> {
        let n = self
            .dec
            .decode(packet, &mut self.pcm[..], false)
            .map_err(ctx("decode"))?;
        Ok(&self.pcm[..n])
    }

    /// Recover `samples` of a lost frame from the FEC data in the packet that
    /// follows it.
    pub fn decode_fec(&mut self, next: &[u8], samples: usize) -> Result<&[i16], CodecError> {
        let samples = samples.min(MAX_FRAME_SAMPLES);
        let n = self
            .dec
            .decode(next, &mut self.pcm[..samples], true)
            .map_err(ctx("decode fec"))?;
        Ok(&self.pcm[..n])
    }

    /// Conceal `samples` of lost audio (packet loss concealment).
    pub fn conceal(&mut self, samples: usize) -> Result<&[i16], CodecError> {
        let samples = samples.min(MAX_FRAME_SAMPLES);
        let n = self
            .dec
            .decode(&[], &mut self.pcm[..samples], false)
            .map_err(ctx("conceal"))?;
        Ok(&self.pcm[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(frame_ms: u64) -> CodecConfig {
        CodecConfig {
            frame: Duration::from_millis(frame_ms),
            ..CodecConfig::default()
        }
    }

    fn tone(n: usize, offset: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = (i + offset) as f32 / 48_000.0;
                (8000.0 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn every_frame_size_round_trips() {
        for ms in [10, 20, 40, 60] {
            let c = cfg(ms);
            let mut enc = OpusEncoder::new(&c).unwrap();
            let mut dec = OpusDecoder::new().unwrap();
            let n = c.frame_samples();
            let mut energy = 0f64;
            for k in 0..10 {
                let pkt = enc.encode(&tone(n, k * n)).unwrap().to_vec();
                assert!(pkt.len() <= MAX_PACKET);
                let pcm = dec.decode(&pkt).unwrap();
                assert_eq!(pcm.len(), n, "{ms} ms");
                energy += pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
            }
            assert!(energy > 1e9, "decoded audio is silent at {ms} ms");
        }
    }

    #[test]
    fn fec_and_plc_produce_a_frame() {
        let c = cfg(20);
        let mut enc = OpusEncoder::new(&c).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let pkts: Vec<Vec<u8>> = (0..5)
            .map(|k| enc.encode(&tone(960, k * 960)).unwrap().to_vec())
            .collect();
        dec.decode(&pkts[0]).unwrap();
        assert_eq!(dec.decode_fec(&pkts[2], 960).unwrap().len(), 960);
        assert_eq!(dec.decode(&pkts[2]).unwrap().len(), 960);
        assert_eq!(dec.conceal(960).unwrap().len(), 960);
    }
}
