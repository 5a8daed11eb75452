use super::*;

const MID: &str = "5f3c0a1e9b8d4c7e8a6b2d1f0e9c8b7a";

#[test]
fn ha1_matches_the_rfc_7616_example() {
    // RFC 7616 §3.9.1: Mufasa / http-auth@example.org / Circle of Life.
    let e = PhoneEntry::derive("Mufasa", "http-auth@example.org", "Circle of Life", 0);
    assert_eq!(
        e.ha1_md5,
        hex(&md5::compute(b"Mufasa:http-auth@example.org:Circle of Life").0)
    );
    assert_eq!(
        e.ha1_sha256,
        "7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232"
    );
    assert!(!format!("{e:?}").contains(&e.ha1_md5));
}

#[test]
fn add_save_load_remove_and_the_password_is_never_stored() {
    let dir = std::env::temp_dir().join(format!("vx-phones-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("phones.sealed");
    let m = Material::new(MID, None).unwrap();
    let mut s = PhoneStore::load(&path, &m, "gw-1").unwrap();
    assert!(s.is_empty());
    let p201 = s.add("201", 1).unwrap();
    let p202 = s.add("202", 2).unwrap();
    assert_eq!(p201.len(), 22);
    assert_ne!(*p201, *p202);
    assert!(matches!(s.add("201", 3), Err(PhonesError::Exists(_))));
    for bad in ["9", "900", "2a1", "123456789"] {
        assert!(
            matches!(s.add(bad, 3), Err(PhonesError::BadExtension(_))),
            "{bad}"
        );
    }
    s.save(&path, &m).unwrap();
    let raw = std::fs::read(&path).unwrap();
    for secret in [p201.as_bytes(), s.get("201").unwrap().ha1_md5.as_bytes()] {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret),
            "stored in clear"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut back = PhoneStore::load(&path, &m, "gw-1").unwrap();
    assert_eq!(back, s);
    assert_eq!(
        back.get("201").unwrap().ha1_sha256,
        PhoneEntry::derive("201", "gw-1", &p201, 0).ha1_sha256
    );
    back.remove("201").unwrap();
    assert!(matches!(back.remove("201"), Err(PhonesError::Missing(_))));
    back.save(&path, &m).unwrap();
    assert_eq!(PhoneStore::load(&path, &m, "gw-1").unwrap().len(), 1);

    // Another realm, another box, a readable file, a flipped byte: refused clearly.
    let e = PhoneStore::load(&path, &m, "other")
        .unwrap_err()
        .to_string();
    assert!(e.contains("realm") && e.contains("gw-1"), "{e}");
    let other = Material::new("00000000000000000000000000000001", None).unwrap();
    let e = PhoneStore::load(&path, &other, "gw-1")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("another box") && e.contains("voxgate phones add"),
        "{e}"
    );
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(
        PhoneStore::load(&path, &m, "gw-1")
            .unwrap_err()
            .to_string()
            .contains("modified")
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        PhoneStore::load(&path, &m, "gw-1"),
        Err(PhonesError::Exposed { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rotate_replaces_both_digests_of_one_or_every_extension() {
    let mut s = PhoneStore::new("gw-1");
    let p201 = s.add("201", 11).unwrap();
    let p202 = s.add("202", 12).unwrap();
    let before = s.clone();

    // One extension: both HA1s follow the new password, `created` stays.
    let n201 = s.rotate("201").unwrap();
    assert_eq!(n201.len(), 22);
    assert_ne!(*n201, *p201);
    assert_eq!(
        *s.get("201").unwrap(),
        PhoneEntry::derive("201", "gw-1", &n201, 11)
    );
    assert_ne!(
        s.get("201").unwrap().ha1_md5,
        before.get("201").unwrap().ha1_md5
    );
    assert_ne!(
        s.get("201").unwrap().ha1_sha256,
        before.get("201").unwrap().ha1_sha256
    );
    assert_eq!(s.get("202"), before.get("202"), "the others are untouched");
    assert_eq!(before.changed_in(&s), ["201"]);

    // Unknown: refused, nothing changes.
    let kept = s.clone();
    assert!(matches!(s.rotate("299"), Err(PhonesError::Missing(e)) if e == "299"));
    assert_eq!(s, kept);

    // Every extension, each once, in order, each with its own password.
    let all = s.rotate_all().unwrap();
    let exts: Vec<&str> = all.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(exts, ["201", "202"]);
    assert_ne!(*all[0].1, *all[1].1);
    for (ext, pw) in &all {
        let created = kept.get(ext).unwrap().created;
        assert_eq!(
            *s.get(ext).unwrap(),
            PhoneEntry::derive(ext, "gw-1", pw, created)
        );
        assert_ne!(**pw, *n201);
        assert_ne!(**pw, *p202);
    }
    assert_eq!(kept.changed_in(&s), ["201", "202"]);
    assert!(s.changed_in(&s).is_empty());
    // A removed extension counts as changed; an added one does not.
    let mut fewer = s.clone();
    fewer.remove("202").unwrap();
    fewer.add("203", 13).unwrap();
    assert_eq!(s.changed_in(&fewer), ["202"]);
    assert!(PhoneStore::new("gw-1").rotate_all().unwrap().is_empty());
}

#[test]
fn a_new_store_takes_its_directorys_owner() {
    use std::os::unix::fs::MetadataExt;
    let dir = std::env::temp_dir().join(format!("vx-phones-own-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The service user's state directory (the tests run as root; as
    // another user the chown is not allowed and the test says so).
    if std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).is_err() {
        eprintln!("not root: cannot give the directory away; checked as root in CI");
        return;
    }
    let path = dir.join("phones.sealed");
    let mut s = PhoneStore::new("gw-1");
    s.add("201", 1).unwrap();
    s.save(&path, &Material::new(MID, None).unwrap()).unwrap();
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o600));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn save_replaces_the_file_whole_and_the_stamp_changes() {
    let dir = std::env::temp_dir().join(format!("vx-phones-rot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("phones.sealed");
    let m = Material::new(MID, None).unwrap();
    assert_eq!(Stamp::of(&path).unwrap(), None);
    let mut s = PhoneStore::new("gw-1");
    s.add("201", 1).unwrap();
    s.save(&path, &m).unwrap();
    let first = Stamp::of(&path).unwrap().unwrap();
    assert_eq!(
        Stamp::of(&path).unwrap(),
        Some(first),
        "stable while unchanged"
    );
    // A stale temp file from a crashed run is no obstacle.
    std::fs::write(dir.join("phones.sealed.tmp"), b"half a store").unwrap();
    let _lock = StoreLock::acquire(&path).unwrap();
    s.rotate("201").unwrap();
    s.save(&path, &m).unwrap();
    let second = Stamp::of(&path).unwrap().unwrap();
    assert_ne!(first, second);
    assert_eq!(PhoneStore::load(&path, &m, "gw-1").unwrap(), s);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    // The stale file is left alone; no temp file of this save remains.
    assert_eq!(
        names,
        ["phones.sealed", "phones.sealed.tmp"],
        "no temp file left"
    );
    assert_eq!(store_dir(Path::new("phones.sealed")), Path::new("."));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn parse_rejects_malformed_payloads() {
    let h = "a".repeat(64);
    let m = "b".repeat(32);
    assert!(PhoneStore::parse(format!("VXPHONES1\nrealm r\n201 {h} {m} 5\n").as_bytes()).is_ok());
    for bad in [
        String::new(),
        "VXPHONES1\n".into(),
        "VXPHONES1\nrealm \n".into(),
        "VXPHONES1\r\nrealm r\n".into(),
        "VXPHONES1\nrealm r\r\n".into(),
        format!("VXPHONES1\nrealm r\n201 {h} {m}\n"),
        format!("VXPHONES1\nrealm r\n201 {h} {} 5\n", "B".repeat(32)),
        format!("VXPHONES1\nrealm r\n900 {h} {m} 5\n"),
        format!("VXPHONES1\nrealm r\n201 {h} {m} 5\n201 {h} {m} 6\n"),
        format!("VXPHONES1\nrealm r\n201 {h} {m} x\n"),
    ] {
        assert!(PhoneStore::parse(bad.as_bytes()).is_err(), "{bad:?}");
    }
    assert!(PhoneStore::parse(&[0xff, 0xfe]).is_err());
}
