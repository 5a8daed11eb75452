//! The clock: setup stops on an unsynchronized one unless told to go on;
//! and `--sip-listen` values refused before anything is done.

use super::*;

/// [`enroll_args`] with the clock read from a file saying it is not
/// synchronized.
fn unsynchronized(lab: &Lab, id: &str, relay: &str, fp: &str, extra: &[&str]) -> Vec<String> {
    let mut args = enroll_args(lab, id, relay, fp, extra);
    let f = lab.dir.join(format!("clock-{id}.txt"));
    std::fs::write(&f, "NTPSynchronized=no\n").unwrap();
    let i = args.iter().position(|a| a == "--clock-source").unwrap();
    args[i + 1] = format!("file:{}", f.display());
    args
}

/// An unsynchronized clock: `--yes` stops there with what to do, and
/// nothing is created; `--ignore-clock` goes on (here to a relay that is
/// not there); on a terminal setup asks, and the default is no. A bad
/// `--sip-listen` is refused before anything is done. No alsa-lib noise
/// on stderr (the system's ALSA: no sound card here).
#[test]
fn an_unsynchronized_clock_stops_setup_unless_the_technician_goes_on() {
    let lab = Lab::new("setup-clock", "mode = \"none\"");
    let id = "gw-clock";
    let fp = format!("SHA256:{}", "ab".repeat(32));
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let relay = sink.local_addr().unwrap().to_string();
    let tok = secret_file(&lab.dir, "c.token", "AAAABBBBCCCCDDDDEEEEFFFFGGGGHHHH");
    let run = |extra: &[&str]| {
        std::process::Command::new(bin())
            .args(unsynchronized(
                &lab,
                id,
                &relay,
                &fp,
                &["--skip-audio", "--yes"],
            ))
            .arg("--token-file")
            .arg(&tok)
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    let all = format!("{}{e}", String::from_utf8_lossy(&o.stdout));
    assert!(
        all.contains("FAIL  clock: the clock is not synchronized"),
        "{all}"
    );
    assert!(
        e.contains("setup stopped: the clock is not synchronized") && e.contains("--ignore-clock"),
        "{e}"
    );
    assert!(!all.contains("DNS:"), "went on past the clock: {all}");
    assert!(!e.contains("ALSA lib"), "{e}");
    nothing_installed(&lab, id);
    assert!(!pending(&lab, id).exists());

    let o = run(&["--ignore-clock"]);
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(!o.status.success());
    assert!(
        all.contains("WARN  going on with the clock not synchronized (--ignore-clock)"),
        "{all}"
    );
    assert!(all.contains("is unreachable: no answer"), "{all}");
    assert!(!all.contains("ALSA lib"), "{all}");
    nothing_installed(&lab, id);

    // A bad --sip-listen: refused first, with what it should be.
    for (bad, says) in [
        ("127.0.0.1", "in the calls' RTP range"),
        ("nowhere:5060", "is not IP:PORT"),
        ("203.0.113.7:5060", "is not an address of this box"),
    ] {
        let bad = if bad == "127.0.0.1" {
            "127.0.0.1:10010"
        } else {
            bad
        };
        let o = run(&["--ignore-clock", "--sip-listen", bad]);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains("--sip-listen") && e.contains(says), "{bad}: {e}");
        assert!(!String::from_utf8_lossy(&o.stdout).contains("[1/5]"), "{e}");
    }

    // On a terminal: asked, and Enter (no) stops.
    let args = unsynchronized(
        &lab,
        id,
        &relay,
        &fp,
        &[
            "--skip-audio",
            "--capture",
            "voxcap",
            "--playback",
            "voxplay",
        ],
    );
    let tty = Tmux::start(&lab.dir, "clock", bin(), &args, &alsa_env(&lab));
    let s = tty.wait_for("Continue anyway? (y/N)", T);
    assert!(
        s.contains("FAIL  clock: the clock is not synchronized"),
        "{s}"
    );
    assert!(s.contains("timedatectl set-ntp true"), "{s}");
    tty.key("Enter");
    let (code, s) = tty.exit(T);
    assert_ne!(code, 0, "{s}");
    assert!(
        s.contains("setup stopped: the clock is not synchronized"),
        "{s}"
    );
    assert!(restored(&s), "the terminal was not restored:\n{s}");
    nothing_installed(&lab, id);
    drop(tty);
    // Yes goes on.
    let tty = Tmux::start(&lab.dir, "clock-yes", bin(), &args, &alsa_env(&lab));
    tty.wait_for("Continue anyway? (y/N)", T);
    tty.line("y");
    let (code, s) = tty.exit(T);
    assert_ne!(code, 0, "{s}");
    assert!(
        s.contains("WARN  going on with the clock not synchronized"),
        "{s}"
    );
    assert!(s.contains("is unreachable: no answer"), "{s}");
}
