//! The datagram path of a session: uplink flows and their recordings,
//! calls to the recording service, the echo, and the file downlink. The
//! session's control task shares [`Flows`] with the media task.
//!
//! Recorded bytes are charged to the device's daily quota
//! (`[recording] per_device_mib_per_day`) in chunks of [`QUOTA_CHUNK`], so
//! the shared quota's lock is taken once per chunk, not per datagram; a
//! recording past the quota is finished and the flow goes on unrecorded.

use super::{DOWNLINK_FLOW, Downlink, RelayCtx};
use crate::codec::OPUS_PAYLOAD_TYPE;
use crate::media::flow;
use crate::media::rtp::Repr;
use crate::media::stats::ReceiveStats;
use crate::relay::call_plane::Forwarded;
use crate::relay::metrics::RelayMetrics;
use crate::relay::recorder::OggOpusRecorder;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

pub(super) struct UpFlow {
    pub(super) ssrc: u32,
    pub(super) stats: ReceiveStats,
    pub(super) recorder: Option<OggOpusRecorder<BufWriter<File>>>,
    pub(super) path: PathBuf,
}

impl UpFlow {
    /// A flow with nothing to finish (what is left after a recorder is taken).
    pub(super) fn closed() -> UpFlow {
        UpFlow {
            ssrc: 0,
            stats: ReceiveStats::default(),
            recorder: None,
            path: PathBuf::new(),
        }
    }
}

/// Bytes of recordings a session takes from its device's quota at once.
pub(super) const QUOTA_CHUNK: u64 = 64 * 1024;

/// Charge a recorded packet of `payload` bytes (and its Ogg framing, about)
/// to the device's daily quota; `false` when the quota is spent.
fn charge(ctx: &RelayCtx, device: &str, budget: &mut u64, payload: usize) -> bool {
    let n = payload as u64 + 8;
    if *budget < n {
        let day = crate::relay::quota::day_of(crate::relay::registry::now());
        let granted = ctx
            .rec_quota
            .lock()
            .map(|mut q| q.take(device, day, QUOTA_CHUNK))
            .unwrap_or(false);
        if !granted {
            return false;
        }
        *budget += QUOTA_CHUNK;
    }
    *budget -= n;
    true
}

/// `recording.ready` for the file at `path`, named relative to the
/// recordings directory.
fn recording_ready(ctx: &RelayCtx, device: &str, path: &Path) {
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let name = path.strip_prefix(&ctx.recordings).unwrap_or(path);
    ctx.webhooks
        .emit(crate::relay::webhooks::Event::recording_ready(
            device,
            &name.to_string_lossy(),
            bytes,
        ));
}

/// Finish a recording whose device spent its daily quota.
fn stop_for_quota(ctx: &RelayCtx, device: &str, f: &mut UpFlow, metrics: &RelayMetrics) {
    if let Some(rec) = f.recorder.take() {
        if rec.finish().is_ok() {
            recording_ready(ctx, device, &f.path);
        }
        metrics.recording_quota_stops.inc();
        warn!(%device, recording = %f.path.display(), "recording stopped: the device's daily recording quota is spent");
    }
}

/// A datagram of a call to the recording service: into that call's recorder,
/// opened on its first packet.
#[allow(clippy::too_many_arguments)]
pub(super) fn record_call(
    ctx: &RelayCtx,
    device: &str,
    session: u64,
    flow: u64,
    pkt: &crate::media::rtp::Packet<&[u8]>,
    recs: &mut HashMap<u64, UpFlow>,
    budget: &mut u64,
) {
    let (dir, metrics) = (&ctx.recordings, &*ctx.metrics);
    let f = recs.entry(flow).or_insert_with(|| {
        let path = recording_path(dir, device, session, flow);
        info!(%device, flow, recording = %path.display(), "call recording started");
        UpFlow {
            ssrc: pkt.ssrc(),
            stats: ReceiveStats::default(),
            recorder: open_recorder(&path, pkt.ssrc()),
            path,
        }
    });
    if f.ssrc != pkt.ssrc() {
        return;
    }
    if f.recorder.is_some() && !charge(ctx, device, budget, pkt.payload().len()) {
        stop_for_quota(ctx, device, f, metrics);
    }
    if let Some(rec) = f.recorder.as_mut() {
        match rec.push(pkt.sequence(), pkt.timestamp(), pkt.payload()) {
            Ok(_) => metrics.recorded.inc(),
            Err(e) => {
                warn!(%device, path = %f.path.display(), error = %e, "recording stopped");
                f.recorder = None;
            }
        }
    }
}

/// What the two tasks of a session share: its uplink flows and the
/// recordings of its calls to the recording service.
#[derive(Default)]
pub(super) struct Flows {
    pub(super) up: UpFlows,
    pub(super) calls: HashMap<u64, UpFlow>,
    /// Whether the downlink flow was announced (echo starts after it).
    pub(super) down_open: bool,
    /// The uplink flow this session asked to have echoed (the `echo`
    /// control message: `voxgate setup`'s round trip), whatever the
    /// relay's downlink mode.
    pub(super) echo: Option<u64>,
}

/// A session's uplink flows (at most [`super::MAX_FLOWS`]), looked up by a scan:
/// cheaper than hashing the flow id for every datagram.
#[derive(Default)]
pub(super) struct UpFlows(pub(super) Vec<(u64, UpFlow)>);

impl UpFlows {
    pub(super) fn get_mut(&mut self, flow: u64) -> Option<&mut UpFlow> {
        self.0
            .iter_mut()
            .find(|(id, _)| *id == flow)
            .map(|(_, f)| f)
    }
    pub(super) fn contains(&self, flow: u64) -> bool {
        self.0.iter().any(|(id, _)| *id == flow)
    }
    /// Adds or replaces `flow`; returns the replaced one.
    pub(super) fn insert(&mut self, flow: u64, f: UpFlow) -> Option<UpFlow> {
        match self.get_mut(flow) {
            Some(old) => Some(std::mem::replace(old, f)),
            None => {
                self.0.push((flow, f));
                None
            }
        }
    }
    pub(super) fn remove(&mut self, flow: u64) -> Option<UpFlow> {
        let i = self.0.iter().position(|(id, _)| *id == flow)?;
        Some(self.0.swap_remove(i).1)
    }
}

/// The flows, locked (a poisoned lock is taken over: the flows are plain
/// data, still consistent after a panic elsewhere).
pub(super) fn lock(flows: &Mutex<Flows>) -> std::sync::MutexGuard<'_, Flows> {
    flows
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The datagram path of one session, until the connection ends.
pub(super) async fn media(
    conn: quinn::Connection,
    ctx: Arc<RelayCtx>,
    device: Arc<str>,
    session: u64,
    flows: Arc<Mutex<Flows>>,
    down_ssrc: u32,
) {
    let origin = Instant::now();
    let echo = matches!(ctx.downlink, Downlink::Echo);
    let mut out = [0u8; 1500];
    let mut budget = 0u64;
    while let Ok(d) = conn.read_datagram().await {
        ctx.metrics.datagrams.inc();
        let Ok((flow_id, pkt)) = flow::decode(&d) else {
            ctx.metrics.malformed.inc();
            debug!(device = %device, len = d.len(), "malformed datagram dropped");
            continue;
        };
        let mut guard = lock(&flows);
        let fl = &mut *guard;
        let echoed = echo || fl.echo == Some(flow_id);
        let Some(f) = fl.up.get_mut(flow_id).filter(|f| f.ssrc == pkt.ssrc()) else {
            match ctx.calls.forward(session, flow_id, &pkt, &mut out) {
                Forwarded::Sent | Forwarded::Dropped | Forwarded::Discarded => {}
                Forwarded::Record => record_call(
                    &ctx,
                    &device,
                    session,
                    flow_id,
                    &pkt,
                    &mut fl.calls,
                    &mut budget,
                ),
                Forwarded::NoRoute => ctx.metrics.unknown_flow.inc(),
            }
            continue;
        };
        f.stats
            .update(origin.elapsed(), pkt.sequence(), pkt.timestamp());
        if f.recorder.is_some() && !charge(&ctx, &device, &mut budget, pkt.payload().len()) {
            stop_for_quota(&ctx, &device, f, &ctx.metrics);
        }
        if let Some(rec) = f.recorder.as_mut() {
            match rec.push(pkt.sequence(), pkt.timestamp(), pkt.payload()) {
                Ok(_) => ctx.metrics.recorded.inc(),
                Err(e) => {
                    warn!(device = %device, path = %f.path.display(), error = %e, "recording stopped");
                    f.recorder = None;
                }
            }
        }
        if echoed && fl.down_open {
            let repr = Repr {
                ssrc: down_ssrc,
                ..Repr::parse(&pkt)
            };
            if let Some(n) = flow::encode(DOWNLINK_FLOW, &repr, pkt.payload(), &mut out)
                && conn
                    .send_datagram(bytes::Bytes::copy_from_slice(&out[..n]))
                    .is_ok()
            {
                ctx.metrics.sent_down.inc();
            }
        }
    }
}

pub(super) fn recording_path(dir: &Path, device: &str, session: u64, flow: u64) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    dir.join(device)
        .join(format!("{secs}-s{session}-f{flow}.ogg"))
}

pub(super) fn open_recorder(path: &Path, ssrc: u32) -> Option<OggOpusRecorder<BufWriter<File>>> {
    let open = || -> Result<_, Box<dyn std::error::Error>> {
        let file = crate::relay::recorder::create_file(path)?;
        Ok(OggOpusRecorder::new(
            BufWriter::with_capacity(16 * 1024, file),
            ssrc,
            "voxgate",
        )?)
    };
    match open() {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot record flow");
            None
        }
    }
}

pub(super) fn close_flow(device: &str, f: UpFlow, ctx: &RelayCtx) {
    let metrics = &*ctx.metrics;
    let Some(rec) = f.recorder else { return };
    match rec.finish() {
        Ok(s) => {
            recording_ready(ctx, device, &f.path);
            metrics.gap_frames.add(s.gap_frames_filled);
            info!(%device, recording = %f.path.display(), packets = s.packets_written,
                  gap_frames = s.gap_frames_filled, seconds = s.duration_samples as f64 / 48_000.0,
                  lost = f.stats.lost(), "recording finished");
        }
        Err(e) => {
            warn!(%device, recording = %f.path.display(), error = %e, "recording not finished cleanly")
        }
    }
}

/// Send pre-encoded packets down, paced by their durations, looping.
pub(super) async fn play(
    conn: quinn::Connection,
    packets: Arc<Vec<(Vec<u8>, u32)>>,
    ssrc: u32,
    metrics: Arc<RelayMetrics>,
) {
    play_on(conn, packets, DOWNLINK_FLOW, ssrc, metrics, true).await
}

/// Send pre-encoded packets once on relay flow `flow` (a call's), paced by
/// their durations: the fallback message.
pub(crate) async fn play_once(
    conn: quinn::Connection,
    packets: Arc<Vec<(Vec<u8>, u32)>>,
    flow: u64,
    ssrc: u32,
    metrics: Arc<RelayMetrics>,
) {
    play_on(conn, packets, flow, ssrc, metrics, false).await
}

async fn play_on(
    conn: quinn::Connection,
    packets: Arc<Vec<(Vec<u8>, u32)>>,
    flow: u64,
    ssrc: u32,
    metrics: Arc<RelayMetrics>,
    looped: bool,
) {
    if packets.is_empty() {
        return;
    }
    let mut seq = fastrand::u16(..);
    let mut ts = fastrand::u32(..);
    let mut out = [0u8; 1500];
    let start = tokio::time::Instant::now();
    let mut media = 0u64;
    let mut marker = true;
    loop {
        for (payload, samples) in packets.iter() {
            let repr = Repr {
                marker,
                payload_type: OPUS_PAYLOAD_TYPE,
                sequence: seq,
                timestamp: ts,
                ssrc,
            };
            marker = false;
            if let Some(n) = flow::encode(flow, &repr, payload, &mut out) {
                if conn
                    .send_datagram(bytes::Bytes::copy_from_slice(&out[..n]))
                    .is_err()
                {
                    return;
                }
                metrics.sent_down.inc();
            }
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(*samples);
            media += u64::from(*samples);
            tokio::time::sleep_until(start + Duration::from_micros(media * 1000 / 48)).await;
        }
        if !looped {
            return;
        }
    }
}
