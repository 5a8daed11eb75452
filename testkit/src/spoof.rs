//! Datagrams with a forged source address: an attacker on the LAN who puts
//! a phone's address on its packets (IPv4, a raw `IPPROTO_RAW` socket, so
//! the IP header is ours). Replies go to the forged address, never to the
//! sender. Needs CAP_NET_RAW (the tests run as root).

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sendto, socket,
};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, OwnedFd};

/// A raw socket that sends UDP datagrams from any source.
pub struct Spoofer(OwnedFd);

impl Spoofer {
    pub fn new() -> Spoofer {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Raw,
        )
        .expect("raw socket (CAP_NET_RAW: run the tests as root)");
        Spoofer(fd)
    }

    /// Send `payload` from `src` to `dst` as one UDP datagram.
    pub fn send(&self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
        let pkt = udp_packet(src, dst, payload);
        let to = SockaddrIn::from(dst);
        let n = sendto(self.0.as_raw_fd(), &pkt, &to, MsgFlags::empty()).expect("raw send");
        assert_eq!(n, pkt.len());
    }
}

impl Default for Spoofer {
    fn default() -> Self {
        Spoofer::new()
    }
}

/// IPv4 header (the kernel fills in the checksum and the id) + UDP header
/// (checksum 0: none, allowed over IPv4) + payload.
fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// A TCP connection to `dst` from `local` (any port): a second loopback
/// address plays another host on the LAN.
pub fn connect_from(
    local: std::net::Ipv4Addr,
    dst: SocketAddrV4,
) -> std::io::Result<std::net::TcpStream> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    nix::sys::socket::bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(local, 0)),
    )?;
    nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
    Ok(std::net::TcpStream::from(fd))
}
