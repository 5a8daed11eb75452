//! Calls through a real relay: two devices (real QUIC clients with
//! certificates from the relay's CA, speaking the control protocol directly,
//! as a gateway's SIP bridge does) register extensions, call each other, the
//! echo and recording services, exchange media and DTMF, and hang up.

use std::time::Duration;
use voxgate::media::flow;
use voxgate::media::rtp::Repr;
use voxgate::proto::control::{
    self, CallAnswer, CallEnd, CallRinging, CallSetup, Dtmf, EndReason, ExtUp, Hello, Message,
};
use voxgate::proto::signal::CallSignal as CallMsg;
use voxgate::transport::framed::FrameReader;
use voxgate_testkit::lab::{Lab, metric};

const WAIT: Duration = Duration::from_secs(5);

struct Dev {
    conn: quinn::Connection,
    send: quinn::SendStream,
    reader: FrameReader,
    _ep: quinn::Endpoint,
}

impl Dev {
    async fn connect(lab: &Lab, id: &str) -> Dev {
        lab.gateway_config(id, lab.quic_port, "");
        let gdir = lab.dir.join(id);
        let cfg = voxgate_testkit::lab::device_client_config(&gdir, id);
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = ep
            .connect_with(
                cfg,
                format!("127.0.0.1:{}", lab.quic_port).parse().unwrap(),
                "relay.voxgate.test",
            )
            .unwrap()
            .await
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut d = Dev {
            conn,
            send,
            reader: FrameReader::new(recv),
            _ep: ep,
        };
        d.tx(&Message::Hello(Hello {
            device: id,
            version: "test",
            caps: Default::default(),
        }))
        .await;
        let welcome =
            tokio::time::timeout(WAIT, d.reader.next(|m| matches!(m, Message::Welcome(_))))
                .await
                .unwrap()
                .unwrap();
        assert!(welcome, "no welcome");
        d
    }

    async fn tx(&mut self, m: &Message<'_>) {
        let mut buf = [0u8; 2100];
        let n = control::encode(m, &mut buf).unwrap();
        self.send.write_all(&buf[..n]).await.unwrap();
    }

    /// The next call message (stats and pongs skipped; an error panics).
    async fn rx(&mut self) -> CallMsg {
        loop {
            let m = tokio::time::timeout(
                WAIT,
                self.reader.next(|m| match &m {
                    Message::Error(e) => panic!("relay error: {} {}", e.code, e.message),
                    _ => CallMsg::from_message(&m),
                }),
            )
            .await
            .expect("no call message within 5 s")
            .unwrap();
            if let Some(c) = m {
                return c;
            }
        }
    }

    /// The next relay `error` code.
    async fn rx_error(&mut self) -> String {
        loop {
            let m = tokio::time::timeout(
                WAIT,
                self.reader.next(|m| match m {
                    Message::Error(e) => Some(e.code.to_string()),
                    _ => None,
                }),
            )
            .await
            .expect("no error within 5 s")
            .unwrap();
            if let Some(c) = m {
                return c;
            }
        }
    }

    /// Round trip a ping: every message sent before it has been handled.
    async fn sync(&mut self) {
        self.tx(&Message::Ping(voxgate::proto::control::Ping { id: 77 }))
            .await;
        loop {
            let pong = tokio::time::timeout(
                WAIT,
                self.reader
                    .next(|m| matches!(m, Message::Pong(p) if p.id == 77)),
            )
            .await
            .expect("no pong within 5 s")
            .unwrap();
            if pong {
                return;
            }
        }
    }

    fn media(&self, flow_id: u64, ssrc: u32, seq: u16, payload: &[u8]) {
        let mut buf = [0u8; 1500];
        let repr = Repr {
            marker: seq == 0,
            payload_type: 111,
            sequence: seq,
            timestamp: u32::from(seq) * 960,
            ssrc,
        };
        let n = flow::encode(flow_id, &repr, payload, &mut buf).unwrap();
        self.conn
            .send_datagram(bytes::Bytes::copy_from_slice(&buf[..n]))
            .unwrap();
    }

    /// Datagrams received within `window`: (flow, ssrc, seq, payload).
    async fn collect(&self, window: Duration) -> Vec<(u64, u32, u16, Vec<u8>)> {
        let mut v = Vec::new();
        let end = tokio::time::Instant::now() + window;
        while let Ok(Ok(d)) = tokio::time::timeout_at(end, self.conn.read_datagram()).await {
            let (f, p) = flow::decode(&d).unwrap();
            v.push((f, p.ssrc(), p.sequence(), p.payload().to_vec()));
        }
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_boxes_call_each_other_with_media_dtmf_and_hang_up() {
    let lab = Lab::new("calls-d2d", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let mut a = Dev::connect(&lab, "gw-a").await;
    let mut b = Dev::connect(&lab, "gw-b").await;
    a.tx(&Message::ExtUp(ExtUp { ext: "201" })).await;
    b.tx(&Message::ExtUp(ExtUp { ext: "301" })).await;
    b.sync().await;
    // B's extension is taken: a second box cannot claim it.
    a.tx(&Message::ExtUp(ExtUp { ext: "301" })).await;
    assert_eq!(a.rx_error().await, "ext_conflict");

    a.tx(&Message::CallSetup(CallSetup {
        call: 1,
        to: "301",
        from: "201",
        flow: 40,
        ssrc: 0xaaaa,
    }))
    .await;
    let CallMsg::Setup {
        call: bc, to, from, ..
    } = b.rx().await
    else {
        panic!("B got no setup")
    };
    assert_eq!((to.as_str(), from.as_str()), ("301", "201"));
    b.tx(&Message::CallRinging(CallRinging { call: bc })).await;
    assert_eq!(a.rx().await, CallMsg::Ringing { call: 1 });
    b.tx(&Message::CallAnswer(CallAnswer {
        call: bc,
        flow: 50,
        ssrc: 0xbbbb,
    }))
    .await;
    let CallMsg::Answer {
        call: 1,
        flow: a_in,
        ..
    } = a.rx().await
    else {
        panic!("A got no answer")
    };

    // Media both ways, 20 frames each, in order and untouched.
    for i in 0..20u16 {
        a.media(40, 0xaaaa, i, format!("a{i}").as_bytes());
        b.media(50, 0xbbbb, i, format!("b{i}").as_bytes());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (at_b, at_a) = tokio::join!(
        b.collect(Duration::from_millis(500)),
        a.collect(Duration::from_millis(500))
    );
    assert_eq!(at_b.len(), 20, "B heard {} of 20", at_b.len());
    assert_eq!(at_a.len(), 20, "A heard {} of 20", at_a.len());
    assert!(
        at_a.iter().all(|d| d.0 == a_in),
        "A's audio arrives on the announced flow"
    );
    let b_in = at_b[0].0;
    assert!(
        at_b.iter().all(|d| d.0 == b_in && d.1 != 0xaaaa),
        "re-stamped SSRC"
    );
    for (i, d) in at_b.iter().enumerate() {
        assert_eq!(
            (d.2, d.3.as_slice()),
            (i as u16, format!("a{i}").as_bytes())
        );
    }

    // DTMF crosses with the other side's call id.
    a.tx(&Message::Dtmf(Dtmf {
        call: 1,
        digit: "5",
        duration_ms: 100,
    }))
    .await;
    assert_eq!(
        b.rx().await,
        CallMsg::Dtmf {
            call: bc,
            digit: '5',
            duration_ms: 100
        }
    );
    b.tx(&Message::Dtmf(Dtmf {
        call: bc,
        digit: "#",
        duration_ms: 80,
    }))
    .await;
    assert_eq!(
        a.rx().await,
        CallMsg::Dtmf {
            call: 1,
            digit: '#',
            duration_ms: 80
        }
    );

    // B hangs up; A hears it; A's flow is no longer routed.
    b.tx(&Message::CallEnd(CallEnd {
        call: bc,
        reason: EndReason::Normal,
    }))
    .await;
    assert_eq!(
        a.rx().await,
        CallMsg::End {
            call: 1,
            reason: EndReason::Normal
        }
    );
    let unknown = metric(
        lab.relay_metrics,
        "voxgate_relay_datagrams_unknown_flow_total",
    );
    a.media(40, 0xaaaa, 99, b"late");
    assert!(b.collect(Duration::from_millis(300)).await.is_empty());
    assert_eq!(
        metric(
            lab.relay_metrics,
            "voxgate_relay_datagrams_unknown_flow_total"
        ),
        unknown + 1.0
    );

    // Busy and not found come back as reasons.
    a.tx(&Message::CallSetup(CallSetup {
        call: 2,
        to: "301",
        from: "201",
        flow: 41,
        ssrc: 1,
    }))
    .await;
    let CallMsg::Setup { call: bc2, .. } = b.rx().await else {
        panic!()
    };
    b.tx(&Message::CallEnd(CallEnd {
        call: bc2,
        reason: EndReason::Busy,
    }))
    .await;
    assert_eq!(
        a.rx().await,
        CallMsg::End {
            call: 2,
            reason: EndReason::Busy
        }
    );
    a.tx(&Message::CallSetup(CallSetup {
        call: 3,
        to: "555",
        from: "201",
        flow: 42,
        ssrc: 1,
    }))
    .await;
    assert_eq!(
        a.rx().await,
        CallMsg::End {
            call: 3,
            reason: EndReason::NotFound
        }
    );

    // An answered call ends when the callee's box disconnects.
    a.tx(&Message::CallSetup(CallSetup {
        call: 4,
        to: "301",
        from: "201",
        flow: 43,
        ssrc: 1,
    }))
    .await;
    let CallMsg::Setup { call: bc4, .. } = b.rx().await else {
        panic!()
    };
    b.tx(&Message::CallAnswer(CallAnswer {
        call: bc4,
        flow: 51,
        ssrc: 2,
    }))
    .await;
    assert!(matches!(a.rx().await, CallMsg::Answer { call: 4, .. }));
    b.conn.close(0u32.into(), b"bye");
    assert_eq!(
        a.rx().await,
        CallMsg::End {
            call: 4,
            reason: EndReason::Normal
        }
    );
    assert_eq!(metric(lab.relay_metrics, "voxgate_relay_calls_total"), 4.0);
    assert_eq!(metric(lab.relay_metrics, "voxgate_relay_calls_active"), 0.0);
    relay.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_and_recording_services() {
    let lab = Lab::new("calls-services", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let mut a = Dev::connect(&lab, "gw-a").await;
    a.tx(&Message::ExtUp(ExtUp { ext: "201" })).await;

    // 900: audio and digits come straight back.
    a.tx(&Message::CallSetup(CallSetup {
        call: 1,
        to: "900",
        from: "201",
        flow: 40,
        ssrc: 7,
    }))
    .await;
    let CallMsg::Answer {
        call: 1,
        flow: back,
        ..
    } = a.rx().await
    else {
        panic!("echo did not answer")
    };
    for i in 0..10u16 {
        a.media(40, 7, i, &[i as u8; 30]);
    }
    let got = a.collect(Duration::from_millis(500)).await;
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|d| d.0 == back));
    a.tx(&Message::Dtmf(Dtmf {
        call: 1,
        digit: "9",
        duration_ms: 100,
    }))
    .await;
    assert_eq!(
        a.rx().await,
        CallMsg::Dtmf {
            call: 1,
            digit: '9',
            duration_ms: 100
        }
    );
    a.tx(&Message::CallEnd(CallEnd {
        call: 1,
        reason: EndReason::Normal,
    }))
    .await;

    // 901: real Opus frames are recorded to a playable Ogg Opus file.
    a.tx(&Message::CallSetup(CallSetup {
        call: 2,
        to: "901",
        from: "201",
        flow: 41,
        ssrc: 8,
    }))
    .await;
    assert!(matches!(a.rx().await, CallMsg::Answer { call: 2, .. }));
    let mut enc = voxgate::codec::OpusEncoder::new(&voxgate::codec::CodecConfig {
        complexity: 5,
        ..Default::default()
    })
    .unwrap();
    for i in 0..50u16 {
        let pcm: Vec<i16> = (0..960)
            .map(|n| (((i as usize * 960 + n) as f32 * 0.05).sin() * 6000.0) as i16)
            .collect();
        let pkt = enc.encode(&pcm).unwrap().to_vec();
        a.media(41, 8, i, &pkt);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.tx(&Message::CallEnd(CallEnd {
        call: 2,
        reason: EndReason::Normal,
    }))
    .await;
    // The recording is finished when the call ends, while the box stays connected.
    let deadline = std::time::Instant::now() + WAIT;
    let rec = loop {
        let recs = lab.recordings();
        if let Some(r) = recs.iter().find(|p| {
            std::fs::read(p).is_ok_and(|b| {
                voxgate::relay::audio_file::OggOpusReader::open(&b[..]).is_ok_and(|mut rd| {
                    std::iter::from_fn(|| rd.next_packet().ok().flatten()).count() == 50
                })
            })
        }) {
            break r.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no finished 50-packet recording: {recs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = std::process::Command::new("opusdec")
        .arg("--quiet")
        .arg(&rec)
        .arg(lab.dir.join("call.wav"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "opusdec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    relay.assert_running();
}
