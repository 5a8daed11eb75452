//! The chain's unit tests: MACs, and the verifier on edited, deleted, cut
//! and unchained rows.

use super::*;

fn key(b: u8) -> AuditKey {
    AuditKey::from_bytes(&[b; 32]).unwrap()
}

/// (seq, ts, event, device, mac) rows chained with `k`.
fn chain_of(k: &AuditKey, n: u64) -> Vec<(u64, i64, String, String, [u8; 32])> {
    let mut prev = ZERO;
    (1..=n)
        .map(|seq| {
            let (event, device) = (format!("e{seq}"), format!("gw-{seq}"));
            let f = Fields {
                seq,
                ts: 1_000 + seq as i64,
                event: &event,
                source: "10.0.0.1",
                device: &device,
                detail: "d",
            };
            prev = mac(k, &prev, &f);
            (seq, f.ts, event, device, prev)
        })
        .collect()
}

fn verify(
    k: &AuditKey,
    rows: &[(u64, i64, String, String, [u8; 32])],
    logged: Option<Head>,
) -> Report {
    let mut v = Verifier::new(k, logged);
    for (seq, ts, event, device, m) in rows {
        v.chained(&StoredRow {
            fields: Fields {
                seq: *seq,
                ts: *ts,
                event,
                source: "10.0.0.1",
                device,
                detail: "d",
            },
            mac: Some(&m[..]),
        });
    }
    v.finish()
}

#[test]
fn mac_covers_every_field_the_order_and_the_predecessor() {
    let k = key(7);
    let f = Fields {
        seq: 5,
        ts: 99,
        event: "enrolled",
        source: "10.0.0.1",
        device: "gw-1",
        detail: "01ab",
    };
    let m = mac(&k, &ZERO, &f);
    assert_eq!(m, mac(&k, &ZERO, &f), "deterministic");
    for other in [
        Fields { seq: 6, ..f },
        Fields { ts: 100, ..f },
        Fields {
            event: "renewed",
            ..f
        },
        Fields { source: "", ..f },
        Fields {
            device: "gw-2",
            ..f
        },
        Fields {
            detail: "01ac",
            ..f
        },
        // The length prefixes: moving a byte between fields changes it.
        Fields {
            device: "gw-10",
            detail: "1ab",
            ..f
        },
    ] {
        assert_ne!(mac(&k, &ZERO, &other), m, "{other:?}");
    }
    assert_ne!(mac(&k, &[1; 32], &f), m, "chained to its predecessor");
    assert_ne!(mac(&key(8), &ZERO, &f), m, "keyed");
}

#[test]
fn an_intact_chain_verifies_and_matches_its_logged_head() {
    let k = key(1);
    let rows = chain_of(&k, 20);
    let r = verify(&k, &rows, None);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.rows, 20);
    let head = r.head.unwrap();
    assert_eq!((head.seq, head.mac), (20, rows[19].4));
    let r = verify(&k, &rows, Some(head));
    assert!(r.ok() && r.head_matched, "{r:?}");
    // An older logged head is fine too: rows were appended since.
    let older = Head {
        seq: 12,
        mac: rows[11].4,
    };
    assert!(verify(&k, &rows, Some(older)).ok());
    // With another key, every row fails.
    let r = verify(&key(2), &rows, None);
    assert_eq!(r.problem_count, 20);
    assert!(matches!(r.problems[0], Problem::Changed { seq: 1, .. }));
}

#[test]
fn an_edited_row_is_reported_alone() {
    let k = key(1);
    let mut rows = chain_of(&k, 10);
    rows[6].3 = "gw-evil".into();
    let r = verify(&k, &rows, None);
    assert_eq!(r.problem_count, 1, "{r:?}");
    assert_eq!(
        r.problems[0],
        Problem::Changed {
            seq: 7,
            ts: 1_007,
            event: "e7".into(),
            device: "gw-evil".into()
        }
    );
    assert!(r.problems[0].to_string().contains("seq 7"));
    // Renumbering to hide a gap breaks every renumbered row.
    let mut rows = chain_of(&k, 10);
    rows.remove(3);
    for r in &mut rows[3..] {
        r.0 -= 1;
    }
    let r = verify(&k, &rows, None);
    assert_eq!(r.problem_count, 6, "{r:?}");
    // A MAC replaced by hand: that row and its successor.
    let mut rows = chain_of(&k, 10);
    rows[2].4 = [9; 32];
    let r = verify(&k, &rows, None);
    let seqs: Vec<_> = r.problems.iter().filter_map(Problem::seq).collect();
    assert_eq!(seqs, [3, 4]);
}

#[test]
fn deleted_rows_leave_a_gap_and_a_cut_tail_shows_against_the_log() {
    let k = key(1);
    let rows = chain_of(&k, 10);
    let mut gap = rows.clone();
    gap.drain(3..5); // seq 4 and 5
    let r = verify(&k, &gap, None);
    assert_eq!(r.problems, [Problem::Missing { from: 4, to: 5 }]);
    assert!(r.problems[0].to_string().contains("seq 4..5: missing"));
    let mut first = rows.clone();
    first.remove(0);
    assert_eq!(
        verify(&k, &first, None).problems,
        [Problem::Missing { from: 1, to: 1 }]
    );

    let logged = Head {
        seq: 10,
        mac: rows[9].4,
    };
    let cut = &rows[..7];
    assert!(verify(&k, cut, None).ok(), "invisible without the log");
    let r = verify(&k, cut, Some(logged));
    assert_eq!(
        r.problems,
        [Problem::TailCut {
            have: 7,
            logged: 10
        }]
    );
    assert_eq!(
        verify(&k, &[], Some(logged)).problems,
        [Problem::TailCut {
            have: 0,
            logged: 10
        }]
    );
    // Rows cut, then as many appended again by a relay: the head at
    // the logged seq differs.
    let mut rewritten = chain_of(&k, 12);
    rewritten[9].4 = [3; 32];
    let r = verify(&k, &rewritten, Some(logged));
    assert!(
        r.problems.contains(&Problem::HeadDiffers { seq: 10 }),
        "{r:?}"
    );
}

#[test]
fn unchained_rows_and_the_pre_chain_are_reported() {
    let k = key(1);
    let mut v = Verifier::new(&k, None);
    let mut prev = ZERO;
    for (seq, event) in [(1, "enrolled"), (2, "renewed"), (3, GENESIS), (4, "x")] {
        let f = Fields {
            seq,
            ts: 50 + seq as i64,
            event,
            source: "",
            device: "",
            detail: "",
        };
        prev = mac(&k, &prev, &f);
        v.chained(&StoredRow {
            fields: f,
            mac: Some(&prev),
        });
    }
    let f = Fields {
        seq: 0,
        ts: 60,
        event: "device_revoked",
        source: "",
        device: "gw-9",
        detail: "",
    };
    v.unchained(17, &f);
    let r = v.finish();
    assert_eq!(r.pre_chain, Some((2, 53)));
    assert_eq!(r.problem_count, 1);
    assert!(matches!(
        r.problems[0],
        Problem::Unchained { rowid: 17, .. }
    ));
    assert!(
        r.problems[0]
            .to_string()
            .contains("inserted outside voxgate")
    );
}

#[test]
fn head_parses_from_the_log_fields() {
    let h = Head {
        seq: 42,
        mac: [0xab; 32],
    };
    let text = h.to_string();
    assert_eq!(text, format!("42:{}", "ab".repeat(32)));
    assert_eq!(text.parse::<Head>(), Ok(h));
    for bad in ["42", "x:ab", "42:abc", &format!("42:{}", "zz".repeat(32))] {
        assert!(bad.parse::<Head>().is_err(), "{bad}");
    }
    assert_eq!(iso8601(1_796_083_200), "2026-12-01T00:00:00Z");
}
