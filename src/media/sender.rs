//! RTP sequencing for one outgoing flow: sequence numbers, timestamps, the
//! marker bit after a gap, and framing into a caller-owned datagram buffer,
//! either as RTP-over-QUIC (flow id first) or as plain RTP for a phone's
//! UDP socket.

use super::flow;
use super::rtp::Repr;

/// State of one outgoing RTP flow.
#[derive(Debug, Clone)]
pub struct RtpSender {
    /// The RTP-over-QUIC flow id; `None` frames plain RTP.
    flow: Option<u64>,
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
            flow: Some(flow),
            payload_type,
            ssrc,
            seq,
            ts,
            marker: true,
        }
    }

    /// A plain RTP stream (no flow id), for a phone's RTP socket.
    pub fn plain(payload_type: u8, ssrc: u32, seq: u16, ts: u32) -> Self {
        RtpSender {
            flow: None,
            ..Self::new(0, payload_type, ssrc, seq, ts)
        }
    }

    /// The RTP timestamp the next frame will carry.
    pub fn timestamp(&self) -> u32 {
        self.ts
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
        let n = self.emit(&repr, payload, buf)?;
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(samples);
        self.marker = false;
        Some(n)
    }

    /// Frame a packet of another payload type in the same sequence space with
    /// its own timestamp and marker (an RFC 4733 event); the media timestamp
    /// is not advanced.
    pub fn frame_event(
        &mut self,
        payload_type: u8,
        marker: bool,
        timestamp: u32,
        payload: &[u8],
        buf: &mut [u8],
    ) -> Option<usize> {
        let repr = Repr {
            marker,
            payload_type,
            sequence: self.seq,
            timestamp,
            ssrc: self.ssrc,
        };
        let n = self.emit(&repr, payload, buf)?;
        self.seq = self.seq.wrapping_add(1);
        Some(n)
    }

    fn emit(&self, repr: &Repr, payload: &[u8], buf: &mut [u8]) -> Option<usize> {
        match self.flow {
            Some(f) => flow::encode(f, repr, payload, buf),
            None => repr.emit(payload, buf),
        }
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

    #[test]
    fn plain_streams_have_no_flow_id_and_events_share_the_sequence() {
        use crate::media::rtp::Packet;
        let mut s = RtpSender::plain(0, 9, 100, 8000);
        let mut buf = [0u8; 64];
        let n = s.frame(&[0xff; 4], 160, &mut buf).unwrap();
        let p = Packet::new_checked(&buf[..n]).unwrap();
        assert_eq!(
            (p.payload_type(), p.sequence(), p.timestamp()),
            (0, 100, 8000)
        );
        assert_eq!(p.payload(), &[0xff; 4]);
        let n = s
            .frame_event(101, true, 8160, &[1, 0, 0, 160], &mut buf)
            .unwrap();
        let p = Packet::new_checked(&buf[..n]).unwrap();
        assert!(p.marker());
        assert_eq!(
            (p.payload_type(), p.sequence(), p.timestamp()),
            (101, 101, 8160)
        );
        assert_eq!(s.timestamp(), 8160);
        let n = s.frame(&[0; 4], 160, &mut buf).unwrap();
        let p = Packet::new_checked(&buf[..n]).unwrap();
        assert_eq!((p.sequence(), p.timestamp()), (102, 8160));
    }
}
