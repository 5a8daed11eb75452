//! The relay's audit log against a real relay: enrollments (one refused),
//! tokens and a revocation from other processes show in `voxgate relay
//! audit` (text and JSON, filtered by device and time), and `--verify`
//! passes. Then the registry is tampered with through the `sqlite3` tool: an
//! edited row, a deleted row, rows cut from the end (found with the head the
//! relay logged) and a row inserted by hand are each reported, with a
//! non-zero exit; a running relay warns when the head goes back.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use voxgate_testkit::cmd::{run, show, stderr, stdout};
use voxgate_testkit::enroll::{Setup, secret_file};
use voxgate_testkit::lab::{Lab, bin, wait_for};

fn relay_audit(lab: &Lab, args: &[&str]) -> Output {
    Command::new(bin())
        .args(["relay", "audit", "-c"])
        .arg(lab.dir.join("relay.toml"))
        .args(args)
        .output()
        .unwrap()
}

/// `relay audit ARGS`, which must succeed; its standard output.
fn audit_ok(lab: &Lab, args: &[&str]) -> String {
    let out = relay_audit(lab, args);
    assert!(out.status.success(), "relay audit {args:?}: {}", show(&out));
    stdout(&out)
}

fn json_rows(lab: &Lab, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    audit_ok(lab, &a)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn sqlite(db: &Path, sql: &str) {
    let out = run(
        Command::new("sqlite3")
            .args(["-cmd", ".timeout 5000"])
            .arg(db)
            .arg(sql),
        "sqlite3",
    );
    assert!(out.status.success(), "sqlite3 {sql}: {}", show(&out));
}

/// The last `audit_head_seq`:`audit_head` in the relay's JSON log.
fn logged_head(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            Some(format!(
                "{}:{}",
                v["audit_head_seq"].as_u64()?,
                v["audit_head"].as_str()?
            ))
        })
        .next()
}

fn unix_now() -> i64 {
    voxgate::relay::registry::now()
}

/// Replace the registry with `pristine` (the relay is stopped).
fn restore(reg: &Path, pristine: &Path) {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(PathBuf::from(format!("{}{suffix}", reg.display())));
    }
    std::fs::copy(pristine, reg).unwrap();
}

/// `--verify` fails; its standard output and error.
fn verify_fails(lab: &Lab, args: &[&str]) -> (String, String) {
    let mut a = vec!["--verify"];
    a.extend_from_slice(args);
    let out = relay_audit(lab, &a);
    assert!(
        !out.status.success(),
        "--verify should fail: {}",
        show(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("does not verify") && err.contains("docs/INCIDENT.md"),
        "{err}"
    );
    (stdout(&out), err)
}

#[test]
fn audit_log_lists_filters_verifies_and_tampering_is_reported() {
    let lab = Lab::new("audit", "mode = \"none\"");
    let mut relay = lab.start_relay();
    for id in ["gw-a", "gw-b"] {
        Setup::new(&lab, id)
            .args(["--backend", "sealed-file"])
            .run();
    }
    let wrong = secret_file(&lab.dir, "wrong.token", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let (out, _) = Setup::new(&lab, "gw-c")
        .token_file(&wrong)
        .args(["--backend", "sealed-file"])
        .output();
    assert!(!out.status.success(), "a wrong token enrolled");
    // The revocation falls in a later second than everything before it.
    let cut = unix_now() + 1;
    wait_for(Duration::from_secs(3), "the next second", || {
        unix_now() >= cut
    });
    let out = Command::new(bin())
        .args(["relay", "revoke", "-c"])
        .arg(lab.dir.join("relay.toml"))
        .arg("gw-b")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));

    // Text: a header, then one aligned line per row, ISO-8601 UTC times.
    let text = audit_ok(&lab, &[]);
    let lines: Vec<&str> = text.lines().collect();
    let event_col = lines[0].find("event").unwrap();
    for l in &lines[1..] {
        let b = l.as_bytes();
        assert!(
            l.len() > 20 && b[4] == b'-' && b[10] == b'T' && b[19] == b'Z',
            "{l}"
        );
        let event = l.split_whitespace().nth(2).unwrap();
        assert_eq!(l.find(event), Some(event_col), "not aligned:\n{text}");
    }
    let has = |event: &str, device: &str| {
        lines.iter().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.get(2) == Some(&event) && w.get(3) == Some(&device)
        })
    };
    for (event, device) in [
        ("audit_chain_started", "-"),
        ("token_created", "gw-a"),
        ("enrolled", "gw-a"),
        ("enrolled", "gw-b"),
        ("enroll_rejected", "gw-c"),
        ("device_revoked", "gw-b"),
    ] {
        assert!(has(event, device), "no {event} {device}:\n{text}");
    }

    // JSON: one object per line, the chain's seq in order.
    let rows = json_rows(&lab, &[]);
    assert_eq!(rows.len(), lines.len() - 1);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["seq"].as_u64(), Some(i as u64 + 1), "{r}");
        assert!(r["ts"].as_i64().is_some() && r["time"].as_str().unwrap().ends_with('Z'));
    }
    let find = |event: &str, device: &str| {
        rows.iter()
            .find(|r| r["event"] == event && r["device"] == device)
            .unwrap_or_else(|| panic!("no {event} {device}"))
    };
    let enrolled_a = find("enrolled", "gw-a");
    assert_eq!(enrolled_a["source"], "127.0.0.1");
    assert_eq!(find("enroll_rejected", "gw-c")["detail"], "unknown token");

    // --device
    let b = json_rows(&lab, &["--device", "gw-b"]);
    assert!(b.iter().all(|r| r["device"] == "gw-b"), "{b:?}");
    let events: Vec<&str> = b.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["token_created", "enrolled", "device_revoked"]);

    // --since: Unix time, a UTC time, an age; a bad one is refused.
    let since_cut = json_rows(&lab, &["--since", &cut.to_string()]);
    assert!(since_cut.iter().any(|r| r["event"] == "device_revoked"));
    assert!(
        since_cut.iter().all(|r| r["event"] != "enrolled"),
        "{since_cut:?}"
    );
    let iso = voxgate::relay::registry::chain::iso8601(cut);
    assert_eq!(json_rows(&lab, &["--since", &iso]), since_cut);
    assert_eq!(json_rows(&lab, &["--since", "1h"]).len(), rows.len());
    assert_eq!(
        json_rows(&lab, &["--since", "2000-01-01"]).len(),
        rows.len()
    );
    let later = (unix_now() + 3_600).to_string();
    assert!(json_rows(&lab, &["--since", &later]).is_empty());
    let out = relay_audit(&lab, &["--since", &later]);
    assert!(
        out.status.success() && stdout(&out).is_empty(),
        "{}",
        show(&out)
    );
    let out = relay_audit(&lab, &["--since", "last tuesday"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not a time"), "{}", show(&out));

    // --verify passes; the head it reports is the one the relay logged
    // (the revocation was appended by another process: the relay's poll
    // logs it).
    let verified = audit_ok(&lab, &["--verify"]);
    assert!(verified.contains("OK: every row verifies"), "{verified}");
    let head = verified
        .split("head ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    let head_seq: u64 = head.split(':').next().unwrap().parse().unwrap();
    assert_eq!(head_seq, rows.len() as u64);
    wait_for(Duration::from_secs(5), "the relay to log the head", || {
        logged_head(&relay.log_text()).as_deref() == Some(head.as_str())
    });
    let logged = logged_head(&relay.log_text()).unwrap();
    let ok = audit_ok(&lab, &["--verify", "--head", &logged]);
    assert!(ok.contains("is in the chain"), "{ok}");
    relay.stop();

    let reg = lab.dir.join("relay/registry.sqlite3");
    let pristine = lab.dir.join("pristine.sqlite3");
    sqlite(&reg, &format!(".backup '{}'", pristine.display()));

    // An edited row: reported by its seq.
    let seq_a = enrolled_a["seq"].as_u64().unwrap();
    sqlite(
        &reg,
        &format!("UPDATE audit SET detail = 'forged' WHERE seq = {seq_a}"),
    );
    let (out, err) = verify_fails(&lab, &[]);
    assert!(out.contains(&format!("BROKEN: seq {seq_a} (")), "{out}");
    assert!(out.contains("changed after it was written"), "{out}");
    assert!(err.contains(&format!("the first: seq {seq_a} ")), "{err}");

    // A deleted row: a gap.
    restore(&reg, &pristine);
    audit_ok(&lab, &["--verify"]);
    let gone = seq_a + 1;
    sqlite(&reg, &format!("DELETE FROM audit WHERE seq = {gone}"));
    let (out, _) = verify_fails(&lab, &[]);
    assert!(
        out.contains(&format!("BROKEN: seq {gone}: missing")),
        "{out}"
    );

    // The last two rows cut: invisible to the chain alone, found with the
    // head the relay logged.
    restore(&reg, &pristine);
    sqlite(
        &reg,
        &format!("DELETE FROM audit WHERE seq > {}", head_seq - 2),
    );
    let alone = audit_ok(&lab, &["--verify"]);
    assert!(alone.contains("--head"), "{alone}");
    let (out, _) = verify_fails(&lab, &["--head", &logged]);
    assert!(
        out.contains(&format!(
            "BROKEN: seq {}..{head_seq}: cut from the end",
            head_seq - 1
        )),
        "{out}"
    );

    // A row inserted by hand.
    restore(&reg, &pristine);
    sqlite(
        &reg,
        "INSERT INTO audit (ts, event, device) VALUES (1, 'enrolled', 'gw-evil')",
    );
    let (out, _) = verify_fails(&lab, &[]);
    assert!(out.contains("inserted outside voxgate"), "{out}");
    assert!(out.contains("gw-evil"), "{out}");

    // A running relay warns when rows are cut under it.
    restore(&reg, &pristine);
    let relay = lab.start_relay();
    wait_for(Duration::from_secs(5), "the head at start", || {
        logged_head(&relay.log_text()).as_deref() == Some(logged.as_str())
    });
    sqlite(&reg, &format!("DELETE FROM audit WHERE seq = {head_seq}"));
    wait_for(Duration::from_secs(5), "the relay's warning", || {
        relay.log_text().contains("the audit log's head went back")
    });
}
