//! `voxgate check`: every probe against one gateway config, in a fixed
//! order under stable ids ([`IDS`]), printed by [`super::render`]. Exit
//! code: 0 when every check passed, 1 when the worst is a warning, 2 when
//! one failed (skipped checks do not count: what they needed failed and
//! is reported under its own id).
//!
//! What each check reads:
//!
//! | id | reads |
//! | --- | --- |
//! | `config` | the config file (parsed and validated as `voxgate run` does); that `relay.ca`, the sealing input `identity.machine_id` (sealed keys, phone store) and the phone store's directory exist |
//! | `identity` | the certificate and key as `voxgate run` loads them (`identity::backend`), the TPM-held key loaded and checked in the TPM |
//! | `tpm` | a TPM2_GetRandom at `identity.tpm`; fails only when the key is in the TPM |
//! | `cert.expiry` | the certificate's validity and the renewal record beside it (`identity::status`) |
//! | `clock` | `adjtimex(2)` (or `--clock-source`) |
//! | `dns`, `relay.udp`, `relay.quic`, `relay.rtt` | `relay.address` resolved, a QUIC version probe, a handshake verified against `relay.ca` and `relay.server_name` |
//! | `audio.capture`, `audio.playback` | the configured devices opened for a moment; busy ones held by the daemon are fine |
//! | `sip.listen` | whether the running daemon holds `sip.listen` (`/proc/net/{udp,tcp}*`, `/proc/<pid>/fd`), else whether it can be bound |
//! | `sip.phones` | the phone store's extensions and which have a registered phone: the status socket's `GET /phones` (naming those without), else the count `voxgate_sip_registered_extensions` from the metrics endpoint |
//! | `service` | systemd's `voxgate.service` (`ActiveState`, `MainPID`), else a process running `voxgate run` with this config |
//! | `sandbox` | `/proc/<pid>/status` (user, `Seccomp`, `NoNewPrivs`, `CapEff`) and the daemon's `voxgate_sandbox_landlock` |
//! | `disk.state` | `statvfs` of the certificate's directory, and a 4 KiB file written there and removed |

use super::probes::{self, ClockSource, TpmState, relay};
use super::{Finding, Status, daemon};
use crate::audio::device::Dir;
use crate::config::GatewayConfig;
use crate::identity::{IdentityBackend, status as id_status};
use std::path::{Path, PathBuf};

/// The check ids, in the order they run and print.
pub const IDS: [&str; 16] = [
    "config",
    "identity",
    "tpm",
    "cert.expiry",
    "clock",
    "dns",
    "relay.udp",
    "relay.quic",
    "relay.rtt",
    "audio.capture",
    "audio.playback",
    "sip.listen",
    "sip.phones",
    "service",
    "sandbox",
    "disk.state",
];

/// A certificate with less than this left warns.
pub const CERT_WARN_S: i64 = 7 * 86_400;

/// Options of `voxgate check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Gateway config file.
    #[arg(long, short, default_value = "/etc/voxgate/voxgate.toml")]
    pub config: PathBuf,
    /// Output: `text` (one line per check) or `json`.
    #[arg(long, short, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
    /// Plain ASCII marks ([ok] [warn] [FAIL]) even on a UTF-8 terminal.
    #[arg(long)]
    pub ascii: bool,
    /// Where the clock's synchronization comes from: `kernel` (adjtimex),
    /// `timedatectl`, or `file:PATH` (tests).
    #[arg(long, default_value = "kernel", hide = true)]
    pub clock_source: ClockSource,
}

/// Run every check against `config`.
pub fn run_checks(config: &Path, clock: &ClockSource) -> Vec<Finding> {
    let mut out = Vec::with_capacity(IDS.len());
    let cfg = match load(config) {
        Ok(cfg) => {
            out.push(config_paths(&cfg));
            cfg
        }
        Err(f) => {
            out.push(f);
            for id in &IDS[1..] {
                out.push(match *id {
                    "clock" => probes::clock(clock.read()),
                    id => Finding::skip(id, "config"),
                });
            }
            return out;
        }
    };
    let pid = daemon::find_pid(config);
    let metrics = pid.and_then(|_| daemon::read_metrics(&cfg.telemetry));

    // Identity, TPM, certificate.
    let in_tpm = id_status::key_in_tpm(&cfg.identity);
    let tpm_state = probes::tpm_state(&cfg.identity.tpm);
    let tpm = probes::tpm(&cfg.identity.tpm, &tpm_state, in_tpm);
    let tpm_down = in_tpm && !matches!(tpm_state, TpmState::Works);
    out.push(identity(&cfg, tpm_down));
    out.push(tpm);
    out.push(
        if out[1].status == Status::Fail && !cfg.identity.cert.exists() {
            Finding::skip("cert.expiry", "identity")
        } else {
            cert_expiry(&cfg)
        },
    );
    out.push(probes::clock(clock.read()));

    // The relay.
    let relay = match crate::gateway::roots::DeviceRoots::load(&cfg.relay.ca) {
        Ok(roots) => relay::probe(&cfg.relay.address, &cfg.relay.server_name, roots.verifier()),
        Err(e) => {
            // Reachability needs no CA; the handshake does.
            let (dns, addrs) = relay::dns(&cfg.relay.address);
            let udp = match addrs.first() {
                Some(a) => relay::udp(*a, &relay::udp_answer(*a, relay::TIMEOUT)),
                None => Finding::skip("relay.udp", "dns"),
            };
            relay::RelayFindings {
                dns,
                udp,
                quic: Finding::fail(
                    "relay.quic",
                    format!("cannot read relay.ca: {e}"),
                    "re-enroll (`voxgate setup`) to get the fleet CA back",
                ),
                rtt: Finding::skip("relay.rtt", "relay.quic"),
            }
        }
    };
    out.extend(relay.into_vec());

    // Audio.
    for (dir, enabled, name) in [
        (Dir::Capture, true, cfg.capture.device.as_deref()),
        (
            Dir::Playback,
            cfg.playback.enabled,
            cfg.playback.device.as_deref(),
        ),
    ] {
        if !enabled {
            out.push(Finding::ok(
                probes::audio_id(dir),
                "playback is off (playback.enabled = false)",
            ));
            continue;
        }
        let opened = probes::open_audio(name, dir);
        let held = pid.filter(|p| opened.is_err() && daemon::holds_sound(*p, dir));
        out.push(probes::audio(dir, opened, held));
    }

    // Phones.
    match &cfg.sip {
        None => {
            out.push(Finding::ok("sip.listen", "the phone bridge is off ([sip])"));
            out.push(Finding::ok("sip.phones", "the phone bridge is off ([sip])"));
        }
        Some(sip) => {
            out.push(super::sip::listen(sip, pid));
            let view = pid.and_then(|_| daemon::read_phones(&cfg.telemetry));
            out.push(super::sip::phones(
                &cfg,
                sip,
                pid,
                metrics.as_deref(),
                view.as_ref(),
            ));
        }
    }

    // The daemon.
    out.push(service(config, pid));
    out.push(match pid {
        None => Finding::skip("sandbox", "service"),
        Some(p) => match daemon::proc_status(p) {
            Ok(st) => sandbox(
                p,
                &st,
                metrics
                    .as_deref()
                    .and_then(|m| daemon::value(m, "voxgate_sandbox_landlock")),
                cfg.privilege.stay_root,
            ),
            Err(e) => Finding::fail(
                "sandbox",
                format!("cannot read /proc/{p}/status: {e}"),
                "run `voxgate check` as root",
            ),
        },
    });
    let state = cfg
        .identity
        .cert
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    out.push(probes::disk(state));
    out
}

fn load(config: &Path) -> Result<GatewayConfig, Finding> {
    if !config.exists() {
        return Err(Finding::fail(
            "config",
            format!(
                "{} does not exist: this box is not enrolled",
                config.display()
            ),
            "enroll it: run `voxgate setup` on a terminal (it asks for the relay, the CA fingerprint, the device id and the token), or give them as options (`voxgate setup --help`)",
        ));
    }
    GatewayConfig::load(config).map_err(|e| {
        Finding::fail(
            "config",
            e.to_string(),
            format!("fix the key named above in {}", config.display()),
        )
    })
}

fn config_paths(cfg: &GatewayConfig) -> Finding {
    let mut missing = Vec::new();
    if !cfg.relay.ca.exists() {
        missing.push(format!("relay.ca ({})", cfg.relay.ca.display()));
    }
    let sealed = matches!(
        cfg.identity.backend,
        IdentityBackend::SealedFile | IdentityBackend::Auto
    );
    if (sealed || cfg.sip.is_some()) && !cfg.identity.machine_id.exists() {
        missing.push(format!(
            "identity.machine_id ({})",
            cfg.identity.machine_id.display()
        ));
    }
    if let Some(sip) = &cfg.sip {
        let dir = crate::bridge::phone_store::store_dir(&sip.phones);
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            missing.push(format!("the directory of sip.phones ({})", dir.display()));
        }
    }
    if missing.is_empty() {
        Finding::ok("config", format!("{} is valid", cfg.file.display()))
    } else {
        Finding::fail(
            "config",
            format!("{}: missing {}", cfg.file.display(), missing.join(", ")),
            "restore the files, or fix the paths in the config",
        )
    }
}

fn identity(cfg: &GatewayConfig, tpm_down: bool) -> Finding {
    const ID: &str = "identity";
    let id = &cfg.identity;
    let reenroll = "re-enroll this device: a token from the relay operator (a re-enrollment token if it was enrolled before), then `voxgate setup`";
    if !id.cert.exists() {
        return Finding::fail(
            ID,
            format!(
                "not enrolled: no device certificate at {} (identity.cert)",
                id.cert.display()
            ),
            reenroll,
        );
    }
    if id.backend != IdentityBackend::SystemdCreds && !id.key.exists() {
        return Finding::fail(
            ID,
            format!(
                "the device key {} is missing (identity.key)",
                id.key.display()
            ),
            reenroll,
        );
    }
    if tpm_down {
        return Finding::skip(ID, "tpm");
    }
    if id.backend == IdentityBackend::SystemdCreds
        && crate::identity::backend::credential_path(&id.credential).is_err()
    {
        return Finding::ok(
            ID,
            format!(
                "the key is the systemd credential `{}`, given to the service alone (not readable here)",
                id.credential
            ),
        );
    }
    match crate::identity::backend::load(&cfg.device_id, id).and_then(|l| l.verify().map(|()| l)) {
        Ok(l) => Finding::ok(
            ID,
            format!(
                "`{}`: the {} key opens here and matches the certificate",
                cfg.device_id, l.backend
            ),
        ),
        Err(e) => Finding::fail(ID, e.to_string(), reenroll),
    }
}

fn cert_expiry(cfg: &GatewayConfig) -> Finding {
    match id_status::cert_validity(&cfg.identity.cert) {
        Ok((nb, na, due)) => expiry_verdict(
            time::OffsetDateTime::now_utc().unix_timestamp(),
            nb,
            na,
            (cfg.identity.backend != IdentityBackend::DevFile).then_some(due),
        ),
        Err(e) => Finding::fail(
            "cert.expiry",
            format!("{e:#}"),
            "re-enroll this device (`voxgate setup`)",
        ),
    }
}

/// `cert.expiry` at `now` for a certificate valid from `not_before` to
/// `not_after`, renewed from `due` (`None`: never renewed, dev-file).
pub fn expiry_verdict(now: i64, not_before: i64, not_after: i64, due: Option<i64>) -> Finding {
    const ID: &str = "cert.expiry";
    let (w, s) = (id_status::when, id_status::span);
    if now >= not_after {
        return Finding::fail(
            ID,
            format!(
                "the certificate expired {} ({} ago)",
                w(not_after),
                s(now - not_after)
            ),
            "re-enroll this device: a re-enrollment token from the relay operator, then `voxgate setup`",
        );
    }
    if now < not_before {
        return Finding::fail(
            ID,
            format!(
                "the certificate is not valid before {}: this box's clock is behind",
                w(not_before)
            ),
            "synchronize the clock (see `clock`)",
        );
    }
    let left = format!("valid until {} ({} left)", w(not_after), s(not_after - now));
    match due {
        Some(d) if now > d + 3_600 => Finding::warn(
            ID,
            format!("{left}; its renewal was due {}", w(d)),
            "the running voxgate renews over its relay connection: check `relay.quic` and `service`, and the log for `renew`",
        ),
        _ if not_after - now < CERT_WARN_S => Finding::warn(
            ID,
            left,
            "this certificate is not renewed automatically: issue a new one before it expires",
        ),
        Some(d) => Finding::ok(ID, format!("{left}; renewal due {}", w(d))),
        None => Finding::ok(ID, left),
    }
}

fn service(config: &Path, pid: Option<i32>) -> Finding {
    const ID: &str = "service";
    let unit = daemon::systemd_booted()
        .then(daemon::systemd_unit)
        .flatten()
        .map(|(state, _)| format!("; {} is {state}", daemon::UNIT))
        .unwrap_or_default();
    match pid {
        Some(p) => Finding::ok(ID, format!("voxgate runs (pid {p}{unit})")),
        None if daemon::systemd_booted() => Finding::fail(
            ID,
            format!("voxgate is not running{unit}"),
            format!(
                "start it: `systemctl start {}`; `journalctl -u {} -b` says why it stopped",
                daemon::UNIT,
                daemon::UNIT
            ),
        ),
        None => Finding::fail(
            ID,
            format!("no `voxgate run` runs {}", config.display()),
            format!(
                "start it: `voxgate run --config {}` (or its service)",
                config.display()
            ),
        ),
    }
}

/// `sandbox`: the running daemon's confinement.
pub fn sandbox(
    pid: i32,
    st: &daemon::ProcStatus,
    landlock: Option<f64>,
    stay_root: bool,
) -> Finding {
    const ID: &str = "sandbox";
    let mut bad = Vec::new();
    let mut soft = Vec::new();
    let user = st.uid.map(daemon::user_name).unwrap_or_else(|| "?".into());
    match st.uid {
        Some(0) if stay_root => soft.push("runs as root (privilege.stay_root)".to_string()),
        Some(0) | None => bad.push("runs as root".to_string()),
        Some(_) => {}
    }
    if st.seccomp != Some(2) {
        bad.push("no seccomp filter".into());
    }
    if st.no_new_privs != Some(true) {
        bad.push("no_new_privs is not set".into());
    }
    if st.uid != Some(0) && st.cap_eff != Some(0) {
        bad.push("it kept capabilities".into());
    }
    match landlock {
        Some(l) if l >= 2.0 => {}
        Some(l) if l >= 1.0 => soft.push("Landlock enforced partially (old kernel)".into()),
        Some(_) => bad.push("no Landlock".into()),
        None => soft.push("Landlock unknown (no status socket or metrics endpoint answers)".into()),
    }
    let summary = format!("pid {pid} as {user}");
    if !bad.is_empty() {
        Finding::fail(
            ID,
            format!("{summary}: {}", [bad, soft].concat().join(", ")),
            "keep `[sandbox] enabled = true` and set `privilege.user` (the unit's `voxgate`), then restart the service",
        )
    } else if !soft.is_empty() {
        Finding::warn(
            ID,
            format!("{summary}: {}", soft.join(", ")),
            "a deployed box runs as `privilege.user` with the sandbox on, and serves its status socket",
        )
    } else {
        Finding::ok(
            ID,
            format!("{summary}: seccomp, no_new_privs, Landlock, no capabilities"),
        )
    }
}

/// `voxgate check`: run every check, print them, exit with the worst.
pub fn run(a: CheckArgs) -> std::process::ExitCode {
    let findings = run_checks(&a.config, &a.clock_source);
    if a.output == "json" {
        super::render::emit(&(super::render::json(&a.config, &findings) + "\n"));
    } else {
        let ascii = super::render::want_ascii(a.ascii, |k| std::env::var(k).ok());
        super::render::emit(&super::render::text(&findings, ascii));
    }
    std::process::ExitCode::from(super::worst(&findings).exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_expiry() {
        let (nb, na) = (1_000_000, 1_000_000 + 90 * 86_400);
        let due = Some(nb + 60 * 86_400);
        assert_eq!(expiry_verdict(nb + 10, nb, na, due).status, Status::Ok);
        assert_eq!(expiry_verdict(na, nb, na, due).status, Status::Fail);
        assert!(
            expiry_verdict(na + 5, nb, na, due)
                .message
                .contains("expired")
        );
        assert_eq!(expiry_verdict(nb - 5, nb, na, due).status, Status::Fail);
        let overdue = expiry_verdict(nb + 70 * 86_400, nb, na, due);
        assert_eq!(overdue.status, Status::Warn);
        assert!(overdue.message.contains("renewal was due"));
        // Never renewed: warns in its last week only.
        assert_eq!(
            expiry_verdict(nb + 70 * 86_400, nb, na, None).status,
            Status::Ok
        );
        assert_eq!(
            expiry_verdict(na - 86_400, nb, na, None).status,
            Status::Warn
        );
    }

    #[test]
    fn sandbox_verdicts() {
        let good = daemon::ProcStatus {
            uid: Some(65534),
            seccomp: Some(2),
            no_new_privs: Some(true),
            cap_eff: Some(0),
        };
        assert_eq!(sandbox(1, &good, Some(2.0), false).status, Status::Ok);
        assert_eq!(sandbox(1, &good, None, false).status, Status::Warn);
        assert_eq!(sandbox(1, &good, Some(0.0), false).status, Status::Fail);
        let root = daemon::ProcStatus {
            uid: Some(0),
            cap_eff: Some(u64::MAX),
            ..good.clone()
        };
        assert_eq!(sandbox(1, &root, Some(2.0), true).status, Status::Warn);
        assert_eq!(sandbox(1, &root, Some(2.0), false).status, Status::Fail);
        let open = daemon::ProcStatus {
            seccomp: Some(0),
            no_new_privs: Some(false),
            ..good
        };
        let f = sandbox(1, &open, Some(0.0), false);
        assert!(f.message.contains("no seccomp filter"), "{f:?}");
    }

    #[test]
    fn ids_are_unique() {
        let mut ids = IDS.to_vec();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), IDS.len());
    }
}
