//! QUIC transport: TLS set-up, the device's reconnecting client, and the
//! length-prefixed JSON control codec shared with the relay.

pub mod calls;
pub mod client;
pub mod control;
pub mod framed;
pub mod tls;
pub mod udp;
