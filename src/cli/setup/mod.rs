//! `voxgate setup`: the field technician's enrollment, step by step.
//!
//! On a terminal (standard input is one, and no `--yes`), whatever the
//! options leave out is asked for: the relay, the CA fingerprint, the
//! device id, the token (not shown), the audio devices. Without a terminal
//! every answer must come from the options, as scripts give them.
//!
//! 1. **Hardware**: the audio devices (listed; one picked or asked for),
//!    the TPM (present and answering: `identity::setup::choose_backend`),
//!    the clock (not synchronized: asked whether to go on, default no;
//!    `--yes` stops unless `--ignore-clock`), the relay's name in DNS,
//!    and the relay over UDP: a QUIC handshake that checks the pinned CA
//!    before any token is sent. An
//!    unreachable relay is reported as unreachable, a wrong CA as such
//!    (`identity::setup::connect`).
//! 2. **Identity**: the key (the pending key of an interrupted run for the
//!    same device, or a new one, kept as the pending key first:
//!    `identity::setup::pending`), then enrollment; the files are staged.
//! 3. **Audio** (on a terminal): a live level meter of the microphone
//!    ("speak now"), a test tone on the speaker (`audio`); then a round
//!    trip through the relay with the new certificate (the `echo` control
//!    message: this session's flow comes back), its time and loss
//!    (`gateway::round_trip`).
//! 4. **Service**: the phones to create are asked for (`--phone`), since
//!    they need the bridge in the config, and the address it listens on
//!    (`--sip-listen`; the box's LAN addresses offered); the staged files
//!    and the config are installed (the config last), the pending key
//!    dropped; then
//!    `systemctl enable --now`, or, with `--no-service` or without
//!    systemd, the command to run (`service`).
//! 5. **Phones**: each account created through `cli::phones`, its
//!    password printed once; then one line per extension, updated live
//!    from the running service's status socket (`GET /phones`: "waiting..."
//!    until "registered from HOST:PORT (user agent)"), until every phone
//!    registered or Enter stops waiting. Then a summary naming each
//!    phone's state (`--json`: one JSON object on stdout, per-phone states
//!    in it, the passwords on stderr).
//!
//! Ctrl-C at any step leaves the box as it was: at a prompt it arrives as a
//! key (the terminal's signals are off while it reads), elsewhere SIGINT is
//! caught; either way the flow returns, the staging directory is removed
//! by its `Drop`, the terminal restored by [`term::Term`]'s, and the
//! process exits with 130. Only the pending key stays, so that running
//! setup again with the same token completes it.

mod audio;
mod service;
mod term;

use crate::audio::device::{self as audio_dev, Dir};
use crate::diagnose::probes::relay::{self as relay_probe, UdpAnswer};
use crate::diagnose::probes::{self as probe, ClockSource};
use crate::diagnose::{Finding, Status};
use crate::identity::setup::connect::{self, ConnectError};
use crate::identity::setup::pending::{Pending, Staging};
use crate::identity::setup::{self as core, SetupArgs};
use anyhow::{Context, Result, bail};
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use term::{Interrupted, Term};

/// How long the UDP probe waits for the relay's answer.
const UDP_LIMIT: Duration = Duration::from_secs(3);

/// Set by SIGINT while setup runs outside a prompt.
#[derive(Debug, Default)]
struct Stop {
    set: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Stop {
    fn check(&self) -> Result<()> {
        if self.set.load(Ordering::SeqCst) {
            return Err(Interrupted.into());
        }
        Ok(())
    }

    /// `fut`, unless Ctrl-C comes first.
    async fn or_interrupt<T>(&self, fut: impl std::future::Future<Output = T>) -> Result<T> {
        let notified = self.notify.notified();
        self.check()?;
        tokio::select! {
            v = fut => Ok(v),
            _ = notified => Err(Interrupted.into()),
        }
    }
}

/// Progress on the terminal (stderr with `--json`).
struct Out {
    json: bool,
}

impl Out {
    fn line(&self, s: &str) {
        if self.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }
    fn step(&self, n: u8, title: &str) {
        self.line(&format!("\n[{n}/5] {title}"));
    }
    fn ok(&self, s: &str) {
        self.line(&format!("  ok    {s}"));
    }
    fn warn(&self, s: &str) {
        self.line(&format!("  WARN  {s}"));
    }
    fn fail(&self, s: &str) {
        self.line(&format!("  FAIL  {s}"));
    }
}

/// Run `voxgate setup`.
pub fn run(a: SetupArgs) -> Result<()> {
    let term = (!a.yes && std::io::stdin().is_terminal())
        .then(Term::open)
        .flatten();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let stop = Arc::new(Stop::default());
    {
        let stop = stop.clone();
        let mut sigint = rt.block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        })?;
        rt.spawn(async move {
            if sigint.recv().await.is_some() {
                stop.set.store(true, Ordering::SeqCst);
                stop.notify.notify_waiters();
            }
        });
    }
    let out = Out { json: a.json };
    let result = flow(&a, term.as_ref(), &rt, &stop, &out);
    drop(term);
    match result {
        Err(e) if e.is::<Interrupted>() => {
            let pending = if Pending::at(&a.dir).exists() {
                " The new key is kept as pending: run `voxgate setup` again with the same token to finish."
            } else {
                ""
            };
            eprintln!("\nvoxgate setup interrupted: nothing was installed.{pending}");
            std::process::exit(130);
        }
        r => r,
    }
}

/// An answer from the options, or the terminal, or an error naming the
/// option.
fn answer(
    given: &Option<String>,
    term: Option<&Term>,
    prompt: &str,
    flag: &str,
    check: impl Fn(&str) -> Result<()>,
) -> Result<String> {
    if let Some(v) = given {
        check(v)?;
        return Ok(v.clone());
    }
    let Some(t) = term else {
        bail!("{flag} is missing, and there is no terminal to ask on: give {flag}");
    };
    loop {
        let v = t.ask(prompt, None)?;
        match check(&v) {
            Ok(()) => return Ok(v),
            Err(e) => t.print(&format!("  {e:#}\n")),
        }
    }
}

fn flow(
    a: &SetupArgs,
    term: Option<&Term>,
    rt: &tokio::runtime::Runtime,
    stop: &Stop,
    out: &Out,
) -> Result<()> {
    if a.config_out.exists() {
        bail!(
            "{} already exists; move it away to enroll again",
            a.config_out.display()
        );
    }
    // Options checked before anything is done.
    if let Some(v) = &a.sip_listen {
        service::check_listen(v).context("--sip-listen")?;
    }
    if let Some(p) = &a.status_socket
        && !p.is_absolute()
    {
        bail!("--status-socket {}: must be an absolute path", p.display());
    }
    if term.is_some() {
        out.line("voxgate setup: enroll this box with the relay. Ctrl-C stops at any step and leaves the box as it was.");
    }
    let relay = answer(
        &a.relay,
        term,
        "Relay address (HOST:PORT)",
        "--relay",
        |v| {
            crate::transport::split_host_port(v)
                .map(|_| ())
                .with_context(|| format!("`{v}` is not HOST:PORT"))
        },
    )?;
    let fingerprint = answer(
        &a.ca_fingerprint,
        term,
        "Fleet CA fingerprint (SHA256:...)",
        "--ca-fingerprint",
        |v| Ok(crate::transport::tls::PinnedCaVerifier::new(v).map(|_| ())?),
    )?;
    let device = answer(&a.device_id, term, "Device id", "--device-id", |v| {
        if crate::pki::name::valid_device_id(v) {
            Ok(())
        } else {
            bail!("device id `{v}` must be 1-64 characters of a-z, 0-9, '-', '_' or '.'")
        }
    })?;
    let verifier = core::check_inputs(&device, &relay, &fingerprint)?;

    // 1. Hardware.
    out.step(1, "Hardware");
    let (audio, devices) = audio_lines(a, term, out)?;
    let (backend, tpm, why) = core::choose_backend(a)?;
    out.ok(&format!("key backend: {backend} ({why})"));
    let clock_source: ClockSource = a
        .clock_source
        .parse()
        .map_err(|e| anyhow::anyhow!("--clock-source: {e}"))?;
    let clock = probe::clock(clock_source.read());
    finding(out, &clock);
    if clock.status == Status::Fail {
        unsynchronized_clock(a, term, out)?;
    }
    let addr = match rt.block_on(stop.or_interrupt(connect::resolve(&relay)))? {
        Ok(addr) => addr,
        Err(e) => return Err(failed(out, e)),
    };
    out.ok(&format!("DNS: {relay} is {addr}"));
    // UDP first (`diagnose`'s probe: a QUIC version negotiation tells a
    // relay from silence and from ICMP "port unreachable"), then the CA.
    match rt.block_on(stop.or_interrupt(async {
        tokio::task::spawn_blocking(move || relay_probe::udp_answer(addr, UDP_LIMIT)).await
    }))?? {
        UdpAnswer::Quic(t) => out.ok(&format!(
            "UDP: a QUIC server answers at {addr} ({} ms)",
            t.as_millis()
        )),
        UdpAnswer::Refused => return Err(failed(out, ConnectError::Refused(addr))),
        UdpAnswer::Silent => return Err(failed(out, ConnectError::NoAnswer(addr))),
        UdpAnswer::Local(e) => return Err(failed(out, ConnectError::Local(e))),
    }
    let reach = rt.block_on(stop.or_interrupt(connect::check(
        addr,
        &a.server_name,
        verifier.clone(),
        &fingerprint,
    )))?;
    match reach {
        Ok(rtt) => out.ok(&format!(
            "relay: {addr} holds the fleet CA {fingerprint} (handshake RTT {:.1} ms)",
            ms(rtt)
        )),
        Err(e) => return Err(failed(out, e)),
    }
    stop.check()?;

    // 2. Identity.
    out.step(2, "Identity");
    let token = match &a.token_file {
        Some(path) => core::read_token(path)?,
        None => match term {
            Some(t) => loop {
                let raw = t.secret("Enrollment token")?;
                match core::check_token(&raw) {
                    Ok(tok) => break tok,
                    Err(e) => t.print(&format!("  {e:#}\n")),
                }
            },
            None => core::read_token(std::path::Path::new("-"))?,
        },
    };
    let key = core::prepare_key(a, &device, backend, tpm, why)?;
    if key.reused {
        out.ok("key: taken over from the interrupted setup (the relay answers the same token and key with the same certificate)");
    } else {
        out.ok(&format!("key: new, in the {} backend", key.backend));
    }
    let csr = key.csr(&device)?;
    out.line("  ..    enrolling with the relay");
    let request = connect::Request {
        relay: &relay,
        server_name: &a.server_name,
        fingerprint: &fingerprint,
        device: &device,
        token: &token,
        csr: &csr,
    };
    let (cert_der, not_after) =
        match rt.block_on(stop.or_interrupt(connect::enroll(&request, verifier.clone())))? {
            Ok(v) => v,
            Err(e) => {
                // No certificate was issued for this key: nothing to keep.
                if matches!(e, ConnectError::EnrollRefused(_)) {
                    Pending::at(&a.dir).discard();
                }
                return Err(failed(out, e));
            }
        };
    core::check_certificate(&cert_der, &key, &device)?;
    let ca = verifier
        .ca()
        .context("the relay's CA was not recorded during the handshake")?;
    let serial = crate::pki::name::cert_facts(&cert_der)
        .map(|f| f.serial)
        .unwrap_or_default();
    let expires = time::OffsetDateTime::from_unix_timestamp(not_after)
        .map(|t| t.to_string())
        .unwrap_or_default();
    out.ok(&format!(
        "enrolled `{device}`: certificate {serial}, expires {expires}"
    ));
    let mut staging = Staging::new(&a.dir)?;
    let staged = core::stage(
        a,
        core::Target {
            device: &device,
            relay: &relay,
            audio: &audio,
        },
        &key,
        &cert_der,
        &ca,
        not_after,
        &mut staging,
    )?;
    stop.check()?;

    // 3. Audio.
    out.step(3, "Audio");
    let mut rtt_summary = serde_json::Value::Null;
    if a.skip_audio {
        out.warn("skipped (--skip-audio)");
    } else {
        if let Some(t) = term {
            listen_and_play(t, &devices, stop, out)?;
        }
        let chain = vec![cert_der.clone().into()];
        let identity =
            crate::transport::tls::DevFileIdentity::from_key(&device, key.certified(chain)?);
        out.line("  ..    round trip through the relay (50 packets, 20 ms apart)");
        let m = rt.block_on(stop.or_interrupt(crate::gateway::round_trip::measure(
            addr,
            &a.server_name,
            std::slice::from_ref(&ca),
            &identity,
            50,
            Duration::from_millis(20),
        )))?;
        match m {
            Ok(m) => {
                let text = format!(
                    "round trip through the relay: {}/{} packets back, loss {:.1}%, RTT min {:.1} ms, mean {:.1} ms, max {:.1} ms",
                    m.received,
                    m.sent,
                    m.loss_percent(),
                    ms(m.min),
                    ms(m.mean),
                    ms(m.max)
                );
                if m.received == 0 {
                    out.fail(&format!("{text}: no audio comes back; check that UDP from the relay reaches this box (firewall, NAT)"));
                } else if m.loss_percent() > 5.0 {
                    out.warn(&format!("{text}: high loss; calls will sound choppy"));
                } else {
                    out.ok(&text);
                }
                rtt_summary = serde_json::json!({
                    "sent": m.sent, "received": m.received, "loss_percent": m.loss_percent(),
                    "rtt_ms": {"min": ms(m.min), "mean": ms(m.mean), "max": ms(m.max)},
                });
            }
            Err(e) => out.warn(&format!("round trip not measured: {e}")),
        }
    }

    // 4. Service (the phones are asked for first: they need the bridge
    // in the config).
    out.step(4, "Service");
    let phones = service::phone_list(a, term)?;
    let sip_listen = service::sip_listen(a, term, !phones.is_empty())?;
    let mut config = staged.config.clone();
    if let Some(listen) = sip_listen {
        // The bridge; setup (and `voxgate status`) read the registrations
        // from the service's status socket.
        config.push_str(&format!("\n[sip]\nenabled = true\nlisten = \"{listen}\"\n"));
        out.ok(&format!("phone bridge: listens on {listen} (UDP and TCP)"));
    }
    if let Some(p) = &a.status_socket {
        config.push_str(&format!(
            "\n[telemetry]\nstatus_socket = {}\n",
            toml::Value::String(p.display().to_string())
        ));
    }
    crate::config::GatewayConfig::parse(&a.config_out, &config)
        .context("the config setup would write does not validate")?;
    if let Some(t) = term
        && !t.confirm(
            &format!("Install the identity and write {}?", a.config_out.display()),
            true,
        )?
    {
        return Err(Interrupted.into());
    }
    stop.check()?;
    core::install(a, &key, staging, &config)?;
    out.ok(&format!("config written: {}", a.config_out.display()));
    let service = service::service(a, out);

    // 5. Phones.
    out.step(5, "Phones");
    let seen = service::phones_step(a, &phones, &service, term, stop, out)?;
    let registered = seen
        .iter()
        .all(|p| p.state.is_some())
        .then(|| {
            seen.iter()
                .filter(|p| p.state.as_ref().is_some_and(|s| s.registered))
                .count()
        })
        .filter(|_| !seen.is_empty());

    // Summary.
    if a.json {
        let summary = serde_json::json!({
            "device": device, "relay": relay, "backend": key.backend.to_string(),
            "key": staged.key_where, "certificate_serial": serial, "expires": not_after,
            "config": a.config_out.display().to_string(), "round_trip": rtt_summary,
            "service": service, "sip_listen": sip_listen.map(|l| l.to_string()),
            "phones": seen.iter().map(service::PhoneSeen::json).collect::<Vec<_>>(),
            "phones_registered": registered,
        });
        println!("{summary}");
    } else {
        out.line(&format!(
            "\nSetup complete: enrolled `{device}` with {relay}\n  backend:     {} ({})\n  key:         {}\n  certificate: {} (expires {expires})\n  config:      {}\n  service:     {service}\n  phones:      {}",
            key.backend,
            key.why,
            staged.key_where,
            a.dir.join("device.pem").display(),
            a.config_out.display(),
            match (phones.len(), registered) {
                (0, _) => format!("none; add them with `voxgate phones add EXT --config {}`", a.config_out.display()),
                (n, r) => {
                    let mut t = match r {
                        Some(r) => format!("{n} created, {r} registered"),
                        None => format!("{n} created"),
                    };
                    for p in &seen {
                        t.push_str(&format!("\n               {:<8} {}", p.ext, p.describe("not registered")));
                    }
                    t
                }
            }
        ));
    }
    Ok(())
}

/// The clock is not synchronized: certificates will look expired or not
/// yet valid, so the enrollment and every connection after it may fail in
/// confusing ways. `--ignore-clock` goes on; a terminal is asked (default
/// no); otherwise setup stops here, before anything is created.
fn unsynchronized_clock(a: &SetupArgs, term: Option<&Term>, out: &Out) -> Result<()> {
    if a.ignore_clock {
        out.warn("going on with the clock not synchronized (--ignore-clock): certificates may be refused until it is");
        return Ok(());
    }
    let stop = "setup stopped: the clock is not synchronized, so certificates would look expired or not yet valid; enable time synchronization (`timedatectl set-ntp true`, or chrony) and run `voxgate setup` again, or give --ignore-clock to set up anyway";
    match term {
        Some(t) => {
            if t.confirm(
                "The clock is not synchronized: certificates will look expired or not yet valid. Continue anyway?",
                false,
            )? {
                out.warn("going on with the clock not synchronized");
                Ok(())
            } else {
                bail!("{stop}")
            }
        }
        None => bail!("{stop}"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Report a connection failure and return it.
fn failed(out: &Out, e: ConnectError) -> anyhow::Error {
    out.fail(&e.to_string());
    e.into()
}

/// The audio devices: listed, then the one the options name, the only
/// one, or the technician's choice. Config lines for the chosen ones.
fn audio_lines(a: &SetupArgs, term: Option<&Term>, out: &Out) -> Result<(String, Devices)> {
    let mut lines = String::new();
    let mut picked = Devices::default();
    for (dir, given, section, what) in [
        (Dir::Capture, &a.capture, "capture", "microphone"),
        (Dir::Playback, &a.playback, "playback", "speaker"),
    ] {
        let devices = audio_dev::list(dir);
        let chosen = match (given, devices.len(), term) {
            (Some(name), _, _) => {
                if !devices.iter().any(|(id, _)| id == name) {
                    bail!(
                        "no {what} named `{name}`; the {what}s here are: {}",
                        names(&devices)
                    );
                }
                Some(name.clone())
            }
            (None, 0, _) => {
                out.warn(&format!("no {what} found: the box will run without one (plug it in, then `voxgate setup` again or set [{section}] device)"));
                None
            }
            (None, 1, _) | (None, _, None) => None,
            (None, _, Some(t)) => {
                t.print(&format!("  {what}s found:\n"));
                let shown: Vec<String> = devices
                    .iter()
                    .map(|(id, desc)| format!("{id}  {desc}"))
                    .collect();
                let i = t.choose(&format!("  Which {what}"), &shown, 0)?;
                Some(devices[i].0.clone())
            }
        };
        if !devices.is_empty() {
            // Opened and started for a moment, as the daemon will.
            finding(
                out,
                &probe::audio(dir, probe::open_audio(chosen.as_deref(), dir), None),
            );
        }
        match dir {
            Dir::Capture => picked.capture = chosen.clone(),
            Dir::Playback => picked.playback = chosen.clone(),
        }
        picked.found[usize::from(dir == Dir::Playback)] = !devices.is_empty();
        match &chosen {
            Some(name) => {
                out.ok(&format!("{what}: {name}"));
                lines.push_str(&format!("\n[{section}]\ndevice = \"{name}\"\n"));
            }
            None if !devices.is_empty() => {
                out.ok(&format!(
                    "{what}: the default ({} found: {})",
                    devices.len(),
                    names(&devices)
                ));
            }
            None => {}
        }
    }
    Ok((lines, picked))
}

/// The audio devices chosen (`None`: the default) and whether any was
/// found (capture, playback).
#[derive(Debug, Default)]
struct Devices {
    capture: Option<String>,
    playback: Option<String>,
    found: [bool; 2],
}

/// The level meter and the test tone, on a terminal.
fn listen_and_play(t: &Term, d: &Devices, stop: &Stop, out: &Out) -> Result<()> {
    if d.found[0] {
        out.line("  ..    microphone: speak now (3 s)");
        let peak = audio::meter(
            d.capture.as_deref(),
            Duration::from_secs(3),
            &stop.set,
            |v| {
                let db = audio::dbfs(v);
                t.print(&format!(
                    "\r        level {} {db:6.1} dBFS ",
                    audio::bar(db, 30)
                ));
            },
        );
        t.print("\n");
        stop.check()?;
        match peak {
            Ok(p) if audio::dbfs(p) > -50.0 => {
                out.ok(&format!("microphone: peak {:.1} dBFS", audio::dbfs(p)))
            }
            Ok(p) => out.warn(&format!(
                "microphone: no sound (peak {:.1} dBFS): check that it is connected and not muted (`alsamixer`), then run setup again",
                audio::dbfs(p)
            )),
            Err(e) => out.fail(&format!("microphone: {e}")),
        }
    }
    if d.found[1] {
        out.line("  ..    speaker: a 440 Hz test tone for 1 s");
        match audio::tone(d.playback.as_deref(), Duration::from_secs(1)) {
            Ok(n) => {
                out.ok(&format!("speaker: played {n:.1} s of the tone"));
                if !t.confirm("Did you hear the tone?", true)? {
                    out.warn("speaker: not heard; check the speaker's connection and volume (`alsamixer`), or pick another speaker (--playback)");
                }
            }
            Err(e) => out.fail(&format!("speaker: {e}")),
        }
    }
    Ok(())
}

fn names(devices: &[(String, String)]) -> String {
    devices
        .iter()
        .map(|(id, _)| id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `diagnose` finding as a progress line (with its fix).
fn finding(out: &Out, f: &Finding) {
    let text = match &f.hint {
        Some(h) => format!("{}: {h}", f.message),
        None => f.message.clone(),
    };
    match f.status {
        Status::Ok | Status::Skip => out.ok(&format!("{}: {text}", f.id)),
        Status::Warn => out.warn(&format!("{}: {text}", f.id)),
        Status::Fail => out.fail(&format!("{}: {text}", f.id)),
    }
}
