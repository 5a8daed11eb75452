//! The codecs desk phones speak (RFC 3551 static payload types and Opus),
//! with one interface to turn their RTP payloads into PCM at the codec's own
//! rate and back. Opus needs no PCM step on a phone leg: it is forwarded.

use super::g711::{self, Law};
use super::g722::{self, G722Decoder, G722Encoder};

/// A phone-side audio codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhoneCodec {
    /// G.711 μ-law, 8 kHz, static payload type 0.
    Pcmu,
    /// G.711 A-law, 8 kHz, static payload type 8.
    Pcma,
    /// G.722 64 kb/s, 16 kHz audio on an 8 kHz RTP clock, static payload type 9.
    G722,
    /// Opus (RFC 7587), 48 kHz RTP clock, dynamic payload type.
    Opus,
}

impl PhoneCodec {
    /// PCM samples per second.
    pub fn sample_rate(self) -> u32 {
        match self {
            PhoneCodec::Pcmu | PhoneCodec::Pcma => 8_000,
            PhoneCodec::G722 => g722::SAMPLE_RATE,
            PhoneCodec::Opus => 48_000,
        }
    }

    /// RTP timestamp units per second.
    pub fn rtp_clock(self) -> u32 {
        match self {
            PhoneCodec::Pcmu | PhoneCodec::Pcma => 8_000,
            PhoneCodec::G722 => g722::RTP_CLOCK,
            PhoneCodec::Opus => 48_000,
        }
    }

    /// The RFC 3551 static payload type, if the codec has one.
    pub fn static_payload_type(self) -> Option<u8> {
        match self {
            PhoneCodec::Pcmu => Some(0),
            PhoneCodec::Pcma => Some(8),
            PhoneCodec::G722 => Some(9),
            PhoneCodec::Opus => None,
        }
    }

    /// The encoding name of SDP's `a=rtpmap` (case-insensitive on input).
    pub fn encoding_name(self) -> &'static str {
        match self {
            PhoneCodec::Pcmu => "PCMU",
            PhoneCodec::Pcma => "PCMA",
            PhoneCodec::G722 => "G722",
            PhoneCodec::Opus => "opus",
        }
    }

    /// Payload bytes of a packet covering `samples` PCM samples (not for Opus).
    pub fn payload_len(self, samples: usize) -> usize {
        match self {
            PhoneCodec::G722 => samples / 2,
            _ => samples,
        }
    }
}

/// Decodes phone payloads to PCM at [`PhoneCodec::sample_rate`].
#[derive(Debug)]
pub enum PcmDecoder {
    /// PCMU or PCMA (stateless).
    G711(Law),
    /// G.722 (adaptive state).
    G722(Box<G722Decoder>),
}

impl PcmDecoder {
    /// A decoder for `codec`, or `None` for Opus (forwarded, not decoded here).
    pub fn new(codec: PhoneCodec) -> Option<Self> {
        match codec {
            PhoneCodec::Pcmu => Some(PcmDecoder::G711(Law::Mu)),
            PhoneCodec::Pcma => Some(PcmDecoder::G711(Law::A)),
            PhoneCodec::G722 => Some(PcmDecoder::G722(Box::default())),
            PhoneCodec::Opus => None,
        }
    }

    /// Decode `payload` into `out`; returns the samples written.
    pub fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        match self {
            PcmDecoder::G711(law) => g711::decode(*law, payload, out),
            PcmDecoder::G722(d) => d.decode(payload, out),
        }
    }
}

/// Encodes PCM at [`PhoneCodec::sample_rate`] into phone payloads.
#[derive(Debug)]
pub enum PcmEncoder {
    /// PCMU or PCMA.
    G711(Law),
    /// G.722.
    G722(Box<G722Encoder>),
}

impl PcmEncoder {
    /// An encoder for `codec`, or `None` for Opus.
    pub fn new(codec: PhoneCodec) -> Option<Self> {
        match codec {
            PhoneCodec::Pcmu => Some(PcmEncoder::G711(Law::Mu)),
            PhoneCodec::Pcma => Some(PcmEncoder::G711(Law::A)),
            PhoneCodec::G722 => Some(PcmEncoder::G722(Box::default())),
            PhoneCodec::Opus => None,
        }
    }

    /// Encode `pcm` into `out`; returns the bytes written.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> usize {
        match self {
            PcmEncoder::G711(law) => g711::encode(*law, pcm, out),
            PcmEncoder::G722(e) => e.encode(pcm, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_payload_types_follow_rfc_3551() {
        assert_eq!(PhoneCodec::Pcmu.static_payload_type(), Some(0));
        assert_eq!(PhoneCodec::Pcma.static_payload_type(), Some(8));
        assert_eq!(PhoneCodec::G722.static_payload_type(), Some(9));
        assert_eq!(PhoneCodec::Opus.static_payload_type(), None);
        // G.722: 16 kHz audio, 8 kHz clock, 160 bytes per 20 ms.
        assert_eq!(PhoneCodec::G722.sample_rate(), 16_000);
        assert_eq!(PhoneCodec::G722.rtp_clock(), 8_000);
        assert_eq!(PhoneCodec::G722.payload_len(320), 160);
        assert_eq!(PhoneCodec::Pcmu.payload_len(160), 160);
        assert!(PcmDecoder::new(PhoneCodec::Opus).is_none());
    }

    #[test]
    fn each_pcm_codec_round_trips_a_tone() {
        for codec in [PhoneCodec::Pcmu, PhoneCodec::Pcma, PhoneCodec::G722] {
            let rate = codec.sample_rate() as usize;
            let n = rate / 50;
            let mut enc = PcmEncoder::new(codec).unwrap();
            let mut dec = PcmDecoder::new(codec).unwrap();
            let (mut err, mut sig) = (0f64, 0f64);
            for frame in 0..20 {
                let pcm: Vec<i16> = (0..n)
                    .map(|i| {
                        let t = (frame * n + i) as f64 / rate as f64;
                        ((2.0 * std::f64::consts::PI * 300.0 * t).sin() * 6000.0) as i16
                    })
                    .collect();
                let mut payload = [0u8; 400];
                let len = enc.encode(&pcm, &mut payload);
                assert_eq!(len, codec.payload_len(n));
                let mut out = vec![0i16; n];
                assert_eq!(dec.decode(&payload[..len], &mut out), n);
                if frame >= 10 && codec != PhoneCodec::G722 {
                    for (a, b) in pcm.iter().zip(&out) {
                        err += (f64::from(*a) - f64::from(*b)).powi(2);
                        sig += f64::from(*a).powi(2);
                    }
                }
            }
            if codec != PhoneCodec::G722 {
                // G.711's SNR is about 38 dB on a tone like this.
                let snr = 10.0 * (sig / err.max(1.0)).log10();
                assert!(snr > 30.0, "{codec:?}: SNR {snr:.1} dB");
            }
        }
    }
}
