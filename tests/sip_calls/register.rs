//! REGISTER with SHA-256 digest; a wrong password fails.

use super::*;

#[test]
fn sipp_registers_with_sha256_digest_and_a_wrong_password_fails() {
    let lab = Lab::new("sip-sha256", "mode = \"none\"");
    let _relay = lab.start_relay();
    // The default: SHA-256 offered first, MD5 second.
    let mut gw = SipGateway::configure(&lab, "gw-a", "[\"sha-256\", \"md5\"]", "");
    let pw = gw.add_phone("201");
    gw.start(&lab);
    let (ok, trace) = register("u1", &lab.dir, &gw, "201", &pw, 200, "sha-ok");
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
    let (ok, trace) = register(
        "u1",
        &lab.dir,
        &gw,
        "201",
        "not-the-password",
        401,
        "sha-wrong",
    );
    assert!(ok, "a wrong SHA-256 answer gets a fresh 401:\n{trace}");
    assert_eq!(gw.metric("voxgate_sip_auth_failures_total"), 1.0);
    // And expecting success with it must fail (the scenario cannot pass).
    let (ok, _) = register(
        "u1",
        &lab.dir,
        &gw,
        "201",
        "not-the-password",
        200,
        "sha-wrong2",
    );
    assert!(!ok, "a wrong password registered");
    assert!(!gw.log().contains(&pw), "a password reached the log");
}
