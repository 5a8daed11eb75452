//! Sans-IO inspection of Opus packets (RFC 6716 §3).
//!
//! Guarantees:
//! - No I/O, no allocation, no `unsafe`, and no panic on any input.
//! - [`packet_samples`] accepts exactly the packets that libopus's packet
//!   parser accepts (RFC 6716 §3.4 rules R1–R7, for non-self-delimited
//!   packets), so a packet that passes here will not be rejected by a decoder
//!   as malformed.
//! - Durations are always in 48 kHz samples, whatever the packet's coded
//!   bandwidth (the RTP clock rate for Opus is 48 kHz too, RFC 7587 §4.1).

/// Largest duration an Opus packet may carry: 120 ms at 48 kHz.
pub const MAX_PACKET_SAMPLES: u32 = 5760;

/// Largest size of a single Opus frame in bytes (RFC 6716 §3.4, R2).
pub const MAX_FRAME_BYTES: usize = 1275;

/// Size cap applied to whole packets by the recorder and the Ogg reader.
///
/// RFC 6716 places no bound on padding, but the largest unpadded packet is
/// 48 frames of 1275 bytes plus framing (about 61.3 kB); anything larger is
/// either padding abuse or corruption, so callers reject it.
pub const MAX_PACKET_BYTES: usize = 61_440;

/// Why a byte string is not a valid Opus packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpusPacketError {
    /// The packet has no bytes, so there is no TOC byte (R1).
    #[error("empty Opus packet")]
    Empty,
    /// A code 3 packet declares zero frames (R5).
    #[error("Opus code 3 packet declares zero frames")]
    ZeroFrames,
    /// The packet's frames add up to more than 120 ms (R5).
    #[error("Opus packet lasts {samples} samples, more than 120 ms")]
    TooLong {
        /// Declared duration in 48 kHz samples.
        samples: u32,
    },
    /// One frame is larger than 1275 bytes (R2).
    #[error("Opus frame of {len} bytes exceeds 1275 bytes")]
    FrameTooLarge {
        /// Size of the offending frame.
        len: usize,
    },
    /// Frame lengths, frame count byte or padding do not fit the packet.
    #[error("malformed Opus packet: {0}")]
    Malformed(&'static str),
}

/// Duration in 48 kHz samples of one frame of the given TOC byte's
/// configuration (bits 7–3), e.g. 960 for a 20 ms configuration.
pub fn frame_samples(toc: u8) -> u32 {
    let config = toc >> 3;
    let index = u32::from(config & 3);
    match config {
        // SILK-only: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1920, 2880][index as usize],
        // Hybrid: 10, 20 ms.
        12..=15 => 480 << (index & 1),
        // CELT-only: 2.5, 5, 10, 20 ms.
        _ => 120 << index,
    }
}

/// Returns the duration of an Opus packet in 48 kHz samples.
///
/// Handles frame packing codes 0–3 (RFC 6716 §3.2), including the code 3
/// frame count byte, padding and VBR length fields, and validates the framing
/// the way libopus does. Never panics.
pub fn packet_samples(packet: &[u8]) -> Result<u32, OpusPacketError> {
    use OpusPacketError::Malformed;
    let (&toc, rest) = packet.split_first().ok_or(OpusPacketError::Empty)?;
    let per_frame = frame_samples(toc);
    let frames: u32 = match toc & 3 {
        0 => {
            check_frame(rest.len())?;
            1
        }
        1 => {
            if rest.len() % 2 != 0 {
                return Err(Malformed("code 1 payload has odd length"));
            }
            check_frame(rest.len() / 2)?;
            2
        }
        2 => {
            let (first, used) = parse_size(rest).ok_or(Malformed("code 2 length missing"))?;
            let body = rest.len() - used;
            if first > body {
                return Err(Malformed("code 2 first frame longer than packet"));
            }
            check_frame(body - first)?;
            2
        }
        _ => {
            let (&count_byte, mut data) = rest
                .split_first()
                .ok_or(Malformed("code 3 frame count byte missing"))?;
            let count = u32::from(count_byte & 0x3F);
            if count == 0 {
                return Err(OpusPacketError::ZeroFrames);
            }
            if per_frame * count > MAX_PACKET_SAMPLES {
                return Err(OpusPacketError::TooLong {
                    samples: per_frame * count,
                });
            }
            let mut len = data.len();
            if count_byte & 0x40 != 0 {
                // Padding length bytes: 255 means "254 more and another byte".
                loop {
                    let (&p, tail) = match data.split_first() {
                        Some(split) if len > 0 => split,
                        _ => return Err(Malformed("code 3 padding length truncated")),
                    };
                    data = tail;
                    len -= 1;
                    let pad = if p == 255 { 254 } else { usize::from(p) };
                    len = len
                        .checked_sub(pad)
                        .ok_or(Malformed("code 3 padding longer than packet"))?;
                    if p != 255 {
                        break;
                    }
                }
            }
            if count_byte & 0x80 != 0 {
                // VBR: count - 1 explicit lengths, the last frame takes the rest.
                for _ in 1..count {
                    let (size, used) = parse_size(&data[..len.min(data.len())])
                        .ok_or(Malformed("code 3 frame length truncated"))?;
                    data = &data[used..];
                    len = len
                        .checked_sub(used + size)
                        .ok_or(Malformed("code 3 frame longer than packet"))?;
                }
                check_frame(len)?;
            } else {
                // CBR: all frames share the remaining bytes evenly.
                if len % count as usize != 0 {
                    return Err(Malformed("code 3 CBR payload not divisible by frame count"));
                }
                check_frame(len / count as usize)?;
            }
            count
        }
    };
    let total = per_frame * frames;
    if total > MAX_PACKET_SAMPLES {
        return Err(OpusPacketError::TooLong { samples: total });
    }
    Ok(total)
}

/// Returns a one-byte Opus packet that decoders treat as one lost frame.
///
/// The packet keeps the configuration (mode, bandwidth, frame size) and the
/// stereo flag of `template_toc`, uses frame packing code 0, and carries a
/// zero-length frame; libopus runs packet loss concealment for frames of
/// 0 or 1 byte. Its duration is [`frame_samples`]`(template_toc)`.
pub fn lost_frame_packet(template_toc: u8) -> [u8; 1] {
    [template_toc & !3]
}

/// Like [`lost_frame_packet`], but with a frame duration of `samples`
/// (one of 120, 240, 480, 960, 1920, 2880).
///
/// Keeps the template's mode and bandwidth when that mode has this frame
/// size, otherwise switches to CELT (for 2.5/5 ms) or SILK (for 40/60 ms) at
/// the nearest bandwidth. Returns `None` for any other duration.
pub fn lost_frame_packet_of(template_toc: u8, samples: u32) -> Option<[u8; 1]> {
    let config = template_toc >> 3;
    // Base configuration (10 ms or 2.5 ms entry) of each mode at the
    // bandwidth nearest to the template's.
    let (silk, hybrid, celt) = match config {
        0..=3 | 16..=19 => (0, 12, 16),
        4..=7 => (4, 12, 20),
        8..=11 | 20..=23 => (8, 12, 20),
        12 | 13 | 24..=27 => (8, 12, 24),
        _ => (8, 14, 28),
    };
    let silk = (
        silk,
        [480, 960, 1920, 2880].iter().position(|&s| s == samples),
    );
    let hybrid = (hybrid, [480, 960].iter().position(|&s| s == samples));
    let celt = (
        celt,
        [120, 240, 480, 960].iter().position(|&s| s == samples),
    );
    let order = match config {
        0..=11 => [silk, celt, hybrid],
        12..=15 => [hybrid, celt, silk],
        _ => [celt, silk, hybrid],
    };
    let (base, index) = order.into_iter().find_map(|(b, i)| Some((b, i?)))?;
    Some([((base + index as u8) << 3) | (template_toc & 0x04)])
}

fn check_frame(len: usize) -> Result<(), OpusPacketError> {
    if len > MAX_FRAME_BYTES {
        return Err(OpusPacketError::FrameTooLarge { len });
    }
    Ok(())
}

/// Parses a 1- or 2-byte frame length (RFC 6716 §3.2.1); returns
/// (length, bytes used).
fn parse_size(data: &[u8]) -> Option<(usize, usize)> {
    match *data {
        [b0, ..] if b0 < 252 => Some((usize::from(b0), 1)),
        [b0, b1, ..] => Some((4 * usize::from(b1) + usize::from(b0), 2)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(packet: &[u8]) -> u32 {
        packet_samples(packet).unwrap_or_else(|e| panic!("{packet:02x?}: {e}"))
    }

    #[test]
    fn code0_frame_sizes_per_mode() {
        // SILK NB 10/20/40/60 ms (configs 0..3).
        assert_eq!(ok(&[0x00, 1, 2]), 480);
        assert_eq!(ok(&[0x08, 1, 2]), 960);
        assert_eq!(ok(&[0x10, 1]), 1920);
        assert_eq!(ok(&[0x18]), 2880);
        // SILK WB 20 ms stereo (config 9, s=1).
        assert_eq!(ok(&[0x4C, 9]), 960);
        // Hybrid SWB 10 ms (12), FB 20 ms (15).
        assert_eq!(ok(&[0x60, 7]), 480);
        assert_eq!(ok(&[0x78, 7]), 960);
        // CELT NB 2.5 ms (16), WB 5 ms (21), FB 10 ms (30), FB 20 ms (31).
        assert_eq!(ok(&[0x80]), 120);
        assert_eq!(ok(&[0xA8, 0]), 240);
        assert_eq!(ok(&[0xF0, 0]), 480);
        assert_eq!(ok(&[0xF8, 0, 0]), 960);
        assert_eq!(ok(&[0xF8; 1276]), 960);
        assert_eq!(
            packet_samples(&[0xF8; 1277]),
            Err(OpusPacketError::FrameTooLarge { len: 1276 })
        );
    }

    #[test]
    fn code1_two_equal_frames() {
        assert_eq!(ok(&[0x09, 1, 2]), 1920); // SILK 20 ms x2
        assert_eq!(ok(&[0x19, 1, 2, 3, 4]), 5760); // SILK 60 ms x2 = 120 ms
        assert_eq!(ok(&[0xF9]), 1920); // two empty CELT 20 ms frames
        assert!(matches!(
            packet_samples(&[0x09, 1]),
            Err(OpusPacketError::Malformed(_))
        ));
    }

    #[test]
    fn code2_two_sized_frames() {
        assert_eq!(ok(&[0x12, 1, 0xAA, 0xBB, 0xCC]), 3840); // SILK 40 ms x2
        assert_eq!(ok(&[0x7A, 0]), 1920); // hybrid 20 ms, both frames empty
        let mut two_byte_len = vec![0xFA, 252, 1]; // first frame 256 bytes
        two_byte_len.extend([0u8; 256 + 10]);
        assert_eq!(ok(&two_byte_len), 1920);
        two_byte_len.truncate(3 + 255);
        assert!(packet_samples(&two_byte_len).is_err());
        assert!(packet_samples(&[0x0A]).is_err()); // length byte missing
        assert!(packet_samples(&[0x0A, 252]).is_err()); // second length byte missing
        assert!(packet_samples(&[0x0A, 5, 0xAA]).is_err()); // frame past the end
    }

    #[test]
    fn code3_counts_padding_and_vbr() {
        assert_eq!(ok(&[0xFB, 3]), 2880); // CBR, 3 empty CELT 20 ms frames
        assert_eq!(ok(&[0xFB, 6]), 5760); // 120 ms exactly
        assert_eq!(ok(&[0x83, 48]), 5760); // 48 x 2.5 ms
        assert_eq!(ok(&[0x0B, 2, 1, 2, 3, 4]), 1920); // SILK 20 ms CBR x2
        assert_eq!(ok(&[0x63, 0x81]), 480); // hybrid 10 ms VBR, one frame
        assert_eq!(ok(&[0xFB, 0x82, 1, 0xAA, 0xBB, 0xCC]), 1920); // VBR 1 + 2 bytes
        assert_eq!(ok(&[0xFB, 0x41, 2, 0xAA, 0, 0]), 960); // padding 2
        let mut pad = vec![0xFB, 0x41, 255, 1];
        pad.extend([0u8; 255]);
        assert_eq!(ok(&pad), 960); // 254 + 1 padding bytes
        use OpusPacketError::*;
        assert_eq!(packet_samples(&[0xFB, 7]), Err(TooLong { samples: 6720 }));
        assert_eq!(packet_samples(&[0x1B, 3]), Err(TooLong { samples: 8640 }));
        assert_eq!(packet_samples(&[0x83, 49]), Err(TooLong { samples: 5880 }));
        assert_eq!(packet_samples(&[0xFB, 0]), Err(ZeroFrames));
        for bad in [
            &[0xFB][..],                  // count byte missing
            &[0xFB, 2, 1, 2, 3],          // CBR not divisible
            &[0xFB, 0x41, 5, 0],          // padding past the end
            &[0xFB, 0x41, 255],           // padding continuation missing
            &[0xFB, 0x82, 5, 0xAA],       // VBR length past the end
            &[0xFB, 0x83, 1, 0xAA],       // second VBR length missing
            &[0xFB, 0xC2, 1, 3, 0xAA, 0], // VBR + padding overlap
        ] {
            assert!(
                matches!(packet_samples(bad), Err(Malformed(_))),
                "{bad:02x?}"
            );
        }
    }

    #[test]
    fn empty_is_rejected() {
        assert_eq!(packet_samples(&[]), Err(OpusPacketError::Empty));
    }

    #[test]
    fn lost_frame_packets_keep_config() {
        assert_eq!(lost_frame_packet(0x4B), [0x48]); // SILK WB 20 ms, code 3 -> 0
        assert_eq!(lost_frame_packet(0xFD), [0xFC]); // stereo bit kept
        assert_eq!(ok(&lost_frame_packet(0x18)), 2880);
        for toc in 0..=255u8 {
            let p = lost_frame_packet(toc);
            assert_eq!(ok(&p), frame_samples(toc));
            for samples in [120, 240, 480, 960, 1920, 2880] {
                let p = lost_frame_packet_of(toc, samples).expect("every size has a config");
                assert_eq!(ok(&p), samples, "toc {toc:#x} -> {p:02x?}");
                assert_eq!(p[0] & 0x07, toc & 0x04);
                if frame_samples(toc) == samples {
                    assert_eq!(p, lost_frame_packet(toc), "same size keeps config");
                }
            }
            assert_eq!(lost_frame_packet_of(toc, 100), None);
        }
        // SILK WB template needing 5 ms falls back to CELT WB 5 ms (config 21).
        assert_eq!(lost_frame_packet_of(0x48, 240), Some([21 << 3]));
        // CELT FB template needing 60 ms falls back to SILK WB 60 ms (config 11).
        assert_eq!(lost_frame_packet_of(0xF8, 2880), Some([11 << 3]));
    }

    /// Differential fuzz against libopus's own parser (`opus_packet_parse`):
    /// same accept/reject decision and same duration, and never a panic.
    #[test]
    fn random_packets_match_libopus() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut valid = 0;
        for i in 0..20_000 {
            let len = match i % 4 {
                0 => (next() % 8) as usize,
                1 | 2 => (next() % 64) as usize,
                _ => (next() % 3000) as usize,
            };
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len > 1 && i % 3 == 0 {
                bytes[1] &= 0xC7; // small frame counts make code 3 valid more often
            }
            let ours = packet_samples(&bytes);
            let theirs = opus::packet::parse(&bytes);
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{bytes:02x?}: {ours:?}");
            if let (Ok(samples), Ok(parsed)) = (ours, theirs) {
                assert_eq!(
                    samples,
                    parsed.frames.len() as u32 * frame_samples(bytes[0])
                );
                valid += 1;
            }
        }
        assert!(valid > 1000, "fuzz should also hit valid packets ({valid})");
    }
}
