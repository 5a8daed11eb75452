//! RTP sequencing for one outgoing flow: sequence numbers, timestamps, the
//! marker bit after a gap, and framing into a caller-owned datagram buffer.

use super::flow;
use super::rtp::Repr;

/// State of one outgoing RTP flow.
#[derive(Debug, Clone)]
pub struct RtpSender {
    flow: u64,
    payload_type: u8,
    ssrc: u32,
    seq: u16,
    ts: u32,
    marker: bool,
}

impl RtpSender {
    /// A flow with random initial sequence number and timestamp (RFC 3550 §5.1).
    pub fn new(flow: u64, payload_type: u8, ssrc: u32, seq: u16, ts: u32) -> Self {
        RtpSender {
            flow,
            payload_type,
            ssrc,
            seq,
            ts,
            marker: true,
        }
    }

    /// The flow's SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Skip `samples` of media time that were not sent (capture overrun); the
    /// next packet carries the marker bit.
    pub fn skip(&mut self, samples: u32) {
        if samples > 0 {
            self.ts = self.ts.wrapping_add(samples);
            self.marker = true;
        }
    }

    /// Frame `payload` (covering `samples` of media time) into `buf`;
    /// returns the datagram length, or `None` when `buf` is too small.
    pub fn frame(&mut self, payload: &[u8], samples: u32, buf: &mut [u8]) -> Option<usize> {
        let repr = Repr {
            marker: self.marker,
            payload_type: self.payload_type,
            sequence: self.seq,
            timestamp: self.ts,
            ssrc: self.ssrc,
        };
        let n = flow::encode(self.flow, &repr, payload, buf)?;
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(samples);
        self.marker = false;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_wrap_and_mark_after_skip() {
        let mut s = RtpSender::new(0, 111, 7, u16::MAX, u32::MAX - 959);
        let mut buf = [0u8; 64];
        let n = s.frame(b"a", 960, &mut buf).unwrap();
        let (_, p) = flow::decode(&buf[..n]).unwrap();
        assert!(p.marker());
        assert_eq!((p.sequence(), p.timestamp()), (u16::MAX, u32::MAX - 959));
        let n = s.frame(b"b", 960, &mut buf).unwrap();
        let (_, p) = flow::decode(&buf[..n]).unwrap();
        assert!(!p.marker());
        assert_eq!((p.sequence(), p.timestamp()), (0, 0));
        s.skip(480);
        let n = s.frame(b"c", 960, &mut buf).unwrap();
        let (_, p) = flow::decode(&buf[..n]).unwrap();
        assert!(p.marker());
        assert_eq!(p.timestamp(), 960 + 480);
    }
}
