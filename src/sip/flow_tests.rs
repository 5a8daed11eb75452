//! The pieces together, as the shell will drive them: a phone registers
//! through transactions, guard and registrar; and every parser survives
//! random mutations of valid input.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::auth::{Algorithm, DigestServer, Ha1Pair, digest_response};
use super::framing::next_frame;
use super::guard::{Cidr, Decision, Guard, GuardConfig};
use super::registrar::{Registrar, RegistrarConfig};
use super::sdp::Session;
use super::transaction::{Timers, Transactions, TxEvent};
use super::{Message, NameAddr, SipUri, Via, new_branch};

const PHONE: &str = "192.168.1.20:5060";

fn register(cseq: u32, auth: Option<&str>) -> Message {
    let mut s = format!(
        "REGISTER sip:box.lan SIP/2.0\r\nv: SIP/2.0/UDP 192.168.1.20:5060;rport;branch={}\r\nf: <sip:101@box.lan>;tag=ph\r\nt: <sip:101@box.lan>\r\ni: boot-1\r\nCSeq: {cseq} REGISTER\r\nm: <sip:101@192.168.1.20:5060>;expires=600\r\nMax-Forwards: 70\r\n",
        new_branch([cseq as u8; 12])
    );
    if let Some(a) = auth {
        s.push_str(&format!("Authorization: {a}\r\n"));
    }
    s.push_str("l: 0\r\n\r\n");
    Message::parse(s.as_bytes()).unwrap()
}

/// One server step: the request goes through the transaction layer, the
/// guard and (when authenticated) the registrar; returns the response sent.
fn serve(
    now: Instant,
    tx: &mut Transactions,
    guard: &mut Guard,
    reg: &mut Registrar,
    req: Message,
) -> Option<Message> {
    let src: SocketAddr = PHONE.parse().unwrap();
    tx.handle_message(now, req, src, false);
    while let Some(ev) = tx.poll_event() {
        let TxEvent::Request { key, msg, src, .. } = ev else {
            continue;
        };
        let store = |u: &str| (u == "101").then(|| Ha1Pair::derive("101", "voxgate", "pw-101"));
        let resp = match guard.authenticate(now, src, &msg, store).0 {
            Decision::Drop => continue,
            Decision::Respond(r) => *r,
            Decision::Authenticated { user } => reg.register(now, &user, &msg, src).0,
        };
        tx.send_response(now, &key, resp).unwrap();
    }
    let t = tx.poll_transmit()?;
    assert_eq!(t.dest, src);
    Some(Message::parse(&t.bytes).unwrap())
}

#[test]
fn phone_registers_with_sha256_digest() {
    let t0 = Instant::now();
    let mut tx = Transactions::new(Timers::default());
    let cfg = GuardConfig {
        allow: vec![Cidr::parse("192.168.1.0/24").unwrap()],
        ..Default::default()
    };
    let digest = DigestServer::new("voxgate", &[9; 32], t0, Duration::from_secs(300));
    let mut guard = Guard::new(cfg, digest);
    let mut reg = Registrar::new(RegistrarConfig::default());

    let challenge = serve(t0, &mut tx, &mut guard, &mut reg, register(1, None)).unwrap();
    assert_eq!(challenge.code(), Some(401));
    let www = challenge.headers.get("WWW-Authenticate").unwrap();
    assert!(www.contains("algorithm=SHA-256"));
    let nonce = www
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();

    let ha1 = Ha1Pair::derive("101", "voxgate", "pw-101");
    let resp = digest_response(
        Algorithm::Sha256,
        &ha1.sha256,
        nonce,
        "00000001",
        "c0ffee",
        "auth",
        "REGISTER",
        "sip:box.lan",
    );
    let auth = format!(
        "Digest username=\"101\",realm=\"voxgate\",nonce=\"{nonce}\",uri=\"sip:box.lan\",response=\"{resp}\",algorithm=SHA-256,cnonce=\"c0ffee\",qop=auth,nc=00000001"
    );
    let t1 = t0 + Duration::from_secs(1);
    let ok = serve(t1, &mut tx, &mut guard, &mut reg, register(2, Some(&auth))).unwrap();
    assert_eq!(ok.code(), Some(200));
    assert!(ok.headers.get("Contact").unwrap().contains("expires=600"));
    let b = reg.lookup(t1, "101");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].source, PHONE.parse::<SocketAddr>().unwrap());
    assert_eq!(b[0].transport, "UDP");
}

/// xorshift, so the test is the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_inputs_never_panic() {
    let seeds: Vec<Vec<u8>> = vec![
        register(1, Some("Digest username=\"101\", realm=\"voxgate\", nonce=\"x\", uri=\"sip:box.lan\", response=\"y\"")).encode(),
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bKx\r\nFrom: \"A, B\" <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: q\r\nCSeq: 5 INVITE\r\nRecord-Route: <sip:p;lr>,<sip:q;lr>\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 9 96 101\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n".to_vec(),
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let special = b"\r\n:;,<>\"\\/@= \t0\xff\xc3";
    let mut parsed = 0;
    for i in 0..30_000 {
        let mut b = seeds[i % seeds.len()].clone();
        for _ in 0..1 + rng.below(6) {
            let pos = rng.below(b.len());
            match rng.below(4) {
                0 => b[pos] = special[rng.below(special.len())],
                1 => b[pos] = rng.next() as u8,
                2 => {
                    b.remove(pos);
                }
                _ => b.insert(pos, special[rng.below(special.len())]),
            }
        }
        if let Ok(m) = Message::parse(&b) {
            parsed += 1;
            let _ = (
                m.vias(),
                m.contacts(),
                m.routes("Record-Route"),
                m.expires(),
            );
            Message::parse_limited(
                &m.encode(),
                &super::Limits {
                    max_message: 1 << 16,
                    max_head: 1 << 16,
                    max_headers: 65,
                    ..super::Limits::STREAM
                },
            )
            .unwrap();
        }
        let _ = next_frame(&b);
        if let Ok(s) = Session::parse(&b) {
            assert_eq!(Session::parse(&s.encode()).unwrap(), s);
        }
        if let Ok(text) = std::str::from_utf8(&b) {
            for line in text.lines().take(12) {
                let v = line.split_once(':').map_or(line, |x| x.1);
                let _ = (NameAddr::parse(v), Via::parse(v), SipUri::parse(v.trim()));
                let _ = super::auth::Credentials::parse(v);
            }
        }
    }
    // The mutations leave enough messages intact to exercise the encoder.
    assert!(parsed > 1000, "{parsed}");
}
