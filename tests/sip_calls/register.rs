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

/// `voxgate phones rotate ARGS` on `gw`'s config; the `EXT<TAB>PASSWORD`
/// lines it printed.
fn rotate(gw: &SipGateway, args: &[&str]) -> Vec<(String, String)> {
    let out = std::process::Command::new(voxgate_testkit::lab::bin())
        .args(["phones", "rotate"])
        .args(args)
        .arg("-c")
        .arg(&gw.cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "phones rotate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| {
            let (e, p) = l.split_once('\t').unwrap_or_else(|| panic!("{stdout}"));
            (e.to_string(), p.to_string())
        })
        .collect()
}

/// `voxgate phones rotate` against a running box offering `digest`: the
/// old password is refused from the very next REGISTER, the new one
/// registers, the rotated phone's registration is dropped (the relay
/// forgets the extension: a call to it gets 404) and the others keep theirs;
/// `--all` does the same for every phone, noticed without any SIP traffic.
/// `own_dir`: the store lives in a directory of its own, outside the
/// sandbox paths the config lists (the gateway must add it to its Landlock
/// read rules to re-read the store).
fn rotation_on_a_running_box(name: &str, digest: &str, own_dir: bool) {
    let lab = Lab::new(name, "mode = \"none\"");
    let _relay = lab.start_relay();
    let mut sip = String::from("auth_failures = 50\n");
    let store_dir = std::path::PathBuf::from(format!("{}-phones", lab.dir.display()));
    if own_dir {
        let _ = std::fs::remove_dir_all(&store_dir);
        std::fs::create_dir_all(&store_dir).unwrap();
        sip.push_str(&format!(
            "phones = \"{}\"\n",
            store_dir.join("phones.sealed").display()
        ));
    }
    let mut gw = SipGateway::configure(&lab, "gw-a", digest, &sip);
    let p201 = gw.add_phone("201");
    let p202 = gw.add_phone("202");
    gw.start(&lab);
    let dir = &lab.dir;
    let reg = |ext: &str, pw: &str, expect: u16, step: &str| {
        register("u1", dir, &gw, ext, pw, expect, &format!("{step}-{ext}")).0
    };
    assert!(reg("201", &p201, 200, "first"));
    assert!(reg("202", &p202, 200, "first"));
    gw.wait_registered(2.0);
    let registered = || gw.metric("voxgate_sip_registered_extensions");

    let one = rotate(&gw, &["201"]);
    let [(ext, n201)] = &one[..] else {
        panic!("{one:?}")
    };
    assert_eq!(ext, "201");
    // No waiting: the next REGISTER is checked against the new store.
    assert!(reg("201", &p201, 401, "old"), "old password not refused");
    assert!(
        !reg("201", &p201, 200, "old-again"),
        "old password registered"
    );
    wait_for(Duration::from_secs(5), "201's registration dropped", || {
        registered() == 1.0
    });
    // The relay forgot 201: 202 calling it gets 404.
    let s = caller_until_invite(
        "202",
        &fill(&sipp_file("caller-refused.xml"), &[("CODE", "404")]),
    );
    let (out, trace) = sipp_call("u1", dir, &gw, "to-201", &s, "201", "202", &p202);
    assert_call_ok("a call to the dropped 201", &out, &trace, &gw);
    assert!(reg("201", n201, 200, "new"), "new password refused");
    assert!(reg("202", &p202, 200, "untouched"), "202 was not rotated");
    gw.wait_registered(2.0);

    let all = rotate(&gw, &["--all"]);
    let exts: Vec<&str> = all.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(exts, ["201", "202"]);
    // Without any SIP traffic: the bridge's timer notices the store.
    wait_for(Duration::from_secs(5), "every registration dropped", || {
        registered() == 0.0
    });
    for ((ext, pw), old) in all.iter().zip([n201, &p202]) {
        assert!(
            reg(ext, old, 401, "all-old"),
            "{ext}: old password not refused"
        );
        assert!(reg(ext, pw, 200, "all-new"), "{ext}: new password refused");
    }
    gw.wait_registered(2.0);

    let log = gw.log();
    assert_eq!(
        log.matches("phone store reloaded").count(),
        2,
        "one reload per rotation:\n{log}"
    );
    assert!(
        log.contains("\"changed\":\"[\\\"201\\\", \\\"202\\\"]\""),
        "{log}"
    );
    assert!(log.contains("its credentials changed"), "{log}");
    for pw in [&p201, &p202, n201]
        .into_iter()
        .chain(all.iter().map(|(_, p)| p))
    {
        assert!(!log.contains(pw.as_str()), "a password reached the log");
    }
    if own_dir {
        assert!(store_dir.join("phones.sealed").is_file());
        let _ = std::fs::remove_dir_all(&store_dir);
    }
}

#[test]
fn rotating_a_password_on_a_running_box_sha256() {
    rotation_on_a_running_box("sip-rotate-sha", "[\"sha-256\", \"md5\"]", false);
}

#[test]
fn rotating_a_password_on_a_running_box_md5() {
    rotation_on_a_running_box("sip-rotate-md5", "[\"md5\"]", true);
}

/// docs/INCIDENT.md's runbook for a leaked phone password, run against a
/// running box: the old password is refused from the next REGISTER, the
/// one the runbook printed registers.
#[test]
fn runbook_a_leaked_phone_password() {
    let lab = Lab::new("sip-runbook", "mode = \"none\"");
    let _relay = lab.start_relay();
    let mut gw = SipGateway::configure(&lab, "gw-a", "[\"sha-256\", \"md5\"]", "");
    let leaked = gw.add_phone("201");
    gw.start(&lab);
    let dir = &lab.dir;
    assert!(register("u1", dir, &gw, "201", &leaked, 200, "before").0);
    let mut runner = voxgate_testkit::runbook::Runner::new(&lab, "gw-a", &lab.dir.join("box"));
    runner.set("GATEWAY_CONFIG", &gw.cfg.display().to_string());
    runner.set("EXT", "201");
    let mut printed = String::new();
    for block in voxgate_testkit::runbook::runbook("phone-password") {
        assert_eq!(block.place, "box");
        let out = runner.run(&block);
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let new = printed
        .lines()
        .find_map(|l| l.strip_prefix("201\t"))
        .unwrap_or_else(|| panic!("no new password printed: {printed}"))
        .to_string();
    assert!(register("u1", dir, &gw, "201", &leaked, 401, "leaked").0);
    assert!(register("u1", dir, &gw, "201", &new, 200, "new").0);
    let log = gw.log();
    assert!(log.contains("phone store reloaded"), "{log}");
    assert!(!log.contains(&new) && !log.contains(&leaked));
}
