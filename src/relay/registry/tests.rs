use super::chain::{GENESIS, Problem};
use super::schema::MIGRATIONS;
use super::tokens::base32;
use super::*;
use rusqlite::Connection;
use std::path::PathBuf;
use std::time::Duration;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vg-reg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn keyed(path: &std::path::Path) -> Registry {
    let mut r = Registry::open(path).unwrap();
    r.set_audit_key(AuditKey::from_bytes(&[5; 32]).unwrap())
        .unwrap();
    r
}

fn version(r: &Registry) -> i64 {
    r.db.pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap()
}

#[test]
fn schema_is_versioned_and_old_registries_upgrade_in_place() {
    let known = MIGRATIONS.len() as i64;
    assert_eq!(version(&Registry::in_memory().unwrap()), known);

    let dir = std::env::temp_dir().join(format!("vg-reg-mig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A registry as releases before versioning left it: the tables,
    // user_version 0, a device and a token in it.
    let path = dir.join("registry.sqlite3");
    {
        let old = Connection::open(&path).unwrap();
        old.execute_batch(MIGRATIONS[0]).unwrap();
        old.execute(
            "INSERT INTO devices (id, enrolled) VALUES ('shop-5', 7)",
            [],
        )
        .unwrap();
        let v: i64 = old
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 0);
    }
    let r = Registry::open(&path).unwrap();
    assert_eq!(version(&r), known);
    assert_eq!(r.devices().unwrap()[0].id, "shop-5", "data kept");
    drop(r);
    // Opening again (the relay, then `relay token create`) is a no-op.
    assert_eq!(version(&Registry::open(&path).unwrap()), known);

    // A registry from a newer release is refused, not half-read.
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", known + 1)
        .unwrap();
    let e = Registry::open(&path).unwrap_err();
    assert!(
        matches!(e, RegistryError::Newer { found, .. } if found == known + 1),
        "{e}"
    );
    assert!(e.to_string().contains("newer than this voxgate"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn rec<'a>(serial: &'a str, spki: &'a [u8; 32], not_after: i64) -> CertRecord<'a> {
    CertRecord {
        serial,
        spki,
        not_before: 100,
        not_after,
        issuer: None,
    }
}

const FRESH: Redeemed = Redeemed { reenroll: false };

#[test]
fn tokens_are_single_use_expiring_and_stored_hashed() {
    let r = Registry::in_memory().unwrap();
    let tok = r
        .create_token("gw-1", false, Duration::from_secs(3600), "shop 12")
        .unwrap();
    assert_eq!(tok.secret.expose().len(), 32);
    assert_eq!(tok.id.len(), 8);
    // Only the hash is stored.
    let stored: Vec<u8> =
        r.db.query_row("SELECT hash FROM tokens", [], |row| row.get(0))
            .unwrap();
    assert_eq!(stored.len(), 32);
    let secret = tok.secret.expose();
    assert!(
        !stored
            .windows(8)
            .any(|w| secret.as_bytes().windows(8).any(|t| t == w))
    );
    let t = now();
    assert_eq!(
        r.redeem("WRONGTOKEN", "gw-1", t).unwrap(),
        Err(TokenRejection::Unknown)
    );
    // Bound to gw-1: no other id may use it.
    assert_eq!(
        r.redeem(secret, "gw-2", t).unwrap(),
        Err(TokenRejection::WrongDevice)
    );
    assert_eq!(r.redeem(secret, "gw-1", t).unwrap(), Ok(FRESH));
    assert_eq!(
        r.redeem(secret, "gw-1", t).unwrap(),
        Err(TokenRejection::Used)
    );
    let short = r
        .create_token("gw-3", false, Duration::from_secs(60), "")
        .unwrap();
    assert_eq!(
        r.redeem(short.secret.expose(), "gw-3", t + 61).unwrap(),
        Err(TokenRejection::Expired)
    );
    // The list shows ids and states, never a secret.
    let list = r.tokens().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|row| !secret.contains(&row.id)));
    assert_eq!(list[1].used.as_ref().map(|u| u.1.as_str()), Some("gw-1"));
    assert_eq!(list[0].state(t), "unused");
    assert_eq!(list[0].state(t + 61), "expired");
}

#[test]
fn one_token_per_id_and_enrolled_ids_need_reenrollment() {
    let r = Registry::in_memory().unwrap();
    let ttl = Duration::from_secs(3600);
    let first = r.create_token("shop-5", false, ttl, "").unwrap();
    // A second token for an id with an unused one is refused.
    let e = r.create_token("shop-5", false, ttl, "").unwrap_err();
    assert!(
        matches!(&e, RegistryError::TokenOutstanding { id, .. } if *id == first.id),
        "{e}"
    );
    assert!(e.to_string().contains("token revoke"), "{e}");
    assert!(matches!(
        r.create_token("Shop 5", false, ttl, ""),
        Err(RegistryError::BadDeviceId(_))
    ));
    let t = now();
    assert_eq!(
        r.redeem(first.secret.expose(), "shop-5", t).unwrap(),
        Ok(FRESH)
    );
    r.record_certificate("shop-5", rec("01", &[1; 32], t + 100), Replace::Grace)
        .unwrap();
    // Enrolled: a plain token is refused at creation...
    let e = r.create_token("shop-5", false, ttl, "").unwrap_err();
    assert!(matches!(e, RegistryError::Enrolled(_)), "{e}");
    assert!(e.to_string().contains("--reenroll"), "{e}");
    // ...and a token of an earlier release (bound to no id) at redemption.
    r.db.execute(
        "INSERT INTO tokens (hash, created, expires) VALUES (?1, ?2, ?3)",
        rusqlite::params![
            ring::digest::digest(&ring::digest::SHA256, b"OLDTOKEN").as_ref(),
            t,
            t + 100
        ],
    )
    .unwrap();
    assert_eq!(
        r.redeem("OLDTOKEN", "shop-5", t).unwrap(),
        Err(TokenRejection::AlreadyEnrolled)
    );
    // A re-enrollment token works once, and says so.
    let again = r.create_token("shop-5", true, ttl, "new box").unwrap();
    assert_eq!(
        r.redeem(again.secret.expose(), "shop-5", t).unwrap(),
        Ok(Redeemed { reenroll: true })
    );
    // Revoked tokens are refused; revoke by token id or by device id.
    let spare = r.create_token("shop-6", false, ttl, "").unwrap();
    assert_eq!(r.revoke_token("shop-6").unwrap(), vec![spare.id.clone()]);
    assert_eq!(
        r.redeem(spare.secret.expose(), "shop-6", t).unwrap(),
        Err(TokenRejection::Revoked)
    );
    assert!(
        r.revoke_token(&spare.id).unwrap().is_empty(),
        "already revoked"
    );
    let other = r.create_token("shop-7", false, ttl, "").unwrap();
    assert_eq!(r.revoke_token(&other.id).unwrap(), vec![other.id.clone()]);
    let events: Vec<String> = r.audit_events().unwrap().into_iter().map(|e| e.0).collect();
    assert_eq!(events.iter().filter(|e| *e == "token_revoked").count(), 2);
}

#[test]
fn devices_certificates_and_revocation() {
    let r = Registry::in_memory().unwrap();
    let t = now();
    r.record_certificate("gw-1", rec("01ab", &[1; 32], t + 200), Replace::Grace)
        .unwrap();
    r.record_certificate("gw-1", rec("02cd", &[2; 32], t + 300), Replace::Grace)
        .unwrap();
    r.record_certificate("gw-2", rec("03ef", &[3; 32], t + 250), Replace::Grace)
        .unwrap();
    let d = r.devices().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[0].id.as_str(), d[0].cert_expires, d[0].serial.as_deref()),
        ("gw-1", Some(t + 300), Some("02cd"))
    );
    assert_eq!(r.current_serial("gw-1").unwrap().as_deref(), Some("02cd"));
    // The renewal superseded 01ab: accepted within the grace only.
    let rows = |at, grace| {
        let mut v: Vec<(String, bool)> = r
            .trust_rows(at, grace)
            .unwrap()
            .into_iter()
            .map(|x| (x.serial, x.superseded_at.is_some()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        rows(t, 60),
        vec![
            ("01ab".into(), true),
            ("02cd".into(), false),
            ("03ef".into(), false)
        ]
    );
    assert_eq!(
        rows(t + 61, 60),
        vec![("02cd".into(), false), ("03ef".into(), false)]
    );
    assert!(!r.is_revoked("gw-1").unwrap());
    assert!(r.revoke("gw-1").unwrap());
    assert!(!r.revoke("gw-1").unwrap());
    assert!(r.is_revoked("gw-1").unwrap());
    assert_eq!(rows(t, 60), vec![("03ef".into(), false)]);
    // A re-enrollment undoes the revocation and replaces every earlier
    // certificate at once.
    r.record_certificate("gw-1", rec("04aa", &[4; 32], t + 300), Replace::AtOnce)
        .unwrap();
    assert!(!r.is_revoked("gw-1").unwrap());
    assert_eq!(
        rows(t, 60),
        vec![("03ef".into(), false), ("04aa".into(), false)]
    );
    assert!(matches!(
        r.revoke("ghost"),
        Err(RegistryError::UnknownDevice(_))
    ));
    let events: Vec<String> = r.audit_events().unwrap().into_iter().map(|e| e.0).collect();
    assert!(events.contains(&"device_revoked".to_string()));
}

#[test]
fn atomically_commits_all_or_nothing() {
    let r = Registry::in_memory().unwrap();
    let tok = r
        .create_token("gw-1", false, Duration::from_secs(3600), "")
        .unwrap();
    let tok = tok.secret;
    let t = now();
    // A failure after the token was redeemed and the device recorded:
    // nothing of it stays, and the token is still good.
    let failed: Result<(), RegistryError> = r.atomically(|tx| {
        assert_eq!(tx.redeem(tok.expose(), "gw-1", t)?, Ok(FRESH));
        tx.record_certificate("gw-1", rec("01", &[1; 32], t + 10), Replace::Grace)?;
        Err(RegistryError::UnknownDevice("simulated failure".into()))
    });
    assert!(failed.is_err());
    assert!(r.devices().unwrap().is_empty());
    let ok: Result<(), RegistryError> = r.atomically(|tx| {
        assert_eq!(tx.redeem(tok.expose(), "gw-1", t)?, Ok(FRESH));
        tx.record_certificate("gw-1", rec("02", &[2; 32], t + 10), Replace::Grace)?;
        tx.audit("enrolled", "", "gw-1", "02")
    });
    ok.unwrap();
    assert_eq!(r.devices().unwrap().len(), 1);
    assert_eq!(
        r.redeem(tok.expose(), "gw-1", t).unwrap(),
        Err(TokenRejection::Used)
    );
    // Nested: a savepoint, undone alone.
    let nested: Result<(), RegistryError> = r.atomically(|tx| {
        tx.audit("kept", "", "", "")?;
        let inner: Result<(), RegistryError> = tx.atomically(|t| {
            t.audit("undone", "", "", "")?;
            Err(RegistryError::Random)
        });
        assert!(inner.is_err());
        Ok(())
    });
    nested.unwrap();
    let events: Vec<String> = r.audit_events().unwrap().into_iter().map(|e| e.0).collect();
    assert!(events.contains(&"kept".to_string()));
    assert!(!events.contains(&"undone".to_string()));
    // The undone row's seq was handed out again: no gap, no fork.
    r.audit("after", "", "", "").unwrap();
    let report = r.verify_audit(None).unwrap();
    assert!(report.ok(), "{report:?}");
}

#[test]
fn base32_rfc4648_vectors() {
    assert_eq!(base32(b"f"), "MY");
    assert_eq!(base32(b"fo"), "MZXQ");
    assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
}

#[test]
fn appends_from_two_handles_chain_as_one() {
    // Two handles on one file: the relay and `relay token create`.
    let dir = scratch("two");
    let path = dir.join("registry.sqlite3");
    let (a, b) = (keyed(&path), keyed(&path));
    for i in 0..10 {
        a.audit("from_a", "", "", &i.to_string()).unwrap();
        b.create_token(&format!("gw-{i}"), false, Duration::from_secs(60), "")
            .unwrap();
        // A transaction of a's that read the head before b's append below
        // would fork the chain; a's head is read inside its transaction.
        a.atomically(|tx| {
            tx.audit("a_batch", "", "", "1")?;
            tx.audit("a_batch", "", "", "2")
        })
        .unwrap();
        b.revoke("ghost").unwrap_err();
    }
    let report = b.verify_audit(None).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.rows, 1 + 40, "genesis and every append");
    assert_eq!(report.head.unwrap().seq, 41);
    // The head the log would show matches.
    assert_eq!(a.log_audit_head().unwrap(), report.head);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_earlier_release_rows_are_chained_once_at_upgrade() {
    let dir = scratch("prechain");
    let path = dir.join("registry.sqlite3");
    {
        let old = Connection::open(&path).unwrap();
        old.execute_batch(MIGRATIONS[0]).unwrap();
        for e in ["token_created", "enrolled", "renewed"] {
            old.execute(
                "INSERT INTO audit (ts, event, device) VALUES (7, ?1, 'shop-5')",
                [e],
            )
            .unwrap();
        }
    }
    // Opened without the key (a reader): nothing chained yet.
    let reader = Registry::open(&path).unwrap();
    assert!(!reader.audit_chained().unwrap());
    assert_eq!(reader.audit_rows(None, None).unwrap()[0].seq, None);
    let r = keyed(&path);
    let rows = r.audit_rows(None, None).unwrap();
    let seqs: Vec<_> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [Some(1), Some(2), Some(3), Some(4)]);
    assert_eq!(rows[0].event, "token_created");
    assert_eq!(rows[3].event, GENESIS);
    assert!(
        rows[3].detail.contains("3 rows of an earlier release"),
        "{}",
        rows[3].detail
    );
    let report = r.verify_audit(None).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.pre_chain.map(|p| p.0), Some(3));
    // A row inserted by hand later is never chained, and reported.
    Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO audit (ts, event, device) VALUES (8, 'enrolled', 'evil')",
            [],
        )
        .unwrap();
    drop(r);
    let r = keyed(&path);
    r.audit("after", "", "", "").unwrap();
    let report = r.verify_audit(None).unwrap();
    assert_eq!(report.problem_count, 1, "{report:?}");
    assert!(
        matches!(&report.problems[0], Problem::Unchained { device, .. } if device == "evil"),
        "{report:?}"
    );
    assert_eq!(report.head.unwrap().seq, 5);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn verify_finds_rows_edited_deleted_or_cut_with_sqlite() {
    let dir = scratch("tamper");
    let path = dir.join("registry.sqlite3");
    let r = keyed(&path);
    for i in 0..9 {
        r.audit("enrolled", "10.0.0.1", &format!("gw-{i}"), "01")
            .unwrap();
    }
    let head = r.log_audit_head().unwrap().unwrap();
    assert_eq!(head.seq, 10);
    assert!(r.verify_audit(Some(head)).unwrap().head_matched);
    let sql = |q: &str| Connection::open(&path).unwrap().execute_batch(q).unwrap();

    sql("UPDATE audit SET device = 'gw-x' WHERE seq = 4");
    let report = r.verify_audit(None).unwrap();
    assert_eq!(report.problem_count, 1, "{report:?}");
    assert!(matches!(
        report.problems[0],
        Problem::Changed { seq: 4, .. }
    ));
    sql("UPDATE audit SET device = 'gw-2' WHERE seq = 4");
    assert!(r.verify_audit(None).unwrap().ok());

    sql("DELETE FROM audit WHERE seq = 6");
    let report = r.verify_audit(None).unwrap();
    assert_eq!(report.problems, [Problem::Missing { from: 6, to: 6 }]);

    sql("DELETE FROM audit WHERE seq >= 8");
    let report = r.verify_audit(Some(head)).unwrap();
    assert!(
        report.problems.contains(&Problem::TailCut {
            have: 7,
            logged: 10
        }),
        "{report:?}"
    );
    // The relay's poll sees the head go back (and warns).
    assert_eq!(r.log_audit_head().unwrap().map(|h| h.seq), Some(7));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_registry_without_the_key_reads_but_does_not_append() {
    let dir = scratch("nokey");
    let r = Registry::open(&dir.join("registry.sqlite3")).unwrap();
    assert!(matches!(
        r.audit("x", "", "", ""),
        Err(RegistryError::NoAuditKey)
    ));
    assert!(matches!(
        r.create_token("gw-1", false, Duration::from_secs(60), ""),
        Err(RegistryError::NoAuditKey)
    ));
    assert!(
        r.audit_events().unwrap().is_empty(),
        "the token rolled back too"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn snapshot_is_one_moment_while_another_connection_writes() {
    let dir = std::env::temp_dir().join(format!("vg-reg-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("registry.sqlite3");
    let live = keyed(&path);
    for i in 0..50 {
        let serial = format!("s{i}");
        live.record_certificate(
            &format!("gw-{i}"),
            rec(&serial, &[1; 32], 1),
            Replace::Grace,
        )
        .unwrap();
    }
    // A writer that keeps committing enrollments, each device with its
    // certificate in one transaction, during the snapshot.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let r = keyed(&path);
            let mut i = 1000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                r.atomically(|r| {
                    let serial = format!("s{i}");
                    r.record_certificate(
                        &format!("live-{i}"),
                        super::devices::CertRecord {
                            serial: &serial,
                            spki: &[2; 32],
                            not_before: 0,
                            not_after: 1,
                            issuer: None,
                        },
                        Replace::Grace,
                    )?;
                    r.audit("enrolled", "", &format!("live-{i}"), "")
                })
                .unwrap();
                i += 1;
            }
            i - 1000
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let mut copies = Vec::new();
    for n in 0..3 {
        let dst = dir.join(format!("copy-{n}.sqlite3"));
        let snap = Registry::snapshot(&path, &dst).unwrap();
        assert_eq!(snap.schema_version, MIGRATIONS.len() as i64);
        assert!(snap.devices >= 50);
        assert!(!dir.join(format!("copy-{n}.sqlite3-wal")).exists());
        copies.push((dst, snap));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written > 0, "the writer never ran");
    for (dst, snap) in copies {
        let copy = Registry::open(&dst).unwrap();
        assert_eq!(copy.check().unwrap(), snap);
        // Every device in the copy has its certificate and its audit line:
        // no transaction is half in it.
        let n: i64 = copy
            .db
            .query_row(
                "SELECT COUNT(*) FROM devices d WHERE d.id LIKE 'live-%' AND (
                   NOT EXISTS (SELECT 1 FROM certificates c WHERE c.device = d.id) OR
                   NOT EXISTS (SELECT 1 FROM audit a WHERE a.device = d.id))",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0, "a torn enrollment in the copy");
    }
    // A missing registry is not created by a snapshot.
    let missing = dir.join("none.sqlite3");
    assert!(Registry::snapshot(&missing, &dir.join("x.sqlite3")).is_err());
    assert!(!missing.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
