//! The phone bridge: the IO shell around [`switchboard`] (the sans-IO call
//! logic over the sans-IO SIP core, `sip::*`), connecting the LAN's desk
//! phones to calls on the relay connection.
//!
//! One task owns the [`switchboard::Switchboard`] and is the only one that
//! touches it: UDP and TCP sockets, the relay link, the media engine and a
//! timer feed it through `select!`, and the task carries out the actions it
//! returns (SIP bytes to the sockets, signals to the relay, commands to the
//! media engine, relay flow routes) and copies its counters into its metrics
//! ([`metrics`], which the gateway registers). The media of every answered call runs in one media
//! engine task ([`media`]). What the bridge does with calls and
//! registrations is described in [`switchboard`].
//!
//! The registrations are published to a [`registrations::PhonesBoard`]
//! (the status socket's `GET /phones`) when they change, after the actions
//! of the event that changed them are carried out.
//!
//! The phone store is re-read when its file changes ([`StoreWatch`]):
//! `voxgate phones add`, `remove` and `rotate` take effect on the running
//! bridge at its next SIP message or timer tick (at most a second), without
//! a restart; the registrations of rotated and removed phones are dropped.

pub mod media;
pub mod metrics;
pub mod phone_store;
pub mod registrations;
pub mod switchboard;
pub mod tcp;

use crate::codec::CodecConfig;
use crate::media::leg::PhoneLeg;
use crate::media::ports::{PortPair, PortPool};
use crate::proto::signal::CallSignal;
use crate::sip::SipConfig;
use crate::sip::guard::Cidr;
use crate::sip::transaction::Transmit;
use crate::transport::link::{CallLink, ConnSlot, FlowRoutes, LinkEvent};
use anyhow::{Context, Result};
use media::{CallMedia, EngineCmd, MediaEvent};
use metrics::BridgeMetrics;
use phone_store::{PhoneStore, Stamp};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard::{Action, Setup, Stats, Switchboard, SystemEntropy, Transport};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub use switchboard::{FIRST_FLOW, MAX_CALLS};

/// What `voxgate run` binds for the bridge before the privilege drop.
#[derive(Debug)]
pub struct PreparedBridge {
    cfg: SipConfig,
    udp: std::net::UdpSocket,
    tcp: Option<std::net::TcpListener>,
    pool: PortPool,
    phones: PhoneStore,
    watch: StoreWatch,
    allow: Vec<ipnet::IpNet>,
    advertise: IpAddr,
}

/// Notices that the phone store file changed and reads it again, with the
/// sealing material read at start (the machine id may be out of the
/// sandbox's reach later; the store's directory is not,
/// [`PreparedBridge::sandbox_read_paths`]).
pub struct StoreWatch {
    path: std::path::PathBuf,
    realm: String,
    material: crate::pki::sealed::Material,
    /// The version in use.
    loaded: Option<Stamp>,
    /// A version that could not be read (reported once, retried when it
    /// changes again).
    failed: Option<Option<Stamp>>,
    /// The file could not even be checked (reported once).
    unchecked: bool,
}

impl std::fmt::Debug for StoreWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWatch")
            .field("path", &self.path)
            .field("loaded", &self.loaded)
            .finish_non_exhaustive()
    }
}

impl StoreWatch {
    /// Load the store at `path` and watch it from there.
    pub fn load(
        path: &std::path::Path,
        realm: &str,
        material: crate::pki::sealed::Material,
    ) -> Result<(PhoneStore, StoreWatch), phone_store::PhonesError> {
        let io = |source| phone_store::PhonesError::Io {
            path: path.into(),
            source,
        };
        // The stamp before the content: a change in between is seen again.
        let loaded = Stamp::of(path).map_err(io)?;
        let store = PhoneStore::load(path, &material, realm)?;
        Ok((
            store,
            StoreWatch {
                path: path.into(),
                realm: realm.into(),
                material,
                loaded,
                failed: None,
                unchecked: false,
            },
        ))
    }

    /// The store, when the file changed since the last load and reads;
    /// `None` when it did not change, or when the new version cannot be
    /// read (then the phones loaded before stay, and the reason is logged
    /// once per version).
    pub fn changed(&mut self) -> Option<PhoneStore> {
        let stamp = match Stamp::of(&self.path) {
            Ok(s) => s,
            Err(e) => {
                if !self.unchecked {
                    warn!(path = %self.path.display(), error = %e,
                          "phone store cannot be checked; the phones loaded before stay in use");
                    self.unchecked = true;
                }
                return None;
            }
        };
        self.unchecked = false;
        if stamp == self.loaded || self.failed == Some(stamp) {
            return None;
        }
        match PhoneStore::load(&self.path, &self.material, &self.realm) {
            Ok(store) => {
                self.loaded = stamp;
                self.failed = None;
                Some(store)
            }
            Err(e) => {
                warn!(error = %e, "phone store changed but cannot be read; the phones loaded before stay in use");
                self.failed = Some(stamp);
                None
            }
        }
    }
}

impl PreparedBridge {
    /// Directories the bridge reads after the privilege drop: the phone
    /// store's (for [`StoreWatch`]; a rewrite replaces the file, so the rule
    /// must be on the directory).
    pub fn sandbox_read_paths(&self) -> Vec<std::path::PathBuf> {
        vec![phone_store::store_dir(&self.cfg.phones).to_path_buf()]
    }
}

/// The subnets of the interfaces that carry `listen` (all of them when it is
/// unspecified; loopback only when listening on loopback).
fn interface_subnets(listen: IpAddr) -> Vec<ipnet::IpNet> {
    let mut v = Vec::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return v;
    };
    for a in addrs {
        let (Some(addr), Some(mask)) = (a.address, a.netmask) else {
            continue;
        };
        let pair = match (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            (Some(ip), Some(m)) => Some((IpAddr::V4(ip.ip()), IpAddr::V4(m.ip()))),
            _ => match (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                (Some(ip), Some(m)) => Some((IpAddr::V6(ip.ip()), IpAddr::V6(m.ip()))),
                _ => None,
            },
        };
        let Some((ip, m)) = pair else { continue };
        let wanted = if listen.is_unspecified() {
            !ip.is_loopback()
        } else {
            ip == listen
        };
        if wanted && let Ok(net) = ipnet::IpNet::with_netmask(ip, m) {
            v.push(net.trunc());
        }
    }
    v
}

/// The addresses of this host's interfaces.
fn local_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| {
            let a = a.address?;
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect()
}

/// Where the RTP sockets bind: no wider than needed. The SIP address when
/// SIP listens on one; when it listens on all, the advertised address if
/// it is one of this host's (`local`), else all addresses.
fn rtp_bind_addr(listen: IpAddr, advertise: IpAddr, local: &[IpAddr]) -> IpAddr {
    if !listen.is_unspecified() {
        return listen;
    }
    let same_family = advertise.is_ipv4() == listen.is_ipv4();
    if same_family && local.contains(&advertise) {
        advertise
    } else {
        listen
    }
}

/// The address phones should reach us at.
fn advertise_addr(cfg: &SipConfig) -> IpAddr {
    if let Some(a) = cfg.advertise {
        return a;
    }
    if !cfg.listen.ip().is_unspecified() {
        return cfg.listen.ip();
    }
    interface_subnets(cfg.listen.ip())
        .iter()
        .map(|n| n.addr())
        .find(|ip| ip.is_ipv4())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Bind the SIP sockets and the RTP pool and open the phone store (before
/// the privilege drop). `material` seals the store (kept to re-read it).
pub fn prepare(cfg: &SipConfig, material: crate::pki::sealed::Material) -> Result<PreparedBridge> {
    let udp = std::net::UdpSocket::bind(cfg.listen)
        .with_context(|| format!("cannot bind SIP UDP {} ([sip] listen)", cfg.listen))?;
    udp.set_nonblocking(true)?;
    let tcp = if cfg.tcp {
        let l = std::net::TcpListener::bind(cfg.listen)
            .with_context(|| format!("cannot bind SIP TCP {} ([sip] listen)", cfg.listen))?;
        l.set_nonblocking(true)?;
        Some(l)
    } else {
        None
    };
    // RTP on the one address phones send it to: the SIP address, or, when
    // SIP listens on all, the advertised address if it is this host's.
    let advertise = advertise_addr(cfg);
    let rtp_ip = rtp_bind_addr(cfg.listen.ip(), advertise, &local_addresses());
    let pool = PortPool::bind(rtp_ip, cfg.rtp_ports.0, cfg.rtp_ports.1)?;
    let (phones, watch) = StoreWatch::load(&cfg.phones, &cfg.realm, material)?;
    let allow = cfg
        .allow
        .clone()
        .unwrap_or_else(|| interface_subnets(cfg.listen.ip()));
    if allow.is_empty() {
        warn!(
            "[sip] allow is not set and the listening interface has no subnet: no phone can register"
        );
    }
    info!(listen = %cfg.listen, tcp = cfg.tcp, rtp_ports = ?cfg.rtp_ports, %rtp_ip, phones = phones.len(),
          allow = ?allow.iter().map(ToString::to_string).collect::<Vec<_>>(), "SIP bridge bound");
    Ok(PreparedBridge {
        advertise,
        cfg: cfg.clone(),
        udp,
        tcp,
        pool,
        phones,
        watch,
        allow,
    })
}

impl switchboard::Ports for PortPool {
    type Pair = PortPair;

    fn lease(&mut self, now: Instant) -> Option<PortPair> {
        PortPool::lease(self, now)
    }

    fn port(pair: &PortPair) -> u16 {
        pair.port()
    }

    fn release(&mut self, pair: PortPair, now: Instant) {
        PortPool::release(self, pair, now);
    }
}

/// What carries out the switchboard's actions.
struct Shell {
    udp: tokio::net::UdpSocket,
    writers: tcp::Writers,
    tcp_tx: mpsc::Sender<tcp::Inbound>,
    /// Who may connect over TCP (the switchboard's bans, published).
    gate: Arc<tcp::Gate>,
    /// Relay flow → the media engine's relay input (read by the relay
    /// connection's datagram reader).
    flows: Arc<FlowRoutes>,
    /// The media engine's relay input (every call's flow routes to it).
    relay_tx: mpsc::Sender<(Instant, bytes::Bytes)>,
    /// The media engine.
    engine: mpsc::UnboundedSender<EngineCmd>,
    signals: mpsc::Sender<CallSignal>,
    metrics: Arc<BridgeMetrics>,
    /// The switchboard's counters already in the metrics.
    exported: Stats,
}

impl Shell {
    /// Carry out every pending action; `closing`: the bridge stops (no new
    /// TCP connection, send errors ignored).
    fn carry_out(&mut self, sb: &mut Switchboard<PortPool>, closing: bool) {
        while let Some(a) = sb.poll_action() {
            match a {
                Action::SendSip(t) => self.send_sip(t, closing),
                Action::Signal(s) => {
                    if self.signals.try_send(s).is_err() {
                        warn!("relay connection is not keeping up; call signal dropped");
                    }
                }
                Action::StartMedia {
                    call,
                    leg,
                    pair,
                    remote,
                    sources,
                    relay_flow,
                } => {
                    let leg = match PhoneLeg::new(&leg) {
                        Ok(l) => l,
                        Err(e) => {
                            warn!(call, error = %e, "call media could not start");
                            sb.media_failed(Instant::now(), call, pair);
                            continue;
                        }
                    };
                    if let Some(f) = relay_flow {
                        self.flows.insert(f, self.relay_tx.clone());
                    }
                    let start = EngineCmd::Start(Box::new(CallMedia {
                        call,
                        leg,
                        pair,
                        remote,
                        sources,
                        relay_flow,
                    }));
                    if let Err(mpsc::error::SendError(EngineCmd::Start(m))) =
                        self.engine.send(start)
                    {
                        // The engine only stops with the bridge.
                        sb.media_failed(Instant::now(), m.call, m.pair);
                    }
                }
                Action::Media(c, cmd) => {
                    let _ = self.engine.send(EngineCmd::Call(c, cmd));
                }
                Action::StopMedia(c) => {
                    let _ = self.engine.send(EngineCmd::Stop(c));
                }
                Action::Unroute(f) => self.flows.remove(f),
            }
        }
        let stats = sb.stats();
        if stats.bans != self.exported.bans {
            self.gate.publish(sb.screen(Instant::now()));
        }
        self.export(stats);
    }

    fn send_sip(&self, t: Transmit, closing: bool) {
        let Transmit {
            dest,
            reliable,
            bytes,
        } = t;
        if reliable {
            if !self.writers.send(dest, bytes.clone()) && !closing {
                tokio::spawn(tcp::connect_and_send(
                    dest,
                    bytes,
                    self.writers.clone(),
                    self.tcp_tx.clone(),
                    self.gate.clone(),
                ));
            }
        } else if let Err(e) = self.udp.try_send_to(&bytes, dest) {
            debug!(%dest, error = %e, "SIP datagram not sent");
        }
    }

    /// Copy the switchboard's counters and gauges into the metrics.
    fn export(&mut self, s: Stats) {
        export(&self.metrics, self.exported, s);
        self.exported = s;
    }
}

/// Add what the counters of `s` gained since `old` and set the gauges that
/// changed (the transaction count every time, as it always was).
fn export(m: &BridgeMetrics, old: Stats, s: Stats) {
    for (now, before, c) in [
        (s.dropped, old.dropped, &m.sip_dropped),
        (s.auth_failures, old.auth_failures, &m.sip_auth_failures),
        (s.bans, old.bans, &m.sip_bans),
        (
            s.transactions_full,
            old.transactions_full,
            &m.sip_transactions_full,
        ),
        (s.calls, old.calls, &m.sip_calls),
    ] {
        if now > before {
            c.add(now - before);
        }
    }
    m.sip_transactions.set(s.transactions as f64);
    if s.calls_active != old.calls_active {
        m.sip_calls_active.set(s.calls_active as f64);
    }
    if s.registered != old.registered {
        m.sip_registered.set(s.registered as f64);
    }
}

/// Run the bridge until `shutdown` resolves; the registrations go to
/// `board` as they change.
pub async fn run(
    p: PreparedBridge,
    link: CallLinkEnds,
    slot: Arc<ConnSlot>,
    opus: CodecConfig,
    metrics: Arc<BridgeMetrics>,
    board: Arc<registrations::PhonesBoard>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let udp = tokio::net::UdpSocket::from_std(p.udp)?;
    let port = udp.local_addr()?.port();
    let writers = tcp::Writers::default();
    let (tcp_tx, mut tcp_rx) = mpsc::channel::<tcp::Inbound>(256);
    let allow: Vec<Cidr> = p
        .allow
        .iter()
        .filter_map(|n| Cidr::parse(&n.to_string()).ok())
        .collect();
    let gate = tcp::Gate::new(allow.clone(), p.cfg.ipv6_prefix, metrics.clone());
    let tcp_task = match p.tcp {
        Some(l) => Some(tokio::spawn(tcp::serve(
            tokio::net::TcpListener::from_std(l)?,
            writers.clone(),
            tcp_tx.clone(),
            gate.clone(),
        ))),
        None => None,
    };
    let digest_secret = crate::sip::auth::random_secret()
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let (media_tx, mut media_rx) = mpsc::channel::<MediaEvent>(256);
    let (engine_tx, engine_rx) = mpsc::unbounded_channel();
    let (relay_tx, relay_rx) = mpsc::channel(media::RELAY_QUEUE);
    let engine = media::Engine {
        cmds: engine_rx,
        events: media_tx,
        slot,
        metrics: metrics.clone(),
    };
    tokio::spawn(engine.run(relay_rx));
    let CallLinkEnds {
        signals,
        mut events,
        media,
    } = link;
    let advertise = p.advertise;
    let mut watch = p.watch;
    let mut sb = Switchboard::new(
        Instant::now(),
        Setup {
            cfg: p.cfg,
            opus,
            advertise,
            port,
            allow,
            phones: p.phones,
            ports: p.pool,
            digest_secret,
            entropy: Box::new(SystemEntropy::default()),
        },
    );
    let mut shell = Shell {
        udp,
        writers,
        tcp_tx,
        gate,
        flows: media,
        relay_tx,
        engine: engine_tx,
        signals,
        metrics,
        exported: Stats::default(),
    };
    info!(port, %advertise, "SIP bridge ready");
    let mut published = None;
    board.follow(&sb, &mut published);
    tokio::pin!(shutdown);
    let mut buf = vec![0u8; 65_536];
    loop {
        let later = Instant::now() + Duration::from_secs(1);
        let deadline = sb.poll_timeout().map_or(later, |t| t.min(later));
        let deadline = tokio::time::Instant::from_std(deadline);
        tokio::select! {
            r = shell.udp.recv_from(&mut buf) => {
                if let Ok((n, src)) = r {
                    reload(&mut watch, &mut sb);
                    sb.handle_datagram(Instant::now(), &buf[..n], src);
                }
            }
            Some((src, m)) = tcp_rx.recv() => match m {
                Some(m) => {
                    reload(&mut watch, &mut sb);
                    sb.handle_message(Instant::now(), *m, src, Transport::Tcp);
                }
                None => sb.handle_stream_error(),
            },
            Some(ev) = events.recv() => sb.handle_link(Instant::now(), ev),
            Some(ev) = media_rx.recv() => match ev {
                MediaEvent::Key(c, k) => sb.handle_key(Instant::now(), c, k),
                MediaEvent::Done(_, pair) => sb.media_done(Instant::now(), pair),
            },
            _ = tokio::time::sleep_until(deadline) => {
                reload(&mut watch, &mut sb);
                sb.handle_timeout(Instant::now());
            }
            () = &mut shutdown => break,
        }
        shell.carry_out(&mut sb, false);
        board.follow(&sb, &mut published);
    }
    // Hang up every call so phones do not keep talking to nobody.
    sb.shutdown(Instant::now());
    shell.carry_out(&mut sb, true);
    if let Some(t) = tcp_task {
        t.abort();
    }
    Ok(())
}

/// Before a SIP message is handled (every one, so that a request that
/// follows `voxgate phones rotate` is checked against the new credentials)
/// and at every timer tick: take up a changed phone store. A `stat` when
/// nothing changed.
fn reload(watch: &mut StoreWatch, sb: &mut Switchboard<PortPool>) {
    if let Some(store) = watch.changed() {
        let phones = store.len();
        let changed = sb.replace_phones(Instant::now(), store);
        info!(target: "audit", phones, changed = ?changed,
              "phone store reloaded; registrations of changed extensions dropped");
    }
}

/// The bridge's ends of the call link (the client holds the others).
#[derive(Debug)]
pub struct CallLinkEnds {
    /// Signals to the relay.
    pub signals: mpsc::Sender<CallSignal>,
    /// Events from the relay connection.
    pub events: mpsc::Receiver<LinkEvent>,
    /// Call media routes (shared with the relay connection's datagram reader).
    pub media: Arc<FlowRoutes>,
}

/// A connected pair of link ends.
pub fn link() -> (CallLink, CallLinkEnds) {
    let (sig_tx, sig_rx) = mpsc::channel(256);
    let (ev_tx, ev_rx) = mpsc::channel(256);
    let routes = Arc::new(FlowRoutes::default());
    (
        CallLink {
            events: ev_tx,
            signals: sig_rx,
            media: routes.clone(),
        },
        CallLinkEnds {
            signals: sig_tx,
            events: ev_rx,
            media: routes,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_watch_takes_up_a_rewritten_store_and_keeps_the_old_on_a_bad_one() {
        use crate::pki::sealed::Material;
        const MID: &str = "5f3c0a1e9b8d4c7e8a6b2d1f0e9c8b7a";
        let dir = std::env::temp_dir().join(format!("vx-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("phones.sealed");
        let m = Material::new(MID, None).unwrap();
        // No store yet: empty, and the first one written is taken up.
        let (empty, mut w) =
            StoreWatch::load(&path, "gw-1", Material::new(MID, None).unwrap()).unwrap();
        assert!(empty.is_empty());
        assert!(w.changed().is_none());
        let mut s = PhoneStore::new("gw-1");
        s.add("201", 1).unwrap();
        s.save(&path, &m).unwrap();
        assert_eq!(w.changed(), Some(s.clone()));
        assert!(w.changed().is_none(), "once per version");
        // A rotation (a rewrite of the same size) is seen.
        s.rotate("201").unwrap();
        s.save(&path, &m).unwrap();
        assert_eq!(w.changed(), Some(s.clone()));
        // A store sealed on another box: not taken up, tried once per version.
        let other = Material::new("00000000000000000000000000000001", None).unwrap();
        let mut bad = s.clone();
        bad.rotate("201").unwrap();
        bad.save(&path, &other).unwrap();
        assert!(w.changed().is_none());
        assert!(w.changed().is_none());
        // Fixed: taken up.
        bad.save(&path, &m).unwrap();
        assert_eq!(w.changed(), Some(bad));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rtp_binds_to_one_address_when_it_can() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let local = [ip("127.0.0.1"), ip("192.168.1.2"), ip("fd00::2")];
        assert_eq!(
            rtp_bind_addr(ip("127.0.0.1"), ip("192.168.1.2"), &local),
            ip("127.0.0.1")
        );
        assert_eq!(
            rtp_bind_addr(ip("0.0.0.0"), ip("192.168.1.2"), &local),
            ip("192.168.1.2")
        );
        // An advertised address that is not ours (a NAT's): all addresses.
        assert_eq!(
            rtp_bind_addr(ip("0.0.0.0"), ip("203.0.113.9"), &local),
            ip("0.0.0.0")
        );
        assert_eq!(
            rtp_bind_addr(ip("0.0.0.0"), ip("fd00::2"), &local),
            ip("0.0.0.0")
        );
        assert_eq!(
            rtp_bind_addr(ip("::"), ip("fd00::2"), &local),
            ip("fd00::2")
        );
    }

    #[test]
    fn switchboard_stats_reach_the_bridge_metrics() {
        let m = BridgeMetrics::register(&mut crate::telemetry::metrics::Registry::default());
        let a = Stats {
            dropped: 2,
            auth_failures: 1,
            calls: 1,
            transactions: 3,
            calls_active: 1,
            registered: 2,
            ..Stats::default()
        };
        export(&m, Stats::default(), a);
        let b = Stats {
            dropped: 5,
            bans: 1,
            transactions_full: 4,
            transactions: 0,
            calls_active: 0,
            ..a
        };
        export(&m, a, b);
        assert_eq!(m.sip_dropped.get(), 5);
        assert_eq!(m.sip_auth_failures.get(), 1);
        assert_eq!(m.sip_bans.get(), 1);
        assert_eq!(m.sip_transactions_full.get(), 4);
        assert_eq!(m.sip_calls.get(), 1);
        assert_eq!(m.sip_transactions.get(), 0.0);
        assert_eq!(m.sip_calls_active.get(), 0.0);
        assert_eq!(m.sip_registered.get(), 2.0);
    }
}
