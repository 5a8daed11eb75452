//! Signed webhooks end to end: the real `voxgate relay run` (sandboxed as
//! in the other lab tests: Landlock and seccomp after start-up) delivers
//! to a receiver in Python that verifies every signature with the
//! `standardwebhooks` library (PyPI), over HTTPS on loopback with a CA the
//! test makes.
//!
//! - The receiver is down for a while, the relay restarts in between, and
//!   events are written meanwhile (by the running relay and by commands
//!   while it is down): every event is delivered, each id processed once.
//! - 410 disables the endpoint; a redirect is not followed; a host name
//!   that resolves to loopback but is not on `allow_hosts` is refused (the
//!   SSRF guard); a rotated secret sends two signatures that both verify.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;
use voxgate_testkit::cmd::stderr;
use voxgate_testkit::enroll::{Setup, fingerprint, machine_id, secret_file, token};
use voxgate_testkit::lab::{Lab, free_tcp, wait_for};
use voxgate_testkit::webhooks::{add, deliveries, lab_with_webhooks, ok, test_message};

#[test]
fn every_event_is_delivered_once_across_receiver_downtime_and_relay_restart() {
    let (lab, mut rx) = lab_with_webhooks("webhooks-outbox");
    let (ep, secret) = add(&lab, &rx.url("127.0.0.1", "/hook"), "");
    std::fs::write(&rx.secrets, format!("{secret}\n")).unwrap();
    rx.start();
    let mut relay = lab.start_relay();

    // Real events: an enrollment, then a spent token used again.
    let fp = fingerprint(&lab);
    let mid = machine_id(&lab.dir, "machine-id", "0123456789abcdef0123456789abcdef");
    let tok = secret_file(&lab.dir, "tok", &token(&lab, "gw-hook", Some(3600)));
    let (out, _) = Setup::new(&lab, "gw-hook")
        .fingerprint(&fp)
        .token_file(&tok)
        .machine_id(&mid)
        .args(["--backend", "sealed-file"])
        .output();
    assert!(out.status.success(), "{}", stderr(&out));
    let (again, _) = Setup::new(&lab, "gw-other")
        .fingerprint(&fp)
        .token_file(&tok)
        .machine_id(&mid)
        .args(["--backend", "sealed-file"])
        .output();
    assert!(!again.status.success());
    let first = test_message(&lab, &ep);
    wait_for(Duration::from_secs(15), "the first events", || {
        let types: HashSet<String> = rx
            .entries()
            .iter()
            .filter_map(|e| e["type"].as_str().map(str::to_string))
            .collect();
        rx.processed().contains_key(&first)
            && types.contains("device.enrolled")
            && types.contains("security.token_misuse")
    });

    // The receiver goes down; events keep coming.
    rx.stop();
    let mut expected: Vec<String> = (0..5).map(|_| test_message(&lab, &ep)).collect();
    ok(lab.relay_cmd(&["revoke", "gw-hook"]));
    std::thread::sleep(Duration::from_millis(1500));
    // The relay restarts; events are written while it is down.
    relay.stop();
    expected.extend((0..3).map(|_| test_message(&lab, &ep)));
    let mut relay = lab.start_relay();
    std::thread::sleep(Duration::from_millis(1000));
    let failing = deliveries(&lab);
    assert!(
        failing
            .iter()
            .any(|d| d[3] == "pending" && d[4].parse::<u32>().unwrap() >= 2),
        "attempts were made while the receiver was down: {failing:?}"
    );
    rx.start();

    let all: HashSet<String> = deliveries(&lab).into_iter().map(|d| d[0].clone()).collect();
    for id in &expected {
        assert!(all.contains(id), "{id} is in the outbox");
    }
    wait_for(Duration::from_secs(30), "every event delivered", || {
        let p = rx.processed();
        all.iter().all(|id| p.contains_key(id))
    });
    let processed = rx.processed();
    assert!(
        processed.values().all(|&n| n == 1),
        "each id processed once: {processed:?}"
    );
    assert!(rx.entries().iter().any(|e| e["type"] == "device.revoked"));
    assert!(rx.entries().iter().all(|e| e["result"] != "bad signature"));
    // The last answers are recorded just after the receiver saw them.
    wait_for(Duration::from_secs(10), "every delivery recorded", || {
        deliveries(&lab).iter().all(|d| d[3] == "delivered")
    });
    let m = |name: &str| voxgate_testkit::lab::metric(lab.relay_metrics, name);
    assert!(m("voxgate_relay_webhooks_delivered_total") >= 8.0);
    assert!(m("voxgate_relay_webhooks_failed_attempts_total") >= 1.0);
    relay.stop();
    let log = relay.log_text();
    assert!(!log.contains(&secret), "a secret in the relay log");
    assert!(!log.contains(secret.trim_start_matches("whsec_")));
}

#[test]
fn gone_disables_redirects_are_not_followed_ssrf_is_refused_rotation_signs_twice() {
    let (lab, mut rx) = lab_with_webhooks("webhooks-policy");
    let only_tests = "security.token_misuse";
    let (hook, old) = add(&lab, &rx.url("127.0.0.1", "/hook"), only_tests);
    let (gone, _) = add(&lab, &rx.url("127.0.0.1", "/gone"), only_tests);
    let (redirect, _) = add(&lab, &rx.url("127.0.0.1", "/redirect"), only_tests);
    // `localhost` resolves to loopback and is not on allow_hosts.
    let (ssrf, _) = add(&lab, &rx.url("localhost", "/hook"), only_tests);
    std::fs::write(&rx.secrets, format!("{old}\n")).unwrap();
    rx.start();
    let mut relay = lab.start_relay();

    let to_gone = test_message(&lab, &gone);
    let to_redirect = test_message(&lab, &redirect);
    let to_ssrf = test_message(&lab, &ssrf);
    let row = |id: &str| deliveries(&lab).into_iter().find(|d| d[0] == id);
    wait_for(
        Duration::from_secs(15),
        "the 410, the redirect and the refusal",
        || {
            let g = row(&to_gone).is_some_and(|d| d[3] == "failed" && d[5] == "410");
            let r = row(&to_redirect).is_some_and(|d| d[5] == "302");
            let s = row(&to_ssrf).is_some_and(|d| d[3] == "failed");
            g && r && s
        },
    );
    let list = ok(lab.relay_cmd(&["webhook", "list"]));
    let gone_line = list.lines().find(|l| l.starts_with(&gone)).unwrap();
    assert!(gone_line.contains("disabled"), "{list}");
    assert!(list.contains("410 Gone"), "{list}");
    let ssrf_row = row(&to_ssrf).unwrap();
    assert!(
        ssrf_row[6].contains("SSRF") && ssrf_row[6].contains("not a public address"),
        "{ssrf_row:?}"
    );
    let entries = rx.entries();
    assert!(
        entries.iter().all(|e| e["path"] != "/target"),
        "a redirect was followed"
    );
    assert!(
        entries.iter().all(|e| e["id"] != to_ssrf.as_str()),
        "the guard let a request through"
    );
    // A disabled endpoint gets no more deliveries.
    let before = entries.iter().filter(|e| e["path"] == "/gone").count();
    assert_eq!(before, 1);

    // Rotation: the old and the new secret both sign while they overlap.
    let out = ok(lab.relay_cmd(&["webhook", "rotate-secret", &hook, "--overlap", "1h"]));
    let new = out
        .lines()
        .find(|l| l.starts_with("whsec_"))
        .unwrap()
        .to_string();
    assert_ne!(new, old);
    std::fs::write(&rx.secrets, format!("{old}\n{new}\n")).unwrap();
    let rotated = test_message(&lab, &hook);
    wait_for(Duration::from_secs(15), "the rotated message", || {
        rx.processed().contains_key(&rotated)
    });
    let e = rx
        .entries()
        .into_iter()
        .find(|e| e["id"] == rotated.as_str())
        .unwrap();
    assert_eq!(
        (e["signatures"].as_u64(), e["verified"].as_u64()),
        (Some(2), Some(2)),
        "{e}"
    );
    // Without an overlap, the old secret stops at once.
    let out = ok(lab.relay_cmd(&["webhook", "rotate-secret", &hook, "--overlap", "0s"]));
    let newest = out
        .lines()
        .find(|l| l.starts_with("whsec_"))
        .unwrap()
        .to_string();
    std::fs::write(&rx.secrets, format!("{newest}\n")).unwrap();
    let last = test_message(&lab, &hook);
    wait_for(
        Duration::from_secs(15),
        "the message after the second rotation",
        || rx.processed().contains_key(&last),
    );
    let e = rx
        .entries()
        .into_iter()
        .find(|e| e["id"] == last.as_str())
        .unwrap();
    assert_eq!(e["signatures"].as_u64(), Some(1), "{e}");
    relay.stop();
    for s in [&old, &new, &newest] {
        assert!(!relay.log_text().contains(s.as_str()));
    }
}

/// `curl` to the API: (status, body).
fn curl(
    lab: &Lab,
    port: u16,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .arg("--cacert")
        .arg(lab.dir.join("relay/ca.pem"))
        .args(["--resolve", &format!("relay.voxgate.test:{port}:127.0.0.1")])
        // The key goes in a header file, never on argv.
        .args(["-H", &format!("@{}", lab.dir.join("auth.header").display())]);
    std::fs::write(
        lab.dir.join("auth.header"),
        format!("Authorization: Bearer {key}\n"),
    )
    .unwrap();
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = c
        .arg(format!("https://relay.voxgate.test:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn the_api_manages_endpoints_with_the_webhooks_scope() {
    let (lab, mut rx) = lab_with_webhooks("webhooks-api");
    let port = free_tcp();
    let cfg = lab.dir.join("relay.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&cfg, text).unwrap();
    let key = |scopes: &str| {
        let out = ok(lab.relay_cmd(&["api-key", "create", "--name", scopes, "--scopes", scopes]));
        out.lines().next().unwrap().trim().to_string()
    };
    let manage = key("webhooks:manage");
    let other = key("devices:read");
    std::fs::write(&rx.secrets, "").unwrap();
    rx.start();
    let mut relay = lab.start_relay();

    let url = rx.url("127.0.0.1", "/hook");
    let new = format!(r#"{{"url":"{url}","events":["device.online"],"description":"app"}}"#);
    assert_eq!(
        curl(&lab, port, &other, "POST", "/v1/webhooks", Some(&new)).0,
        403
    );
    assert_eq!(curl(&lab, port, &other, "GET", "/v1/webhooks", None).0, 403);
    let (status, body) = curl(&lab, port, &manage, "POST", "/v1/webhooks", Some(&new));
    assert_eq!(status, 201, "{body}");
    let made = json(&body);
    let id = made["endpoint"]["id"].as_str().unwrap().to_string();
    let secret = made["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    std::fs::write(&rx.secrets, format!("{secret}\n")).unwrap();
    for (bad, code) in [
        (r#"{"url":"http://example.com/"}"#, "invalid_url"),
        (
            r#"{"url":"https://example.com/","events":["nope"]}"#,
            "invalid_events",
        ),
    ] {
        let (s, b) = curl(&lab, port, &manage, "POST", "/v1/webhooks", Some(bad));
        assert_eq!(s, 400, "{b}");
        assert!(b.contains(code), "{b}");
    }
    let (s, b) = curl(
        &lab,
        port,
        &manage,
        "POST",
        "/v1/webhooks",
        Some(r#"{"url":"https://example.com/","bogus":1}"#),
    );
    assert_eq!(
        (s, json(&b)["code"].as_str()),
        (422, Some("unknown_field")),
        "{b}"
    );

    let (s, b) = curl(&lab, port, &manage, "GET", "/v1/webhooks", None);
    assert_eq!(s, 200);
    assert!(!b.contains(&secret), "a secret in the list");
    assert_eq!(json(&b).as_array().unwrap().len(), 1);
    let (s, b) = curl(
        &lab,
        port,
        &manage,
        "PATCH",
        &format!("/v1/webhooks/{id}"),
        Some(r#"{"enabled":false}"#),
    );
    assert_eq!(
        (s, json(&b)["enabled"].as_bool()),
        (200, Some(false)),
        "{b}"
    );
    let (s, b) = curl(
        &lab,
        port,
        &manage,
        "PATCH",
        &format!("/v1/webhooks/{id}"),
        Some(r#"{"enabled":true,"events":[]}"#),
    );
    assert_eq!((s, json(&b)["enabled"].as_bool()), (200, Some(true)), "{b}");

    let (s, b) = curl(
        &lab,
        port,
        &manage,
        "POST",
        &format!("/v1/webhooks/{id}/test"),
        None,
    );
    assert_eq!(s, 202, "{b}");
    let message = json(&b)["message"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(15), "the test message", || {
        rx.processed().contains_key(&message)
    });
    let (s, b) = curl(
        &lab,
        port,
        &manage,
        "GET",
        &format!("/v1/webhooks/{id}/deliveries"),
        None,
    );
    assert_eq!(s, 200);
    let d = json(&b)[0].clone();
    assert_eq!(
        (d["message"].as_str(), d["state"].as_str()),
        (Some(message.as_str()), Some("delivered")),
        "{b}"
    );
    // A replay carries the same webhook-id: the receiver sees a duplicate.
    let replay = format!(r#"{{"delivery":{}}}"#, d["id"]);
    let (s, b) = curl(
        &lab,
        port,
        &manage,
        "POST",
        &format!("/v1/webhooks/{id}/replay"),
        Some(&replay),
    );
    assert_eq!(s, 202, "{b}");
    wait_for(Duration::from_secs(15), "the replay", || {
        rx.entries()
            .iter()
            .any(|e| e["id"] == message.as_str() && e["result"] == "duplicate")
    });
    let (s, b) = curl(
        &lab,
        port,
        &manage,
        "POST",
        &format!("/v1/webhooks/{id}/rotate-secret"),
        Some(r#"{"overlap_s":60}"#),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b)["endpoint"]["secrets"].as_u64(), Some(2), "{b}");

    let (s, doc) = curl(&lab, port, &manage, "GET", "/v1/openapi.json", None);
    assert_eq!(s, 200);
    for p in [
        "/v1/webhooks",
        "/v1/webhooks/{id}/test",
        "/v1/webhooks/{id}/replay",
        "/v1/webhooks/{id}/deliveries",
        "/v1/webhooks/{id}/rotate-secret",
    ] {
        assert!(
            json(&doc)["paths"].get(p).is_some(),
            "{p} in the OpenAPI document"
        );
    }
    assert_eq!(
        curl(
            &lab,
            port,
            &manage,
            "DELETE",
            &format!("/v1/webhooks/{id}"),
            None
        )
        .0,
        204
    );
    assert_eq!(
        curl(
            &lab,
            port,
            &manage,
            "GET",
            &format!("/v1/webhooks/{id}"),
            None
        )
        .0,
        404
    );
    relay.stop();
    assert!(!relay.log_text().contains(&secret));
}

#[test]
fn device_sessions_and_recordings_emit_online_recording_ready_offline() {
    use voxgate::media::{flow, rtp::Repr};
    use voxgate::proto::control::{Direction, FlowOpen, Message};
    let (lab, mut rx) = lab_with_webhooks("webhooks-session");
    let (_, secret) = add(
        &lab,
        &rx.url("127.0.0.1", "/hook"),
        "device.online,device.offline,recording.ready",
    );
    std::fs::write(&rx.secrets, format!("{secret}\n")).unwrap();
    rx.start();
    // Issued before the relay starts, so its trust table holds it.
    let (id, client) = lab.dev_identities("hookdev", 1).remove(0);
    let mut relay = lab.start_relay();
    let rt = voxgate_testkit::session::runtime();
    rt.block_on(async {
        let mut s = voxgate_testkit::session::Session::open_with(&lab, client, &id)
            .await
            .unwrap();
        s.tx(&Message::FlowOpen(FlowOpen {
            flow: 0,
            dir: Direction::Up,
            ssrc: 7,
            codec: "opus",
            frame_ms: 20,
        }))
        .await
        .unwrap();
        let mut buf = [0u8; 1500];
        for seq in 0..50u32 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let repr = Repr {
                marker: seq == 0,
                payload_type: 111,
                sequence: seq as u16,
                timestamp: seq * 960,
                ssrc: 7,
            };
            let n = flow::encode(0, &repr, &[0xfc; 60], &mut buf).unwrap();
            let _ = s
                .conn
                .send_datagram(bytes::Bytes::copy_from_slice(&buf[..n]));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.conn.close(0u32.into(), b"bye");
    });
    let kinds = || -> Vec<String> {
        rx.entries()
            .iter()
            .filter(|e| e["result"] == "processed")
            .filter_map(|e| e["type"].as_str().map(str::to_string))
            .collect()
    };
    wait_for(
        Duration::from_secs(15),
        "online, recording.ready, offline",
        || {
            let k = kinds();
            ["device.online", "recording.ready", "device.offline"]
                .iter()
                .all(|t| k.iter().any(|x| x == t))
        },
    );
    relay.stop();
}

#[test]
fn deliveries_work_after_the_privilege_drop_to_nobody() {
    // Under /tmp, which `nobody` can traverse; the state owned by it.
    let (lab, mut rx) = voxgate_testkit::webhooks::with_webhooks(
        Lab::new_public("webhooks-nobody", "mode = \"none\""),
        "\"127.0.0.1\"",
    );
    let cfg = lab.dir.join("relay.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("stay_root = true", "user = \"nobody\"");
    std::fs::write(&cfg, text).unwrap();
    let (ep, secret) = add(&lab, &rx.url("127.0.0.1", "/hook"), "");
    std::fs::write(&rx.secrets, format!("{secret}\n")).unwrap();
    std::fs::create_dir_all(lab.dir.join("recordings")).unwrap();
    for d in ["relay", "recordings"] {
        let st = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(lab.dir.join(d))
            .status()
            .unwrap();
        assert!(st.success());
    }
    rx.start();
    let mut relay = lab.start_relay();
    let id = test_message(&lab, &ep);
    wait_for(Duration::from_secs(15), "a delivery from nobody", || {
        rx.processed().contains_key(&id)
    });
    relay.stop();
    let log = relay.log_text();
    assert!(
        log.contains("\"user\":\"nobody\""),
        "the relay dropped to nobody"
    );
    assert!(log.contains("seccomp allow-list on"), "{log}");
}
