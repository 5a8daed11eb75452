#![no_main]
//! What `voxgate check` reads from outside itself: a relay's answer to the
//! QUIC version probe (network bytes), /proc files, systemctl's and
//! timedatectl's output, command lines of other processes, the daemon's
//! phones view (`GET /phones`) and the lines `voxgate status` makes of it.
use libfuzzer_sys::fuzz_target;
use voxgate::diagnose::{daemon, probes};

fuzz_target!(|data: &[u8]| {
    let ids = |i: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        for (k, b) in a.iter_mut().enumerate() {
            *b = data.get(i + k).copied().unwrap_or(0);
        }
        a
    };
    let _ = probes::relay::is_version_negotiation(data, ids(6), ids(15));
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = daemon::parse_status(text);
        let _ = daemon::parse_systemctl_show(text);
        let _ = daemon::inodes_on_port(text, 5060, true);
        let _ = daemon::inodes_on_port(text, 5060, false);
        let _ = probes::parse_timedatectl(text);
        let args: Vec<&str> = text.split('\0').collect();
        let _ = daemon::run_config_of(&args, std::path::Path::new("/"));
        if let Ok(v) = serde_json::from_str::<voxgate::bridge::registrations::PhonesView>(text) {
            for p in &v.phones {
                let _ = voxgate::diagnose::status::phone_line(p, v.updated);
            }
        }
    }
});
