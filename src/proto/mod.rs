//! The wire protocol between gateways and the relay, sans-IO: the control
//! stream's messages and their codec ([`control`]), and call signalling
//! with the numbering plan ([`signal`]). Bytes in, values out: the QUIC
//! plumbing that carries them is `transport`.

pub mod control;
pub mod signal;
