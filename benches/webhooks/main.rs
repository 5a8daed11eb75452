//! Webhook deliveries per second (`cargo bench --bench webhooks`;
//! `scripts/bench-webhooks` runs it and prints the figure).
//!
//! The relay's own delivery path, end to end on loopback: events are
//! written to the outbox of a registry on disk (WAL, the relay's settings),
//! one per `relay::webhooks::emit`, and the delivery worker
//! (`relay::webhooks::worker`, `[webhooks] concurrency` 16) takes them,
//! signs each (Standard Webhooks, two secrets: a rotation in progress),
//! opens a new TCP + TLS 1.3 connection per delivery (the client never
//! pools: every attempt connects to the address it just checked), POSTs
//! it and records the attempt through the group commit. The receiver is a
//! minimal HTTPS responder in this process (tokio-rustls, 204 to every
//! request) on its own runtime thread, so the figure is the relay's side.
//!
//! Prints one JSON line: deliveries, seconds, deliveries per second.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use voxgate::relay::commit::GroupCommit;
use voxgate::relay::registry::{AuditKey, Registry};
use voxgate::relay::webhooks::client::{Client, Resolver};
use voxgate::relay::webhooks::policy::{Guard, Retry};
use voxgate::relay::webhooks::worker::{Counts, Worker};
use voxgate::relay::webhooks::{Event, emit};

const EVENTS: usize = 3000;

fn receiver() -> (u16, rustls::RootCertStore) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else { return };
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut got = 0;
                    // Headers, then the body by its Content-Length.
                    loop {
                        let Ok(n) = tls.read(&mut buf[got..]).await else { return };
                        if n == 0 {
                            return;
                        }
                        got += n;
                        let text = String::from_utf8_lossy(&buf[..got]);
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text[..end]
                                .lines()
                                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                                .unwrap_or(0);
                            if got >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    let _ = tls
                        .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
    });
    (port, roots)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("voxgate-bench-webhooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut registry = Registry::open(&dir.join("registry.sqlite3")).unwrap();
    registry.set_audit_key(AuditKey::random().unwrap()).unwrap();
    let (port, roots) = receiver();
    let (ep, _) = registry
        .webhook_endpoint_add(&format!("https://127.0.0.1:{port}/hook"), &[], "bench")
        .unwrap();
    registry.webhook_rotate_secret(&ep.id, 3600).unwrap();
    let t0 = Instant::now();
    registry
        .atomically(|r| {
            for i in 0..EVENTS {
                emit(
                    r,
                    &Event::device_online(&format!("box-{i}"), "192.0.2.1:4433", "0a1b2c"),
                )?;
            }
            Ok::<_, voxgate::relay::registry::RegistryError>(())
        })
        .unwrap();
    let written = t0.elapsed();
    let registry = Arc::new(std::sync::Mutex::new(registry));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let counts = Arc::new(Counts::default());
    let t1 = Instant::now();
    rt.block_on(async {
        let worker = Worker {
            registry: registry.clone(),
            commits: Arc::new(GroupCommit::new(registry.clone())),
            client: Client::new(
                roots,
                Guard::new(&["127.0.0.1".into()]),
                Resolver::System,
                Duration::from_secs(30),
            )
            .unwrap(),
            retry: Retry {
                retries: 3,
                backoff: Duration::from_secs(5),
            },
            concurrency: 16,
            wake: Arc::new(tokio::sync::Notify::new()),
        };
        let task = tokio::spawn(worker.run(counts.clone()));
        while counts.delivered.get() < EVENTS as u64 {
            assert!(
                t1.elapsed() < Duration::from_secs(110),
                "bench took too long"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
    });
    let secs = t1.elapsed().as_secs_f64();
    let failed = counts.failed_attempts.get();
    println!(
        "{{\"deliveries\":{EVENTS},\"seconds\":{secs:.3},\"deliveries_per_s\":{:.0},\"failed_attempts\":{failed},\"outbox_writes_per_s\":{:.0},\"concurrency\":16,\"signatures_per_delivery\":2}}",
        EVENTS as f64 / secs,
        EVENTS as f64 / written.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
