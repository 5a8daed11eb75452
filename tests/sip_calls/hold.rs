//! Hold and resume with re-INVITEs; audio comes back.

use super::*;

/// A phone's media played by the test itself: it waits for the box's
/// first RTP packet (sent to the SDP address before any comes from the
/// phone), then sends u-law speech from the same socket every 20 ms,
/// looping, and keeps the arrival time and payload of every packet it
/// gets.
pub(crate) struct TestPhoneMedia(UdpThread<(std::time::Instant, Rtp)>);

impl TestPhoneMedia {
    pub(crate) fn new(ulaw: Vec<u8>) -> TestPhoneMedia {
        let mut buf = [0u8; 2048];
        let mut peer = None;
        let mut next = std::time::Instant::now();
        let (mut seq, mut ts, mut i) = (fastrand::u16(..), fastrand::u32(..), 0usize);
        TestPhoneMedia(UdpThread::spawn(
            Duration::from_millis(5),
            move |sock, got| {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    peer.get_or_insert(from);
                    if let Some(p) = parse_rtp(&buf[..n]) {
                        got.lock().unwrap().push((std::time::Instant::now(), p));
                    }
                }
                if let Some(to) = peer
                    && std::time::Instant::now() >= next
                {
                    let frame: Vec<u8> = (0..160).map(|k| ulaw[(i + k) % ulaw.len()]).collect();
                    let _ = sock.send_to(&rtp(0, false, seq, ts, 0x5150_0003, &frame), to);
                    i = (i + 160) % ulaw.len();
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(160);
                    next += Duration::from_millis(20);
                }
            },
        ))
    }

    pub(crate) fn port(&self) -> u16 {
        self.0.port
    }

    pub(crate) fn received(&self) -> Vec<(std::time::Instant, Rtp)> {
        self.0.kept().clone()
    }
}

/// Mean absolute deviation of u-law bytes from silence: 0 for silence.
pub(crate) fn ulaw_energy(payload: &[u8]) -> f64 {
    payload
        .iter()
        .map(|&b| f64::from(0x7f - (b & 0x7f)))
        .sum::<f64>()
        / payload.len().max(1) as f64
}

#[test]
fn a_phone_holds_and_resumes_a_call_with_reinvites_and_audio_comes_back() {
    let lab = Lab::new("sip-hold", "mode = \"none\"");
    let _relay = lab.start_relay();
    let mut gw = SipGateway::configure(&lab, "gw-a", "[\"sha-256\", \"md5\"]", "");
    let pw = gw.add_phone("201");
    gw.start(&lab);
    let speech = speech_fixture(&lab.dir, TEXT).with_extension("wav");
    let media = TestPhoneMedia::new(ulaw_of(&speech, &lab.dir));
    let sdp_dir = |dir: &str| {
        sdp(20)
            .replace("[media_port]", &media.port().to_string())
            .replace("a=sendrecv", &format!("a={dir}"))
    };
    let steps: String = [
        (3, 2000, "sendonly", "recvonly"),
        (4, 2000, "sendrecv", "sendrecv"),
        (5, 2000, "inactive", "inactive"),
        (6, 2000, "sendrecv", "sendrecv"),
    ]
    .iter()
    .map(|(cseq, pause, offered, answered)| {
        fill(
            &sipp_file("reinvite.xml"),
            &[
                ("PAUSE", &pause.to_string()),
                ("CSEQ", &cseq.to_string()),
                ("SDP_OFFERED", &sdp_dir(offered)),
                ("OFFERED", offered),
                ("ANSWERED", answered),
            ],
        )
    })
    .collect::<String>()
        + "  <pause milliseconds=\"2000\"/>\n";
    let scenario = fill(
        &sipp_file("hold.xml"),
        &[
            ("STEPS", &steps),
            ("SDP", &sdp_dir("sendrecv")),
            ("EXT", "201"),
        ],
    );
    let (out, trace) = sipp_call("u1", &lab.dir, &gw, "hold", &scenario, "900", "201", &pw);
    assert!(
        out.status.success(),
        "hold scenario: {}\n{trace}\ngateway:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    for line in [
        "re-INVITE 3 sendonly answered a=recvonly",
        "re-INVITE 4 sendrecv answered a=sendrecv",
        "re-INVITE 5 inactive answered a=inactive",
        "re-INVITE 6 sendrecv answered a=sendrecv",
    ] {
        assert!(trace.contains(line), "{line}:\n{trace}");
    }
    // Same o= session id in every answer, a higher version each time.
    let origins: Vec<(String, u64)> = trace
        .lines()
        .filter(|l| l.starts_with("re-INVITE "))
        .filter_map(|l| {
            let o: Vec<&str> = l.split(" o=").nth(1)?.split_whitespace().collect();
            Some((o.get(1)?.to_string(), o.get(2)?.parse().ok()?))
        })
        .collect();
    assert_eq!(origins.len(), 4, "{trace}");
    assert!(
        origins
            .windows(2)
            .all(|w| w[0].0 == w[1].0 && w[1].1 > w[0].1),
        "{origins:?}"
    );
    // What the phone got: echo while the call is up, nothing while held
    // (two gaps of about 2 s), echo again after each resume.
    let got = media.received();
    drop(media);
    assert!(got.len() > 100, "the phone got {} packets", got.len());
    let gaps: Vec<(usize, Duration)> = got
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i + 1, w[1].0 - w[0].0))
        .filter(|(_, d)| *d > Duration::from_millis(1000))
        .collect();
    println!(
        "hold test: {} packets to the phone, gaps over 1 s: {:?}",
        got.len(),
        gaps.iter().map(|(_, d)| d.as_millis()).collect::<Vec<_>>()
    );
    assert_eq!(gaps.len(), 2, "two holds, two silent stretches: {gaps:?}");
    for &(_, d) in &gaps {
        assert!(
            d > Duration::from_millis(1500) && d < Duration::from_millis(3000),
            "{gaps:?}"
        );
    }
    // After each resume the echo of the phone's speech comes back.
    for (k, &(start, _)) in gaps.iter().enumerate() {
        let end = gaps.get(k + 1).map_or(got.len(), |g| g.0);
        let loud = got[start..end]
            .iter()
            .filter(|(_, p)| p.pt == 0 && ulaw_energy(&p.payload) > 8.0)
            .count();
        assert!(
            loud > 10,
            "echo after resume {}: {loud} loud packets",
            k + 1
        );
    }
    let log = gw.log();
    assert!(
        log.contains("\"hold\":true") && log.contains("\"hold\":false"),
        "{log}"
    );
    assert_eq!(gw.metric("voxgate_sip_calls_active"), 0.0);
}
