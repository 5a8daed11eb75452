//! The operator API against real clients, the real `voxgate relay run`
//! serving it: curl for every route and every scope (403 without the
//! route's scope, 401 for a missing, forged, revoked, rotated-out or
//! expired key), every kind of bad request as a problem (never a 5xx),
//! rate limits (the fourth request in the window gets 429 with
//! `Retry-After`, also after a restart; through a trusted proxy the
//! client's own address is counted, from an untrusted one the proxy's),
//! schemathesis against the served OpenAPI document, and CORS in a
//! headless Chromium (a page of the allowed origin reads the answer, a
//! page of another origin is stopped at the preflight), and the API on a
//! privileged port after the relay dropped to `nobody`.

use std::io::{Read, Write};
use std::time::Duration;
use voxgate_testkit::api::{self, Answer, Req, create_key, key_id};
use voxgate_testkit::lab::{Lab, metric, repo, wait_for};

const SCOPES: [&str; 9] = [
    "calls:create",
    "calls:admin",
    "devices:read",
    "devices:write",
    "tokens:write",
    "recordings:read",
    "webhooks:manage",
    "audit:read",
    "keys:manage",
];

/// A key with every scope but `without`.
fn all_but(lab: &Lab, without: &str) -> String {
    let others: Vec<&str> = SCOPES.iter().copied().filter(|s| *s != without).collect();
    create_key(lab, "all-but", &others.join(","), &[])
}

fn check(a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{what}: {a:?}");
}

#[test]
fn every_route_checks_its_scope_and_every_key_state() {
    let lab = Lab::new("api-scopes", "mode = \"echo\"");
    let api = api::enable(
        &lab,
        "max_body_bytes = 2048\nauth_failures_per_minute = 8",
        None,
    );
    // Two devices (development certificates), one recording of gw-1.
    lab.gateway_config("gw-1", lab.quic_port, "");
    lab.gateway_config("gw-2", lab.quic_port, "");
    let rec = lab.dir.join("recordings/gw-1");
    std::fs::create_dir_all(&rec).unwrap();
    std::fs::write(rec.join("100-s1-f1.ogg"), b"OggS fake recording").unwrap();
    let mut relay = lab.start_relay();
    // gw-1 online.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session = rt
        .block_on(voxgate_testkit::session::Session::open(
            &lab,
            &lab.dir.join("gw-1"),
            "gw-1",
        ))
        .unwrap();
    let spare = create_key(&lab, "spare", "audit:read", &[]);
    // (method, path, body, scope, status when allowed)
    let routes: Vec<(&str, String, Option<String>, &str, u16)> = vec![
        ("GET", "/v1/devices".into(), None, "devices:read", 200),
        ("GET", "/v1/devices/gw-1".into(), None, "devices:read", 200),
        (
            "POST",
            "/v1/tokens".into(),
            Some(r#"{"device":"gw-new","ttl_s":600}"#.into()),
            "tokens:write",
            201,
        ),
        (
            "GET",
            "/v1/tokens?all=true".into(),
            None,
            "tokens:write",
            200,
        ),
        (
            "DELETE",
            "/v1/tokens/gw-new".into(),
            None,
            "tokens:write",
            200,
        ),
        ("GET", "/v1/recordings".into(), None, "recordings:read", 200),
        (
            "GET",
            "/v1/recordings/gw-1/100-s1-f1.ogg".into(),
            None,
            "recordings:read",
            200,
        ),
        (
            "DELETE",
            "/v1/recordings/gw-1/100-s1-f1.ogg".into(),
            None,
            "calls:admin",
            204,
        ),
        (
            "GET",
            "/v1/audit?event=api_key_created&limit=5".into(),
            None,
            "audit:read",
            200,
        ),
        ("GET", "/v1/api-keys".into(), None, "keys:manage", 200),
        (
            "POST",
            "/v1/api-keys".into(),
            Some(r#"{"name":"made","scopes":["audit:read"]}"#.into()),
            "keys:manage",
            201,
        ),
        (
            "POST",
            format!("/v1/api-keys/{}/rotate", key_id(&spare)),
            Some(r#"{"overlap_s":0}"#.into()),
            "keys:manage",
            201,
        ),
        (
            "DELETE",
            format!("/v1/api-keys/{}", key_id(&spare)),
            None,
            "keys:manage",
            204,
        ),
        (
            "POST",
            "/v1/devices/gw-1/revoke".into(),
            None,
            "devices:write",
            200,
        ),
    ];
    let mut answers = Vec::new();
    for (method, path, body, scope, ok) in &routes {
        let without = all_but(&lab, scope);
        let only = create_key(&lab, "only", scope, &[]);
        let send = |key: &str| {
            let mut r = Req::new(method, path, Some(key));
            if let Some(b) = body {
                r = r.json(b);
            }
            api.send(r)
        };
        let denied = send(&without);
        check(&denied, 403, &format!("{method} {path} without {scope}"));
        assert_eq!(denied.code(), "missing_scope");
        let a = send(&only);
        check(&a, *ok, &format!("{method} {path} with {scope}"));
        answers.push(a);
    }
    // What the answers said.
    let devices = answers[0].json();
    let gw1 = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "gw-1")
        .unwrap();
    assert_eq!(gw1["online"], true, "{gw1}");
    assert!(gw1["cert_expires"].as_i64().unwrap() > 0 && gw1["last_seen"].as_i64().is_some());
    let token = answers[2].json();
    assert_eq!(token["token"].as_str().unwrap().len(), 32, "{token}");
    assert_eq!(answers[4].json()["revoked"][0], token["id"]);
    assert_eq!(answers[6].body, "OggS fake recording");
    assert_eq!(
        answers[6].header("content-type").as_deref(),
        Some("audio/ogg")
    );
    assert!(!rec.join("100-s1-f1.ogg").exists(), "deleted");
    let made = answers[10].json();
    assert!(made["key"].as_str().unwrap().starts_with("vgk_"));
    // The revoked device's live session is closed within a second or so.
    assert!(
        rt.block_on(session.closed_within(Duration::from_secs(3)))
            .is_some(),
        "the revoked device's session stayed up"
    );

    // Key states: a rotated-out key, a revoked, an expired, a forged one.
    let rotated = answers[11].json()["key"].as_str().unwrap().to_string();
    check(
        &api.get("/v1/audit?limit=1", &rotated),
        200,
        "the rotated key",
    );
    check(
        &api.get("/v1/audit?limit=1", &spare),
        401,
        "the rotated-out key (no overlap)",
    );
    let doomed = create_key(&lab, "doomed", "audit:read", &[]);
    check(
        &api.get("/v1/audit?limit=1", &doomed),
        200,
        "before revocation",
    );
    let out = api::api_key_cmd(&lab, &["revoke", &key_id(&doomed)]);
    assert!(out.status.success());
    let a = api.get("/v1/audit?limit=1", &doomed);
    check(&a, 401, "revoked by the CLI: the very next request");
    assert_eq!(a.code(), "unauthorized");
    assert_eq!(a.header("www-authenticate").as_deref(), Some("bearer"));
    let brief = create_key(&lab, "brief", "audit:read", &["--expires-in-s", "1"]);
    std::thread::sleep(Duration::from_millis(2100));
    check(&api.get("/v1/audit?limit=1", &brief), 401, "expired");
    let forged = voxgate::relay::api_key::compose(&key_id(&rotated), &"x".repeat(40));
    check(
        &api.get("/v1/audit?limit=1", &forged),
        401,
        "a forged secret",
    );
    let mut typo = rotated.clone().into_bytes();
    typo[20] ^= 1;
    check(
        &api.get("/v1/audit?limit=1", &String::from_utf8(typo).unwrap()),
        401,
        "a typo",
    );
    check(
        &api.send(Req::new("GET", "/v1/devices", None)),
        401,
        "no key",
    );

    // Bad requests: problems with stable codes, never a 5xx.
    let admin = create_key(&lab, "admin", &SCOPES.join(","), &[]);
    let post = |path: &str, ctype: &str, body: String| {
        let mut r = Req::new("POST", path, Some(&admin));
        r.body = Some((ctype, body));
        api.send(r)
    };
    let cases = [
        (
            post("/v1/tokens", "application/json", "{".into()),
            400,
            "bad_json",
        ),
        (
            post(
                "/v1/tokens",
                "application/json",
                r#"{"device":"gw-x","bogus":1}"#.into(),
            ),
            422,
            "unknown_field",
        ),
        (
            post("/v1/tokens", "application/json", r#"{"device":7}"#.into()),
            422,
            "invalid_body",
        ),
        (
            post(
                "/v1/tokens",
                "application/json",
                format!(r#"{{"device":"gw-x","note":"{}"}}"#, "n".repeat(4096)),
            ),
            413,
            "body_too_large",
        ),
        (
            post("/v1/tokens", "text/plain", r#"{"device":"gw-x"}"#.into()),
            415,
            "unsupported_media_type",
        ),
        (
            post(
                "/v1/tokens",
                "application/json",
                r#"{"device":"NOT A ID"}"#.into(),
            ),
            400,
            "invalid_device_id",
        ),
        (
            post(
                "/v1/tokens",
                "application/json",
                r#"{"device":"gw-1"}"#.into(),
            ),
            409,
            "conflict",
        ),
        (
            post(
                "/v1/api-keys",
                "application/json",
                r#"{"name":"x","scopes":["root"]}"#.into(),
            ),
            400,
            "invalid_scope",
        ),
        (
            post("/v1/devices/nope/revoke", "application/json", String::new()),
            404,
            "not_found",
        ),
        (api.get("/v1/devices/nope", &admin), 404, "not_found"),
        (
            api.get("/v1/recordings/gw-1/..%2f..%2frelay.toml", &admin),
            404,
            "not_found",
        ),
        (api.get("/v1/audit?limit=0", &admin), 400, "invalid_limit"),
        (
            api.get("/v1/audit?since=yesterday", &admin),
            400,
            "bad_request",
        ),
        (api.get("/v1/nothing", &admin), 404, "not_found"),
        (
            api.send(Req::new("PUT", "/v1/devices", Some(&admin))),
            405,
            "method_not_allowed",
        ),
        (
            api.send(Req::new("DELETE", "/v1/api-keys/nope", Some(&admin))),
            404,
            "not_found",
        ),
    ];
    for (i, (a, status, code)) in cases.iter().enumerate() {
        check(a, *status, &format!("case {i}"));
        assert_eq!(a.code(), *code, "case {i}: {a:?}");
    }
    // An enrolled id takes a re-enrollment token.
    let re = post(
        "/v1/tokens",
        "application/json",
        r#"{"device":"gw-2","reenroll":true,"note":"new box"}"#.into(),
    );
    check(&re, 201, "a re-enrollment token");
    assert_eq!(re.json()["reenroll"], true);

    // Failed authentications: limited per address, audited, counted.
    for _ in 0..8 {
        let mut r = Req::new("GET", "/v1/devices", Some("vgk_nope"));
        r.from = Some("127.0.0.9");
        check(&api.send(r), 401, "a bad key");
    }
    let mut r = Req::new("GET", "/v1/devices", Some(&admin));
    r.from = Some("127.0.0.9");
    let a = api.send(r);
    check(&a, 429, "past the failure budget, even with a good key");
    assert!(a.header("retry-after").is_some());
    check(
        &api.get("/v1/devices", &admin),
        200,
        "another address is not blocked",
    );
    assert!(metric(lab.relay_metrics, "voxgate_relay_api_auth_failures_total") >= 14.0);
    wait_for(
        Duration::from_secs(5),
        "the audit lines and last use",
        || {
            let a = api.get("/v1/audit?event=api_auth_failed&limit=1000", &admin);
            let keys = api.get("/v1/api-keys", &admin).json();
            let used =
                keys.as_array().unwrap().iter().any(|k| {
                    k["id"] == key_id(&admin).as_str() && k["last_used"].as_i64().is_some()
                });
            used && a
                .json()
                .as_array()
                .is_some_and(|rows| rows.iter().filter(|r| r["source"] == "127.0.0.9").count() == 8)
        },
    );
    let writes = api
        .get("/v1/audit?event=api_request&limit=1000", &admin)
        .json();
    assert!(
        writes.as_array().unwrap().iter().any(|r| r["detail"]
            .as_str()
            .unwrap()
            .starts_with("POST /v1/devices/gw-1/revoke -> 200")),
        "{writes}"
    );
    relay.assert_running();
}

#[test]
fn rate_limits_survive_a_restart_and_believe_only_trusted_proxies() {
    let lab = Lab::new("api-limits", "mode = \"echo\"");
    let api = api::enable(
        &lab,
        "trusted_proxies = [\"127.0.0.2\"]\n[[api.limit]]\nroute = \"devices.list\"\nper = \"address\"\ncount = 3\nwindow = \"1d\"\n",
        None,
    );
    let mut relay = lab.start_relay();
    let key = create_key(&lab, "limits", "devices:read", &[]);
    let list = |from: &str, xff: Option<&str>| {
        let mut r = Req::new("GET", "/v1/devices", Some(&key));
        r.from = Some(from);
        if let Some(x) = xff {
            r.headers.push(format!("X-Forwarded-For: {x}"));
        }
        api.send(r).status
    };
    for i in 0..3 {
        assert_eq!(list("127.0.0.1", None), 200, "request {i}");
    }
    let fourth = api.get("/v1/devices", &key);
    check(&fourth, 429, "the fourth in the window");
    let wait: u64 = fourth.header("retry-after").unwrap().parse().unwrap();
    assert!((86_000..=86_400).contains(&wait), "Retry-After {wait}");
    assert_eq!(fourth.code(), "rate_limited");
    // Another route class is not limited.
    check(&api.get("/v1/devices/nope", &key), 404, "devices.get");

    relay.stop();
    let mut relay = lab.start_relay();
    let again = api.get("/v1/devices", &key);
    check(&again, 429, "after a restart");
    let left: u64 = again.header("retry-after").unwrap().parse().unwrap();
    assert!(left <= wait, "{left} > {wait}");

    // Through the trusted proxy (127.0.0.2) each client has its own window.
    for _ in 0..3 {
        assert_eq!(list("127.0.0.2", Some("203.0.113.5")), 200);
    }
    assert_eq!(list("127.0.0.2", Some("203.0.113.5")), 429);
    // A client forging the left end of the header is still itself.
    assert_eq!(list("127.0.0.2", Some("198.51.100.1, 203.0.113.5")), 429);
    assert_eq!(list("127.0.0.2", Some("203.0.113.6")), 200);
    // From an untrusted peer the header means nothing: the peer is counted.
    for i in 0..3 {
        assert_eq!(
            list("127.0.0.3", Some(&format!("203.0.113.{}", 20 + i))),
            200
        );
    }
    assert_eq!(list("127.0.0.3", Some("203.0.113.99")), 429);
    assert!(metric(lab.relay_metrics, "voxgate_relay_api_rate_limited_total") >= 3.0);
    relay.assert_running();
}

/// A page server for the CORS test: `/` is `page`, `/report?...` records
/// the query; returns the reports seen.
fn serve_pages(
    listener: std::net::TcpListener,
    page: String,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let r2 = reports.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let mut s = s;
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
            let body = if let Some(q) = path.strip_prefix("/report?") {
                r2.lock().unwrap().push(q.to_string());
                String::new()
            } else if path == "/" {
                page.clone()
            } else {
                String::new()
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    reports
}

#[test]
fn cors_in_headless_chromium_lets_only_the_allowed_origin_read() {
    let lab = Lab::new("api-cors", "mode = \"echo\"");
    let cert = api::operator_cert(&lab.dir);
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://127.0.0.1:{}", allowed.local_addr().unwrap().port());
    let api = api::enable(&lab, &format!("cors_origins = [\"{origin}\"]"), Some(&cert));
    // The operator's key sealed to the machine, as the relay's own are.
    let sealed = api::seal_key(&lab, &cert);
    let cfg = lab.dir.join("relay.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("key = \"{}\"", cert.key.display()),
        &format!("key = \"{}\"", sealed.display()),
    );
    assert!(text.contains("api.key.sealed"));
    std::fs::write(&cfg, text).unwrap();
    let mut relay = lab.start_relay();
    let key = create_key(&lab, "browser", "devices:read", &[]);
    // The Authorization header makes the browser send a preflight first.
    let page = format!(
        "<html><body><script>
fetch('https://127.0.0.1:{}/v1/devices', {{headers: {{'Authorization': 'Bearer {key}'}}}})
  .then(r => r.json().then(j => fetch('/report?ok=' + r.status + '&n=' + j.length)))
  .catch(e => fetch('/report?blocked=' + encodeURIComponent(e.name)));
</script></body></html>",
        api.port
    );
    let allowed_reports = serve_pages(allowed, page.clone());
    let other_port = other.local_addr().unwrap().port();
    let other_reports = serve_pages(other, page);
    let before = metric(lab.relay_metrics, "voxgate_relay_api_requests_total");
    for (port, reports) in [
        (
            origin.rsplit(':').next().unwrap().parse::<u16>().unwrap(),
            &allowed_reports,
        ),
        (other_port, &other_reports),
    ] {
        let profile = lab.dir.join(format!("chromium-{port}"));
        let mut browser = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!(
                "--ignore-certificate-errors-spki-list={}",
                cert.spki_b64
            ))
            .arg(format!("http://127.0.0.1:{port}/"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromium (scripts/deps installs it)");
        let got = std::panic::catch_unwind(|| {
            wait_for(Duration::from_secs(30), "the page's report", || {
                !reports.lock().unwrap().is_empty()
            })
        });
        let _ = browser.kill();
        let _ = browser.wait();
        got.unwrap();
    }
    assert_eq!(allowed_reports.lock().unwrap()[0], "ok=200&n=0");
    assert_eq!(other_reports.lock().unwrap()[0], "blocked=TypeError");
    // The other origin's preflight failed, so its GET never came: one
    // authenticated request in all, the allowed page's.
    let after = metric(lab.relay_metrics, "voxgate_relay_api_requests_total");
    assert_eq!(after - before, 1.0);
    relay.assert_running();
}

#[test]
fn schemathesis_finds_no_server_error_and_answers_match_the_document() {
    let st = repo().join(".venv/bin/schemathesis");
    assert!(st.exists(), "{} missing: run scripts/deps", st.display());
    let lab = Lab::new("api-schemathesis", "mode = \"echo\"");
    let cert = api::operator_cert(&lab.dir);
    // Schemathesis sends requests without a key and with bad ones on
    // purpose: a budget of failures that does not stop it.
    let api = api::enable(&lab, "auth_failures_per_minute = 100000", Some(&cert));
    lab.gateway_config("gw-1", lab.quic_port, "");
    let mut relay = lab.start_relay();
    let key = create_key(&lab, "schemathesis", &SCOPES.join(","), &[]);
    // A throwaway key of this lab (the secret canary covers real ones).
    let out = std::process::Command::new(&st)
        .arg("run")
        .arg(format!("https://127.0.0.1:{}/v1/openapi.json", api.port))
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--max-examples",
            "25",
            "--generation-deterministic",
            // Not the stateful phase: it follows links from the key list
            // to DELETE /v1/api-keys/{id} and revokes its own key.
            "--phases",
            "coverage,fuzzing",
            "--request-timeout",
            "10",
        ])
        .arg("--tls-verify")
        .arg(&cert.ca)
        .arg("-H")
        .arg(format!("Authorization: Bearer {key}"))
        .current_dir(&lab.dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("Server error"), "{text}");
    // 14 operations of the API's core, 4 of /v1/calls and 9 of /v1/webhooks.
    assert!(text.contains("Tested: 27"), "{text}");
    assert!(!text.contains("Rate limited"), "{text}");
    relay.assert_running();
}

#[test]
fn the_api_binds_a_privileged_port_and_serves_after_the_drop_to_nobody() {
    let lab = Lab::new_public("api-drop", "mode = \"none\"");
    let cert = api::operator_cert(&lab.dir);
    // A privileged port, bound as root before the drop.
    let port = (600..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap();
    let cfg = lab.dir.join("relay.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[privilege]\nstay_root = true\n",
        "[privilege]\nuser = \"nobody\"\ngroups = []\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let mut api = api::enable(&lab, "", Some(&cert));
    let body = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("127.0.0.1:{}", api.port),
        &format!("127.0.0.1:{port}"),
    );
    std::fs::write(&cfg, body).unwrap();
    api.port = port;
    // The service user writes its state; the operator's key stays root's
    // (0600), read before the drop.
    for d in ["relay", "recordings"] {
        std::fs::create_dir_all(lab.dir.join(d)).unwrap();
        let st = std::process::Command::new("chown")
            .args(["-R", "nobody"])
            .arg(lab.dir.join(d))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let key = create_key(&lab, "drop", "devices:read,keys:manage", &[]);
    let st = std::process::Command::new("chown")
        .args(["-R", "nobody"])
        .arg(lab.dir.join("relay"))
        .status()
        .unwrap();
    assert!(st.success());
    let mut relay = lab.start_relay();
    let uid = std::fs::read_to_string(format!("/proc/{}/status", relay.pid()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    assert!(uid.contains("65534"), "{uid}");
    check(&api.get("/v1/devices", &key), 200, "after the drop");
    // The key's last use reaches the registry: the API writes it as
    // nobody, in the sandbox.
    wait_for(Duration::from_secs(5), "last_used written", || {
        let keys = api.get("/v1/api-keys", &key).json();
        keys[0]["last_used"].as_i64().is_some()
    });
    relay.assert_running();
    assert!(relay.log_text().contains("\"user\":\"nobody\""));
}
