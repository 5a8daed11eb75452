//! G.711 (ITU-T G.711): μ-law (PCMU, RTP payload type 0) and A-law (PCMA,
//! payload type 8), 8 kHz, one byte per sample. The sample mapping is
//! ezk-g711's; this module adds slice conversion into caller-owned buffers,
//! so the call path allocates nothing.

/// Which companding law.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// μ-law (North America, Japan): PCMU.
    Mu,
    /// A-law (Europe, most of the world): PCMA.
    A,
}

/// Encode `pcm` into `out`; returns the bytes written (`min` of the lengths).
pub fn encode(law: Law, pcm: &[i16], out: &mut [u8]) -> usize {
    let n = pcm.len().min(out.len());
    let f = match law {
        Law::Mu => ezk_g711::mulaw::encode,
        Law::A => ezk_g711::alaw::encode,
    };
    for (o, &s) in out[..n].iter_mut().zip(pcm) {
        *o = f(s);
    }
    n
}

/// Decode `data` into `out`; returns the samples written (`min` of the lengths).
pub fn decode(law: Law, data: &[u8], out: &mut [i16]) -> usize {
    let n = data.len().min(out.len());
    let f = match law {
        Law::Mu => ezk_g711::mulaw::decode,
        Law::A => ezk_g711::alaw::decode,
    };
    for (o, &b) in out[..n].iter_mut().zip(data) {
        *o = f(b);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_codes_match_the_standard() {
        // G.711: μ-law encodes 0 as 0xFF, A-law as 0xD5.
        let mut out = [0u8; 2];
        encode(Law::Mu, &[0, 0], &mut out);
        assert_eq!(out, [0xFF, 0xFF]);
        encode(Law::A, &[0, 0], &mut out);
        assert_eq!(out, [0xD5, 0xD5]);
    }

    #[test]
    fn every_code_round_trips_through_its_decoded_value() {
        // Decoding a code and encoding the result gives the code back (μ-law
        // has two zero codes, 0x7F and 0xFF, both decoding to 0).
        for law in [Law::Mu, Law::A] {
            for code in 0..=255u8 {
                let mut pcm = [0i16; 1];
                decode(law, &[code], &mut pcm);
                let mut back = [0u8; 1];
                encode(law, &pcm, &mut back);
                if law == Law::Mu && code == 0x7F {
                    assert_eq!(back[0], 0xFF);
                } else {
                    assert_eq!(back[0], code, "{law:?} code {code:#04x} -> {}", pcm[0]);
                }
            }
        }
    }

    #[test]
    fn quantisation_error_is_within_the_segment_step() {
        // Companded: the error grows with amplitude, about 1/16 of it at most.
        for law in [Law::Mu, Law::A] {
            for x in (-32_768i32..=32_767).step_by(97) {
                let mut c = [0u8; 1];
                encode(law, &[x as i16], &mut c);
                let mut y = [0i16; 1];
                decode(law, &c, &mut y);
                let err = (i32::from(y[0]) - x).abs();
                assert!(err <= x.abs() / 16 + 16, "{law:?} {x} -> {}", y[0]);
            }
        }
    }

    #[test]
    fn lengths_are_bounded_by_the_shorter_slice() {
        let mut out = [0u8; 3];
        assert_eq!(encode(Law::Mu, &[1, 2, 3, 4, 5], &mut out), 3);
        let mut pcm = [0i16; 8];
        assert_eq!(decode(Law::A, &[1, 2], &mut pcm), 2);
    }
}
