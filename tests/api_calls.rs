//! Calls started through the relay's HTTP API, end to end: the real relay
//! (with `[api]`), real boxes (`voxgate run` with the phone bridge) and
//! SIPp 3.7.3 phones on loopback. `POST /v1/calls` rings a phone on one box
//! and, once it answers, connects it to the 900 echo or to a phone on
//! another box (the audio is scored with PESQ and STOI); `DELETE
//! /v1/calls/{id}` ends the SIP calls with a BYE; a callee that does not
//! answer is replaced by the `[calls]` fallback after `no_answer_seconds`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use voxgate_testkit::audio_env::{score, speech_fixture};
use voxgate_testkit::lab::{Lab, Proc, free_udp, wait_for};
use voxgate_testkit::rtp::{Rtp, UdpThread, parse_rtp, rtp, ulaw_of};
use voxgate_testkit::sip::{
    SipGateway, Sipp, callee_scenario, fill, register_at, sipp_file, sipp37, wait_child,
};

const TEXT: &str =
    "Applications start calls through the relay. The quick brown fox jumps over the lazy dog.";

/// The relay's HTTP API, driven with curl (a real HTTPS client; the key
/// goes to it on its standard input: `testkit::api`) with one API key.
struct Api {
    api: voxgate_testkit::api::Api,
    key: String,
}

impl Api {
    /// A key with `scopes` (`voxgate relay api-key create`) for `api`.
    fn new(lab: &Lab, api: &voxgate_testkit::api::Api, scopes: &str) -> Api {
        Api {
            api: voxgate_testkit::api::Api {
                port: api.port,
                ca: api.ca.clone(),
                host: api.host.clone(),
            },
            key: voxgate_testkit::api::create_key(lab, "api-calls", scopes, &[]),
        }
    }

    /// `METHOD path` with an optional JSON body: (status, parsed body).
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let mut r = voxgate_testkit::api::Req::new(method, path, Some(&self.key));
        if let Some(b) = body {
            r = r.json(b);
        }
        let a = self.api.send(r);
        (
            a.status,
            serde_json::from_str(&a.body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `POST /v1/calls`; returns the new call's id.
    fn start(&self, from: &str, to: &str) -> u64 {
        let (code, v) = self.call(
            "POST",
            "/v1/calls",
            Some(&format!(r#"{{"from":"{from}","to":"{to}"}}"#)),
        );
        assert_eq!(code, 201, "POST /v1/calls: {v}");
        assert_eq!(v["state"], "calling", "{v}");
        v["id"].as_u64().expect("an id")
    }

    fn get(&self, id: u64) -> (u16, serde_json::Value) {
        self.call("GET", &format!("/v1/calls/{id}"), None)
    }

    /// Wait until call `id` is in `state` (as `GET /v1/calls/{id}` says).
    fn wait_state(&self, id: u64, state: &str, limit: Duration) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        wait_for(limit, &format!("call {id} {state}"), || {
            last = self.get(id).1;
            last["state"] == state
        });
        last
    }

    fn hang_up(&self, id: u64) {
        let (code, v) = self.call("DELETE", &format!("/v1/calls/{id}"), None);
        assert_eq!(code, 204, "DELETE /v1/calls/{id}: {v}");
    }
}

/// A lab whose relay serves the API (and `calls`, the `[calls]` body);
/// returns the lab, the relay and the API.
fn lab_with_api(name: &str, calls: &str) -> (Lab, Proc, voxgate_testkit::api::Api) {
    let (lab, relay, api, _) = lab_with_api_and(name, calls, false);
    (lab, relay, api)
}

/// [`lab_with_api`], and with `hooks` a webhook receiver (standardwebhooks)
/// that every event is delivered to.
fn lab_with_api_and(
    name: &str,
    calls: &str,
    hooks: bool,
) -> (
    Lab,
    Proc,
    voxgate_testkit::api::Api,
    Option<voxgate_testkit::webhooks::Receiver>,
) {
    let lab = Lab::new(name, "mode = \"none\"");
    let (lab, receiver) = if hooks {
        let (lab, mut rx) = voxgate_testkit::webhooks::with_webhooks(lab, "\"127.0.0.1\"");
        let (_, secret) = voxgate_testkit::webhooks::add(&lab, &rx.url("127.0.0.1", "/hook"), "");
        std::fs::write(&rx.secrets, format!("{secret}\n")).unwrap();
        rx.start();
        (lab, Some(rx))
    } else {
        (lab, None)
    };
    let cfg = lab.dir.join("relay.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}\n[calls]\n{calls}\n")).unwrap();
    let api = voxgate_testkit::api::enable(&lab, "", None);
    let relay = lab.start_relay();
    let port = api.port;
    wait_for(Duration::from_secs(10), "the API to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (lab, relay, api, receiver)
}

/// A phone's media: it keeps every packet it gets and, once the box's
/// first packet shows where to send, plays `speech` (u-law, 20 ms packets)
/// once after half a second, silence otherwise.
struct PhoneMedia(UdpThread<(Instant, Rtp)>);

impl PhoneMedia {
    fn new(speech: Option<Vec<u8>>) -> PhoneMedia {
        Self::gated(speech, Arc::new(AtomicBool::new(true)))
    }

    /// [`PhoneMedia::new`] whose speech waits for `go` (silence until
    /// then): a phone that speaks once the other party is on the line.
    fn gated(speech: Option<Vec<u8>>, go: Arc<AtomicBool>) -> PhoneMedia {
        let mut buf = [0u8; 2048];
        let mut peer = None;
        let mut next = Instant::now();
        let speech = speech.unwrap_or_default();
        let lead = 25 * 160;
        let (mut seq, mut ts, mut i) = (fastrand::u16(..), fastrand::u32(..), 0usize);
        PhoneMedia(UdpThread::spawn(
            Duration::from_millis(5),
            move |sock, got| {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    // Paced from the first packet on (no burst of what
                    // would have been sent before).
                    if peer.is_none() {
                        next = Instant::now();
                    }
                    peer.get_or_insert(from);
                    if let Some(p) = parse_rtp(&buf[..n]) {
                        got.lock().unwrap().push((Instant::now(), p));
                    }
                }
                if let Some(to) = peer
                    && Instant::now() >= next
                {
                    if !go.load(Ordering::Relaxed) {
                        i = 0;
                    }
                    let frame: Vec<u8> = (i..i + 160)
                        .map(|k| {
                            k.checked_sub(lead)
                                .and_then(|k| speech.get(k).copied())
                                .unwrap_or(0xff)
                        })
                        .collect();
                    let _ = sock.send_to(&rtp(0, false, seq, ts, 0x5150_0015, &frame), to);
                    i += 160;
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(160);
                    next += Duration::from_millis(20);
                }
            },
        ))
    }

    fn port(&self) -> u16 {
        self.0.port
    }

    /// The PCMU it got, placed by RTP timestamp as a phone plays it (a
    /// gap is silence), as a WAV file at `path` (8 kHz, 16-bit).
    fn heard_wav(&self, path: &Path) -> PathBuf {
        let kept = self.0.kept();
        let pcmu: Vec<&Rtp> = kept.iter().map(|(_, p)| p).filter(|p| p.pt == 0).collect();
        let mut pcm = Vec::new();
        if let Some(first) = pcmu.first() {
            for p in &pcmu {
                let at = p.ts.wrapping_sub(first.ts) as usize;
                if at > 8000 * 120 {
                    continue;
                }
                if pcm.len() < at + p.payload.len() {
                    pcm.resize(at + p.payload.len(), 0);
                }
                for (k, &b) in p.payload.iter().enumerate() {
                    pcm[at + k] = ulaw_to_linear(b);
                }
            }
        }
        write_wav(path, 8000, &pcm);
        path.to_path_buf()
    }

    fn packets(&self) -> usize {
        self.0.kept().len()
    }
}

/// G.711 u-law to linear PCM.
fn ulaw_to_linear(b: u8) -> i16 {
    let u = !b;
    let t = ((i32::from(u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

fn write_wav(path: &Path, rate: u32, pcm: &[i16]) {
    let data = (pcm.len() * 2) as u32;
    let mut w = Vec::with_capacity(44 + pcm.len() * 2);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * 2).to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data.to_le_bytes());
    for s in pcm {
        w.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, w).unwrap();
}

/// A phone `ext` registered from `port` that answers the box's INVITE with
/// its media at `media_port` and then waits for the BYE
/// ([`callee_scenario`]).
fn answering_phone(
    dir: &Path,
    gw: &SipGateway,
    ext: &str,
    port: u16,
    media_port: u16,
) -> std::process::Child {
    let scenario = callee_scenario(ext, media_port);
    spawn_phone(dir, gw, ext, port, &scenario)
}

fn spawn_phone(
    dir: &Path,
    gw: &SipGateway,
    ext: &str,
    port: u16,
    scenario: &str,
) -> std::process::Child {
    let port = port.to_string();
    Sipp {
        bin: &sipp37(),
        dir,
        name: &format!("phone-{ext}"),
        scenario,
        target: &format!("127.0.0.1:{}", gw.sip_port),
        args: &["-p", &port, "-timeout", "40s", "-trace_msg", "-trace_logs"],
        limit: Duration::from_secs(45),
    }
    .spawn()
}

/// Asserts that phone `ext`'s scenario ended as written.
fn assert_phone_ok(
    dir: &Path,
    ext: &str,
    child: std::process::Child,
    gws: &[&SipGateway],
    relay: &Proc,
) {
    let status = wait_child(child, Duration::from_secs(30));
    if !status.success() {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let phone = format!("phone-{ext}");
        let logs: String = gws
            .iter()
            .map(|g| format!("--- {}:\n{}\n", g.id, g.log()))
            .collect();
        panic!(
            "phone {ext}: {status}\n{}\n{}\n{logs}--- relay:\n{}",
            read(&format!("{phone}-errors.log")),
            read(&format!("{phone}-messages.log")),
            relay.log_text()
        );
    }
}

/// A box `id` with phones `exts`, started; returns it and the passwords.
fn start_box(lab: &Lab, id: &str, exts: &[&str]) -> (SipGateway, Vec<String>) {
    let mut gw = SipGateway::configure(lab, id, "[\"sha-256\", \"md5\"]", "");
    let pws = exts.iter().map(|e| gw.add_phone(e)).collect();
    gw.start(lab);
    (gw, pws)
}

fn speech(lab: &Lab) -> (PathBuf, Vec<u8>) {
    let wav = speech_fixture(&lab.dir, TEXT).with_extension("wav");
    let ulaw = ulaw_of(&wav, &lab.dir);
    (wav, ulaw)
}

#[test]
fn an_api_call_connects_a_phone_to_the_echo_and_an_api_hang_up_sends_it_a_bye() {
    let (lab, relay, http, hooks) = lab_with_api_and("api-echo", "", true);
    let (gw, pw) = start_box(&lab, "gw-a", &["201"]);
    let phone_port = free_udp();
    register_at(&lab.dir, &gw, "201", &pw[0], phone_port);
    gw.wait_registered(1.0);
    let api = Api::new(&lab, &http, "calls:create,calls:admin");
    let (reference, ulaw) = speech(&lab);
    let speech_s = ulaw.len() as f64 / 8000.0;
    let media = PhoneMedia::new(Some(ulaw));
    let phone = answering_phone(&lab.dir, &gw, "201", phone_port, media.port());
    std::thread::sleep(Duration::from_millis(300));
    let id = api.start("201", "900");
    let call = api.wait_state(id, "connected", Duration::from_secs(10));
    assert_eq!(call["origin"], "api", "{call}");
    assert_eq!(call["legs"][0]["ext"], "201", "{call}");
    assert_eq!(call["legs"][0]["device"], "gw-a", "{call}");
    let (code, list) = api.call("GET", "/v1/calls", None);
    assert_eq!(code, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    // The phone speaks once; the echo brings it back.
    std::thread::sleep(Duration::from_secs_f64(0.5 + speech_s + 1.5));
    api.hang_up(id);
    assert_phone_ok(&lab.dir, "201", phone, &[&gw], &relay);
    assert_eq!(api.get(id).0, 404, "gone after the hang-up");
    let heard = media.heard_wav(&lab.dir.join("heard-201.wav"));
    let sc = score(&reference, &heard);
    println!(
        "API call 201 -> 900 echo (PCMU -> Opus -> relay echo -> Opus -> PCMU): \
         PESQ-NB {:?}, PESQ-WB {:.3}, STOI {:.3}, {:.1} s of {:.1} s, {} packets",
        sc.pesq_nb,
        sc.pesq_wb,
        sc.stoi,
        sc.overlap_s,
        sc.ref_duration_s,
        media.packets()
    );
    assert!(sc.overlap_s > sc.ref_duration_s * 0.9, "{sc:?}");
    assert!(sc.stoi > 0.85, "{sc:?}");
    assert!(sc.pesq_nb.unwrap_or(0.0) > 3.2, "{sc:?}");
    let log = relay.log_text();
    for e in ["call.ringing", "call.answered", "call.ended"] {
        assert!(log.contains(e), "{e} not reported:\n{log}");
    }
    // And as signed webhooks, each verified by the receiver, naming the call.
    let rx = hooks.unwrap();
    let call_id = id.to_string();
    wait_for(Duration::from_secs(15), "the call's webhooks", || {
        let got: Vec<String> = rx
            .entries()
            .iter()
            .filter(|e| e["result"] == "processed" && e["data"]["call"] == call_id.as_str())
            .filter_map(|e| e["type"].as_str().map(str::to_string))
            .collect();
        ["call.ringing", "call.answered", "call.ended"]
            .iter()
            .all(|t| got.iter().any(|g| g == t))
    });
    assert_eq!(gw.metric("voxgate_sip_calls_active"), 0.0);
}

#[test]
fn an_api_call_connects_phones_on_two_boxes_and_an_api_hang_up_sends_both_a_bye() {
    let (lab, relay, http) = lab_with_api("api-two-boxes", "");
    let (a, pa) = start_box(&lab, "gw-a", &["201"]);
    let (b, pb) = start_box(&lab, "gw-b", &["301"]);
    let (pa_port, pb_port) = (free_udp(), free_udp());
    register_at(&lab.dir, &a, "201", &pa[0], pa_port);
    register_at(&lab.dir, &b, "301", &pb[0], pb_port);
    a.wait_registered(1.0);
    b.wait_registered(1.0);
    let api = Api::new(&lab, &http, "calls:create calls:admin");
    let (reference, ulaw) = speech(&lab);
    let speech_s = ulaw.len() as f64 / 8000.0;
    // 201 answers first and speaks only once 301 is on the line too (a
    // person waits for the other to answer).
    let go = Arc::new(AtomicBool::new(false));
    let media_a = PhoneMedia::gated(Some(ulaw), go.clone());
    let media_b = PhoneMedia::new(None);
    let phone_a = answering_phone(&lab.dir, &a, "201", pa_port, media_a.port());
    let phone_b = answering_phone(&lab.dir, &b, "301", pb_port, media_b.port());
    std::thread::sleep(Duration::from_millis(300));
    let id = api.start("201", "301");
    let call = api.wait_state(id, "connected", Duration::from_secs(10));
    go.store(true, Ordering::Relaxed);
    let legs: Vec<(&str, &str)> = call["legs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["ext"].as_str().unwrap(), l["device"].as_str().unwrap()))
        .collect();
    assert_eq!(legs, vec![("201", "gw-a"), ("301", "gw-b")], "{call}");
    assert!(call["answered_at"].as_u64().is_some(), "{call}");
    std::thread::sleep(Duration::from_secs_f64(0.5 + speech_s + 1.5));
    api.hang_up(id);
    assert_phone_ok(&lab.dir, "201", phone_a, &[&a, &b], &relay);
    assert_phone_ok(&lab.dir, "301", phone_b, &[&a, &b], &relay);
    // What 201 said, as 301 heard it.
    let heard = media_b.heard_wav(&lab.dir.join("heard-301.wav"));
    let sc = score(&reference, &heard);
    println!(
        "API call 201 (gw-a) -> 301 (gw-b): PESQ-NB {:?}, PESQ-WB {:.3}, STOI {:.3}, {:.1} s of {:.1} s",
        sc.pesq_nb, sc.pesq_wb, sc.stoi, sc.overlap_s, sc.ref_duration_s
    );
    assert!(sc.overlap_s > sc.ref_duration_s * 0.9, "{sc:?}");
    assert!(sc.stoi > 0.85, "{sc:?}");
    assert!(sc.pesq_nb.unwrap_or(0.0) > 3.2, "{sc:?}");
    assert_eq!(a.metric("voxgate_sip_calls_active"), 0.0);
    assert_eq!(b.metric("voxgate_sip_calls_active"), 0.0);
}

#[test]
fn an_unanswered_api_call_moves_to_the_fallback_extension_after_n_seconds() {
    let (lab, relay, http) =
        lab_with_api("api-fallback", "fallback = \"302\"\nno_answer_seconds = 2");
    let (a, pa) = start_box(&lab, "gw-a", &["201"]);
    let (b, pb) = start_box(&lab, "gw-b", &["301", "302"]);
    let ports = [free_udp(), free_udp(), free_udp()];
    register_at(&lab.dir, &a, "201", &pa[0], ports[0]);
    register_at(&lab.dir, &b, "301", &pb[0], ports[1]);
    register_at(&lab.dir, &b, "302", &pb[1], ports[2]);
    a.wait_registered(1.0);
    b.wait_registered(2.0);
    let api = Api::new(&lab, &http, "calls:create,calls:admin");
    let (media_a, media_c) = (PhoneMedia::new(None), PhoneMedia::new(None));
    let phone_a = answering_phone(&lab.dir, &a, "201", ports[0], media_a.port());
    // 301 rings and never answers: the relay cancels it.
    let phone_b = spawn_phone(
        &lab.dir,
        &b,
        "301",
        ports[1],
        &sipp_file("callee-rings-until-cancel.xml"),
    );
    let phone_c = answering_phone(&lab.dir, &b, "302", ports[2], media_c.port());
    std::thread::sleep(Duration::from_millis(300));
    let id = api.start("201", "301");
    let ringing = api.wait_state(id, "ringing", Duration::from_secs(10));
    let rang_at = Instant::now();
    assert_eq!(ringing["legs"][1]["ext"], "301", "{ringing}");
    let call = api.wait_state(id, "connected", Duration::from_secs(15));
    let waited = rang_at.elapsed();
    assert_eq!(call["fallback"], "302", "{call}");
    assert_eq!(call["legs"][1]["ext"], "302", "{call}");
    assert!(
        waited > Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "the fallback took over after {waited:?} (no_answer_seconds = 2)"
    );
    assert_phone_ok(&lab.dir, "301", phone_b, &[&a, &b], &relay);
    std::thread::sleep(Duration::from_secs(1));
    api.hang_up(id);
    assert_phone_ok(&lab.dir, "201", phone_a, &[&a, &b], &relay);
    assert_phone_ok(&lab.dir, "302", phone_c, &[&a, &b], &relay);
    assert!(
        media_c.packets() > 10,
        "302 got {} packets",
        media_c.packets()
    );
    let log = relay.log_text();
    assert!(log.contains("call.fallback"), "{log}");
    assert_eq!(
        voxgate_testkit::lab::metric(lab.relay_metrics, "voxgate_relay_call_fallbacks_total"),
        1.0
    );
    assert_eq!(b.metric("voxgate_sip_calls_active"), 0.0);
}

#[test]
fn the_calls_routes_check_scopes_ids_and_input() {
    let (lab, _relay, http) = lab_with_api("api-calls-routes", "");
    let (gw, pw) = start_box(&lab, "gw-a", &["201"]);
    register_at(&lab.dir, &gw, "201", &pw[0], free_udp());
    gw.wait_registered(1.0);
    let creator = Api::new(&lab, &http, "calls:create");
    let admin = Api::new(&lab, &http, "calls:admin");
    // calls:create starts calls and sees nothing else; calls:admin the reverse.
    let body = r#"{"from":"201","to":"900"}"#;
    assert_eq!(admin.call("POST", "/v1/calls", Some(body)).0, 403);
    assert_eq!(creator.call("GET", "/v1/calls", None).0, 403);
    assert_eq!(creator.call("DELETE", "/v1/calls/1", None).0, 403);
    let id = creator.start("201", "900");
    assert_eq!(admin.get(id).1["to"], "900");
    // Problems, never a 5xx.
    for (body, code, problem) in [
        (r#"{"from":"201","to":"9"}"#, 400, "invalid_number"),
        (r#"{"from":"201","to":"201"}"#, 400, "same_number"),
        (r#"{"from":"555","to":"900"}"#, 409, "extension_offline"),
        (r#"{"from":"201","to":"301"}"#, 409, "extension_offline"),
        (r#"{"from":"201"}"#, 422, ""),
        (r#"{"from":"201","to":"900","x":1}"#, 422, ""),
        ("{", 400, ""),
    ] {
        let (c, v) = creator.call("POST", "/v1/calls", Some(body));
        assert_eq!(c, code, "{body}: {v}");
        if !problem.is_empty() {
            assert_eq!(v["code"], problem, "{body}: {v}");
            assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
        }
    }
    for path in [
        "/v1/calls/999",
        "/v1/calls/x1",
        "/v1/calls/99999999999999999999999",
    ] {
        assert_eq!(admin.call("GET", path, None).0, 404, "{path}");
        assert_eq!(admin.call("DELETE", path, None).0, 404, "{path}");
    }
    let (_, doc) = admin.call("GET", "/v1/openapi.json", None);
    for p in ["/v1/calls", "/v1/calls/{id}"] {
        assert!(doc["paths"][p].is_object(), "{p} not documented");
    }
    admin.hang_up(id);
    assert_eq!(admin.get(id).0, 404);
}

#[test]
fn a_call_to_an_offline_extension_hears_the_fallback_message_and_then_a_bye() {
    let lab_probe = Lab::new("api-message-fixture", "mode = \"none\"");
    let (message, _) = speech(&lab_probe);
    let (lab, relay, _http) = lab_with_api(
        "api-message",
        &format!("fallback_message = \"{}\"", message.display()),
    );
    let (gw, pw) = start_box(&lab, "gw-a", &["201"]);
    let media = PhoneMedia::new(None);
    // 201 dials 301, which no box has: the message answers. The phone's
    // media is `media` (SIPp plays none: the box latches onto the
    // address RTP comes from).
    let pcap = lab.dir.join("none.pcap");
    let sdp = fill(&sipp_file("sdp.txt"), &[("PTIME", "20")])
        .replace("[media_port]", &media.port().to_string());
    let scenario = fill(
        &sipp_file("call-with-pcap.xml"),
        &[
            ("HANGUP", &sipp_file("caller-gets-bye.xml")),
            ("SDP_BODY", &sdp),
            ("RINGING_STEP", ""),
            ("EXT", "201"),
            ("PCAP", pcap.to_str().unwrap()),
            ("PLAY_MS", "0"),
        ],
    )
    .replace(
        "[authentication]",
        &voxgate_testkit::sip::sipp_auth("201", &pw[0]),
    )
    .replace(
        &format!(
            "<nop><action><exec play_pcap_audio=\"{}\"/></action></nop>",
            pcap.display()
        ),
        "",
    );
    assert!(!scenario.contains("play_pcap_audio"));
    let auth_uri = format!("301@127.0.0.1:{}", gw.sip_port);
    let (rtp_port, _) = voxgate_testkit::sip::free_rtp_range(2);
    let rtp_port = rtp_port.to_string();
    let t0 = Instant::now();
    let out = Sipp {
        bin: &sipp37(),
        dir: &lab.dir,
        name: "phone-201",
        scenario: &scenario,
        target: &format!("127.0.0.1:{}", gw.sip_port),
        args: &[
            "-timeout",
            "40s",
            "-auth_uri",
            &auth_uri,
            "-s",
            "301",
            "-mi",
            "127.0.0.1",
            "-mp",
            &rtp_port,
            "-trace_msg",
        ],
        limit: Duration::from_secs(45),
    }
    .output();
    let took = t0.elapsed();
    let read = |f: &str| std::fs::read_to_string(lab.dir.join(f)).unwrap_or_default();
    assert!(
        out.status.success(),
        "the caller: {}\n{}\n{}\n--- gateway:\n{}\n--- relay:\n{}",
        out.status,
        read("phone-201-errors.log"),
        read("phone-201-messages.log"),
        gw.log(),
        relay.log_text()
    );
    let heard = media.heard_wav(&lab.dir.join("heard-message.wav"));
    let sc = score(&message, &heard);
    println!(
        "fallback message (WAV -> Opus at the relay -> box -> PCMU) heard by the caller in a {took:?} call: \
         PESQ-NB {:?}, PESQ-WB {:.3}, STOI {:.3}, {:.1} s of {:.1} s",
        sc.pesq_nb, sc.pesq_wb, sc.stoi, sc.overlap_s, sc.ref_duration_s
    );
    // The message plays once, then the relay hangs up.
    assert!(
        took > Duration::from_secs_f64(sc.ref_duration_s) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert!(sc.overlap_s > sc.ref_duration_s * 0.9, "{sc:?}");
    assert!(sc.stoi > 0.85, "{sc:?}");
    assert!(sc.pesq_nb.unwrap_or(0.0) > 3.0, "{sc:?}");
    let log = relay.log_text();
    assert!(
        log.contains("call.fallback") && log.contains("call.ended"),
        "{log}"
    );
    assert_eq!(gw.metric("voxgate_sip_calls_active"), 0.0);
}
