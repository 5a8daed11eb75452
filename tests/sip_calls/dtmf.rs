//! DTMF from a phone on one box to a phone on another; the callee hangs up.

use super::*;

/// A UDP socket that keeps every datagram it gets, until dropped.
pub(crate) struct Sink(UdpThread<Vec<u8>>);

impl Sink {
    pub(crate) fn new() -> Sink {
        let mut buf = [0u8; 2048];
        Sink(UdpThread::spawn(
            Duration::from_millis(100),
            move |sock, got| {
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    got.lock().unwrap().push(buf[..n].to_vec());
                }
            },
        ))
    }

    pub(crate) fn port(&self) -> u16 {
        self.0.port
    }

    pub(crate) fn packets(&self) -> Vec<Rtp> {
        self.0.kept().iter().filter_map(|b| parse_rtp(b)).collect()
    }
}

/// RFC 4733 event codes of the digits.
pub(crate) fn event_code(d: char) -> u8 {
    match d {
        '0'..='9' => d as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => 12 + (d as u8 - b'A'),
        _ => panic!("not a DTMF digit: {d}"),
    }
}

/// The events in a stream of `pt` packets, one per event (its start
/// timestamp), in order, and whether each was seen to end.
pub(crate) fn events_in(packets: &[Rtp], pt: u8) -> Vec<(u8, bool)> {
    let mut out: Vec<(u32, u8, bool)> = Vec::new();
    for p in packets
        .iter()
        .filter(|p| p.pt == pt && p.payload.len() >= 4)
    {
        let end = p.payload[1] & 0x80 != 0;
        match out.iter_mut().find(|(ts, _, _)| *ts == p.ts) {
            Some(e) => e.2 |= end,
            None => out.push((p.ts, p.payload[0], end)),
        }
    }
    out.into_iter().map(|(_, e, end)| (e, end)).collect()
}

#[test]
fn dtmf_from_a_phone_on_one_box_reaches_a_phone_on_another_and_the_callee_hangs_up() {
    let TwoBoxLab {
        boxes: TwoBoxes { a, b, pa, .. },
        callee_port,
        lab,
        ..
    } = &two_boxes("sip-dtmf");
    let sink = Sink::new();
    let callee = fill(
        &sipp_file("callee.xml"),
        &[
            ("CALLEE_END", &sipp_file("callee-bye.xml")),
            ("HOLD_MS", "5000"),
            ("SINK_PORT", &sink.port().to_string()),
            ("EXT", "301"),
        ],
    );
    let port = callee_port.to_string();
    let callee_run = Sipp {
        bin: &sipp37(),
        dir: &lab.dir,
        name: "callee-301",
        scenario: &callee,
        target: &format!("127.0.0.1:{}", b.sip_port),
        args: &["-p", &port, "-timeout", "30s", "-trace_msg", "-trace_logs"],
        limit: Duration::from_secs(35),
    }
    .spawn();
    // A's phone: silence, the digits as RFC 4733 events with silence
    // between them, silence.
    let digits = "15#0*9";
    let mut packets = Vec::new();
    let mut s = Stream::new(0x5150_0002);
    s.silence(600, 20, &mut packets);
    for d in digits.chars() {
        s.event(101, event_code(d), 120, &mut packets);
        s.silence(300, 20, &mut packets);
    }
    s.silence(400, 20, &mut packets);
    let pcap = lab.dir.join("dtmf.pcap");
    write_pcap(&pcap, &packets);
    // The caller plays the pcap and then waits for the callee's BYE.
    let scenario = call_scenario(
        "201",
        &pcap,
        s.at.as_millis() as u64,
        20,
        true,
        &sipp_file("caller-gets-bye.xml"),
    );
    let (out, trace) = sipp_call(
        "u1",
        &lab.dir,
        a,
        "dtmf-caller",
        &scenario,
        "301",
        "201",
        pa,
    );
    let callee_status = wait_child(callee_run, Duration::from_secs(40));
    let callee_trace = std::fs::read_dir(&lab.dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with("callee-301") && !n.ends_with(".xml")
        })
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        out.status.success(),
        "caller: {}\n{trace}\ncallee:\n{callee_trace}\nA:\n{}\nB:\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.log(),
        b.log()
    );
    assert!(
        callee_status.success(),
        "callee:\n{callee_trace}\nB:\n{}",
        b.log()
    );
    let te: u8 = callee_trace
        .split("offered telephone-event ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no telephone-event in B's offer:\n{callee_trace}"));
    drop(callee_trace);
    let got = sink.packets();
    let events = events_in(&got, te);
    let want: Vec<(u8, bool)> = digits.chars().map(|d| (event_code(d), true)).collect();
    println!(
        "B's phone got {} RTP packets, RFC 4733 events {events:?} (sent {digits:?})",
        got.len()
    );
    assert_eq!(events, want, "digits at B's phone, in order, each ended");
    assert!(got.iter().any(|p| p.pt == 0), "audio reached B's phone too");
    // The callee's BYE ended the call on both boxes.
    for (name, gw) in [("A", &a), ("B", &b)] {
        wait_for(Duration::from_secs(5), "calls to end", || {
            gw.metric("voxgate_sip_calls_active") == 0.0
        });
        assert!(gw.log().contains("call ended"), "{name}:\n{}", gw.log());
    }
}
