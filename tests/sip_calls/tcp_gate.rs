//! The SIP TCP listener's gate (issue 14): a connection flood from outside
//! the allowlist gets no service while allowed phones keep registering; one
//! source holds at most a few connections, and a connection that sends no
//! SIP message is closed after a short deadline.

use super::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::Instant;
use voxgate_testkit::spoof::connect_from;

/// Reads until the gateway closes `s`; returns the bytes it sent and when
/// the close came (`None`: still open after `limit`).
fn until_closed(s: &mut TcpStream, limit: Duration) -> (usize, Option<Instant>) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = 0;
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Some(Instant::now())),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, Some(Instant::now()));
            }
            Err(_) => return (got, None),
        }
    }
}

fn options(port: u16, local: std::net::SocketAddr) -> Vec<u8> {
    format!(
        "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-gate-{}\r\n\
         From: <sip:probe@127.0.0.1>;tag=g1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: gate-{}\r\nCSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        local.port(),
        local.port()
    )
    .into_bytes()
}

#[test]
fn a_tcp_flood_from_outside_the_allowlist_gets_no_service_while_phones_register() {
    let lab = Lab::new("sip-tcp-gate", "mode = \"none\"");
    let _relay = lab.start_relay();
    let mut gw = SipGateway::configure(
        &lab,
        "gw-a",
        "[\"sha-256\", \"md5\"]",
        "allow = [\"127.0.0.1/32\", \"127.0.0.3/32\"]",
    );
    let pw = gw.add_phone("201");
    gw.start(&lab);
    let sip = SocketAddrV4::new(Ipv4Addr::LOCALHOST, gw.sip_port);
    let outsider = Ipv4Addr::new(127, 0, 0, 2);
    // 4 threads open connections from outside, each sending a request at
    // once, for as long as the phone registers (at least 100 each): every
    // one closed without a byte of answer.
    const MIN_EACH: usize = 100;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut n, mut slowest) = (0usize, Duration::ZERO);
                while n < MIN_EACH || !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    let mut s =
                        connect_from(outsider, sip).expect("the kernel completes the handshake");
                    let _ = s.write_all(&options(sip.port(), s.local_addr().unwrap()));
                    let (got, closed) = until_closed(&mut s, Duration::from_secs(5));
                    assert_eq!(got, 0, "an outsider got an answer");
                    assert!(closed.is_some(), "an outsider's connection stayed open");
                    slowest = slowest.max(t.elapsed());
                    n += 1;
                }
                (n, slowest)
            })
        })
        .collect();
    // Meanwhile the phone registers over TCP, twice.
    for name in ["reg-during-flood-1", "reg-during-flood-2"] {
        let (ok, trace) = register("t1", &lab.dir, &gw, "201", &pw, 200, name);
        assert!(
            ok,
            "REGISTER during the flood:\n{trace}\ngateway:\n{}",
            gw.log()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results: Vec<(usize, Duration)> = flood.into_iter().map(|h| h.join().unwrap()).collect();
    let total: usize = results.iter().map(|r| r.0).sum();
    let slowest = results.iter().map(|r| r.1).max().unwrap();
    println!(
        "{total} connections from outside the allowlist while the phone registered twice: each closed unanswered, the slowest after {slowest:?}"
    );
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    gw.wait_registered(1.0);
    assert!(gw.metric("voxgate_sip_tcp_refused_total") >= total as f64);
    assert_eq!(gw.metric("voxgate_sip_registered_extensions"), 1.0);
    gw.proc.as_mut().unwrap().assert_running();
}

#[test]
fn one_source_holds_a_few_connections_and_a_silent_one_is_closed_soon() {
    let lab = Lab::new("sip-tcp-cap", "mode = \"none\"");
    let _relay = lab.start_relay();
    let mut gw = SipGateway::configure(&lab, "gw-a", "[\"sha-256\", \"md5\"]", "");
    gw.add_phone("201");
    gw.start(&lab);
    let sip = SocketAddrV4::new(Ipv4Addr::LOCALHOST, gw.sip_port);
    let host = Ipv4Addr::new(127, 0, 0, 3);
    let opened = Instant::now();
    // Four silent connections (the per-source cap) are held open...
    let mut idle: Vec<TcpStream> = (0..4).map(|_| connect_from(host, sip).unwrap()).collect();
    // ...and a fifth is closed at once.
    let mut fifth = connect_from(host, sip).unwrap();
    let (got, closed) = until_closed(&mut fifth, Duration::from_secs(2));
    assert_eq!(got, 0);
    let at = closed.expect("the fifth connection from one source is refused");
    assert!(at - opened < Duration::from_secs(1), "{:?}", at - opened);
    // The four sent nothing: closed by the first-message deadline (3 s).
    for s in &mut idle {
        let (got, closed) = until_closed(s, Duration::from_secs(10));
        assert_eq!(got, 0);
        let after = closed.expect("a silent connection is closed") - opened;
        assert!(
            (Duration::from_millis(2500)..Duration::from_secs(6)).contains(&after),
            "closed after {after:?}"
        );
    }
    println!(
        "per-source cap: 5th connection refused after {:?}; silent connections closed after {:?}",
        at - opened,
        opened.elapsed()
    );
    // Their slots are free again, and a connection that speaks SIP is served
    // and outlives the deadline.
    let mut s = connect_from(host, sip).unwrap();
    s.write_all(&options(sip.port(), s.local_addr().unwrap()))
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("SIP/2.0 200"), "{text}");
    let (_, closed) = until_closed(&mut s, Duration::from_secs(4));
    assert!(
        closed.is_none(),
        "a connection that sent SIP is not cut at the deadline"
    );
    assert!(gw.metric("voxgate_sip_tcp_refused_total") >= 5.0);
}
