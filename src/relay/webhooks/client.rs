//! The webhooks' HTTPS client: resolve the endpoint's host, check every
//! address with the SSRF guard, connect to a checked address (never
//! resolving again), verify the receiver's certificate for the host name
//! (SNI), send one POST over HTTP/1.1, and return the status. Redirects
//! are returned, never followed. The whole attempt is bounded by the
//! configured timeout.
//!
//! Receivers are verified against the system's CA store, read at run time
//! (`/etc/ssl/certs`, which the static binary reads as well as the
//! dynamic one), plus an optional bundle (`[webhooks] ca_bundle`).

use super::policy::{Guard, Refused, Target, UrlError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The system's CA store: the bundle Debian and most distributions keep,
/// else every PEM file of the directory.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The system's CA directory.
pub const SYSTEM_CA_DIR: &str = "/etc/ssl/certs";
/// Most bytes of a response body read (the rest is dropped).
const MAX_RESPONSE: usize = 64 * 1024;
/// The `User-Agent` sent.
const USER_AGENT: &str = concat!("voxgate-webhooks/", env!("CARGO_PKG_VERSION"));

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The endpoint's URL is not usable.
    #[error("{0}")]
    Url(#[from] UrlError),
    /// Every address the host resolved to was refused by the SSRF guard.
    #[error("refused by the SSRF guard: {0}")]
    Refused(Refused),
    /// The host did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// No checked address accepted a connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed (the certificate, most often).
    #[error("TLS with {host} failed: {source}")]
    Tls {
        /// The host.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a header value).
    #[error("cannot build the request: {0}")]
    Request(String),
    /// The attempt took longer than the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl DeliveryError {
    /// Whether no later attempt can succeed (the URL or the guard).
    pub fn permanent(&self) -> bool {
        matches!(self, DeliveryError::Url(_) | DeliveryError::Refused(_))
    }
}

/// How host names are resolved.
#[derive(Debug, Clone, Default)]
pub enum Resolver {
    /// The system's resolver (`/etc/hosts`, `/etc/resolv.conf`).
    #[default]
    System,
    /// Fixed answers (tests): a name not listed does not resolve.
    Fixed(HashMap<String, Vec<IpAddr>>),
}

impl Resolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Resolver::System => Ok(tokio::net::lookup_host((host, port)).await?.collect()),
            Resolver::Fixed(map) => map
                .get(host)
                .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such host")),
        }
    }
}

/// The CA certificates receivers are verified against: the system's,
/// then `bundle`'s. Unreadable or unparsable files are skipped (logged).
pub fn load_roots(bundle: Option<&Path>) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let mut add = |path: &Path| match std::fs::read(path) {
        Ok(pem) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect();
            let (added, _) = roots.add_parsable_certificates(certs);
            added
        }
        Err(e) => {
            tracing::debug!(file = %path.display(), error = %e, "cannot read CA file");
            0
        }
    };
    let system = Path::new(SYSTEM_CA_FILE);
    let mut n = if system.is_file() {
        add(system)
    } else {
        let mut n = 0;
        if let Ok(dir) = std::fs::read_dir(SYSTEM_CA_DIR) {
            for e in dir.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "pem" || x == "crt") {
                    n += add(&p);
                }
            }
        }
        n
    };
    if let Some(b) = bundle {
        let extra = add(b);
        if extra == 0 {
            tracing::warn!(file = %b.display(), "[webhooks] ca_bundle holds no certificate");
        }
        n += extra;
    }
    tracing::debug!(roots = n, "webhook receivers' CA certificates loaded");
    roots
}

/// One POST: the header lines besides `Host`, `Content-Type`,
/// `Content-Length` and `User-Agent`.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The endpoint's URL.
    pub url: &'a str,
    /// Extra headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: Bytes,
}

/// The client.
#[derive(Clone)]
pub struct Client {
    tls: tokio_rustls::TlsConnector,
    guard: Guard,
    resolver: Resolver,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("guard", &self.guard)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client trusting `roots`, guarded by `guard`.
    pub fn new(
        roots: rustls::RootCertStore,
        guard: Guard,
        resolver: Resolver,
        timeout: Duration,
    ) -> Result<Self, rustls::Error> {
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            guard,
            resolver,
            timeout,
        })
    }

    /// Send `req` and return the answer's status.
    pub async fn post(&self, req: Request<'_>) -> Result<u16, DeliveryError> {
        match tokio::time::timeout(self.timeout, self.attempt(req)).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::Timeout(self.timeout)),
        }
    }

    /// The addresses of `target` that the guard lets through, in the
    /// resolver's order.
    pub async fn checked_addrs(&self, target: &Target) -> Result<Vec<SocketAddr>, DeliveryError> {
        let addrs = match target.ip() {
            Some(ip) => vec![SocketAddr::new(ip, target.port)],
            None => self
                .resolver
                .resolve(&target.host, target.port)
                .await
                .map_err(|source| DeliveryError::Resolve {
                    host: target.host.clone(),
                    source,
                })?,
        };
        let mut refused = None;
        let mut ok = Vec::new();
        for a in addrs {
            match self.guard.check(&target.host, a.ip()) {
                Ok(()) => ok.push(a),
                Err(why) => refused = Some(why),
            }
        }
        match (ok.is_empty(), refused) {
            (true, Some(why)) => Err(DeliveryError::Refused(why)),
            (true, None) => Err(DeliveryError::Resolve {
                host: target.host.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            }),
            (false, _) => Ok(ok),
        }
    }

    async fn attempt(&self, req: Request<'_>) -> Result<u16, DeliveryError> {
        let target = Target::parse(req.url)?;
        let addrs = self.checked_addrs(&target).await?;
        // Connect only to an address that passed the guard: no second
        // look-up can move the connection elsewhere.
        let mut last = None;
        let mut tcp = None;
        for a in addrs {
            match tokio::net::TcpStream::connect(a).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some((a, e)),
            }
        }
        let tcp = match (tcp, last) {
            (Some(s), _) => s,
            (None, Some((addr, source))) => return Err(DeliveryError::Connect { addr, source }),
            (None, None) => unreachable_connect(&target)?,
        };
        let _ = tcp.set_nodelay(true);
        let name = match target.ip() {
            Some(ip) => ServerName::IpAddress(ip.into()),
            None => ServerName::try_from(target.host.clone())
                .map_err(|_| DeliveryError::Url(UrlError::BadHost))?,
        };
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|source| DeliveryError::Tls {
                host: target.host.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let conn = tokio::spawn(conn);
        let mut builder = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri(target.path.as_str())
            .header(hyper::header::HOST, target.authority())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, USER_AGENT)
            .header(hyper::header::CONTENT_LENGTH, req.body.len());
        for (k, v) in &req.headers {
            builder = builder.header(*k, v.as_str());
        }
        let request = builder
            .body(Full::new(req.body))
            .map_err(|e| DeliveryError::Request(e.to_string()))?;
        let answer = sender.send_request(request).await?;
        let status = answer.status().as_u16();
        // Read a bounded part of the body so the exchange completes; its
        // content is not used.
        let mut body = answer.into_body();
        let mut read = 0usize;
        while read < MAX_RESPONSE {
            match body.frame().await {
                Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
        conn.abort();
        Ok(status)
    }
}

fn unreachable_connect(target: &Target) -> Result<tokio::net::TcpStream, DeliveryError> {
    Err(DeliveryError::Resolve {
        host: target.host.clone(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(allow: &[&str], names: &[(&str, &str)]) -> Client {
        let map = names
            .iter()
            .map(|(n, ip)| (n.to_string(), vec![ip.parse().unwrap()]))
            .collect();
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        Client::new(
            rustls::RootCertStore::empty(),
            Guard::new(&allow),
            Resolver::Fixed(map),
            Duration::from_secs(2),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_unless_allowed() {
        let c = client(
            &[],
            &[
                ("rebind.test", "127.0.0.1"),
                ("meta.test", "169.254.169.254"),
            ],
        );
        for url in [
            "https://rebind.test/",
            "https://meta.test/",
            "https://127.0.0.1/",
            "https://[::1]/",
        ] {
            let err = c
                .post(Request {
                    url,
                    headers: vec![],
                    body: Bytes::new(),
                })
                .await
                .unwrap_err();
            assert!(matches!(err, DeliveryError::Refused(_)), "{url}: {err}");
            assert!(err.permanent());
        }
        let allowed = client(&["rebind.test"], &[("rebind.test", "127.0.0.1")]);
        let t = Target::parse("https://rebind.test:1/").unwrap();
        assert_eq!(
            allowed.checked_addrs(&t).await.unwrap(),
            vec!["127.0.0.1:1".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn plain_http_and_bad_urls_are_refused() {
        let c = client(&[], &[]);
        let err = c
            .post(Request {
                url: "http://example.com/",
                headers: vec![],
                body: Bytes::new(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, DeliveryError::Url(UrlError::NotHttps)));
    }

    #[test]
    fn system_roots_load() {
        if Path::new(SYSTEM_CA_FILE).is_file() {
            assert!(!load_roots(None).is_empty());
        }
    }
}
