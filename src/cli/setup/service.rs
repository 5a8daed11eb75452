//! Setup's last steps: the service (enabled and started, or the command
//! to run) and the desk phones (accounts created through `cli::phones`,
//! each password printed once, then the registrations read live from the
//! running service's metrics).

use super::{Out, SetupArgs, Stop, Term};
use anyhow::{Result, bail};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The metrics endpoint setup writes when it adds phones.
pub(super) const METRICS: &str = "127.0.0.1:9102";
/// How long setup shows the phones' registrations.
const WATCH: Duration = Duration::from_secs(600);

/// The extensions to create: `--phone`, or asked on a terminal.
pub(super) fn phone_list(a: &SetupArgs, term: Option<&Term>) -> Result<Vec<String>> {
    let check = |e: &str| {
        if crate::proto::signal::valid_extension(e) {
            Ok(())
        } else {
            bail!("`{e}` is not an extension: 2-8 digits, not starting with 9")
        }
    };
    if !a.phones.is_empty() {
        a.phones.iter().try_for_each(|e| check(e))?;
        return Ok(a.phones.clone());
    }
    let Some(t) = term else {
        return Ok(Vec::new());
    };
    loop {
        let line = t.ask(
            "Desk phones: extensions to create (e.g. 201 202; empty for none)",
            Some(""),
        )?;
        let exts: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        match exts.iter().try_for_each(|e| check(e)) {
            Ok(()) => return Ok(exts),
            Err(e) => t.print(&format!("  {e:#}\n")),
        }
    }
}

/// Create the phone accounts (each password printed once, to stdout),
/// then show how many have registered at the running service, live,
/// while the technician configures them. Returns the last count seen.
pub(super) fn phones_step(
    a: &SetupArgs,
    phones: &[String],
    service: &str,
    stop: &Stop,
    out: &Out,
) -> Result<Option<usize>> {
    if phones.is_empty() {
        out.ok("none (add them later with `voxgate phones add EXT`)");
        return Ok(None);
    }
    for ext in phones {
        let added = super::super::phones::add(&a.config_out, ext)?;
        out.ok(&format!(
            "extension {ext}: enter in the phone (shown only now):"
        ));
        if a.json {
            // stdout is the JSON summary's: the accounts go to the terminal.
            eprintln!(
                "  registrar:  {}\n  user:       {}\n  password:   {}\n  realm:      {}",
                added.registrar,
                added.ext,
                added.password.expose(),
                added.realm
            );
        } else {
            super::super::phones::print_account(&added);
        }
    }
    if service != "enabled and started" {
        out.warn(&format!(
            "registrations: the service is not running; once it runs, `voxgate status --config {}` shows them",
            a.config_out.display()
        ));
        return Ok(None);
    }
    let addr: std::net::SocketAddr = METRICS.parse().expect("literal");
    out.line("  ..    waiting for the phones to register (Ctrl-C stops waiting)");
    let end = std::time::Instant::now() + WATCH;
    let mut seen = None;
    while std::time::Instant::now() < end && !stop.set.load(Ordering::SeqCst) {
        let n = crate::diagnose::daemon::scrape(addr)
            .and_then(|m| crate::diagnose::daemon::value(&m, "voxgate_sip_registered_extensions"))
            .map(|v| v as usize);
        if n != seen {
            seen = n;
            match n {
                Some(n) => out.line(&format!("        registered: {n} of {}", phones.len())),
                None => out.line("        registered: the service's metrics do not answer yet"),
            }
        }
        if seen.is_some_and(|n| n >= phones.len()) {
            out.ok("every phone registered");
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(seen)
}

/// Enable and start the service, or say what to run. Returns what was
/// done, for the summary.
pub(super) fn service(a: &SetupArgs, out: &Out) -> String {
    let cmd = format!("systemctl enable --now {}", a.service);
    let systemd = std::path::Path::new("/run/systemd/system").exists();
    if a.no_service || !systemd {
        let why = if a.no_service {
            "--no-service"
        } else {
            "systemd is not running here"
        };
        out.warn(&format!(
            "service not started ({why}); start it with: {cmd}"
        ));
        return format!("not started; run `{cmd}`");
    }
    match std::process::Command::new("systemctl")
        .args(["enable", "--now", &a.service])
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => {
            out.ok(&format!("service {} enabled and started", a.service));
            "enabled and started".into()
        }
        Ok(o) => {
            out.fail(&format!(
                "`{cmd}` failed: {}; see `journalctl -u {}`",
                String::from_utf8_lossy(&o.stderr).trim(),
                a.service
            ));
            format!("failed; run `{cmd}`")
        }
        Err(e) => {
            out.fail(&format!("cannot run systemctl ({e}); run `{cmd}`"));
            format!("not started; run `{cmd}`")
        }
    }
}
