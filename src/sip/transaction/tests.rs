//! Simulated-time tests: two transaction layers over a lossy "network".

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::sip::message::Message;

const UA: &str = "192.168.1.20:5060";
const BOX: &str = "192.168.1.2:5060";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn request(method: &str, branch: &str) -> Message {
    Message::parse(
        format!(
            "{method} sip:101@192.168.1.20 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.2:5060;branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:relay@box.lan>;tag=f1\r\nTo: <sip:101@box.lan>\r\nCall-ID: tx-test\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap()
}

fn drain(t: &mut Transactions) -> Vec<Transmit> {
    std::iter::from_fn(|| t.poll_transmit()).collect()
}

fn events(t: &mut Transactions) -> Vec<TxEvent> {
    std::iter::from_fn(|| t.poll_event()).collect()
}

/// Runs timers until `until`, returning (time since t0, transmit) pairs.
fn run_timers(t: &mut Transactions, t0: Instant, until: Duration) -> Vec<(Duration, Transmit)> {
    let mut out = Vec::new();
    while let Some(at) = t.poll_timeout() {
        if at > t0 + until {
            break;
        }
        t.handle_timeout(at);
        for x in drain(t) {
            out.push((at - t0, x));
        }
    }
    out
}

fn code_of(ev: &TxEvent) -> Option<u16> {
    match ev {
        TxEvent::Response { msg, .. } => msg.code(),
        _ => None,
    }
}

#[test]
fn non_invite_client_timers_e_f_udp_and_tcp() {
    let t0 = Instant::now();
    let mut t = Transactions::new(Timers::default());
    t.send_request(t0, request("OPTIONS", "z9hG4bKo1"), addr(UA), false)
        .unwrap();
    assert_eq!(drain(&mut t).len(), 1);
    let sent = run_timers(&mut t, t0, Duration::from_secs(40));
    let at: Vec<u64> = sent.iter().map(|(d, _)| d.as_millis() as u64).collect();
    // E doubles from T1 up to T2, F fires at 64*T1 = 32 s.
    assert_eq!(
        at,
        [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    let ev = events(&mut t);
    assert_eq!(ev.len(), 1);
    assert_eq!(code_of(&ev[0]), Some(408));
    assert!(t.is_empty());

    let mut t = Transactions::new(Timers::default());
    t.send_request(t0, request("OPTIONS", "z9hG4bKo2"), addr(UA), true)
        .unwrap();
    assert_eq!(drain(&mut t).len(), 1);
    assert!(
        run_timers(&mut t, t0, Duration::from_secs(40)).is_empty(),
        "no retransmission over TCP"
    );
    assert_eq!(code_of(&events(&mut t)[0]), Some(408));
}

#[test]
fn invite_client_timers_a_b() {
    let t0 = Instant::now();
    let mut t = Transactions::new(Timers::default());
    t.send_request(t0, request("INVITE", "z9hG4bKi1"), addr(UA), false)
        .unwrap();
    drain(&mut t);
    let at: Vec<u64> = run_timers(&mut t, t0, Duration::from_secs(40))
        .iter()
        .map(|(d, _)| d.as_millis() as u64)
        .collect();
    assert_eq!(at, [500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(code_of(&events(&mut t)[0]), Some(408));
}

#[test]
fn invite_client_acks_non_2xx_and_reacks_retransmissions() {
    let t0 = Instant::now();
    let mut t = Transactions::new(Timers::default());
    let inv = request("INVITE", "z9hG4bKi2");
    let key = t.send_request(t0, inv.clone(), addr(UA), false).unwrap();
    drain(&mut t);
    let mut busy = Message::response_to(&inv, 486);
    busy.set_to_tag("callee");
    t.handle_message(t0, busy.clone(), addr(UA), false);
    let acks = drain(&mut t);
    assert_eq!(acks.len(), 1);
    let ack = Message::parse(&acks[0].bytes).unwrap();
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(ack.to().unwrap().tag(), Some("callee"));
    assert_eq!(ack.cseq().unwrap().to_string(), "1 ACK");
    assert_eq!(ack.top_via().unwrap().branch(), Some("z9hG4bKi2"));
    assert_eq!(ack.request_uri(), inv.request_uri());
    assert_eq!(
        events(&mut t),
        vec![TxEvent::Response {
            key,
            msg: Box::new(busy.clone())
        }]
    );
    // The 486 again: the same ACK again, nothing for the TU.
    t.handle_message(t0 + Duration::from_secs(1), busy, addr(UA), false);
    assert_eq!(drain(&mut t)[0].bytes, acks[0].bytes);
    assert!(events(&mut t).is_empty());
    // Timer D (32 s) ends it without a 408.
    run_timers(&mut t, t0, Duration::from_secs(40));
    assert!(t.is_empty());
    assert!(events(&mut t).is_empty());
}

#[test]
fn invite_server_absorbs_retransmission_retransmits_final_until_ack() {
    let t0 = Instant::now();
    let mut t = Transactions::new(Timers::default());
    let inv = request("INVITE", "z9hG4bKs1");
    t.handle_message(t0, inv.clone(), addr(BOX), false);
    let sent = drain(&mut t);
    assert_eq!(Message::parse(&sent[0].bytes).unwrap().code(), Some(100));
    assert_eq!(sent[0].dest, addr(BOX));
    let ev = events(&mut t);
    let TxEvent::Request { key, .. } = &ev[0] else {
        panic!("{ev:?}")
    };
    let key = key.clone();
    // Retransmitted INVITE: absorbed, the 100 goes out again, no new event.
    t.handle_message(
        t0 + Duration::from_millis(500),
        inv.clone(),
        addr(BOX),
        false,
    );
    assert_eq!(drain(&mut t).len(), 1);
    assert!(events(&mut t).is_empty());
    let mut busy = Message::response_to(&inv, 486);
    busy.set_to_tag("me");
    t.send_response(t0, &key, busy.clone()).unwrap();
    assert_eq!(t.send_response(t0, &key, busy), Err(TxError::AlreadyFinal));
    drain(&mut t);
    // Timer G: T1, 2*T1, 4*T1, then capped at T2.
    let g: Vec<u64> = run_timers(&mut t, t0, Duration::from_millis(12000))
        .iter()
        .map(|(d, _)| d.as_millis() as u64)
        .collect();
    assert_eq!(g, [500, 1500, 3500, 7500, 11500]);
    // The ACK stops retransmissions; timer I ends the transaction.
    let mut ack = request("ACK", "z9hG4bKs1");
    ack.headers.set("To", "<sip:101@box.lan>;tag=me");
    t.handle_message(t0 + Duration::from_secs(12), ack, addr(BOX), false);
    assert!(
        events(&mut t).is_empty(),
        "ACK for non-2xx stays in the transaction"
    );
    assert!(run_timers(&mut t, t0, Duration::from_secs(30)).is_empty());
    assert!(t.is_empty());
}

#[test]
fn invite_server_timer_h_without_ack() {
    let t0 = Instant::now();
    let mut t = Transactions::new(Timers::default());
    let inv = request("INVITE", "z9hG4bKs2");
    t.handle_message(t0, inv.clone(), addr(BOX), true);
    let TxEvent::Request { key, .. } = events(&mut t).remove(0) else {
        panic!()
    };
    t.send_response(t0, &key, Message::response_to(&inv, 603))
        .unwrap();
    drain(&mut t);
    assert!(
        run_timers(&mut t, t0, Duration::from_secs(40)).is_empty(),
        "no G over TCP"
    );
    assert_eq!(events(&mut t), vec![TxEvent::AckTimeout { key }]);
}

#[test]
fn ack_for_2xx_and_cancel_matching() {
    let t0 = Instant::now();
    let mut t = Transactions::new(Timers::default());
    let inv = request("INVITE", "z9hG4bKs3");
    t.handle_message(t0, inv.clone(), addr(BOX), false);
    let TxEvent::Request { key, .. } = events(&mut t).remove(0) else {
        panic!()
    };
    // CANCEL has the INVITE's branch but is its own transaction.
    t.handle_message(t0, request("CANCEL", "z9hG4bKs3"), addr(BOX), false);
    let TxEvent::Request { key: ck, .. } = events(&mut t).remove(0) else {
        panic!()
    };
    assert_ne!(ck, key);
    assert_eq!(t.invite_for_cancel(&ck), Some(key.clone()));
    t.send_response(t0, &key, Message::response_to(&inv, 200))
        .unwrap();
    // INVITE retransmitted after the 2xx: absorbed (RFC 6026 Accepted).
    drain(&mut t);
    t.handle_message(t0, inv, addr(BOX), false);
    assert!(drain(&mut t).is_empty());
    assert!(events(&mut t).is_empty());
    // The 2xx is retransmitted until its ACK arrives.
    let again = run_timers(&mut t, t0, Duration::from_millis(1600));
    assert_eq!(again.len(), 2);
    assert_eq!(Message::parse(&again[0].1.bytes).unwrap().code(), Some(200));
    // The ACK for the 2xx has its own branch: it goes to the dialog, and it
    // stops the retransmissions.
    let later = t0 + Duration::from_millis(1600);
    t.handle_message(later, request("ACK", "z9hG4bKack"), addr(BOX), false);
    assert!(matches!(events(&mut t)[0], TxEvent::Ack { .. }));
    let rest = run_timers(&mut t, t0, Duration::from_secs(40));
    assert!(rest.is_empty(), "{rest:?}");
    assert!(events(&mut t).is_empty(), "no AckTimeout once acknowledged");
    // The unanswered CANCEL transaction was forgotten after 64*T1 too.
    assert!(t.is_empty());
}

#[test]
fn unacknowledged_2xx_times_out() {
    let t0 = Instant::now();
    let mut t = Transactions::new(Timers::default());
    let inv = request("INVITE", "z9hG4bKs4");
    t.handle_message(t0, inv.clone(), addr(BOX), false);
    let TxEvent::Request { key, .. } = events(&mut t).remove(0) else {
        panic!()
    };
    t.send_response(t0, &key, Message::response_to(&inv, 200))
        .unwrap();
    drain(&mut t);
    // The timer G schedule, capped at T2, until timer L (32 s).
    let at: Vec<u64> = run_timers(&mut t, t0, Duration::from_secs(40))
        .iter()
        .map(|(d, _)| d.as_millis() as u64)
        .collect();
    assert_eq!(
        at,
        [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    assert_eq!(events(&mut t), vec![TxEvent::AckTimeout { key }]);
    assert!(t.is_empty());
}

/// Two layers, a network that drops chosen packets in each direction.
#[test]
fn lossy_exchange_delivers_exactly_once() {
    for (drop_req, drop_resp) in [(0, 0), (2, 0), (0, 2), (3, 3), (5, 1)] {
        let t0 = Instant::now();
        let mut client = Transactions::new(Timers::default());
        let mut server = Transactions::new(Timers::default());
        let (mut req_left, mut resp_left) = (drop_req, drop_resp);
        client
            .send_request(t0, request("OPTIONS", "z9hG4bKl"), addr(UA), false)
            .unwrap();
        let mut now = t0;
        let (mut requests_seen, mut responses_seen) = (0, 0);
        for _ in 0..200 {
            for x in drain(&mut client) {
                if req_left > 0 {
                    req_left -= 1;
                } else {
                    server.handle_message(now, Message::parse(&x.bytes).unwrap(), addr(BOX), false);
                }
            }
            for ev in events(&mut server) {
                if let TxEvent::Request { key, msg, .. } = ev {
                    requests_seen += 1;
                    let mut ok = Message::response_to(&msg, 200);
                    ok.set_to_tag("s");
                    server.send_response(now, &key, ok).unwrap();
                }
            }
            for x in drain(&mut server) {
                if resp_left > 0 {
                    resp_left -= 1;
                } else {
                    client.handle_message(now, Message::parse(&x.bytes).unwrap(), addr(UA), false);
                }
            }
            for ev in events(&mut client) {
                assert_eq!(code_of(&ev), Some(200), "{drop_req}/{drop_resp}");
                responses_seen += 1;
            }
            let next = [client.poll_timeout(), server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(at) => {
                    now = at;
                    client.handle_timeout(now);
                    server.handle_timeout(now);
                }
                None => break,
            }
        }
        assert_eq!(
            (requests_seen, responses_seen),
            (1, 1),
            "{drop_req}/{drop_resp}"
        );
        assert!(client.is_empty() && server.is_empty());
    }
}

#[test]
fn refusals() {
    let t0 = Instant::now();
    let mut t = Transactions::new(Timers::default());
    assert_eq!(
        t.send_request(t0, request("ACK", "z9hG4bKa"), addr(UA), false),
        Err(TxError::Ack)
    );
    assert_eq!(
        t.send_request(t0, request("OPTIONS", "old"), addr(UA), false),
        Err(TxError::NoBranch)
    );
    t.send_request(t0, request("OPTIONS", "z9hG4bKd"), addr(UA), false)
        .unwrap();
    assert_eq!(
        t.send_request(t0, request("OPTIONS", "z9hG4bKd"), addr(UA), false),
        Err(TxError::Exists)
    );
    // Pre-RFC 3261 branches still match retransmissions.
    t.handle_message(t0, request("OPTIONS", "old"), addr(BOX), false);
    t.handle_message(t0, request("OPTIONS", "old"), addr(BOX), false);
    assert_eq!(events(&mut t).len(), 1);
    // Full: stateless 503.
    let mut full = Transactions::new(Timers::default());
    for i in 0..MAX_TRANSACTIONS {
        full.handle_message(
            t0,
            request("OPTIONS", &format!("z9hG4bKf{i}")),
            addr(BOX),
            false,
        );
    }
    drain(&mut full);
    full.handle_message(t0, request("OPTIONS", "z9hG4bKmore"), addr(BOX), false);
    assert_eq!(
        Message::parse(&drain(&mut full)[0].bytes).unwrap().code(),
        Some(503)
    );
    assert_eq!(full.len(), MAX_TRANSACTIONS);
}

#[test]
fn cancel_of_our_invite() {
    let t0 = Instant::now();
    let mut t = Transactions::new(Timers::default());
    let inv = request("INVITE", "z9hG4bKc1");
    let ik = t.send_request(t0, inv.clone(), addr(UA), false).unwrap();
    let cancel = cancel_for(&inv);
    assert_eq!(cancel.cseq().unwrap().to_string(), "1 CANCEL");
    assert_eq!(cancel.top_via().unwrap().branch(), Some("z9hG4bKc1"));
    assert_eq!(cancel.request_uri(), inv.request_uri());
    let ck = t.send_request(t0, cancel, addr(UA), false).unwrap();
    assert_ne!(ik, ck, "own transaction, same branch");
    assert_eq!(t.len(), 2);
}

#[test]
fn a_sized_table_refuses_with_503_counts_it_and_frees_slots_by_timer_j() {
    let t0 = Instant::now();
    let timers = Timers::default();
    let mut t = Transactions::with_capacity(timers, 16);
    assert_eq!(t.capacity(), 16);
    for i in 0..16 {
        t.handle_message(
            t0,
            request("OPTIONS", &format!("z9hG4bKs{i}")),
            addr(BOX),
            false,
        );
    }
    for ev in events(&mut t) {
        if let TxEvent::Request { key, msg, .. } = ev {
            t.send_response(t0, &key, Message::response_to(&msg, 200))
                .unwrap();
        }
    }
    drain(&mut t);
    t.handle_message(t0, request("OPTIONS", "z9hG4bKx"), addr(BOX), false);
    let sent = drain(&mut t);
    let busy = Message::parse(&sent[0].bytes).unwrap();
    assert_eq!(busy.code(), Some(503));
    assert_eq!(busy.headers.get("Retry-After"), Some("5"));
    assert_eq!(t.full_refusals(), 1);
    assert!(events(&mut t).is_empty(), "no state, no event");
    // Completed non-INVITE transactions stay for timer J (64*T1), no longer.
    t.handle_timeout(t0 + 64 * timers.t1 - Duration::from_millis(1));
    assert_eq!(t.len(), 16);
    assert_eq!(t.poll_timeout(), Some(t0 + 64 * timers.t1));
    t.handle_timeout(t0 + 64 * timers.t1);
    assert!(t.is_empty());
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn an_acknowledged_2xx_lingers_t4_not_timer_l() {
    let t0 = Instant::now();
    let timers = Timers::default();
    let mut t = Transactions::new(timers);
    let inv = request("INVITE", "z9hG4bKi2");
    t.handle_message(t0, inv.clone(), addr(BOX), false);
    let [TxEvent::Request { key, .. }] = &events(&mut t)[..] else {
        panic!("one request");
    };
    let mut ok = Message::response_to(&inv, 200);
    ok.set_to_tag("ours");
    t.send_response(t0, key, ok).unwrap();
    drain(&mut t);
    // The ACK for the 2xx (its own branch) is matched through the index.
    let ack_at = t0 + Duration::from_millis(40);
    t.handle_message(ack_at, request("ACK", "z9hG4bKack2"), addr(BOX), false);
    assert!(matches!(&events(&mut t)[..], [TxEvent::Ack { .. }]));
    // No 2xx retransmission after the ACK, and gone T4 later.
    assert!(run_timers(&mut t, t0, Duration::from_secs(4)).is_empty());
    assert_eq!(t.len(), 1);
    t.handle_timeout(ack_at + timers.t4);
    assert!(t.is_empty(), "timer L (64*T1) would have kept it 32 s");
    assert!(
        events(&mut t).is_empty(),
        "an acknowledged 2xx is no AckTimeout"
    );
}
