//! Device sessions: handshakes and renewals per key backend, and their
//! statistics.

use super::*;

pub(crate) fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    Some(s[i.min(s.len() - 1)])
}

pub(crate) fn dist(v: &[f64]) -> Value {
    let mut o = Value::obj();
    o.set("n", v.len())
        .set("median_ms", quantile(v, 0.5))
        .set("p90_ms", quantile(v, 0.9))
        .set("p99_ms", quantile(v, 0.99))
        .set("min_ms", quantile(v, 0.0))
        .set("max_ms", quantile(v, 1.0));
    o
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) type Control = (quinn::SendStream, FrameReader);

/// Connect, then hello/welcome. Returns the connection, its control stream,
/// and the times to established and to welcome.
pub(crate) async fn session(
    endpoint: &quinn::Endpoint,
    d: &Device,
    relay: SocketAddr,
) -> Result<(quinn::Connection, Control, f64, f64), String> {
    let t0 = Instant::now();
    let connecting = endpoint
        .connect_with(d.cfg.clone(), relay, SERVER_NAME)
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(TIMEOUT, connecting)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let established = ms(t0.elapsed());
    let hello = async {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut reader = FrameReader::new(recv);
        let mut caps = serde_json_core::heapless::Vec::new();
        let _ = caps.push("opus");
        framed::send(
            &mut send,
            &Message::Hello(Hello {
                device: &d.id,
                version: env!("CARGO_PKG_VERSION"),
                caps,
            }),
        )
        .await
        .map_err(|e| e.to_string())?;
        reader
            .next(|m| match m {
                Message::Welcome(_) => Ok(()),
                Message::Error(e) => Err(format!("refused: {}: {}", e.code, e.message)),
                other => Err(format!("expected welcome, got {other:?}")),
            })
            .await
            .map_err(|e| e.to_string())??;
        Ok::<_, String>((send, reader))
    };
    let control = tokio::time::timeout(TIMEOUT, hello)
        .await
        .map_err(|_| "welcome timed out".to_string())??;
    let welcomed = ms(t0.elapsed());
    Ok((conn, control, established, welcomed))
}

pub(crate) struct HandshakeResult {
    pub(crate) established: Vec<f64>,
    pub(crate) welcomed: Vec<f64>,
    pub(crate) errors: usize,
    pub(crate) first_error: Option<String>,
}

pub(crate) async fn handshakes(
    devices: &[Device],
    relay: SocketAddr,
    n: usize,
) -> Vec<HandshakeResult> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut out: Vec<HandshakeResult> = devices
        .iter()
        .map(|_| HandshakeResult {
            established: Vec::new(),
            welcomed: Vec::new(),
            errors: 0,
            first_error: None,
        })
        .collect();
    // Warm-up: one of each, not counted.
    for d in devices {
        if let Ok((c, _, _, _)) = session(&endpoint, d, relay).await {
            c.close(0u32.into(), b"bench");
        }
    }
    for _ in 0..n {
        for (d, r) in devices.iter().zip(out.iter_mut()) {
            match session(&endpoint, d, relay).await {
                Ok((conn, _control, e, w)) => {
                    r.established.push(e);
                    r.welcomed.push(w);
                    conn.close(0u32.into(), b"bench");
                }
                Err(e) => {
                    r.errors += 1;
                    r.first_error.get_or_insert(e);
                }
            }
            // Let the relay finish the closed session before the next one.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    endpoint.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
    out
}

pub(crate) struct RenewResult {
    pub(crate) prepare: Vec<f64>,
    pub(crate) renew: Vec<f64>,
    pub(crate) errors: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) fresh_keys: usize,
}

pub(crate) async fn renew_once(
    endpoint: &quinn::Endpoint,
    d: &Device,
    relay: SocketAddr,
) -> Result<(f64, f64, bool), String> {
    let renewer = d
        .loaded
        .renewer
        .clone()
        .ok_or("this backend does not renew")?;
    let (conn, (mut send, mut reader), _, _) = session(endpoint, d, relay).await?;
    let key_before = std::fs::read(&d.key).map_err(|e| e.to_string())?;
    // The next key (fresh where the backend allows), off the workers as
    // the client does it.
    let t0 = Instant::now();
    let r = renewer.clone();
    let pending = tokio::task::spawn_blocking(move || r.prepare())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let prepare = ms(t0.elapsed());
    let t1 = Instant::now();
    framed::send(&mut send, &Message::Renew(Renew { csr: &pending.csr }))
        .await
        .map_err(|e| e.to_string())?;
    let cert = tokio::time::timeout(TIMEOUT, async {
        loop {
            let m = reader
                .next(|m| match m {
                    Message::Renewed(e) => Ok(Some(e.cert.to_string())),
                    Message::Error(e) => Err(format!("refused: {}: {}", e.code, e.message)),
                    _ => Ok(None),
                })
                .await
                .map_err(|e| e.to_string())??;
            if let Some(c) = m {
                return Ok::<_, String>(c);
            }
        }
    })
    .await
    .map_err(|_| "no renewed answer".to_string())??;
    let r = renewer.clone();
    let serial = tokio::task::spawn_blocking(move || r.commit(pending, &cert))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let renew = ms(t1.elapsed());
    conn.close(0u32.into(), b"bench");
    // Stored: the certificate file carries the new serial.
    let stored = voxgate::pki::files::read_certs(&d.cert).map_err(|e| e.to_string())?;
    let (_, x) = x509_parser::parse_x509_certificate(&stored[0]).map_err(|e| e.to_string())?;
    let on_disk: String = x
        .tbs_certificate
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if on_disk != serial {
        return Err(format!("stored serial {on_disk} != renewed {serial}"));
    }
    let fresh = std::fs::read(&d.key).map_err(|e| e.to_string())? != key_before;
    Ok((prepare, renew, fresh))
}

pub(crate) async fn renewals(devices: &[&Device], relay: SocketAddr, n: usize) -> Vec<RenewResult> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut out: Vec<RenewResult> = devices
        .iter()
        .map(|_| RenewResult {
            prepare: Vec::new(),
            renew: Vec::new(),
            errors: 0,
            first_error: None,
            fresh_keys: 0,
        })
        .collect();
    for _ in 0..n {
        for (d, r) in devices.iter().zip(out.iter_mut()) {
            match renew_once(&endpoint, d, relay).await {
                Ok((p, t, fresh)) => {
                    r.prepare.push(p);
                    r.renew.push(t);
                    r.fresh_keys += usize::from(fresh);
                }
                Err(e) => {
                    r.errors += 1;
                    r.first_error.get_or_insert(e);
                }
            }
        }
    }
    endpoint.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
    out
}
