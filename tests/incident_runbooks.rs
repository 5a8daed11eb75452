//! Every runbook in docs/INCIDENT.md, run end to end: the test extracts the
//! blocks marked `runbook=NAME` from the document and runs them with bash,
//! in order, against a running relay and real devices, then checks that
//! the incident is over (the stolen box refused within a second and its
//! replacement enrolled under the same id, the leaked token useless).
//!
//! `where=box` blocks run as on another box: `voxgate` on their PATH is a
//! wrapper that gives `voxgate setup` this lab's key directory, machine id
//! and config path (what a real box has at the default places); every other
//! command is the real binary, unchanged.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use voxgate_testkit::enroll::{Setup, audit, secret_file, token};
use voxgate_testkit::lab::Lab;
use voxgate_testkit::runbook::{Runner, runbook};
use voxgate_testkit::session::{Session, runtime};

#[test]
fn stolen_box() {
    let lab = Lab::new("runbook-stolen", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let device = "shop-12";
    let stolen_cfg = Setup::new(&lab, device).run();
    let replacement = lab.dir.join("replacement");
    let runner = Runner::new(&lab, device, &replacement);
    let blocks = runbook("stolen-box");
    assert_eq!(
        blocks.iter().map(|b| b.place.as_str()).collect::<Vec<_>>(),
        ["relay", "box", "relay"]
    );
    let rt = runtime();
    let live = rt
        .block_on(Session::open_enrolled(&lab, &stolen_cfg, device))
        .expect("the stolen box is online");
    // The first block cuts it off: within a second.
    let t0 = Instant::now();
    let cut = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            rt.block_on(live.closed_within(Duration::from_secs(5)))
                .map(|why| (t0.elapsed(), why))
        });
        let out = runner.run(&blocks[0]);
        let audit_text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(audit_text.contains("device_revoked"), "{audit_text}");
        waiter.join().unwrap()
    });
    let (after, why) = cut.expect("the stolen box's session stayed open");
    println!("stolen box cut after {after:?}: {why}");
    assert!(after < Duration::from_millis(1_200), "took {after:?}");
    assert!(why.contains("revoked"), "{why}");
    // The replacement enrolls under the same id; the relay lists it.
    runner.run(&blocks[1]);
    let listed = runner.run(&blocks[2]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let line = listed
        .lines()
        .find(|l| l.starts_with(device))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains("active"), "{line}");
    rt.block_on(async {
        Session::open_enrolled(&lab, &replacement.with_extension("toml"), device)
            .await
            .expect("the replacement connects");
        let e = Session::open_enrolled(&lab, &stolen_cfg, device)
            .await
            .err()
            .expect("the stolen box connected again");
        assert!(e.contains("revoked"), "{e}");
    });
    let log = audit(&lab);
    assert!(
        log.iter()
            .any(|e| e.0 == "reenrolled" && e.2 == device && e.3.contains("revocation undone")),
        "{log:?}"
    );
    relay.stop();
}

#[test]
fn leaked_token() {
    let lab = Lab::new("runbook-token", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let device = "shop-3";
    let leaked = token(&lab, device, Some(3600));
    let real_box = lab.dir.join("real-box");
    let runner = Runner::new(&lab, device, &real_box);
    for block in runbook("leaked-token") {
        assert_eq!(block.place, "relay");
        let out = runner.run(&block);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains(&leaked), "a secret in the runbook's output");
    }
    // The leaked token enrolls nothing.
    let (o, _) = Setup::new(&lab, device)
        .token_file(&secret_file(&lab.dir, "leaked", &leaked))
        .dir(&lab.dir.join("attacker"))
        .config_out(&lab.dir.join("attacker.toml"))
        .output();
    assert!(!o.status.success(), "the leaked token enrolled a box");
    // The new one, from the runbook's token file, does.
    let new_token = lab.dir.join("runbook.token");
    assert_eq!(
        std::fs::metadata(&new_token).unwrap().permissions().mode() & 0o777,
        0o600
    );
    Setup::new(&lab, device).token_file(&new_token).run();
    let log = audit(&lab);
    assert!(
        log.iter()
            .any(|e| e.0 == "enroll_rejected" && e.2 == device && e.3 == "token revoked"),
        "{log:?}"
    );
    assert!(log.iter().any(|e| e.0 == "token_revoked" && e.2 == device));
    relay.stop();
}
