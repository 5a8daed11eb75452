//! Calls through the phone bridge with scripted peers: SIPp 3.7.3 (SHA-256
//! digest, RTP played from a pcap, RFC 4733 events, re-INVITE for hold) and
//! baresip, through real gateways and a real relay, on loopback.
//!
//! SIPp 3.7.3 is Debian trixie's sip-tester run on trixie's own loader and
//! libraries (scripts/sipp-trixie, which scripts/deps runs): bookworm's
//! 3.6.1 only answers MD5 challenges.

use std::time::Duration;
use voxgate_testkit::audio_env::{score, speech_fixture};
use voxgate_testkit::lab::{Lab, opusdec, wait_for};
use voxgate_testkit::rtp::{Rtp, Stream, parse_rtp, rtp, ulaw_of, write_pcap};
use voxgate_testkit::sip::{SipGateway, sipp_auth, sipp_spawn, sipp_with, sipp37, wait_child};

const TEXT: &str =
    "Desk phones call through the relay. The quick brown fox jumps over the lazy dog.";

/// REGISTER answered with whatever digest the first challenge asks for;
/// `RESPONSE` is the final status the scenario expects.
const REGISTER: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register with digest">
  <send retrans="500"><![CDATA[
REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:[service]@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:[service]@[local_ip]:[local_port]>
Max-Forwards: 70
Expires: 300
Content-Length: 0

]]></send>
  <recv response="401" auth="true">
    <action>
      <ereg regexp="algorithm=([A-Za-z0-9-]+)" search_in="hdr" header="WWW-Authenticate:" check_it="true" assign_to="all,algo"/>
      <log message="challenge algorithm [$algo] ([$all])"/>
    </action>
  </recv>
  <send retrans="500"><![CDATA[
REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:[service]@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>
Call-ID: [call_id]
CSeq: 2 REGISTER
Contact: <sip:[service]@[local_ip]:[local_port]>
SIPP_AUTH
Max-Forwards: 70
Expires: 300
Content-Length: 0

]]></send>
  <recv response="RESPONSE"/>
</scenario>
"#;

/// The REGISTER scenario for `ext` expecting `expect` to the authenticated request.
fn register_scenario(ext: &str, password: &str, expect: u16) -> String {
    REGISTER
        .replace("RESPONSE", &expect.to_string())
        .replace("SIPP_AUTH", &sipp_auth(ext, password))
}

/// Run the REGISTER scenario with SIPp 3.7.3; returns whether it ended as
/// expected, and the authorization it sent (from the message trace).
fn register(
    dir: &std::path::Path,
    gw: &SipGateway,
    ext: &str,
    password: &str,
    expect: u16,
    name: &str,
) -> (bool, String) {
    register_over("u1", dir, gw, ext, password, expect, name)
}

/// [`register`] with SIPp's transport mode (`u1` or `t1`).
fn register_over(
    transport: &str,
    dir: &std::path::Path,
    gw: &SipGateway,
    ext: &str,
    password: &str,
    expect: u16,
    name: &str,
) -> (bool, String) {
    let scenario = register_scenario(ext, password, expect);
    let target = format!("127.0.0.1:{}", gw.sip_port);
    let msgs = dir.join(format!("{name}-messages.log"));
    let logs = dir.join(format!("{name}-logs.log"));
    let out = sipp_with(
        &sipp37(),
        dir,
        name,
        &scenario,
        &target,
        &[
            "-t",
            transport,
            "-s",
            ext,
            "-trace_msg",
            "-message_file",
            msgs.to_str().unwrap(),
            "-trace_logs",
            "-log_file",
            logs.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    let trace = std::fs::read_to_string(&msgs).unwrap_or_default()
        + &std::fs::read_to_string(&logs).unwrap_or_default();
    if !out.status.success() {
        eprintln!(
            "sipp {name}: {}\n{}\n{trace}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out.status.success(), trace)
}

#[test]
fn sipp_registers_with_sha256_digest_and_a_wrong_password_fails() {
    let lab = Lab::new("sip-sha256", "mode = \"none\"");
    let _relay = lab.start_relay();
    // The default: SHA-256 offered first, MD5 second.
    let mut gw = SipGateway::configure(&lab, "gw-a", "[\"sha-256\", \"md5\"]", "");
    let pw = gw.add_phone("201");
    gw.start(&lab);
    let (ok, trace) = register(&lab.dir, &gw, "201", &pw, 200, "sha-ok");
    assert!(ok, "right password must register with SHA-256:\n{trace}");
    assert!(
        trace.contains("challenge algorithm SHA-256"),
        "the first challenge offers SHA-256:\n{trace}"
    );
    // The answer SIPp sent is a SHA-256 one (64 hex digits).
    let auth = trace
        .lines()
        .find(|l| l.starts_with("Authorization:"))
        .unwrap_or_else(|| panic!("no Authorization sent:\n{trace}"));
    assert!(auth.contains("algorithm=SHA-256"), "{auth}");
    let resp = auth
        .split("response=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default();
    assert_eq!(resp.len(), 64, "a SHA-256 response: {auth}");
    gw.wait_registered(1.0);
    assert_eq!(gw.metric("voxgate_sip_auth_failures_total"), 0.0);
    // A wrong password: challenged again, not registered, counted.
    let (ok, trace) = register(&lab.dir, &gw, "201", "not-the-password", 401, "sha-wrong");
    assert!(ok, "a wrong SHA-256 answer gets a fresh 401:\n{trace}");
    assert_eq!(gw.metric("voxgate_sip_auth_failures_total"), 1.0);
    // And expecting success with it must fail (the scenario cannot pass).
    let (ok, _) = register(&lab.dir, &gw, "201", "not-the-password", 200, "sha-wrong2");
    assert!(!ok, "a wrong password registered");
    assert!(!gw.log().contains(&pw), "a password reached the log");
}

/// The scenario's SDP: PCMU and telephone-event, at `PTIME` ms.
const SDP: &str = "v=0
o=- 1 1 IN IP4 [media_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:PTIME
a=sendrecv
";

/// A phone calling `[service]`: INVITE, 401 (ACKed in its transaction: the
/// INVITE's branch, three scenario steps back),
/// INVITE with digest, 100, 180 (when `RINGING` is `true`), 200, ACK,
/// RTP from `PCAP` for `PLAY_MS`, then BYE and its 200.
const CALL_WITH_PCAP: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="call with pcap audio">
  <send retrans="500" start_txn="inv1"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:EXT@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

SDP_BODY]]></send>
  <recv response="100" optional="true" response_txn="inv1"/>
  <recv response="401" auth="true" response_txn="inv1"/>
  <send ack_txn="inv1"><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>
Call-ID: [call_id]
CSeq: 2 INVITE
Contact: <sip:EXT@[local_ip]:[local_port]>
[authentication]
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

SDP_BODY]]></send>
  <recv response="100"/>
  RINGING_STEP
  <recv response="200" rtd="true">
    <action>
      <ereg regexp="a=(sendrecv|sendonly|recvonly|inactive)" search_in="body" check_it="true" assign_to="dir_all,dir"/>
      <ereg regexp="m=audio [0-9]+ RTP/AVP 0( 101)?" search_in="body" check_it="true" assign_to="pcmu"/>
      <log message="answer direction [$dir] ([$dir_all]) media [$pcmu]"/>
    </action>
  </recv>
  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <nop><action><exec play_pcap_audio="PCAP"/></action></nop>
  <pause milliseconds="PLAY_MS"/>
HANGUP</scenario>
"#;

/// The caller hangs up.
const CALLER_BYE: &str = r#"  <send retrans="500"><![CDATA[
BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 3 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
"#;

/// The other side hangs up: the caller gets a BYE and answers it.
const CALLER_GETS_BYE: &str = r#"  <recv request="BYE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
"#;

/// The scenario text for a call from `ext` playing `pcap`; `hangup` is
/// [`CALLER_BYE`] or [`CALLER_GETS_BYE`].
fn call_scenario(
    ext: &str,
    pcap: &std::path::Path,
    play_ms: u64,
    ptime: u32,
    ringing: bool,
    hangup: &str,
) -> String {
    CALL_WITH_PCAP
        .replace("HANGUP", hangup)
        .replace("SDP_BODY", &SDP.replace("PTIME", &ptime.to_string()))
        .replace(
            "RINGING_STEP",
            if ringing {
                r#"<recv response="180"/>"#
            } else {
                ""
            },
        )
        .replace("EXT", ext)
        .replace("PCAP", pcap.to_str().unwrap())
        .replace("PLAY_MS", &play_ms.to_string())
}

/// Run a call scenario as phone `ext` (SIPp 3.7.3, media on `127.0.0.1`).
fn sipp_call(
    dir: &std::path::Path,
    gw: &SipGateway,
    name: &str,
    scenario: &str,
    dialled: &str,
    ext: &str,
    password: &str,
) -> (std::process::Output, String) {
    sipp_call_over("u1", dir, gw, name, scenario, dialled, ext, password)
}

/// [`sipp_call`] with SIPp's transport mode (`u1`: UDP, `t1`: one TCP
/// connection).
#[allow(clippy::too_many_arguments)]
fn sipp_call_over(
    transport: &str,
    dir: &std::path::Path,
    gw: &SipGateway,
    name: &str,
    scenario: &str,
    dialled: &str,
    ext: &str,
    password: &str,
) -> (std::process::Output, String) {
    let (media, _) = voxgate_testkit::sip::free_rtp_range(2);
    let msgs = dir.join(format!("{name}-messages.log"));
    let logs = dir.join(format!("{name}-logs.log"));
    // The digest uri must be the Request-URI (SIPp's default leaves out the user).
    let auth_uri = format!("{dialled}@127.0.0.1:{}", gw.sip_port);
    assert!(
        scenario.contains("[authentication]"),
        "{name}: no [authentication]"
    );
    let scenario = scenario.replace("[authentication]", &sipp_auth(ext, password));
    let out = sipp_with(
        &sipp37(),
        dir,
        name,
        &scenario,
        &format!("127.0.0.1:{}", gw.sip_port),
        &[
            "-t",
            transport,
            "-timeout",
            "30s",
            "-auth_uri",
            &auth_uri,
            "-s",
            dialled,
            "-mi",
            "127.0.0.1",
            "-mp",
            &media.to_string(),
            "-trace_msg",
            "-message_file",
            msgs.to_str().unwrap(),
            "-trace_logs",
            "-log_file",
            logs.to_str().unwrap(),
        ],
        Duration::from_secs(40),
    );
    let trace = std::fs::read_to_string(&msgs).unwrap_or_default()
        + &std::fs::read_to_string(&logs).unwrap_or_default()
        + &std::fs::read_to_string(dir.join(format!("{name}-errors.log"))).unwrap_or_default();
    (out, trace)
}

/// The relay's finished recording of a call flow (flows from 16 up are
/// calls; 0 is the gateway's microphone), once the relay has closed it.
fn finished_call_recording(relay: &voxgate_testkit::lab::Proc) -> std::path::PathBuf {
    let mut found = None;
    voxgate_testkit::lab::wait_for(
        Duration::from_secs(10),
        "the call recording to finish",
        || {
            found = relay.log_text().lines().find_map(|l| {
                if !l.contains("recording finished") {
                    return None;
                }
                let start = l.find("\"recording\":\"")? + 13;
                let path = &l[start..start + l[start..].find('"')?];
                let flow: u64 = path
                    .rsplit_once("-f")?
                    .1
                    .strip_suffix(".ogg")?
                    .parse()
                    .ok()?;
                (flow >= 16).then(|| std::path::PathBuf::from(path))
            });
            found.is_some()
        },
    );
    found.unwrap()
}

#[test]
fn sipp_plays_pcmu_speech_from_a_pcap_into_the_recording_service() {
    pcap_speech_to_901(20);
}

/// A phone that packs 30 ms per packet (a=ptime:30; Opus has no 30 ms
/// frame): the box repacketizes it into 20 ms Opus frames.
#[test]
fn a_tcp_phone_registers_and_calls_with_its_signalling_over_tcp() {
    pcap_speech_to_901_over("t1", 20);
}

/// The scenario's SDP for an Opus phone (RFC 7587: `opus/48000/2`), 20 ms.
const OPUS_SDP: &str = "v=0
o=- 1 1 IN IP4 [media_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 96 101
a=rtpmap:96 opus/48000/2
a=fmtp:96 useinbandfec=1
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=sendrecv
";

#[test]
fn an_opus_phone_is_forwarded_into_the_recording_without_transcoding() {
    let lab = Lab::new("sip-opus", "mode = \"none\"");
    let relay = lab.start_relay();
    let mut gw = SipGateway::configure(&lab, "gw-a", "[\"sha-256\", \"md5\"]", "");
    let pw = gw.add_phone("201");
    gw.start(&lab);
    // The phone's Opus: speech at 48 kHz encoded by libopus, 20 ms packets.
    let speech = speech_fixture(&lab.dir, TEXT).with_extension("wav");
    let raw = lab.dir.join("speech-48k.s16");
    let st = std::process::Command::new("sox")
        .arg(&speech)
        .args([
            "-r", "48000", "-c", "1", "-e", "signed", "-b", "16", "-t", "raw",
        ])
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success(), "sox");
    let pcm: Vec<i16> = std::fs::read(&raw)
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut enc =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    enc.set_bitrate(opus::Bitrate::Bits(24_000)).unwrap();
    let silence = vec![0i16; 960 * 10];
    let mut payloads = Vec::new();
    for frame in silence
        .chunks(960)
        .chain(pcm.chunks(960))
        .chain(silence.chunks(960))
    {
        let mut f = frame.to_vec();
        f.resize(960, 0);
        let mut buf = [0u8; 1275];
        let n = enc.encode(&f, &mut buf).unwrap();
        payloads.push(buf[..n].to_vec());
    }
    let mut packets = Vec::new();
    let mut s = Stream::new(0x5150_0096);
    for (i, p) in payloads.iter().enumerate() {
        packets.push((s.at, rtp(96, i == 0, s.seq, s.ts, s.ssrc, p)));
        s.seq = s.seq.wrapping_add(1);
        s.ts = s.ts.wrapping_add(960);
        s.at += Duration::from_millis(20);
    }
    let pcap = lab.dir.join("speech-opus.pcap");
    write_pcap(&pcap, &packets);
    let play_ms = s.at.as_millis() as u64 + 500;
    let scenario = call_scenario("201", &pcap, play_ms, 20, false, CALLER_BYE)
        .replace(&SDP.replace("PTIME", "20"), OPUS_SDP)
        .replace("RTP/AVP 0( 101)?", "RTP/AVP 96( 101)?");
    assert!(scenario.contains("opus/48000/2"));
    let (out, trace) = sipp_call(&lab.dir, &gw, "opus-901", &scenario, "901", "201", &pw);
    assert!(
        out.status.success(),
        "Opus call to 901: {}\n{}\n{trace}\ngateway:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    assert!(trace.contains("media m=audio"), "Opus answered:\n{trace}");
    let rec = finished_call_recording(&relay);
    // Forwarded, not transcoded: the recording holds the phone's own
    // packets, byte for byte (a decode and re-encode never reproduces them).
    let sent: std::collections::HashSet<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
    let mut reader = ogg::PacketReader::new(std::fs::File::open(&rec).unwrap());
    let (mut recorded, mut identical) = (0usize, 0usize);
    let mut index = 0;
    while let Some(p) = reader.read_packet().expect("the recording is valid Ogg") {
        index += 1;
        if index <= 2 {
            continue; // OpusHead, OpusTags
        }
        recorded += 1;
        identical += usize::from(sent.contains(p.data.as_slice()));
    }
    let wav = opusdec(&rec);
    let sc = score(&speech, &wav);
    println!(
        "sipp Opus phone -> gateway (forwarded) -> relay 901 recording: {identical} of {} packets \
         recorded verbatim ({recorded} in the recording), PESQ-WB {:.3}, STOI {:.3}",
        payloads.len(),
        sc.pesq_wb,
        sc.stoi
    );
    assert!(
        identical * 100 >= payloads.len() * 95,
        "only {identical} of {} packets reached the recording unchanged",
        payloads.len()
    );
    assert!(sc.overlap_s > sc.ref_duration_s * 0.9, "{sc:?}");
    assert!(sc.pesq_wb > 3.0, "{sc:?}");
    assert_eq!(gw.metric("voxgate_sip_calls_active"), 0.0);
}

#[test]
fn a_phone_at_30_ms_packets_is_repacketized_into_the_recording() {
    pcap_speech_to_901(30);
}

/// A phone at `ptime` ms sends speech from a pcap to 901; the relay's recording is scored.
fn pcap_speech_to_901(ptime: u32) {
    pcap_speech_to_901_over("u1", ptime)
}

/// The phone's signalling goes over `transport` (SIPp's `u1` or `t1`);
/// RTP is UDP either way.
fn pcap_speech_to_901_over(transport: &str, ptime: u32) {
    let lab = Lab::new(&format!("sip-pcap{ptime}-{transport}"), "mode = \"none\"");
    let relay = lab.start_relay();
    let mut gw = SipGateway::configure(&lab, "gw-a", "[\"sha-256\", \"md5\"]", "");
    let pw = gw.add_phone("201");
    gw.start(&lab);
    if transport != "u1" {
        // Registered over the same transport first, as a TCP desk phone does.
        let (ok, trace) = register_over(transport, &lab.dir, &gw, "201", &pw, 200, "reg-tcp");
        assert!(
            ok,
            "REGISTER over {transport}:\n{trace}\ngateway:\n{}",
            gw.log()
        );
        assert!(trace.contains("SIP/2.0/TCP"), "not over TCP:\n{trace}");
        gw.wait_registered(1.0);
    }
    let speech = speech_fixture(&lab.dir, TEXT).with_extension("wav");
    let ulaw = ulaw_of(&speech, &lab.dir);
    let mut packets = Vec::new();
    let mut s = Stream::new(0x5150_0001);
    s.silence(210, ptime, &mut packets);
    s.pcmu(&ulaw, ptime, &mut packets);
    s.silence(210, ptime, &mut packets);
    let pcap = lab.dir.join(format!("speech-pcmu-{ptime}.pcap"));
    write_pcap(&pcap, &packets);
    let play_ms = s.at.as_millis() as u64 + 500;
    let scenario = call_scenario("201", &pcap, play_ms, ptime, false, CALLER_BYE);
    let (out, trace) = sipp_call_over(
        transport, &lab.dir, &gw, "pcap-901", &scenario, "901", "201", &pw,
    );
    assert!(
        out.status.success(),
        "sipp call to 901 over {transport}: {}\n{}\n{trace}\ngateway:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    assert!(trace.contains("answer direction sendrecv"), "{trace}");
    assert!(trace.contains("media m=audio"), "PCMU answered:\n{trace}");
    let rec = finished_call_recording(&relay);
    let wav = opusdec(&rec);
    let sc = score(&speech, &wav);
    println!(
        "sipp ({transport}) pcap PCMU ptime {ptime} -> gateway -> Opus 8 kHz -> relay 901 recording: PESQ-NB {:?}, PESQ-WB {:.3}, STOI {:.3}, {:.1} s of {:.1} s",
        sc.pesq_nb, sc.pesq_wb, sc.stoi, sc.overlap_s, sc.ref_duration_s
    );
    assert!(sc.overlap_s > sc.ref_duration_s * 0.9, "{sc:?}");
    assert!(sc.stoi > 0.85, "{sc:?}");
    assert!(sc.pesq_nb.unwrap_or(0.0) > 3.0, "{sc:?}");
    let log = gw.log();
    assert!(log.contains("\"to\":\"901\""), "{log}");
    assert!(log.contains("call ended"), "{log}");
    assert_eq!(gw.metric("voxgate_sip_calls_active"), 0.0);
}

/// A desk phone that answers (after ringing for a moment) with its RTP
/// going to `SINK_PORT` (the test's own socket), in the payload types the
/// box offered, then hangs up as `CALLEE_END` says.
const CALLEE: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="callee">
  <recv request="INVITE" crlf="true" rrs="true">
    <action>
      <ereg regexp="a=rtpmap:([0-9]+) telephone-event/8000" search_in="body" check_it="true" assign_to="te_all,te"/>
      <ereg regexp=".*" search_in="hdr" header="From:" check_it="true" assign_to="caller"/>
      <log message="offered telephone-event [$te] ([$te_all])"/>
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 180 Ringing
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:EXT@[local_ip]:[local_port]>
Content-Length: 0

]]></send>
  <pause milliseconds="300"/>
  <send retrans="500"><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:EXT@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o=- 2 2 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio SINK_PORT RTP/AVP 0 [$te]
a=rtpmap:0 PCMU/8000
a=rtpmap:[$te] telephone-event/8000
a=fmtp:[$te] 0-15
a=ptime:20
a=sendrecv
]]></send>
  <recv request="ACK"/>
CALLEE_END</scenario>
"#;

/// The callee hangs up after `HOLD_MS`.
const CALLEE_BYE: &str = r#"  <pause milliseconds="HOLD_MS"/>
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:EXT@[local_ip]>;tag=[pid]SIPpTag01[call_number]
To:[$caller]
Call-ID: [call_id]
CSeq: 1 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
"#;

/// REGISTER `ext` from SIP port `port` (where its callee scenario answers later).
fn register_at(dir: &std::path::Path, gw: &SipGateway, ext: &str, password: &str, port: u16) {
    let scenario = register_scenario(ext, password, 200);
    let port = port.to_string();
    let name = format!("register-{ext}");
    let out = sipp_with(
        &sipp37(),
        dir,
        &name,
        &scenario,
        &format!("127.0.0.1:{}", gw.sip_port),
        &["-s", ext, "-p", &port],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "REGISTER {ext}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A UDP socket that keeps every datagram it gets, until dropped.
struct Sink {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn new() -> Sink {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            // Bounded: at most a minute, whatever the test does.
            let t0 = std::time::Instant::now();
            while !s.load(std::sync::atomic::Ordering::Relaxed)
                && t0.elapsed() < Duration::from_secs(60)
            {
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    g.lock().unwrap().push(buf[..n].to_vec());
                }
            }
        });
        Sink {
            port,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn packets(&self) -> Vec<Rtp> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| parse_rtp(b))
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// RFC 4733 event codes of the digits.
fn event_code(d: char) -> u8 {
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
fn events_in(packets: &[Rtp], pt: u8) -> Vec<(u8, bool)> {
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
    let lab = Lab::new("sip-dtmf", "mode = \"none\"");
    let _relay = lab.start_relay();
    let mut a = SipGateway::configure(&lab, "gw-a", "[\"sha-256\", \"md5\"]", "");
    let mut b = SipGateway::configure(&lab, "gw-b", "[\"sha-256\", \"md5\"]", "");
    let pa = a.add_phone("201");
    let pb = b.add_phone("301");
    a.start(&lab);
    b.start(&lab);
    // B's phone registers from the port it then answers on.
    let callee_port = voxgate_testkit::lab::free_udp();
    register_at(&lab.dir, &b, "301", &pb, callee_port);
    b.wait_registered(1.0);
    std::thread::sleep(Duration::from_millis(300));
    let sink = Sink::new();
    let callee = CALLEE
        .replace("CALLEE_END", CALLEE_BYE)
        .replace("HOLD_MS", "5000")
        .replace("SINK_PORT", &sink.port.to_string())
        .replace("EXT", "301");
    let port = callee_port.to_string();
    let callee_run = sipp_spawn(
        &sipp37(),
        &lab.dir,
        "callee-301",
        &callee,
        &format!("127.0.0.1:{}", b.sip_port),
        &["-p", &port, "-timeout", "30s", "-trace_msg", "-trace_logs"],
        Duration::from_secs(35),
    );
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
        CALLER_GETS_BYE,
    );
    let (out, trace) = sipp_call(&lab.dir, &a, "dtmf-caller", &scenario, "301", "201", &pa);
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

/// A phone calls `[service]` with its RTP at the test's socket
/// (`SINK_PORT`), puts the call on hold with a re-INVITE (`a=sendonly`),
/// resumes it (`a=sendrecv`), holds it again with `a=inactive`, resumes
/// again, and hangs up. Each 200 must carry the answering direction.
const HOLD: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="hold and resume">
  <send retrans="500" start_txn="inv1"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:EXT@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

SDP_sendrecv]]></send>
  <recv response="100" optional="true" response_txn="inv1"/>
  <recv response="401" auth="true" response_txn="inv1"/>
  <send ack_txn="inv1"><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>
Call-ID: [call_id]
CSeq: 2 INVITE
Contact: <sip:EXT@[local_ip]:[local_port]>
[authentication]
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

SDP_sendrecv]]></send>
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true">
    <action>
      <ereg regexp="a=sendrecv" search_in="body" check_it="true" assign_to="d0"/>
      <log message="answered [$d0]"/>
    </action>
  </recv>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
STEPS  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 9 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"#;

/// One re-INVITE step of [`HOLD`]: after `PAUSE` ms, offer `OFFERED`,
/// expect `a=ANSWERED` in the 200, ACK it.
const REINVITE: &str = r#"  <pause milliseconds="PAUSE"/>
  <send retrans="500"><![CDATA[
INVITE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>[peer_tag_param]
Call-ID: [call_id]
CSeq: CSEQ INVITE
Contact: <sip:EXT@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

SDP_OFFERED]]></send>
  <recv response="100" optional="true"/>
  <recv response="200">
    <action>
      <ereg regexp="a=ANSWERED" search_in="body" check_it="true" assign_to="dCSEQ"/>
      <ereg regexp="o=[^\r\n]*" search_in="body" check_it="true" assign_to="oCSEQ"/>
      <log message="re-INVITE CSEQ OFFERED answered [$dCSEQ] [$oCSEQ]"/>
    </action>
  </recv>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>[peer_tag_param]
Call-ID: [call_id]
CSeq: CSEQ ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
"#;

/// A phone's media played by the test itself: it waits for the box's
/// first RTP packet (sent to the SDP address before any comes from the
/// phone), then sends u-law speech from the same socket every 20 ms,
/// looping, and keeps the arrival time and payload of every packet it
/// gets.
struct TestPhoneMedia {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, Rtp)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestPhoneMedia {
    fn new(ulaw: Vec<u8>) -> TestPhoneMedia {
        use std::sync::atomic::Ordering;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let t0 = std::time::Instant::now();
            let mut peer = None;
            let mut next = std::time::Instant::now();
            let (mut seq, mut ts, mut i) = (fastrand::u16(..), fastrand::u32(..), 0usize);
            while !s.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    peer.get_or_insert(from);
                    if let Some(p) = parse_rtp(&buf[..n]) {
                        g.lock().unwrap().push((std::time::Instant::now(), p));
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
            }
        });
        TestPhoneMedia {
            port,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn received(&self) -> Vec<(std::time::Instant, Rtp)> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for TestPhoneMedia {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Mean absolute deviation of u-law bytes from silence: 0 for silence.
fn ulaw_energy(payload: &[u8]) -> f64 {
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
    let sdp = |dir: &str| {
        SDP.replace("PTIME", "20")
            .replace("[media_port]", &media.port.to_string())
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
        REINVITE
            .replace("PAUSE", &pause.to_string())
            .replace("CSEQ", &cseq.to_string())
            .replace("SDP_OFFERED", &sdp(offered))
            .replace("OFFERED", offered)
            .replace("ANSWERED", answered)
    })
    .collect::<String>()
        + "  <pause milliseconds=\"2000\"/>\n";
    let scenario = HOLD
        .replace("STEPS", &steps)
        .replace("SDP_sendrecv", &sdp("sendrecv"))
        .replace("EXT", "201");
    let (out, trace) = sipp_call(&lab.dir, &gw, "hold", &scenario, "900", "201", &pw);
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

/// The caller's call is refused with `CODE` (after an optional 100 and
/// 180), which it ACKs in the INVITE's transaction.
const CALLER_REFUSED: &str = r#"  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="CODE"/>
  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-4];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
"#;

/// The caller gives up while the other phone rings: CANCEL, its 200, the
/// INVITE's 487, ACK.
const CALLER_CANCELS: &str = r#"  <recv response="100" optional="true"/>
  <recv response="180"/>
  <send><![CDATA[
CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>
Call-ID: [call_id]
CSeq: 2 CANCEL
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
  <recv response="487"/>
  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-6];rport
From: <sip:EXT@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
"#;

/// A caller up to its authenticated INVITE (the first five steps of
/// [`CALL_WITH_PCAP`]), then `REST`.
fn caller_until_invite(ext: &str, rest: &str) -> String {
    let head = &CALL_WITH_PCAP[..CALL_WITH_PCAP
        .find("  <recv response=\"100\"/>\n  RINGING_STEP")
        .unwrap()];
    format!("{head}{rest}</scenario>\n")
        .replace("SDP_BODY", &SDP.replace("PTIME", "20"))
        .replace("EXT", ext)
}

/// The callee's side: busy, or ringing until the caller cancels.
const CALLEE_BUSY: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="busy">
  <recv request="INVITE"/>
  <send><![CDATA[
SIP/2.0 486 Busy Here
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
  <recv request="ACK"/>
</scenario>
"#;

const CALLEE_RINGS_UNTIL_CANCEL: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="rings until cancel">
  <recv request="INVITE"/>
  <send><![CDATA[
SIP/2.0 180 Ringing
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
  <recv request="CANCEL"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
  <send><![CDATA[
SIP/2.0 487 Request Terminated
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
CSeq: 1 INVITE
Content-Length: 0

]]></send>
  <recv request="ACK"/>
</scenario>
"#;

#[test]
fn refusals_and_cancel_between_two_boxes_reach_the_other_phone() {
    let lab = Lab::new("sip-refuse", "mode = \"none\"");
    let _relay = lab.start_relay();
    let mut a = SipGateway::configure(&lab, "gw-a", "[\"sha-256\", \"md5\"]", "");
    let mut b = SipGateway::configure(&lab, "gw-b", "[\"sha-256\", \"md5\"]", "");
    let pa = a.add_phone("201");
    let pb = b.add_phone("301");
    a.start(&lab);
    b.start(&lab);
    let callee_port = voxgate_testkit::lab::free_udp();
    register_at(&lab.dir, &b, "301", &pb, callee_port);
    b.wait_registered(1.0);
    std::thread::sleep(Duration::from_millis(300));
    // An extension nobody registered: 404 to the caller.
    let s = caller_until_invite("201", &CALLER_REFUSED.replace("CODE", "404"));
    let (out, trace) = sipp_call(&lab.dir, &a, "to-399", &s, "399", "201", &pa);
    assert!(
        out.status.success(),
        "404 for 399:\n{trace}\nA:\n{}",
        a.log()
    );
    // B's phone is busy: its 486 reaches A's phone as 486.
    let port = callee_port.to_string();
    for (name, callee, rest) in [
        ("busy", CALLEE_BUSY, CALLER_REFUSED.replace("CODE", "486")),
        (
            "cancel",
            CALLEE_RINGS_UNTIL_CANCEL,
            CALLER_CANCELS.to_string(),
        ),
    ] {
        let run = sipp_spawn(
            &sipp37(),
            &lab.dir,
            &format!("callee-{name}"),
            callee,
            &format!("127.0.0.1:{}", b.sip_port),
            &["-p", &port, "-timeout", "20s"],
            Duration::from_secs(25),
        );
        let s = caller_until_invite("201", &rest);
        let (out, trace) = sipp_call(
            &lab.dir,
            &a,
            &format!("caller-{name}"),
            &s,
            "301",
            "201",
            &pa,
        );
        let st = wait_child(run, Duration::from_secs(25));
        let callee_out =
            std::fs::read_to_string(lab.dir.join(format!("callee-{name}.out"))).unwrap_or_default();
        assert!(
            out.status.success(),
            "{name}: caller:\n{trace}\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        assert!(
            st.success(),
            "{name}: callee:\n{callee_out}\nB:\n{}",
            b.log()
        );
    }
    for gw in [&a, &b] {
        wait_for(Duration::from_secs(5), "no call left", || {
            gw.metric("voxgate_sip_calls_active") == 0.0
        });
    }
    assert!(b.log().contains("phone refused the call"), "{}", b.log());
}
