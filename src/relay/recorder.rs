//! Records Opus packets received over RTP (RFC 7587) into an Ogg Opus
//! stream (RFC 7845).
//!
//! Guarantees:
//! - The output is a valid mono Ogg Opus stream at every page boundary:
//!   OpusHead alone on the first page, OpusTags on the second, then audio
//!   pages whose granule positions count every written sample (pre-skip
//!   included). After [`OggOpusRecorder::finish`] the last page carries the
//!   end-of-stream flag.
//! - Packets leave a small reorder window (at most [`REORDER_PACKETS`]
//!   packets or [`REORDER_SAMPLES`] of audio) in RTP timestamp order.
//!   Timestamps (u32) and sequence numbers (u16) are compared wrap-aware.
//! - Duplicates, packets that arrive after their slot was written, and
//!   payloads that are not valid Opus packets are dropped and counted.
//! - Missing timestamps are filled with one-byte lost-frame packets
//!   ([`crate::codec::opus_packet::lost_frame_packet`]) so decoders run packet loss
//!   concealment and the recording's length follows the sender's timeline.
//!   Gaps are filled up to [`MAX_GAP_FILL_SAMPLES`] (5 minutes); a timestamp
//!   jump of more than [`JUMP_CONFIRM_SAMPLES`] (1 s, forwards or backwards)
//!   is only believed once a second packet confirms it (timestamp within 1 s,
//!   sequence number within 16 of the first); a lone packet with a wild
//!   timestamp is discarded instead of wrecking the timeline. A confirmed jump
//!   backwards or beyond 5 minutes is a stream restart: the new timeline is
//!   spliced directly after the written audio without filling ("resync").
//!   Remainders of a gap shorter than 2.5 ms cannot be expressed in Opus and
//!   are dropped.
//! - The recorder ends a page after 50 packets or 1 s of audio (or earlier
//!   when the next packet would not fit the page's 255 lacing values) and
//!   writes it in one `write_all`, then flushes the writer, so a crash
//!   loses about a second. Packets are never split across pages
//!   ([`page::PageWriter`]). The newest packet is always held back so that
//!   `finish` can put it on the end-of-stream page.
//! - Cost per packet: one copy into a reused buffer of the reorder window
//!   and one into the page; no allocation in the steady state (buffers of
//!   written packets are reused), one checksum pass per page.
//! - Memory is bounded (window, one held packet, one page of data), there is
//!   no `unsafe`, and no input makes it panic. After an I/O error the stream
//!   state is unknown and every later call returns [`RecordError::Poisoned`].

use std::collections::VecDeque;
use std::io::Write;

pub mod page;
use page::PageWriter;

use crate::codec::opus_packet::{
    MAX_PACKET_BYTES, frame_samples, lost_frame_packet, lost_frame_packet_of, packet_samples,
};

/// Pre-skip written to OpusHead: libopus's encoder lookahead at 48 kHz.
pub const PRE_SKIP: u16 = 312;
/// Most packets held for reordering before the oldest is written.
pub const REORDER_PACKETS: usize = 8;
/// Most audio (160 ms in 48 kHz samples) spanned by the reorder window.
pub const REORDER_SAMPLES: i64 = 160 * 48;
/// Timestamp jumps larger than this (1 s) need a confirming second packet.
pub const JUMP_CONFIRM_SAMPLES: i64 = 48_000;
/// Largest gap (5 minutes) filled with lost frames; larger jumps resync.
pub const MAX_GAP_FILL_SAMPLES: i64 = 5 * 60 * 48_000;
/// Longest vendor string accepted by [`OggOpusRecorder::new`].
pub const MAX_VENDOR_BYTES: usize = 1024;

const CONFIRM_SEQ_DISTANCE: u16 = 16;
const PAGE_MAX_PACKETS: u32 = 50;
const PAGE_MAX_SAMPLES: u64 = 48_000;
const RECENT_WRITTEN: usize = 64;
/// Packet buffers kept for reuse (window, held packet, headroom).
const SPARE_BUFFERS: usize = REORDER_PACKETS + 4;
/// CELT fullband 20 ms, used for the single lost frame of an empty recording.
const EMPTY_STREAM_TOC: u8 = 31 << 3;

/// Errors from recording; I/O errors keep their source.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Writing or flushing the underlying writer failed.
    #[error("writing the Ogg Opus stream failed")]
    Io(#[from] std::io::Error),
    /// An earlier I/O error left the Ogg stream in an unknown state.
    #[error("recorder is unusable after an earlier I/O error")]
    Poisoned,
    /// The vendor string is longer than [`MAX_VENDOR_BYTES`].
    #[error("vendor string is {len} bytes, limit is {MAX_VENDOR_BYTES}")]
    VendorTooLong {
        /// Length of the rejected vendor string.
        len: usize,
    },
}

/// Counters describing what the recorder did with its input.
///
/// Every pushed packet ends up in exactly one of `packets_written`,
/// `duplicates`, `too_late`, `invalid` or `discarded_jumps` once the
/// recorder is finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordStats {
    /// Received packets written to the stream.
    pub packets_written: u64,
    /// Lost-frame packets written to fill timestamp gaps.
    pub gap_frames_filled: u64,
    /// Packets whose timestamp was already buffered or written.
    pub duplicates: u64,
    /// Packets that arrived after their place in the stream was written.
    pub too_late: u64,
    /// Samples (48 kHz) written so far, fill included: the final granule
    /// position. Playable length is this minus [`PRE_SKIP`].
    pub duration_samples: u64,
    /// Payloads rejected as not valid Opus packets.
    pub invalid: u64,
    /// Confirmed timestamp jumps handled as a stream restart (no fill).
    pub resyncs: u64,
    /// Packets with a far-off timestamp that no later packet confirmed.
    pub discarded_jumps: u64,
}

/// What [`OggOpusRecorder::push`] did with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Buffered in the reorder window (it may have pushed older packets out).
    Accepted,
    /// Timestamp jumped by more than 1 s; held until a packet confirms it.
    Deferred,
    /// Same timestamp as a buffered or recently written packet; dropped.
    Duplicate,
    /// Its place in the stream was already written; dropped.
    TooLate,
    /// Not a valid Opus packet (or larger than `MAX_PACKET_BYTES`); dropped.
    Invalid,
}

struct Pending {
    ext: i64,
    samples: u32,
    payload: Vec<u8>,
}

struct Candidate {
    seq: u16,
    ts: u32,
    samples: u32,
    payload: Vec<u8>,
}

/// Writes RTP-delivered Opus packets of one mono stream as Ogg Opus.
///
/// Dropping it without [`finish`](Self::finish) loses the reorder window,
/// the held-back packet and the unfinished page; the pages already written
/// stay playable, without an end-of-stream flag (as after a crash).
pub struct OggOpusRecorder<W: Write> {
    ogg: PageWriter<W>,
    /// Buffers of written packets, reused for new ones.
    spare: Vec<Vec<u8>>,
    window: VecDeque<Pending>,
    /// RTP timestamp and extended timeline position of the newest packet.
    /// Extended positions move by at most ~5 minutes per push, so `i64`
    /// cannot overflow in any realistic lifetime.
    anchor: Option<(u32, i64)>,
    candidate: Option<Candidate>,
    /// Timeline position where the next written packet must start.
    next_ext: Option<i64>,
    recent: VecDeque<i64>,
    held: Option<(Vec<u8>, u32)>,
    granule: u64,
    page_samples: u64,
    last_toc: Option<u8>,
    stats: RecordStats,
    poisoned: bool,
}

impl<W: Write> OggOpusRecorder<W> {
    /// Starts a stream: writes OpusHead (mono, pre-skip 312, 48 kHz, mapping
    /// family 0) on the first page and OpusTags (`vendor` plus
    /// `ENCODER=voxgate`) on the next, then flushes `writer`.
    pub fn new(writer: W, serial: u32, vendor: &str) -> Result<Self, RecordError> {
        if vendor.len() > MAX_VENDOR_BYTES {
            return Err(RecordError::VendorTooLong { len: vendor.len() });
        }
        let mut head = b"OpusHead".to_vec();
        head.extend([1, 1]); // version, channel count
        head.extend(PRE_SKIP.to_le_bytes());
        head.extend(48_000u32.to_le_bytes());
        head.extend([0, 0, 0]); // output gain, mapping family
        let comment = b"ENCODER=voxgate";
        let mut tags = b"OpusTags".to_vec();
        tags.extend((vendor.len() as u32).to_le_bytes());
        tags.extend(vendor.as_bytes());
        tags.extend(1u32.to_le_bytes());
        tags.extend((comment.len() as u32).to_le_bytes());
        tags.extend(comment);
        let mut ogg = PageWriter::new(writer, serial);
        ogg.packet(&head, 0)?;
        ogg.end_page(false)?;
        ogg.packet(&tags, 0)?;
        ogg.end_page(false)?;
        ogg.flush()?;
        Ok(Self {
            ogg,
            spare: Vec::with_capacity(SPARE_BUFFERS),
            window: VecDeque::with_capacity(REORDER_PACKETS + 1),
            anchor: None,
            candidate: None,
            next_ext: None,
            recent: VecDeque::with_capacity(RECENT_WRITTEN),
            held: None,
            granule: 0,
            page_samples: 0,
            last_toc: None,
            stats: RecordStats::default(),
            poisoned: false,
        })
    }

    /// Offers one RTP packet (sequence number, RTP timestamp, Opus payload).
    ///
    /// May write older packets (and gap fill) to the stream. Errors only on
    /// I/O failure; bad input is reported through the outcome and stats.
    pub fn push(
        &mut self,
        seq: u16,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<PushOutcome, RecordError> {
        if self.poisoned {
            return Err(RecordError::Poisoned);
        }
        let samples = match packet_samples(payload) {
            Ok(samples) if payload.len() <= MAX_PACKET_BYTES => samples,
            _ => {
                self.stats.invalid += 1;
                return Ok(PushOutcome::Invalid);
            }
        };
        let result = self.accept(seq, timestamp, samples, payload);
        self.poisoned = result.is_err();
        result
    }

    /// Counters so far; `duration_samples` includes the held-back packet.
    pub fn stats(&self) -> RecordStats {
        self.stats
    }

    /// Writes out the reorder window and the final page with the
    /// end-of-stream flag, flushes, and returns the final counters.
    ///
    /// A pending unconfirmed jump is discarded. A recording without audio
    /// gets one lost frame whose granule position trims it to zero length.
    pub fn finish(mut self) -> Result<RecordStats, RecordError> {
        if self.poisoned {
            return Err(RecordError::Poisoned);
        }
        if self.candidate.take().is_some() {
            self.stats.discarded_jumps += 1;
        }
        self.drain(true)?;
        match self.held.take() {
            Some((packet, samples)) => self.write_packet(packet, samples, true)?,
            None => {
                let packet = lost_frame_packet(EMPTY_STREAM_TOC);
                self.ogg.packet(&packet, u64::from(PRE_SKIP))?;
                self.ogg.end_page(true)?;
                self.ogg.flush()?;
            }
        }
        Ok(self.stats)
    }

    fn accept(
        &mut self,
        seq: u16,
        ts: u32,
        samples: u32,
        payload: &[u8],
    ) -> Result<PushOutcome, RecordError> {
        let Some((ref_ts, ref_ext)) = self.anchor else {
            self.anchor = Some((ts, 0));
            return self.insert(0, ts, samples, payload);
        };
        let ext = ref_ext.saturating_add(ts_delta(ts, ref_ts));
        let low = self.next_ext.unwrap_or(ref_ext);
        if ext > ref_ext + JUMP_CONFIRM_SAMPLES || ext < low - JUMP_CONFIRM_SAMPLES {
            let payload = payload.to_vec();
            return self.defer(Candidate {
                seq,
                ts,
                samples,
                payload,
            });
        }
        if self.candidate.take().is_some() {
            self.stats.discarded_jumps += 1;
        }
        self.insert(ext, ts, samples, payload)
    }

    /// Handles a packet whose timestamp jumped by more than 1 s.
    fn defer(&mut self, new: Candidate) -> Result<PushOutcome, RecordError> {
        let Some(cand) = self.candidate.take() else {
            self.candidate = Some(new);
            return Ok(PushOutcome::Deferred);
        };
        let dts = ts_delta(new.ts, cand.ts);
        if dts == 0 {
            self.candidate = Some(cand);
            self.stats.duplicates += 1;
            return Ok(PushOutcome::Duplicate);
        }
        let dseq = new.seq.wrapping_sub(cand.seq) as i16;
        if dts.abs() > JUMP_CONFIRM_SAMPLES || dseq.unsigned_abs() > CONFIRM_SEQ_DISTANCE {
            self.stats.discarded_jumps += 1;
            self.candidate = Some(new);
            return Ok(PushOutcome::Deferred);
        }
        // Two packets agree on the new timeline: write out the old one first.
        self.drain(true)?;
        let (ref_ts, ref_ext) = self.anchor.unwrap_or((cand.ts, 0));
        let end = self.next_ext.unwrap_or(ref_ext);
        let mut cand_ext = ref_ext.saturating_add(ts_delta(cand.ts, ref_ts));
        let earliest = cand_ext + dts.min(0);
        if !(0..=MAX_GAP_FILL_SAMPLES).contains(&(earliest - end)) {
            self.stats.resyncs += 1;
            cand_ext += end - earliest;
        }
        self.anchor = Some((cand.ts, cand_ext));
        self.insert(cand_ext, cand.ts, cand.samples, &cand.payload)?;
        self.insert(cand_ext + dts, new.ts, new.samples, &new.payload)
    }

    fn insert(
        &mut self,
        ext: i64,
        ts: u32,
        samples: u32,
        payload: &[u8],
    ) -> Result<PushOutcome, RecordError> {
        if self.next_ext.is_some_and(|next| ext < next) {
            return Ok(if self.recent.contains(&ext) {
                self.stats.duplicates += 1;
                PushOutcome::Duplicate
            } else {
                self.stats.too_late += 1;
                PushOutcome::TooLate
            });
        }
        let pos = self.window.partition_point(|p| p.ext < ext);
        if self.window.get(pos).is_some_and(|p| p.ext == ext) {
            self.stats.duplicates += 1;
            return Ok(PushOutcome::Duplicate);
        }
        let payload = self.buffer(payload);
        self.window.insert(
            pos,
            Pending {
                ext,
                samples,
                payload,
            },
        );
        if self.anchor.is_some_and(|(_, newest)| ext > newest) {
            self.anchor = Some((ts, ext));
        }
        self.drain(false)?;
        Ok(PushOutcome::Accepted)
    }

    /// Writes the oldest packets while the window is over its limits (or
    /// all of them when `all`).
    fn drain(&mut self, all: bool) -> Result<(), RecordError> {
        while let (Some(first), Some(last)) = (self.window.front(), self.window.back()) {
            let over =
                self.window.len() > REORDER_PACKETS || last.ext - first.ext > REORDER_SAMPLES;
            if !all && !over {
                break;
            }
            if let Some(pending) = self.window.pop_front() {
                self.emit(pending)?;
            }
        }
        Ok(())
    }

    fn emit(&mut self, p: Pending) -> Result<(), RecordError> {
        let next = *self.next_ext.get_or_insert(p.ext);
        if p.ext < next {
            // Overlaps the previous packet (misaligned timestamps).
            self.stats.too_late += 1;
            return Ok(());
        }
        let toc = p.payload.first().copied().unwrap_or(EMPTY_STREAM_TOC);
        let gap = (p.ext - next).min(MAX_GAP_FILL_SAMPLES) as u64;
        self.fill(gap, self.last_toc.unwrap_or(toc))?;
        self.write_audio(p.payload, p.samples)?;
        self.last_toc = Some(toc);
        self.next_ext = Some(p.ext.saturating_add(i64::from(p.samples)));
        if self.recent.len() == RECENT_WRITTEN {
            self.recent.pop_front();
        }
        self.recent.push_back(p.ext);
        self.stats.packets_written += 1;
        Ok(())
    }

    /// Writes lost frames covering `gap` samples: frames of the template's
    /// size first, then smaller or larger sizes for any remainder.
    fn fill(&mut self, mut gap: u64, template: u8) -> Result<(), RecordError> {
        if gap == 0 {
            return Ok(()); // the common case: no packet missing
        }
        let sizes = [frame_samples(template), 2880, 1920, 960, 480, 240, 120];
        for size in sizes {
            let Some(packet) = lost_frame_packet_of(template, size) else {
                continue;
            };
            while gap >= u64::from(size) {
                let packet = self.buffer(&packet);
                self.write_audio(packet, size)?;
                self.stats.gap_frames_filled += 1;
                gap -= u64::from(size);
            }
        }
        Ok(())
    }

    /// Queues a packet, writing the previously held one.
    fn write_audio(&mut self, packet: Vec<u8>, samples: u32) -> Result<(), RecordError> {
        self.stats.duration_samples += u64::from(samples);
        match self.held.replace((packet, samples)) {
            Some((prev, prev_samples)) => self.write_packet(prev, prev_samples, false),
            None => Ok(()),
        }
    }

    fn write_packet(
        &mut self,
        packet: Vec<u8>,
        samples: u32,
        last: bool,
    ) -> Result<(), RecordError> {
        self.granule += u64::from(samples);
        self.ogg.packet(&packet, self.granule)?;
        self.recycle(packet);
        if self.ogg.page_packets() == 1 {
            self.page_samples = 0; // a new page (possibly started by the writer when full)
        }
        self.page_samples += u64::from(samples);
        if last
            || self.ogg.page_packets() >= PAGE_MAX_PACKETS
            || self.page_samples >= PAGE_MAX_SAMPLES
        {
            self.ogg.end_page(last)?;
            self.page_samples = 0;
            self.ogg.flush()?;
        }
        Ok(())
    }

    /// `bytes` in a reused buffer.
    fn buffer(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(bytes);
        b
    }

    fn recycle(&mut self, b: Vec<u8>) {
        // Large buffers (rare big packets) are not kept.
        if self.spare.len() < SPARE_BUFFERS && b.capacity() <= 4096 {
            self.spare.push(b);
        }
    }
}

/// Signed, wrap-aware distance from RTP timestamp `from` to `to`.
fn ts_delta(to: u32, from: u32) -> i64 {
    i64::from(to.wrapping_sub(from) as i32)
}

impl<W: Write> std::fmt::Debug for OggOpusRecorder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusRecorder").finish_non_exhaustive()
    }
}

/// Create (or truncate) the recording file `path`: mode 0600, never
/// through a symbolic link, in directories created 0700, whatever the
/// umask (recordings hold people's voices; only the relay's user reads
/// them). Directories that already exist keep their mode.
pub fn create_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        private_dir_all(dir)?;
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Create `dir` and its missing parents, each mode 0700 whatever the umask.
pub fn private_dir_all(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let missing: Vec<&std::path::Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {
                std::fs::File::open(d)?.set_permissions(std::fs::Permissions::from_mode(0o700))?
            }
            // Another flow created it meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
