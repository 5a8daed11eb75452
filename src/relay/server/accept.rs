//! The accept loop: every incoming handshake goes through
//! [`Admission`](crate::relay::admission::Admission) before the relay
//! spends anything on it. A Retry above the handshake rate, a silent drop
//! past the caps (no packet goes back to a forged address; a real device
//! sends its Initial again), else the handshake, holding its slot until
//! it ends; enrollments hold an enrollment slot while they run.

use super::{RelayCtx, device_session};
use crate::relay::admission::{Admission, Decision, Source};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::task::JoinSet;
use tracing::{debug, info};

/// Accept devices until `shutdown` resolves, then close every session
/// (finishing its recordings) and return.
pub async fn serve(
    endpoint: quinn::Endpoint,
    ctx: Arc<RelayCtx>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if let Some((incoming, source)) = admit(&ctx, incoming) {
                    let ctx = ctx.clone();
                    tasks.spawn(async move { handle(incoming, ctx, source).await });
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    endpoint.close(0u32.into(), b"relay shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    endpoint.wait_idle().await;
}

fn lock(m: &Mutex<Admission>) -> MutexGuard<'_, Admission> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The admission decision, carried out; the incoming handshake back when
/// it may go on.
fn admit(ctx: &RelayCtx, incoming: quinn::Incoming) -> Option<(quinn::Incoming, Source)> {
    let remote = incoming.remote_address();
    let validated = incoming.remote_address_validated();
    let decision = lock(&ctx.admission).incoming(ctx.origin.elapsed(), remote.ip(), validated);
    match decision {
        Decision::Accept(source) => {
            ctx.metrics
                .handshakes_in_flight
                .set(ctx.metrics.handshakes_in_flight.get() + 1.0);
            Some((incoming, source))
        }
        Decision::Retry => {
            if incoming.may_retry() && incoming.retry().is_ok() {
                ctx.metrics.retried.inc();
            }
            None
        }
        Decision::Refuse(why) => {
            ctx.metrics.handshakes_refused.inc();
            debug!(%remote, reason = why.as_str(), "handshake dropped");
            let source = remote.ip().to_string();
            ctx.refusals.note(
                &source,
                crate::relay::registry::now(),
                "handshake_limited",
                &source,
                "",
                why.as_str(),
            );
            // Dropped as a congested server drops it: a real device sends
            // its Initial again (with its Retry token) and gets in when a
            // slot is free; a forged source gets no packet at all.
            incoming.ignore();
            None
        }
    }
}

/// A handshake's admission slot, given back when dropped.
struct HandshakeSlot<'a> {
    ctx: &'a RelayCtx,
    source: Option<Source>,
}

impl HandshakeSlot<'_> {
    fn release(&mut self) {
        if let Some(s) = self.source.take() {
            lock(&self.ctx.admission).done(s);
            let g = &self.ctx.metrics.handshakes_in_flight;
            g.set(g.get() - 1.0);
        }
    }
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// An enrollment's slot, given back when dropped.
struct EnrollSlot<'a>(&'a RelayCtx);

impl Drop for EnrollSlot<'_> {
    fn drop(&mut self) {
        lock(&self.0.admission).enrollment_done();
    }
}

async fn handle(incoming: quinn::Incoming, ctx: Arc<RelayCtx>, source: Source) {
    let remote = incoming.remote_address();
    let mut slot = HandshakeSlot {
        ctx: &ctx,
        source: Some(source),
    };
    // The handshake's own TLS config: its verifier knows the address, so a
    // refused certificate is audited with where it came from.
    let config = crate::transport::tls::server_config_with(
        ctx.server_cert.clone(),
        ctx.verifier.for_source(remote.ip()),
    );
    let connecting = match config {
        Ok(c) => incoming.accept_with(Arc::new(c)),
        Err(e) => {
            tracing::error!(error = %e, "cannot make the handshake's TLS config");
            incoming.refuse();
            return;
        }
    };
    let conn = match async { connecting?.await }.await {
        Ok(c) => c,
        Err(e) => {
            ctx.metrics.rejected.inc();
            info!(%remote, error = %e, "handshake failed");
            return;
        }
    };
    slot.release();
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    if alpn.as_deref() == Some(crate::transport::tls::ALPN_ENROLL) {
        if let Err(why) = lock(&ctx.admission).enrollment() {
            ctx.metrics.enrollments_busy.inc();
            let source = remote.ip().to_string();
            ctx.refusals.note(
                &source,
                crate::relay::registry::now(),
                "enroll_limited",
                &source,
                "",
                why.as_str(),
            );
            conn.close(
                4u32.into(),
                b"relay busy: too many enrollments at once; retry in a minute",
            );
            return;
        }
        let _enrolling = EnrollSlot(&ctx);
        ctx.enroller.clone().handle(conn).await;
        return;
    }
    device_session(conn, ctx.clone()).await;
}
