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

#[test]
fn tokens_are_single_use_expiring_and_stored_hashed() {
    let r = Registry::in_memory().unwrap();
    let tok = r
        .create_token(Duration::from_secs(3600), "shop 12")
        .unwrap();
    assert_eq!(tok.expose().len(), 32);
    // Only the hash is stored.
    let stored: Vec<u8> =
        r.db.query_row("SELECT hash FROM tokens", [], |row| row.get(0))
            .unwrap();
    assert_eq!(stored.len(), 32);
    assert!(
        !stored
            .windows(8)
            .any(|w| tok.expose().as_bytes().windows(8).any(|t| t == w))
    );
    let t = now();
    assert_eq!(
        r.redeem("WRONGTOKEN", "gw-1", t).unwrap(),
        Err(TokenRejection::Unknown)
    );
    assert_eq!(r.redeem(tok.expose(), "gw-1", t).unwrap(), Ok(()));
    assert_eq!(
        r.redeem(tok.expose(), "gw-2", t).unwrap(),
        Err(TokenRejection::Used)
    );
    let short = r.create_token(Duration::from_secs(60), "").unwrap();
    assert_eq!(
        r.redeem(short.expose(), "gw-3", t + 61).unwrap(),
        Err(TokenRejection::Expired)
    );
}

#[test]
fn devices_certificates_and_revocation() {
    let r = Registry::in_memory().unwrap();
    r.record_certificate("gw-1", "01ab", 100, 200).unwrap();
    r.record_certificate("gw-1", "02cd", 150, 300).unwrap();
    r.record_certificate("gw-2", "03ef", 100, 250).unwrap();
    let d = r.devices().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!((d[0].id.as_str(), d[0].cert_expires), ("gw-1", Some(300)));
    assert!(!r.is_revoked("gw-1").unwrap());
    assert!(r.revoke("gw-1").unwrap());
    assert!(!r.revoke("gw-1").unwrap());
    assert!(r.is_revoked("gw-1").unwrap());
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
    let tok = r.create_token(Duration::from_secs(3600), "").unwrap();
    let t = now();
    // A failure after the token was redeemed and the device recorded:
    // nothing of it stays, and the token is still good.
    let failed: Result<(), RegistryError> = r.atomically(|tx| {
        assert_eq!(tx.redeem(tok.expose(), "gw-1", t)?, Ok(()));
        tx.record_certificate("gw-1", "01", t, t + 10)?;
        Err(RegistryError::UnknownDevice("simulated failure".into()))
    });
    assert!(failed.is_err());
    assert!(r.devices().unwrap().is_empty());
    let ok: Result<(), RegistryError> = r.atomically(|tx| {
        assert_eq!(tx.redeem(tok.expose(), "gw-1", t)?, Ok(()));
        tx.record_certificate("gw-1", "02", t, t + 10)?;
        tx.audit("enrolled", "", "gw-1", "02")
    });
    ok.unwrap();
    assert_eq!(r.devices().unwrap().len(), 1);
    assert_eq!(
        r.redeem(tok.expose(), "gw-2", t).unwrap(),
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

#[test]
fn snapshot_is_one_moment_while_another_connection_writes() {
    let dir = std::env::temp_dir().join(format!("vg-reg-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("registry.sqlite3");
    let live = Registry::open(&path).unwrap();
    for i in 0..50 {
        live.record_certificate(&format!("gw-{i}"), &format!("s{i}"), 0, 1)
            .unwrap();
    }
    // A writer that keeps committing enrollments, each device with its
    // certificate in one transaction, during the snapshot.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let r = Registry::open(&path).unwrap();
            let mut i = 1000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                r.atomically(|r| {
                    r.record_certificate(&format!("live-{i}"), &format!("s{i}"), 0, 1)?;
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
