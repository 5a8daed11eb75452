//! The gateway's UDP socket for quinn: tokio's, with UDP GRO off.
//!
//! quinn sizes an endpoint's receive buffer for the largest batch the kernel
//! may deliver: 32 messages × the UDP payload size × 64 segments when the
//! kernel supports generic receive offload, about 3 MiB, allocated zeroed
//! once for the endpoint's lifetime. A gateway receives some fifty small
//! datagrams a second from one peer and gains nothing from GRO, while the
//! static musl build keeps that whole buffer resident (its `calloc` writes
//! every byte). [`NoGroRuntime`] turns GRO off on the socket again after
//! quinn has turned it on, and tells quinn that each buffer holds one
//! datagram: the buffer shrinks to about 46 KiB. The relay, which receives
//! from thousands of peers, keeps quinn's default.

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// [`TokioRuntime`] whose sockets receive one datagram per buffer.
#[derive(Debug)]
pub struct NoGroRuntime;

impl Runtime for NoGroRuntime {
    fn new_timer(&self, t: Instant) -> Pin<Box<dyn AsyncTimer>> {
        TokioRuntime.new_timer(t)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        TokioRuntime.spawn(future)
    }

    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        // The same socket under a second descriptor, for the option below.
        let same = sock.try_clone()?;
        let inner = TokioRuntime.wrap_udp_socket(sock)?;
        disable_gro(&same)?;
        Ok(Arc::new(NoGro(inner)))
    }

    fn now(&self) -> Instant {
        TokioRuntime.now()
    }
}

/// Turn UDP GRO off (a kernel without it has nothing to turn off).
fn disable_gro(sock: &std::net::UdpSocket) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::UdpGroSegment};
    match setsockopt(sock, UdpGroSegment, &false) {
        Ok(()) | Err(nix::errno::Errno::ENOPROTOOPT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether UDP GRO is on for `sock`.
pub fn gro_enabled(sock: &std::net::UdpSocket) -> io::Result<bool> {
    use nix::sys::socket::{getsockopt, sockopt::UdpGroSegment};
    match getsockopt(sock, UdpGroSegment) {
        Ok(on) => Ok(on),
        Err(nix::errno::Errno::ENOPROTOOPT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug)]
struct NoGro(Arc<dyn AsyncUdpSocket>);

impl AsyncUdpSocket for NoGro {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

/// Asks for a receive buffer of `bytes` on `sock` and returns what the
/// kernel granted (its own accounting: about twice the request).
/// `SO_RCVBUFFORCE` (root, or `CAP_NET_ADMIN`) may exceed
/// `net.core.rmem_max`; without the privilege the request is capped there.
pub fn grow_recv_buffer(sock: &std::net::UdpSocket, bytes: usize) -> io::Result<usize> {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(sock, sockopt::RcvBufForce, &bytes).is_err() {
        setsockopt(sock, sockopt::RcvBuf, &bytes)?;
    }
    Ok(getsockopt(sock, sockopt::RcvBuf)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wrapped_socket_has_gro_off_and_one_segment_per_buffer() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let probe = sock.try_clone().unwrap();
        let wrapped = NoGroRuntime.wrap_udp_socket(sock).unwrap();
        assert_eq!(wrapped.max_receive_segments(), 1);
        assert!(!gro_enabled(&probe).unwrap());
        // What quinn's own wrapper does, for contrast: GRO on where the
        // kernel has it (then quinn expects up to 64 segments per buffer).
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let probe = plain.try_clone().unwrap();
        let q = TokioRuntime.wrap_udp_socket(plain).unwrap();
        assert_eq!(gro_enabled(&probe).unwrap(), q.max_receive_segments() > 1);
    }

    #[test]
    fn receive_buffer_grows() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::RcvBuf).unwrap();
        let got = grow_recv_buffer(&s, 4 << 20).unwrap();
        if nix::unistd::geteuid().is_root() {
            // SO_RCVBUFFORCE: the whole request, doubled by the kernel.
            assert!(got >= 8 << 20, "granted {got}");
        } else {
            assert!(got >= before, "granted {got}, had {before}");
        }
    }
}
