//! The API's listener: bound before the privilege drop, served after it.
//! TLS 1.3 (rustls) with the operator's certificate, or the relay's own
//! (which its renewal swaps, so the API follows it); HTTP/1.1 (hyper); at
//! most [`MAX_CONNECTIONS`] connections at once, each with a handshake
//! deadline and a header-read deadline, so that slow clients hold
//! nothing for long.

use super::{Api, ApiState, Peer, auth, limits};
use crate::config::{ApiCert, RelayConfig};
use crate::relay::registry::Registry;
use crate::relay::server::RelayCtx;
use crate::transport::tls::ServerCertHolder;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceExt as _;

/// Connections served at once; the next wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time a client has to finish the TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Time a client has to send a request's headers.
const HEADER_DEADLINE: Duration = Duration::from_secs(10);

/// The API as prepared before the privilege drop.
#[derive(Debug)]
pub struct Prepared {
    settings: crate::config::ApiSettings,
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    writer: Registry,
    watch: Registry,
}

impl Prepared {
    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// Bind `[api] listen`, load the certificate and key (`relay_cert`: the
/// relay's own, for `ApiCert::Relay`), open the registry handles. `None`
/// when `[api]` is absent.
pub fn prepare(cfg: &RelayConfig, relay_cert: Arc<ServerCertHolder>) -> Result<Option<Prepared>> {
    let Some(api) = &cfg.api else {
        return Ok(None);
    };
    let resolver: Arc<dyn rustls::server::ResolvesServerCert> = match &api.cert {
        ApiCert::Relay => relay_cert,
        ApiCert::Files { cert, key } => {
            let chain = crate::pki::files::read_certs(cert)
                .with_context(|| format!("{}: [api] cert", cfg.file.display()))?;
            let ck = super::tls_key::certified(cfg, key, chain).with_context(|| {
                format!(
                    "{}: [api] key {} is not the key of [api] cert {}",
                    cfg.file.display(),
                    key.display(),
                    cert.display()
                )
            })?;
            ServerCertHolder::new(Arc::new(ck))
        }
    };
    let tls = crate::transport::tls::https_server_config(resolver)?;
    let listener = std::net::TcpListener::bind(api.listen)
        .with_context(|| format!("cannot bind the API's TCP {}", api.listen))?;
    listener.set_nonblocking(true)?;
    let open = || {
        crate::relay::audit_key::open_registry(&cfg.state_dir, &cfg.ca_binding)
            .with_context(|| format!("cannot open the registry in {}", cfg.state_dir.display()))
    };
    Ok(Some(Prepared {
        settings: api.clone(),
        listener,
        tls: Arc::new(tls),
        writer: open()?,
        watch: open()?,
    }))
}

/// The running API: stop it with [`ApiHandle::stop`], which writes the
/// last batch (rate-limit windows) to the registry.
#[derive(Debug)]
pub struct ApiHandle {
    api: Api,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where it listens.
    pub local: std::net::SocketAddr,
}

impl ApiHandle {
    /// The API's state (for the routes other modules add).
    pub fn state(&self) -> &Api {
        &self.api
    }

    /// Stop accepting, write the pending batch.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.api.flush().await;
    }
}

/// Serve the API on the relay's runtime.
pub fn serve(p: Prepared, relay: Arc<RelayCtx>) -> Result<ApiHandle> {
    let settings = p.settings;
    let mut limiter = limits::Limiter::new(settings.auth_failures_per_minute, &settings.limits);
    limiter.restore(p.writer.rate_rows()?);
    let seen: HashMap<String, i64> = p.writer.devices_seen()?.into_iter().collect();
    let api: Api = Arc::new(ApiState {
        metrics: relay.metrics.clone(),
        relay,
        registry: Arc::new(Mutex::new(p.writer)),
        keys: Mutex::new(auth::Keys::new(p.watch)),
        limiter: Mutex::new(limiter),
        pending: Default::default(),
        seen: Mutex::new(seen),
        last_seen_saved: Default::default(),
        settings,
    });
    let listener = tokio::net::TcpListener::from_std(p.listener)?;
    let local = listener.local_addr()?;
    let app = super::openapi::app(api.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(p.tls);
    tracing::info!(listen = %local, "operator API ready");
    let tasks = vec![
        tokio::spawn(accept_loop(listener, acceptor, app)),
        tokio::spawn(super::flush_loop(api.clone())),
    ];
    Ok(ApiHandle { api, tasks, local })
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "api: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "api: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                req.extensions_mut().insert(Peer(peer));
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "api: connection ended with an error");
            }
        });
    }
}
