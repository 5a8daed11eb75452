use super::schema::MIGRATIONS;
use super::tokens::base32;
use super::*;
use rusqlite::Connection;
use std::time::Duration;

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
}

#[test]
fn base32_rfc4648_vectors() {
    assert_eq!(base32(b"f"), "MY");
    assert_eq!(base32(b"fo"), "MZXQ");
    assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
}
