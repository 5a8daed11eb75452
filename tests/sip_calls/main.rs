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
use voxgate_testkit::rtp::{Rtp, Stream, UdpThread, parse_rtp, rtp, ulaw_of, write_pcap};
use voxgate_testkit::sip::{
    SipGateway, Sipp, SippTrace, TwoBoxes, fill, register_at, register_scenario, sipp_auth,
    sipp_file, sipp37, wait_child,
};

mod dtmf;
mod hold;
mod media;
mod refusals;
mod register;
mod tcp_gate;

const TEXT: &str =
    "Desk phones call through the relay. The quick brown fox jumps over the lazy dog.";

/// Run the REGISTER scenario with SIPp 3.7.3 over `transport` (SIPp's
/// mode, `u1` or `t1`); returns whether it ended as expected, and the
/// authorization it sent (from the message trace).
fn register(
    transport: &str,
    dir: &std::path::Path,
    gw: &SipGateway,
    ext: &str,
    password: &str,
    expect: u16,
    name: &str,
) -> (bool, String) {
    let scenario = register_scenario(ext, password, expect, true);
    let target = format!("127.0.0.1:{}", gw.sip_port);
    let trace = SippTrace::new(dir, name);
    let out = Sipp {
        bin: &sipp37(),
        dir,
        name,
        scenario: &scenario,
        target: &target,
        args: &[&["-t", transport, "-s", ext][..], &trace.args()].concat(),
        limit: Duration::from_secs(20),
    }
    .output();
    let trace = trace.text();
    if !out.status.success() {
        eprintln!(
            "sipp {name}: {}\n{}\n{trace}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out.status.success(), trace)
}

/// The scenario's SDP (tests/sipp/sdp.txt): PCMU and telephone-event, at
/// `ptime` ms.
fn sdp(ptime: u32) -> String {
    fill(&sipp_file("sdp.txt"), &[("PTIME", &ptime.to_string())])
}

/// The scenario text for a call from `ext` playing `pcap`
/// (tests/sipp/call-with-pcap.xml); `hangup` is tests/sipp/caller-bye.xml
/// or caller-gets-bye.xml.
fn call_scenario(
    ext: &str,
    pcap: &std::path::Path,
    play_ms: u64,
    ptime: u32,
    ringing: bool,
    hangup: &str,
) -> String {
    fill(
        &sipp_file("call-with-pcap.xml"),
        &[
            ("HANGUP", hangup),
            ("SDP_BODY", &sdp(ptime)),
            (
                "RINGING_STEP",
                if ringing {
                    r#"<recv response="180"/>"#
                } else {
                    ""
                },
            ),
            ("EXT", ext),
            ("PCAP", pcap.to_str().unwrap()),
            ("PLAY_MS", &play_ms.to_string()),
        ],
    )
}

/// Run a call scenario as phone `ext` (SIPp 3.7.3, media on `127.0.0.1`)
/// over `transport` (SIPp's mode, `u1`: UDP, `t1`: one TCP connection).
#[allow(clippy::too_many_arguments)]
fn sipp_call(
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
    let trace = SippTrace::new(dir, name);
    // The digest uri must be the Request-URI (SIPp's default leaves out the user).
    let auth_uri = format!("{dialled}@127.0.0.1:{}", gw.sip_port);
    assert!(
        scenario.contains("[authentication]"),
        "{name}: no [authentication]"
    );
    let scenario = scenario.replace("[authentication]", &sipp_auth(ext, password));
    let media = media.to_string();
    let out = Sipp {
        bin: &sipp37(),
        dir,
        name,
        scenario: &scenario,
        target: &format!("127.0.0.1:{}", gw.sip_port),
        args: &[
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
                &media,
            ][..],
            &trace.args(),
        ]
        .concat(),
        limit: Duration::from_secs(40),
    }
    .output();
    let trace = trace.text()
        + &std::fs::read_to_string(dir.join(format!("{name}-errors.log"))).unwrap_or_default();
    (out, trace)
}

/// Asserts that a call's sipp ended well; the message names `what` and
/// holds sipp's status, stderr and trace, and the gateway's log.
fn assert_call_ok(what: &str, out: &std::process::Output, trace: &str, gw: &SipGateway) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}\n{trace}\ngateway:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
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

/// Two boxes on one relay ([`TwoBoxes`]), B's phone 301 registered from
/// `callee_port`, where its callee scenario answers later. The fields drop
/// in order: the gateways, then the relay, then the lab directory.
struct TwoBoxLab {
    boxes: TwoBoxes,
    callee_port: u16,
    _relay: voxgate_testkit::lab::Proc,
    lab: Lab,
}

fn two_boxes(name: &str) -> TwoBoxLab {
    let lab = Lab::new(name, "mode = \"none\"");
    let relay = lab.start_relay();
    let boxes = TwoBoxes::start(&lab, "[\"sha-256\", \"md5\"]");
    // B's phone registers from the port it then answers on.
    let callee_port = voxgate_testkit::lab::free_udp();
    register_at(&lab.dir, &boxes.b, "301", &boxes.pb, callee_port);
    boxes.b.wait_registered(1.0);
    std::thread::sleep(Duration::from_millis(300));
    TwoBoxLab {
        boxes,
        callee_port,
        _relay: relay,
        lab,
    }
}

/// A caller up to its authenticated INVITE (the first five steps of
/// tests/sipp/call-with-pcap.xml), then `rest`.
fn caller_until_invite(ext: &str, rest: &str) -> String {
    let call = sipp_file("call-with-pcap.xml");
    let head = &call[..call
        .find("  <recv response=\"100\"/>\n  {{RINGING_STEP}}")
        .unwrap()];
    fill(
        &format!("{head}{rest}</scenario>\n"),
        &[("SDP_BODY", &sdp(20)), ("EXT", ext)],
    )
}
