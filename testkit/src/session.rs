//! A device's voxgate/1 session from a test: connect with a certificate
//! and key (a development pair, or the identity `voxgate run` loads from
//! the config `voxgate setup` wrote), say hello, ask for a renewal, see
//! whether and why the relay closes it.

use crate::lab::{Lab, device_client_config};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::path::Path;
use std::time::Duration;
use voxgate::proto::control::{self, Hello, Message, Renew};
use voxgate::transport::framed::FrameReader;

/// A device session of the voxgate/1 protocol with the certificate and key
/// in `dir` (`device.pem`, `device.key`, `ca.pem`).
pub struct Session {
    /// The connection.
    pub conn: quinn::Connection,
    send: quinn::SendStream,
    reader: FrameReader,
    _ep: quinn::Endpoint,
}

impl Session {
    /// Connect and say hello; `Err` with the relay's reason when the
    /// handshake or the session is refused.
    pub async fn open(lab: &Lab, dir: &Path, id: &str) -> Result<Session, String> {
        Self::open_with(lab, device_client_config(dir, id), id).await
    }

    /// As [`Session::open`], with the identity `voxgate run` would load
    /// from the config `voxgate setup` wrote (the sealed key).
    pub async fn open_enrolled(lab: &Lab, cfg: &Path, id: &str) -> Result<Session, String> {
        let gc = voxgate::config::GatewayConfig::load(cfg).unwrap();
        let loaded = voxgate::identity::backend::load(id, &gc.identity).unwrap();
        let ca = voxgate::pki::files::read_certs(&lab.dir.join("relay/ca.pem")).unwrap();
        let client = voxgate::transport::tls::client_config(&ca, &*loaded.identity).unwrap();
        Self::open_with(lab, client, id).await
    }

    pub async fn open_with(
        lab: &Lab,
        cfg: quinn::ClientConfig,
        id: &str,
    ) -> Result<Session, String> {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = format!("127.0.0.1:{}", lab.quic_port).parse().unwrap();
        let conn = ep
            .connect_with(cfg, addr, "relay.voxgate.test")
            .unwrap()
            .await
            .map_err(|e| e.to_string().to_lowercase())?;
        let attempt = async {
            let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let mut s = Session {
                conn: conn.clone(),
                send,
                reader: FrameReader::new(recv),
                _ep: ep,
            };
            s.tx(&Message::Hello(Hello {
                device: id,
                version: "test",
                caps: Default::default(),
            }))
            .await?;
            let welcome = s
                .reader
                .next(|m| matches!(m, Message::Welcome(_)))
                .await
                .map_err(|e| e.to_string())?;
            if welcome {
                Ok(s)
            } else {
                Err("no welcome".into())
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(r) => r.map_err(|e| {
                conn.close_reason()
                    .map_or(e, |r| r.to_string())
                    .to_lowercase()
            }),
            Err(_) => Err("timed out".into()),
        }
    }

    pub async fn tx(&mut self, m: &Message<'_>) -> Result<(), String> {
        let mut buf = [0u8; 2100];
        let n = control::encode(m, &mut buf).map_err(|e| e.to_string())?;
        self.send
            .write_all(&buf[..n])
            .await
            .map_err(|e| e.to_string())
    }

    /// Ask for a renewal with a fresh key; `Ok((cert PEM, key PEM))`, or
    /// the relay's refusal.
    pub async fn renew(&mut self) -> Result<(String, String), String> {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        let csr = B64.encode(csr.der());
        self.tx(&Message::Renew(Renew { csr: &csr })).await?;
        let answer = async {
            loop {
                let m = self.reader.next(|m| match m {
                    Message::Renewed(r) => Some(Ok(r.cert.to_string())),
                    Message::Error(e) => Some(Err(format!("{}: {}", e.code, e.message))),
                    _ => None,
                });
                match m.await {
                    Ok(Some(r)) => return r,
                    Ok(None) => continue,
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        let der_b64 = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .map_err(|_| "no answer to renew".to_string())??;
        let der = B64.decode(der_b64).unwrap();
        let pem = voxgate::pki::files::pem(&der, "CERTIFICATE");
        Ok((pem, key.serialize_pem()))
    }

    /// The first message within `within` for which `f` says `Some`
    /// (others are skipped); `None` when none came or the stream ended.
    pub async fn expect<T>(
        &mut self,
        within: Duration,
        mut f: impl FnMut(Message<'_>) -> Option<T>,
    ) -> Option<T> {
        let reader = &mut self.reader;
        tokio::time::timeout(within, async {
            loop {
                match reader.next(&mut f).await {
                    Ok(Some(t)) => return Some(t),
                    Ok(None) => continue,
                    Err(_) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The code of the next `error` the relay sends, within `within`.
    pub async fn next_error(&mut self, within: Duration) -> Option<String> {
        self.expect(within, |m| match m {
            Message::Error(e) => Some(e.code.to_string()),
            _ => None,
        })
        .await
    }

    /// Whether the relay closed the connection within `within`.
    pub async fn closed_within(&self, within: Duration) -> Option<String> {
        tokio::time::timeout(within, self.conn.closed())
            .await
            .ok()
            .map(|e| e.to_string())
    }
}

/// A current-thread runtime for a test's sessions.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
