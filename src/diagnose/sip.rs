//! `sip.listen` and `sip.phones`: the phone bridge's port and the phones
//! registered at the running daemon.

use super::{Finding, daemon};
use crate::bridge::registrations::PhonesView;
use crate::config::GatewayConfig;
use crate::sip::SipConfig;

/// `sip.listen`: the running daemon holds `sip.listen` (UDP, and TCP when
/// on), or, with no daemon, the address can be bound.
pub fn listen(sip: &SipConfig, pid: Option<i32>) -> Finding {
    const ID: &str = "sip.listen";
    let addr = sip.listen;
    let port = addr.port();
    let proto = if sip.tcp { "UDP and TCP" } else { "UDP" };
    let udp_holders = daemon::port_holders(port, false);
    let tcp_holders = if sip.tcp {
        daemon::port_holders(port, true)
    } else {
        Vec::new()
    };
    if let Some(p) = pid
        && udp_holders.contains(&p)
        && (!sip.tcp || tcp_holders.contains(&p))
    {
        return Finding::ok(
            ID,
            format!("the running voxgate listens on {addr} ({proto})"),
        );
    }
    let udp = std::net::UdpSocket::bind(addr).map(drop);
    let tcp = if sip.tcp {
        std::net::TcpListener::bind(addr).map(drop)
    } else {
        Ok(())
    };
    let taken = |holders: &[i32]| {
        let names: Vec<String> = holders
            .iter()
            .filter(|h| Some(**h) != pid)
            .map(|h| format!("pid {h} ({})", daemon::comm(*h)))
            .collect();
        if names.is_empty() {
            String::new()
        } else {
            format!(" by {}", names.join(", "))
        }
    };
    match (udp, tcp) {
        (Err(e), _) if e.kind() == std::io::ErrorKind::AddrInUse => Finding::fail(
            ID,
            format!("UDP {addr} is taken{}", taken(&udp_holders)),
            format!(
                "stop the other SIP service (`ss -lunp 'sport = :{port}'` names it), or set sip.listen to a free port and reconfigure the phones"
            ),
        ),
        (_, Err(e)) if e.kind() == std::io::ErrorKind::AddrInUse => Finding::fail(
            ID,
            format!("TCP {addr} is taken{}", taken(&tcp_holders)),
            format!(
                "stop the other SIP service (`ss -ltnp 'sport = :{port}'` names it), or set sip.listen to a free port"
            ),
        ),
        (Err(e), _) | (_, Err(e)) => Finding::fail(
            ID,
            format!("cannot bind {addr}: {e}"),
            "set sip.listen to an address of this box (or 0.0.0.0:5060)",
        ),
        (Ok(()), Ok(())) => match pid {
            Some(p) => Finding::fail(
                ID,
                format!(
                    "the running voxgate (pid {p}) does not listen on {addr}: its phone bridge stopped"
                ),
                "read its log for why (`journalctl -u voxgate -b | grep bridge`), then restart it",
            ),
            None => Finding::ok(ID, format!("{addr} ({proto}) is free for the phone bridge")),
        },
    }
}

/// `sip.phones`: which of the phone store's extensions have a phone
/// registered at the running daemon (its status socket's `GET /phones`,
/// else only how many, from its metrics); the message names those that
/// have none.
pub fn phones(
    cfg: &GatewayConfig,
    sip: &SipConfig,
    pid: Option<i32>,
    metrics: Option<&str>,
    view: Option<&PhonesView>,
) -> Finding {
    const ID: &str = "sip.phones";
    let store =
        crate::pki::sealed::material(&cfg.identity.machine_id, cfg.identity.serial.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|m| {
                crate::bridge::phone_store::PhoneStore::load(&sip.phones, &m, &sip.realm)
                    .map_err(|e| e.to_string())
            });
    let exts: Vec<String> = match store {
        Ok(s) => s.iter().map(|(e, _)| e.to_string()).collect(),
        Err(e) => {
            return Finding::fail(
                ID,
                format!("cannot read the phone store {}: {e}", sip.phones.display()),
                "`voxgate phones list` shows the same error; a store sealed on another machine needs its phones added again",
            );
        }
    };
    let configured = exts.len();
    if configured == 0 {
        return Finding::warn(
            ID,
            "no phones added: none can register",
            "add one: `voxgate phones add EXTENSION` (prints its password)",
        );
    }
    if pid.is_none() {
        return Finding::skip(ID, "service");
    }
    let fix = format!(
        "point each phone at this box ({}) with its extension and password (`voxgate phones rotate EXT` makes a new one), and check the phone's registration status",
        sip.advertise
            .map(|a| std::net::SocketAddr::new(a, sip.listen.port()).to_string())
            .unwrap_or_else(|| sip.listen.to_string())
    );
    if let Some(v) = view.filter(|v| v.bridge) {
        let registered = |e: &String| v.phones.iter().any(|p| &p.extension == e && p.registered);
        let (up, down): (Vec<&String>, Vec<&String>) = exts.iter().partition(|e| registered(e));
        let list = |v: &[&String]| v.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ");
        let line = format!(
            "{} of {configured} extension(s) have a registered phone",
            up.len()
        );
        return if down.is_empty() {
            Finding::ok(ID, format!("{line}: {}", list(&up)))
        } else {
            let msg = format!("{line}; not registered: {}", list(&down));
            if up.is_empty() {
                Finding::fail(ID, msg, fix)
            } else {
                Finding::warn(ID, msg, fix)
            }
        };
    }
    let Some(registered) =
        metrics.and_then(|m| daemon::value(m, "voxgate_sip_registered_extensions"))
    else {
        return Finding::warn(
            ID,
            format!(
                "{configured} extension(s) added; registrations unknown: neither the status socket nor a metrics endpoint answers"
            ),
            "check that the service's runtime directory exists (`RuntimeDirectory=voxgate`), or set `[telemetry] status_socket` or `metrics`, and restart",
        );
    };
    let registered = registered as usize;
    let line = format!("{registered} of {configured} extension(s) have a registered phone");
    if registered == 0 {
        Finding::fail(ID, line, fix)
    } else if registered < configured {
        Finding::warn(ID, line, fix)
    } else {
        Finding::ok(ID, line)
    }
}
