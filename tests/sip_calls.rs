//! Calls through the phone bridge with scripted peers: SIPp 3.7.3 (SHA-256
//! digest, RTP played from a pcap, RFC 4733 events, re-INVITE for hold) and
//! baresip, through real gateways and a real relay, on loopback.
//!
//! SIPp 3.7.3 is Debian trixie's sip-tester run on trixie's own loader and
//! libraries (scripts/sipp-trixie, which scripts/deps runs): bookworm's
//! 3.6.1 only answers MD5 challenges.

mod common;

use common::lab::Lab;
use common::sip::{SipGateway, sipp_with, sipp37};
use std::time::Duration;

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
[authentication]
Max-Forwards: 70
Expires: 300
Content-Length: 0

]]></send>
  <recv response="RESPONSE"/>
</scenario>
"#;

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
    let scenario = REGISTER.replace("RESPONSE", &expect.to_string());
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
            "-s",
            ext,
            "-au",
            ext,
            "-ap",
            password,
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
