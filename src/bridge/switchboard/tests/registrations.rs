//! Registrations and what the relay hears of them; the relay link going
//! down and up; keep-alives, garbage and strangers; shutdown.

use super::*;

#[test]
fn registering_announces_the_extension_and_unregistering_withdraws_it() {
    let mut lab = Lab::new();
    let out = lab.register("201", phone_201(), 300);
    assert_eq!(out.signals(), [CallSignal::ExtUp("201".into())]);
    let ok = out.one();
    assert!(
        ok.headers.get("Contact").unwrap().contains("expires=300"),
        "{ok:?}"
    );
    assert_eq!(lab.sb.stats().registered, 1);

    // A refresh changes nothing the relay needs to know.
    let out = lab.register_at("201", phone_201(), 300, 3);
    assert!(out.signals().is_empty(), "{:?}", out.0);

    let out = lab.register_at("201", phone_201(), 0, 5);
    assert_eq!(out.signals(), [CallSignal::ExtDown("201".into())]);
    assert_eq!(lab.sb.stats().registered, 0);
}

#[test]
fn the_registrations_view_lists_every_extension_and_changes_with_them() {
    let mut lab = Lab::new();
    let v0 = lab.sb.registrations_version();
    let none = lab.sb.registrations(lab.now);
    assert!(none.iter().all(|r| r.contacts.is_empty()), "{none:?}");
    assert!(none.iter().any(|r| r.ext == "201") && none.iter().any(|r| r.ext == "202"));
    let t_reg = lab.now;
    lab.register("201", phone_201(), 300);
    assert_ne!(lab.sb.registrations_version(), v0);
    let v = lab.sb.registrations(lab.now);
    let r201 = v.iter().find(|r| r.ext == "201").unwrap();
    let [c] = &r201.contacts[..] else {
        panic!("{r201:?}")
    };
    assert_eq!(c.source, phone_201());
    assert_eq!(c.contact, "192.168.1.20:5060");
    assert_eq!(c.transport, "UDP");
    assert_eq!(c.user_agent.as_deref(), Some("Yealink SIP-T46U 66.86.0.15"));
    assert_eq!(c.since, t_reg);
    assert_eq!(c.expires_at, t_reg + Duration::from_secs(300));
    assert!(
        v.iter()
            .find(|r| r.ext == "202")
            .unwrap()
            .contacts
            .is_empty()
    );
    // Nothing happens: the same version. The binding lapses: a new one.
    let v1 = lab.sb.registrations_version();
    lab.wait(Duration::from_secs(100));
    assert_eq!(lab.sb.registrations_version(), v1);
    lab.wait(Duration::from_secs(201));
    assert_ne!(lab.sb.registrations_version(), v1);
    assert!(
        lab.sb
            .registrations(lab.now)
            .iter()
            .all(|r| r.contacts.is_empty())
    );
    // The view holds nothing of the credentials.
    let text = format!("{:?}", lab.sb.registrations(lab.now));
    assert!(!text.contains(&password("201")), "{text}");
}

#[test]
fn a_registration_that_lapses_is_withdrawn() {
    let mut lab = Lab::new();
    lab.register("201", phone_201(), 60);
    assert!(lab.wait(Duration::from_secs(59)).signals().is_empty());
    let out = lab.wait(Duration::from_secs(2));
    assert_eq!(out.signals(), [CallSignal::ExtDown("201".into())]);
    assert_eq!(lab.sb.stats().registered, 0);
}

#[test]
fn a_new_relay_session_announces_every_registered_extension() {
    let mut lab = Lab::new();
    lab.register("202", phone_202(), 300);
    lab.register("201", phone_201(), 300);
    assert!(lab.link(LinkEvent::Down).0.is_empty());
    assert_eq!(
        lab.link(LinkEvent::Up).signals(),
        [
            CallSignal::ExtUp("201".into()),
            CallSignal::ExtUp("202".into())
        ]
    );
}

#[test]
fn a_rotated_password_drops_the_registration_and_only_the_new_one_works() {
    let mut lab = Lab::new();
    lab.register("201", phone_201(), 300);
    lab.register("202", phone_202(), 300);
    assert_eq!(lab.sb.stats().registered, 2);

    // `voxgate phones rotate 201`: the store the bridge re-reads.
    let mut store = lab.sb.phones.clone();
    let fresh = store.rotate("201").unwrap();
    let now = lab.now;
    let changed = lab.sb.replace_phones(now, store);
    assert_eq!(changed, ["201"]);
    let out = lab.drain();
    assert_eq!(out.signals(), [CallSignal::ExtDown("201".into())]);
    assert!(out.sip().is_empty(), "{:?}", out.0);
    assert_eq!(lab.sb.stats().registered, 1, "202 stays registered");

    // The old password is refused like any wrong one ...
    let src = phone_201();
    let uri = format!("sip:{BOX}:5060");
    let challenge = lab.recv(src, &register("201", src, 7, None, 300)).one();
    let old = authorization(&challenge, "201", "REGISTER", &uri);
    let out = lab.recv(src, &register("201", src, 8, Some(&old), 300));
    assert_eq!(out.codes(), [401]);
    assert!(out.signals().is_empty());
    assert_eq!(lab.sb.stats().auth_failures, 1);
    // ... and the new one registers.
    let challenge = lab.recv(src, &register("201", src, 9, None, 300)).one();
    let new = authorization_with(&challenge, "201", &fresh, "REGISTER", &uri);
    let out = lab.recv(src, &register("201", src, 10, Some(&new), 300));
    assert_eq!(out.codes(), [200]);
    assert_eq!(out.signals(), [CallSignal::ExtUp("201".into())]);
    assert_eq!(lab.sb.stats().registered, 2);

    // The same store again, or one that only adds a phone: nobody is dropped.
    let mut more = lab.sb.phones.clone();
    let now = lab.now;
    assert!(lab.sb.replace_phones(now, more.clone()).is_empty());
    more.add("203", 5).unwrap();
    assert!(lab.sb.replace_phones(now, more.clone()).is_empty());
    assert!(lab.drain().0.is_empty());
    // `phones remove 202`: its registration goes too.
    more.remove("202").unwrap();
    assert_eq!(lab.sb.replace_phones(now, more), ["202"]);
    assert_eq!(lab.drain().signals(), [CallSignal::ExtDown("202".into())]);
    assert_eq!(lab.sb.stats().registered, 1);
}

#[test]
fn a_phone_registers_only_its_own_extension() {
    let mut lab = Lab::new();
    let src = phone_201();
    let challenge = lab.recv(src, &register("202", src, 1, None, 300)).one();
    // 201's credentials for 202's address of record.
    let auth = authorization(&challenge, "201", "REGISTER", "sip:192.168.1.2:5060");
    let out = lab.recv(src, &register("202", src, 2, Some(&auth), 300));
    assert_eq!(out.codes(), [403]);
    assert!(out.signals().is_empty());
}

#[test]
fn the_relay_going_away_ends_every_call_at_the_phones_only() {
    let mut lab = Lab::new();
    let (ringing, _, _) = lab.dial("301", SDP_PCMU);
    let invite = super::relay_calls::ring_202(&mut lab);
    lab.recv(
        phone_202(),
        &response_from_202(&invite, 200, "OK", SDP_202_G722),
    );
    let out = lab.link(LinkEvent::Down);
    assert!(out.signals().is_empty(), "nobody to tell");
    let mut sent: Vec<(SocketAddr, String)> = out
        .sip()
        .into_iter()
        .map(|(d, m)| {
            let what = m.code().map_or_else(
                || m.method().unwrap().as_str().to_string(),
                |c| c.to_string(),
            );
            (d, what)
        })
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [(phone_201(), "480".into()), (phone_202(), "BYE".into())]
    );
    assert_eq!(lab.sb.stats().calls_active, 0);
    // A call for the old session's id finds nothing.
    assert!(
        lab.relay(CallSignal::Ringing { call: ringing })
            .0
            .is_empty()
    );
}

#[test]
fn keep_alives_are_answered_and_garbage_and_strangers_dropped() {
    let mut lab = Lab::new();
    let options = wire(
        "OPTIONS sip:192.168.1.2:5060 SIP/2.0
Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-opt-1;rport
From: <sip:201@192.168.1.2>;tag=ka1
To: <sip:192.168.1.2>
Call-ID: keepalive-1
CSeq: 1 OPTIONS
Max-Forwards: 70",
        "",
    );
    let ok = lab.recv(phone_201(), &options).one();
    assert_eq!(ok.code(), Some(200));
    assert_eq!(
        ok.headers.get_all("Allow").collect::<Vec<_>>(),
        ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"]
    );
    assert!(ok.to().unwrap().tag().is_some());

    // OPTIONS to a user is challenged like INVITE.
    let to_user = String::from_utf8(options.clone())
        .unwrap()
        .replace("OPTIONS sip:192", "OPTIONS sip:202@192")
        .replace("opt-1", "opt-2");
    assert_eq!(lab.recv(phone_201(), to_user.as_bytes()).codes(), [401]);

    assert!(lab.recv(phone_201(), b"hello\r\n\r\n").0.is_empty());
    assert_eq!(lab.sb.stats().dropped, 1);
    let stranger: SocketAddr = "10.9.9.9:5060".parse().unwrap();
    assert!(lab.recv(stranger, &options).0.is_empty());
    // Counted once (it used to be counted twice: the guard's audit event
    // and the refused admission).
    assert_eq!(lab.sb.stats().dropped, 2);
    // An unsupported method gets 405 with Allow.
    let sub = String::from_utf8(options)
        .unwrap()
        .replace("OPTIONS", "SUBSCRIBE")
        .replace("opt-1", "sub-1");
    let out = lab.recv(phone_201(), sub.as_bytes());
    assert_eq!(out.codes(), [405]);
}

#[test]
fn shutdown_hangs_up_every_call_and_tells_the_relay() {
    let mut lab = Lab::new();
    let (call, _, _) = lab.dial("900", SDP_PCMU);
    lab.sb.shutdown(lab.now);
    let out = lab.drain();
    assert_eq!(out.codes(), [480]);
    assert_eq!(
        out.signals(),
        [CallSignal::End {
            call,
            reason: EndReason::Unavailable
        }]
    );
    assert!(lab.sb.ports().leased.is_empty());
}

#[test]
fn a_full_transaction_table_refuses_with_503_and_is_counted() {
    let mut lab = Lab::with(
        SipConfig {
            max_transactions: 16,
            ..sip_config()
        },
        FakePorts::new(1),
    );
    let options = |i: u32| {
        wire(
            &format!(
                "OPTIONS sip:192.168.1.2:5060 SIP/2.0
Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-opt-{i};rport
From: <sip:201@192.168.1.2>;tag=ka{i}
To: <sip:192.168.1.2>
Call-ID: keepalive-{i}
CSeq: 1 OPTIONS
Max-Forwards: 70"
            ),
            "",
        )
    };
    for i in 0..16 {
        assert_eq!(lab.recv(phone_201(), &options(i)).codes(), [200]);
    }
    assert_eq!(lab.sb.stats().transactions, 16, "each lingers for timer J");
    let out = lab.recv(phone_201(), &options(16));
    let busy = out.one();
    assert_eq!(busy.code(), Some(503));
    assert_eq!(busy.headers.get("Retry-After"), Some("5"));
    assert_eq!(lab.sb.stats().transactions_full, 1);
    // Timer J (64*T1) frees the table.
    lab.wait(Duration::from_secs(33));
    assert_eq!(lab.sb.stats().transactions, 0);
    assert_eq!(lab.recv(phone_201(), &options(17)).codes(), [200]);
}
