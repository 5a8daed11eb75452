//! Setup's last steps: the phone bridge's address (`--sip-listen`, or
//! asked with the box's LAN addresses offered), the service (enabled and
//! started, or the command to run) and the desk phones (accounts created
//! through `cli::phones`, each password printed once, then each phone's
//! registration read live from the running service's status socket,
//! `GET /phones`).

use super::{Out, SetupArgs, Stop, Term};
use crate::bridge::registrations::PhoneState;
use anyhow::{Result, bail};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The bridge's address when setup asks nothing: every address, SIP's port.
pub(super) const DEFAULT_LISTEN: &str = "0.0.0.0:5060";
/// How long setup shows the phones' registrations.
const WATCH: Duration = Duration::from_secs(600);
/// How often it reads them from the service's status socket.
const POLL: Duration = Duration::from_millis(500);

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

/// What setup learnt of one phone it created.
#[derive(Debug, Clone)]
pub(super) struct PhoneSeen {
    /// The extension.
    pub ext: String,
    /// Its state at the running service; `None`: the service never
    /// answered.
    pub state: Option<PhoneState>,
}

impl PhoneSeen {
    /// One line: `registered from HOST:PORT (user agent)`, `waiting...`.
    pub fn describe(&self, waiting: &str) -> String {
        match &self.state {
            None => format!("{waiting} (the service does not answer)"),
            Some(p) => match p.latest() {
                Some(c) => format!(
                    "registered from {} ({})",
                    c.source,
                    c.user_agent.as_deref().unwrap_or(&c.transport)
                ),
                None => waiting.to_string(),
            },
        }
    }

    /// The JSON summary's entry.
    pub fn json(&self) -> serde_json::Value {
        let latest = self.state.as_ref().and_then(|p| p.latest());
        serde_json::json!({
            "extension": self.ext,
            "state": match (&self.state, latest) {
                (None, _) => "unknown",
                (Some(_), Some(_)) => "registered",
                (Some(_), None) => "not registered",
            },
            "source": latest.map(|c| c.source.clone()),
            "transport": latest.map(|c| c.transport.clone()),
            "user_agent": latest.and_then(|c| c.user_agent.clone()),
            "registered_since": latest.map(|c| c.registered_since),
            "expires": latest.map(|c| c.expires),
        })
    }

    fn registered(&self) -> bool {
        self.state.as_ref().is_some_and(|p| p.registered)
    }
}

/// Create the phone accounts (each password printed once, to stdout),
/// then show each phone's registration at the running service, live,
/// while the technician configures them: one line per extension, until
/// every one has registered, or Enter (or Ctrl-C) stops waiting. On a
/// terminal this also runs when setup did not start the service (the
/// technician may start it by hand); without one, only when it did.
pub(super) fn phones_step(
    a: &SetupArgs,
    phones: &[String],
    service: &str,
    term: Option<&Term>,
    stop: &Stop,
    out: &Out,
) -> Result<Vec<PhoneSeen>> {
    if phones.is_empty() {
        out.ok("none (add them later with `voxgate phones add EXT`)");
        return Ok(Vec::new());
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
    let mut seen: Vec<PhoneSeen> = phones
        .iter()
        .map(|e| PhoneSeen {
            ext: e.clone(),
            state: None,
        })
        .collect();
    let running = service == "enabled and started";
    let start = format!(
        "`systemctl enable --now {}`, or `voxgate run --config {}`",
        a.service,
        a.config_out.display()
    );
    if !running && term.is_none() {
        out.warn(&format!(
            "registrations: the service is not running; once it runs ({start}), `voxgate status --config {}` shows them",
            a.config_out.display()
        ));
        return Ok(seen);
    }
    let socket = a
        .status_socket
        .clone()
        .unwrap_or_else(|| crate::telemetry::http::DEFAULT_STATUS_SOCKET.into());
    if !running {
        out.line(&format!(
            "  ..    the service is not running: start it ({start}); its phones show here once it runs"
        ));
    }
    out.line(&format!(
        "  ..    waiting for the phones to register ({} stops waiting)",
        if term.is_some() { "Enter" } else { "Ctrl-C" }
    ));
    let lines = |seen: &[PhoneSeen]| -> Vec<String> {
        seen.iter()
            .map(|p| format!("        {:<8} {}", p.ext, p.describe("waiting...")))
            .collect()
    };
    let mut shown = lines(&seen);
    match term {
        Some(t) => t.print(&(shown.join("\n") + "\n")),
        None => shown.iter().for_each(|l| out.line(l)),
    }
    let end = std::time::Instant::now() + WATCH;
    let mut next_poll = std::time::Instant::now();
    while std::time::Instant::now() < end && !stop.set.load(Ordering::SeqCst) {
        if std::time::Instant::now() >= next_poll {
            next_poll = std::time::Instant::now() + POLL;
            let view = crate::diagnose::daemon::phones_at(&socket);
            for p in &mut seen {
                p.state = view.as_ref().map(|v| {
                    v.phones
                        .iter()
                        .find(|s| s.extension == p.ext)
                        .cloned()
                        .unwrap_or_else(|| PhoneState {
                            extension: p.ext.clone(),
                            ..PhoneState::default()
                        })
                });
            }
            let now = lines(&seen);
            if now != shown {
                match term {
                    // The lines rewritten in place.
                    Some(t) => {
                        let mut text = format!("\x1b[{}A", shown.len());
                        for l in &now {
                            text.push_str(&format!("\r\x1b[2K{l}\n"));
                        }
                        t.print(&text);
                    }
                    None => now
                        .iter()
                        .zip(&shown)
                        .filter(|(n, o)| n != o)
                        .for_each(|(n, _)| out.line(n)),
                }
                shown = now;
            }
            if seen.iter().all(PhoneSeen::registered) {
                out.ok("every phone registered");
                return Ok(seen);
            }
        }
        match term {
            Some(t) => {
                if let Some(b'\r' | b'\n' | 0x03 | 0x04) = t.key_within(5) {
                    break;
                }
            }
            None => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    out.warn("stopped waiting; `voxgate status` shows the phones later");
    Ok(seen)
}

/// The address the phone bridge listens on: `--sip-listen`, or asked on a
/// terminal when the bridge is wanted (`wanted`: phones are to be
/// created), the box's LAN addresses offered; without a terminal, the
/// default ([`DEFAULT_LISTEN`]). `None`: no bridge.
pub(super) fn sip_listen(
    a: &SetupArgs,
    term: Option<&Term>,
    wanted: bool,
) -> Result<Option<SocketAddr>> {
    if let Some(v) = &a.sip_listen {
        return check_listen(v)
            .map(Some)
            .map_err(|e| e.context("--sip-listen"));
    }
    if !wanted {
        return Ok(None);
    }
    let Some(t) = term else {
        return Ok(Some(DEFAULT_LISTEN.parse().expect("literal")));
    };
    let lan = lan_addresses();
    if lan.is_empty() {
        t.print("  this box has no LAN address yet; 0.0.0.0 listens on every address\n");
    } else {
        let shown: Vec<String> = lan.iter().map(|(n, ip)| format!("{ip} ({n})")).collect();
        t.print(&format!(
            "  this box's addresses: {}; 0.0.0.0 listens on every address\n",
            shown.join(", ")
        ));
    }
    loop {
        let v = t.ask(
            "SIP address the phones register at (IP:PORT)",
            Some(DEFAULT_LISTEN),
        )?;
        match check_listen(&v) {
            Ok(addr) => return Ok(Some(addr)),
            Err(e) => t.print(&format!("  {e:#}\n")),
        }
    }
}

/// `v` as the bridge's listening address: `IP:PORT` or `IP` (port 5060),
/// the IP one of this box's (or unspecified: every address), the port not
/// 0, not in the RTP range, and free.
pub(super) fn check_listen(v: &str) -> Result<SocketAddr> {
    let addr = match v.trim().parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => match v.trim().parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, 5060),
            Err(_) => bail!(
                "`{v}` is not IP:PORT (for example 192.168.1.20:5060, or 0.0.0.0:5060 for every address)"
            ),
        },
    };
    let (lo, hi) = crate::config::DEFAULT_RTP_PORTS;
    if addr.port() == 0 {
        bail!("`{v}`: the port must be given (5060 is SIP's)");
    }
    if (lo..=hi).contains(&addr.port()) {
        bail!(
            "`{v}`: port {} is in the calls' RTP range ({lo}-{hi}); use another (5060 is SIP's)",
            addr.port()
        );
    }
    if !addr.ip().is_unspecified() && !local_addresses().contains(&addr.ip()) {
        let lan: Vec<String> = lan_addresses()
            .iter()
            .map(|(_, ip)| ip.to_string())
            .collect();
        bail!(
            "{} is not an address of this box (its addresses: {}; 0.0.0.0 for every address)",
            addr.ip(),
            if lan.is_empty() {
                "none but loopback".into()
            } else {
                lan.join(", ")
            }
        );
    }
    match std::net::UdpSocket::bind(addr) {
        Ok(_) => Ok(addr),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "UDP {addr} is taken by another program (another SIP service? `ss -lunp 'sport = :{}'` names it); pick another port",
            addr.port()
        ),
        Err(e) => bail!("cannot listen on {addr}: {e}"),
    }
}

/// This box's addresses, loopback included.
fn local_addresses() -> Vec<IpAddr> {
    interfaces().into_iter().map(|(_, ip)| ip).collect()
}

/// The addresses phones on the LAN can reach: no loopback, no IPv6
/// link-local; with their interface's name.
fn lan_addresses() -> Vec<(String, IpAddr)> {
    interfaces()
        .into_iter()
        .filter(|(_, ip)| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect()
}

fn interfaces() -> Vec<(String, IpAddr)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut v: Vec<(String, IpAddr)> = addrs
        .filter_map(|a| {
            let sa = a.address?;
            let ip = sa
                .as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| sa.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))?;
            Some((a.interface_name, ip))
        })
        .collect();
    v.dedup();
    v
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
