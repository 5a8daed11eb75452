//! SIP over TCP: the listener, one reader task per connection (framed by
//! `sip::framing`), and a writer per peer address so responses and requests
//! reuse the phone's connection (RFC 3261 18.2.2). Connections are bounded
//! in number, idle ones are closed, and a framing error closes only that
//! connection.

use crate::sip::Message;
use crate::sip::framing::{Frame, next_frame};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::debug;

/// Most simultaneous TCP connections.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection with no traffic for this long is closed (phones re-register
/// or send CRLF keep-alives well within it).
pub const IDLE: Duration = Duration::from_secs(3600);

/// Writers by peer address.
#[derive(Debug, Clone, Default)]
pub struct Writers(Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>);

impl Writers {
    /// Queue `bytes` on the connection to `peer`; false if there is none.
    pub fn send(&self, peer: SocketAddr, bytes: Vec<u8>) -> bool {
        let tx = self.0.lock().ok().and_then(|m| m.get(&peer).cloned());
        tx.is_some_and(|tx| tx.try_send(bytes).is_ok())
    }

    fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// A parsed message from a TCP peer (or `None` for a framing error, to count).
pub type Inbound = (SocketAddr, Option<Box<Message>>);

/// Accept connections until the listener fails; every message goes to `to_core`.
pub async fn serve(listener: TcpListener, writers: Writers, to_core: mpsc::Sender<Inbound>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if writers.len() >= MAX_CONNECTIONS {
            debug!(%peer, "SIP TCP connection refused: too many connections");
            continue;
        }
        tokio::spawn(connection(stream, peer, writers.clone(), to_core.clone()));
    }
}

/// Open a connection to `peer` (a phone registered over TCP whose connection
/// is gone) and send `bytes` on it.
pub async fn connect_and_send(
    peer: SocketAddr,
    bytes: Vec<u8>,
    writers: Writers,
    to_core: mpsc::Sender<Inbound>,
) {
    match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(peer)).await {
        Ok(Ok(stream)) => {
            let w = writers.clone();
            tokio::spawn(connection(stream, peer, writers, to_core));
            // The writer is registered by the connection task; give it a moment.
            for _ in 0..20 {
                if w.send(peer, bytes.clone()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        _ => debug!(%peer, "SIP TCP connect failed"),
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    writers: Writers,
    to_core: mpsc::Sender<Inbound>,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    if let Ok(mut m) = writers.0.lock() {
        m.insert(peer, tx.clone());
    }
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    'conn: loop {
        let n = match tokio::time::timeout(IDLE, rd.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match next_frame(&buf) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::KeepAlive { used, ping }) => {
                    buf.drain(..used);
                    if ping {
                        let _ = tx.try_send(b"\r\n".to_vec());
                    }
                }
                Ok(Frame::Message { msg, used }) => {
                    buf.drain(..used);
                    if to_core.send((peer, Some(msg))).await.is_err() {
                        break 'conn;
                    }
                }
                Err(e) => {
                    debug!(%peer, error = %e, "SIP TCP framing error; closing the connection");
                    let _ = to_core.send((peer, None)).await;
                    break 'conn;
                }
            }
        }
    }
    if let Ok(mut m) = writers.0.lock()
        && m.get(&peer).is_some_and(|t| t.same_channel(&tx))
    {
        m.remove(&peer);
    }
    drop(tx);
    writer.abort();
}
