//! Type=notify: both daemons report READY=1 and ping the watchdog over a
//! real `$NOTIFY_SOCKET`, after the privilege drop and sandbox.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use voxgate_testkit::audio_env::AlsaFileDevices;
use voxgate_testkit::lab::Lab;

fn messages(sock: &UnixDatagram, until: Duration) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while t0.elapsed() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[test]
fn both_roles_report_ready_and_ping_the_watchdog() {
    let lab = Lab::new("notify", "mode = \"none\"");
    let path = lab.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let env = || {
        vec![
            ("NOTIFY_SOCKET".to_string(), path.display().to_string()),
            ("WATCHDOG_USEC".to_string(), "200000".to_string()),
        ]
    };
    // The relay (its own start path) ...
    let mut relay = {
        let log = lab.dir.join("relay-notify.log");
        let mut c = std::process::Command::new(voxgate_testkit::lab::bin());
        c.args(["relay", "run", "--config"])
            .arg(lab.dir.join("relay.toml"))
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env() {
            c.env(k, v);
        }
        voxgate_testkit::lab::Proc {
            child: c.spawn().unwrap(),
            name: "relay".into(),
            log,
        }
    };
    let got = messages(&sock, Duration::from_secs(2));
    assert!(
        got.iter().any(|m| m.starts_with("READY=1")),
        "relay: {got:?}"
    );
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 5,
        "relay: {got:?}"
    );
    // ... and the gateway, with the relay's pings out of the way: a second
    // socket for the gateway alone.
    let gpath = lab.dir.join("notify-gw.sock");
    let sock = UnixDatagram::bind(&gpath).unwrap();
    let devs = AlsaFileDevices::new(&lab.dir, None, None);
    let (cfg, _) = lab.gateway_config(
        "gw-notify",
        lab.quic_port,
        "[capture]\ndevice = \"voxcap\"\n[playback]\nenabled = false\n",
    );
    let mut genv = env();
    genv[0].1 = gpath.display().to_string();
    genv.push(("ALSA_CONFIG_PATH".into(), devs.alsa_config_path_env()));
    let mut gw = lab.start_gateway(&cfg, &genv);
    let got = messages(&sock, Duration::from_secs(2));
    assert!(
        got.iter().any(|m| m.starts_with("READY=1")),
        "gateway: {got:?}"
    );
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 5,
        "gateway: {got:?}"
    );
    // The relay's socket was left unread since: its queue is full, and the
    // relay must not have stalled on it.
    assert!(
        voxgate_testkit::lab::scrape(lab.relay_metrics).is_some(),
        "relay stalled"
    );
    assert!(gw.stop().success());
    let got = messages(&sock, Duration::from_millis(300));
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    let t0 = Instant::now();
    assert!(relay.stop().success(), "{}", relay.log_text());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "relay took {:?} to stop",
        t0.elapsed()
    );
}
