//! The phones step against the running service: each created extension's
//! registration shown live (sipp as the phones), the status socket's
//! phones view, `voxgate status` and `voxgate check` on the phones.

use super::*;

/// The `password:` line after `user:   EXT` in what the terminal shows.
fn password_of(screen: &str, ext: &str) -> String {
    let lines: Vec<&str> = screen.lines().map(str::trim).collect();
    let i = lines
        .iter()
        .position(|l| l.strip_prefix("user:").map(str::trim) == Some(ext))
        .unwrap_or_else(|| panic!("no account for {ext}:\n{screen}"));
    lines[i + 1]
        .strip_prefix("password:")
        .map(|p| p.trim().to_string())
        .unwrap_or_else(|| panic!("no password for {ext}:\n{screen}"))
}

/// The line the terminal shows for extension `ext` (the last one).
fn phone_row<'a>(screen: &'a str, ext: &str) -> &'a str {
    screen
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with(&format!("{ext}      ")))
        .unwrap_or_else(|| panic!("no line for {ext}:\n{screen}"))
}

/// `GET path` on the status socket: the whole response.
fn get(socket: &std::path::Path, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r
}

/// Phone `ext` registers at the bridge on `port` with SIPp 3.7.3 (digest,
/// SHA-256 offered first) as a Yealink; the nonce it was challenged with.
fn sipp_register(dir: &std::path::Path, port: u16, ext: &str, password: &str) -> String {
    use voxgate_testkit::sip::{Sipp, SippTrace, register_scenario, sipp37};
    let scenario = register_scenario(ext, password, 200, true).replace(
        "Max-Forwards: 70",
        "User-Agent: Yealink SIP-T46U 66.86.0.15\nMax-Forwards: 70",
    );
    let name = format!("reg-{ext}");
    let trace = SippTrace::new(dir, &name);
    let target = format!("127.0.0.1:{port}");
    let out = Sipp {
        bin: &sipp37(),
        dir,
        name: &name,
        scenario: &scenario,
        target: &target,
        args: &[&["-t", "u1", "-s", ext][..], &trace.args()].concat(),
        limit: Duration::from_secs(20),
    }
    .output();
    let text = trace.text();
    assert!(out.status.success(), "sipp {ext}: {}\n{text}", stderr(&out));
    text.split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no nonce in the trace:\n{text}"))
        .to_string()
}

/// Setup creates two phones and watches them register at the running
/// service, live: the pane shows one line per extension, 101 registered
/// (from where, which phone) while 102 still waits, then both, then the
/// summary names each. The status socket's phones view (its only place)
/// holds no password, HA1 or nonce, and the socket stays 0660; `voxgate
/// status` lists the phones and `voxgate check` names the one not
/// registered. Neither setup nor check prints alsa-lib's noise.
#[test]
fn phones_register_live_while_setup_watches() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new("setup-phones", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let id = "gw-phones";
    let fp = fingerprint(&lab);
    let tok = secret_file(&lab.dir, "ph.token", &token(&lab, id, Some(3600)));
    let port = voxgate_testkit::lab::free_udp_tcp();
    let socket = lab.dir.join("status.sock");
    let args = enroll_args(
        &lab,
        id,
        &format!("127.0.0.1:{}", lab.quic_port),
        &fp,
        &[
            "--token-file",
            &tok.display().to_string(),
            "--skip-audio",
            "--capture",
            "voxcap",
            "--playback",
            "voxplay",
            "--sip-listen",
            &format!("127.0.0.1:{port}"),
            "--status-socket",
            &socket.display().to_string(),
        ],
    );
    let env = alsa_env(&lab);
    let tty = Tmux::start(&lab.dir, "phones", bin(), &args, &env);
    tty.wait_for("Desk phones: extensions to create", T);
    tty.line("101 102");
    tty.wait_for("Install the identity", T);
    tty.line("y");
    let s = tty.wait_for("Enter stops waiting", T);
    assert!(
        s.contains(&format!("phone bridge: listens on 127.0.0.1:{port}")),
        "{s}"
    );
    let (p101, p102) = (password_of(&s, "101"), password_of(&s, "102"));

    // The service, started by hand (--no-service) from the config setup
    // wrote, as the tests run it: as root, its sandbox seeing the lab.
    let cfg = config(&lab, id);
    let mut written = std::fs::read_to_string(&cfg).unwrap();
    written.push_str(&voxgate_testkit::lab::dev_privilege(&lab.dir));
    std::fs::write(&cfg, written).unwrap();
    let mut gw = lab.start_gateway(&cfg, &env);
    let s = tty.wait_for("102      waiting...\n", T);
    assert!(phone_row(&s, "101").ends_with("101      waiting..."), "{s}");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "status socket mode {mode:o}");

    // 101 registers: its line says so while 102 still waits.
    let nonce = sipp_register(&lab.dir, port, "101", &p101);
    let s = tty.wait_for("101      registered from 127.0.0.1:", T);
    assert!(
        phone_row(&s, "101").contains("(Yealink SIP-T46U 66.86.0.15)"),
        "{s}"
    );
    assert!(phone_row(&s, "102").ends_with("102      waiting..."), "{s}");
    assert!(!s.contains("every phone registered"), "{s}");

    // The phones view: each extension, no secret.
    let r = get(&socket, "/phones");
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert!(r.contains("Content-Type: application/json"), "{r}");
    let body = r.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["phones"][0]["extension"], "101");
    assert_eq!(v["phones"][0]["registered"], true);
    assert_eq!(v["phones"][0]["contacts"][0]["transport"], "UDP");
    assert_eq!(v["phones"][1]["registered"], false);
    let realm = s
        .lines()
        .find_map(|l| l.trim().strip_prefix("realm:"))
        .map(str::trim)
        .unwrap()
        .to_string();
    let ha1 = voxgate::sip::auth::Ha1Pair::derive("101", &realm, &p101);
    for secret in [&p101, &p102, &ha1.md5, &ha1.sha256, &nonce] {
        assert!(
            !r.contains(secret.as_str()),
            "the phones view holds a secret: {r}"
        );
    }
    assert!(!r.to_ascii_lowercase().contains("nonce"), "{r}");
    // The TCP metrics endpoint, if any, is not where it is; the socket
    // still answers /metrics, and nothing else.
    assert!(get(&socket, "/metrics").contains("voxgate_sip_registered_extensions 1"));
    assert!(get(&socket, "/secrets").starts_with("HTTP/1.1 404"));

    // `voxgate status` lists the phones; `voxgate check` names the one
    // without a registered phone, and with the system's ALSA (no sound
    // card here) prints no alsa-lib noise.
    let st = std::process::Command::new(bin())
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        text.contains("  101      registered from 127.0.0.1:")
            && text.contains("  102      not registered"),
        "{text}"
    );
    let ck = std::process::Command::new(bin())
        .args(["check", "-o", "json", "--clock-source"])
        .arg(synced_clock(&lab.dir))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&ck.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&ck.stdout)));
    let phones = doc["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|f| f["id"] == "sip.phones"))
        .unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(phones["status"], "warn", "{phones}");
    let msg = phones["message"].as_str().unwrap();
    assert!(
        msg.contains("1 of 2 extension(s) have a registered phone; not registered: 102"),
        "{msg}"
    );
    assert!(
        phones["hint"]
            .as_str()
            .unwrap()
            .contains("point each phone at this box")
    );
    assert!(!stderr(&ck).contains("ALSA lib"), "{}", stderr(&ck));

    // 102 registers: every phone, and the summary names each.
    sipp_register(&lab.dir, port, "102", &p102);
    let (code, s) = tty.exit(T);
    assert_eq!(code, 0, "{s}");
    assert!(s.contains("ok    every phone registered"), "{s}");
    assert!(s.contains("phones:      2 created, 2 registered"), "{s}");
    for ext in ["101", "102"] {
        assert!(
            phone_row(&s, ext).contains(&format!("{ext}      registered from 127.0.0.1:")),
            "{s}"
        );
    }
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o660
    );
    gw.stop();
    relay.stop();
}
