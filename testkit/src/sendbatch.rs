//! Outgoing UDP packets of one load-generator pass, sent together with
//! `sendmmsg` on a connected socket.
//!
//! The relay_load generator sends one QUIC packet per stream every 20 ms,
//! all to the same relay address: thousands of packets a second from one
//! thread. A `sendmsg` per packet with a destination address costs a
//! system call and a route look-up each; here the socket is connected to
//! the relay (the kernel keeps the route) and a pass's packets leave in
//! one `sendmmsg` per [`MAX_BATCH`] packets. What the kernel does per
//! packet on loopback (the receiver's UDP path, charged to the sender's
//! CPU) stays the same.

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use std::io::IoSlice;
use std::os::fd::AsRawFd;

/// Packets per `sendmmsg` call (the kernel's limit is `UIO_MAXIOV`, 1024).
pub const MAX_BATCH: usize = 256;

/// Packets queued for one connected UDP socket.
#[derive(Debug, Default)]
pub struct SendBatch {
    data: Vec<u8>,
    /// End offset of each packet in `data`.
    ends: Vec<usize>,
}

impl SendBatch {
    /// An empty batch.
    pub fn new() -> Self {
        SendBatch::default()
    }

    /// Queues one packet.
    pub fn push(&mut self, packet: &[u8]) {
        self.data.extend_from_slice(packet);
        self.ends.push(self.data.len());
    }

    /// Packets queued.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Sends every queued packet on `sock` (connected: no address per
    /// packet) and empties the batch. Returns the packets sent and the
    /// packets the socket refused (full send buffer or another error: they
    /// are dropped, as a lossy network would).
    pub fn flush(&mut self, sock: &std::net::UdpSocket) -> (usize, usize) {
        let fd = sock.as_raw_fd();
        let (mut sent, mut refused) = (0, 0);
        let mut start = 0;
        let mut k = 0;
        while k < self.ends.len() {
            let n = (self.ends.len() - k).min(MAX_BATCH);
            let mut slices: Vec<[IoSlice<'_>; 1]> = Vec::with_capacity(n);
            let mut s = start;
            for &e in &self.ends[k..k + n] {
                slices.push([IoSlice::new(&self.data[s..e])]);
                s = e;
            }
            let addrs: Vec<Option<SockaddrStorage>> = vec![None; n];
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n, None);
            let done = match sendmmsg(fd, &mut headers, &slices, addrs, [], MsgFlags::empty()) {
                Ok(r) => r.count(),
                Err(_) => 0,
            };
            // The first packet not taken is dropped (the socket refused
            // it); the rest go in the next call.
            let taken = if done == 0 { 1 } else { done };
            if done == 0 {
                refused += 1;
            } else {
                sent += done;
            }
            start = self.ends[k + taken - 1];
            k += taken;
        }
        self.data.clear();
        self.ends.clear();
        (sent, refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_arrives_whole_and_in_order() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Room for the whole batch (root may exceed rmem_max).
        use nix::sys::socket::{setsockopt, sockopt};
        if setsockopt(&rx, sockopt::RcvBufForce, &(4 << 20)).is_err() {
            let _ = setsockopt(&rx, sockopt::RcvBuf, &(4 << 20));
        }
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let mut b = SendBatch::new();
        // More than one sendmmsg call's worth, of varying sizes.
        let n = MAX_BATCH + 7;
        for i in 0..n {
            b.push(&vec![(i % 251) as u8; 1 + i % 97]);
        }
        assert_eq!(b.len(), n);
        assert_eq!(b.flush(&tx), (n, 0));
        assert!(b.is_empty());
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 200];
        for i in 0..n {
            let len = rx.recv(&mut buf).unwrap();
            assert_eq!(len, 1 + i % 97, "packet {i}");
            assert!(buf[..len].iter().all(|&x| x == (i % 251) as u8));
        }
    }
}
