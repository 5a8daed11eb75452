//! Media framing and timing, free of IO: RTP packets, the RTP-over-QUIC
//! datagram mapping, outgoing sequencing, and the downlink jitter buffer.
//! Everything here is deterministic and tested with byte fixtures and
//! simulated time.

pub mod dtmf;
pub mod flow;
pub mod jitter;
pub mod leg;
pub mod ports;
pub mod rtp;
pub mod sender;
pub mod stats;
