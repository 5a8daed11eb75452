//! The gateway's quinn runtime: tokio's, with UDP GRO off and timers that
//! never wake the runtime for a deadline quinn has moved.
//!
//! quinn sizes an endpoint's receive buffer for the largest batch the kernel
//! may deliver: 32 messages × the UDP payload size × 64 segments when the
//! kernel supports generic receive offload, about 3 MiB, allocated zeroed
//! once for the endpoint's lifetime. A gateway receives some fifty small
//! datagrams a second from one peer and gains nothing from GRO, while the
//! static musl build keeps that whole buffer resident (its `calloc` writes
//! every byte). [`GatewayRuntime`] turns GRO off on the socket again after
//! quinn has turned it on, and tells quinn that each buffer holds one
//! datagram: the buffer shrinks to about 46 KiB. The relay, which receives
//! from thousands of peers, keeps quinn's default.
//!
//! quinn moves its connection timer on nearly every packet: each ACK that
//! arrives drops the loss-detection deadline of the packets it acknowledges
//! for the next keep-alive, half a second away. tokio's `Sleep::reset` to a
//! later deadline only marks the timer entry as extended; the timer wheel
//! still expires it at the old deadline, and an idle runtime thread wakes up
//! to find nothing due. For a gateway sending a frame every 20 ms that was a
//! third of its runtime thread's wake-ups (about 25 a second, each one a
//! thread wake-up on an otherwise idle core). [`ExactTimer`] moves a timer
//! later by replacing its entry. The relay keeps tokio's lazy timers: it is
//! busy, its runtime threads are rarely parked on a timer, and re-inserting
//! an entry on every packet of thousands of connections would cost more.

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::time::Sleep;

/// [`TokioRuntime`] whose sockets receive one datagram per buffer and
/// whose timers are [`ExactTimer`]s.
#[derive(Debug)]
pub struct GatewayRuntime;

impl Runtime for GatewayRuntime {
    fn new_timer(&self, t: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(ExactTimer::new(t))
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

/// A tokio timer that expires at its current deadline only: moved later,
/// its wheel entry is replaced rather than extended (see the module notes).
#[derive(Debug)]
pub struct ExactTimer(Pin<Box<Sleep>>);

impl ExactTimer {
    /// A timer expiring at `t`.
    pub fn new(t: Instant) -> Self {
        ExactTimer(Box::pin(tokio::time::sleep_until(t.into())))
    }
}

impl AsyncTimer for ExactTimer {
    fn reset(mut self: Pin<&mut Self>, t: Instant) {
        let t = tokio::time::Instant::from_std(t);
        if t > self.0.deadline() {
            // Dropping the old entry takes it off the wheel.
            self.0.set(tokio::time::sleep_until(t));
        } else {
            Sleep::reset(self.0.as_mut(), t);
        }
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<()> {
        Future::poll(self.0.as_mut(), cx)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wrapped_socket_has_gro_off_and_one_segment_per_buffer() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let probe = sock.try_clone().unwrap();
        let wrapped = GatewayRuntime.wrap_udp_socket(sock).unwrap();
        assert_eq!(wrapped.max_receive_segments(), 1);
        assert!(!gro_enabled(&probe).unwrap());
        // What quinn's own wrapper does, for contrast: GRO on where the
        // kernel has it (then quinn expects up to 64 segments per buffer).
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let probe = plain.try_clone().unwrap();
        let q = TokioRuntime.wrap_udp_socket(plain).unwrap();
        assert_eq!(gro_enabled(&probe).unwrap(), q.max_receive_segments() > 1);
    }

    /// Times the calling thread has blocked so far.
    fn voluntary_switches() -> u64 {
        std::fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }

    /// Arms `timer` 30 ms ahead, moves it 400 ms ahead, and waits on
    /// something else for 150 ms: how many times the runtime thread blocked
    /// meanwhile (1 when it slept through, 2 when the old deadline woke it).
    fn blocks_while_moved_later(runtime: &dyn Runtime) -> u64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(150));
            let _ = tx.send(());
        });
        let blocked = rt.block_on(async move {
            let now = Instant::now();
            let mut timer = runtime.new_timer(now + std::time::Duration::from_secs(60));
            for ms in [30, 400] {
                timer
                    .as_mut()
                    .reset(now + std::time::Duration::from_millis(ms));
                // Registered, as quinn's driver does after every reset.
                std::future::poll_fn(|cx| {
                    assert!(timer.as_mut().poll(cx).is_pending());
                    Poll::Ready(())
                })
                .await;
            }
            let before = voluntary_switches();
            rx.await.unwrap();
            let blocked = voluntary_switches() - before;
            assert!(
                timer
                    .as_mut()
                    .poll(&mut Context::from_waker(std::task::Waker::noop()))
                    .is_pending()
            );
            blocked
        });
        waker.join().unwrap();
        blocked
    }

    #[test]
    fn a_timer_moved_later_does_not_wake_the_runtime_at_its_old_deadline() {
        // tokio's own timer, as quinn's TokioRuntime makes it: the old
        // deadline still wakes the thread (the control for this test).
        let lazy = blocks_while_moved_later(&TokioRuntime);
        assert!(lazy >= 2, "tokio's Sleep blocked {lazy} times");
        let exact = blocks_while_moved_later(&GatewayRuntime);
        assert_eq!(exact, 1, "the runtime thread woke up for a moved deadline");
    }
}
