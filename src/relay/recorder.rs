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
//! - Pages end after 50 packets or 1 s of audio, and the writer is flushed
//!   whenever a page ends, so a crash loses about a second. The newest packet
//!   is always held back so that `finish` can put it on the end-of-stream page.
//! - Memory is bounded (window, one held packet, one page of data), there is
//!   no `unsafe`, and no input makes it panic. After an I/O error the stream
//!   state is unknown and every later call returns [`RecordError::Poisoned`].

use std::collections::VecDeque;
use std::io::Write;

use ogg::{PacketWriteEndInfo, PacketWriter};

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
/// Drop without [`finish`](Self::finish) leaves a stream without its last
/// packet and end-of-stream flag, which players still accept.
pub struct OggOpusRecorder<W: Write> {
    ogg: PacketWriter<'static, W>,
    serial: u32,
    window: VecDeque<Pending>,
    /// RTP timestamp and extended timeline position of the newest packet.
    anchor: Option<(u32, i64)>,
    candidate: Option<Candidate>,
    /// Timeline position where the next written packet must start.
    next_ext: Option<i64>,
    recent: VecDeque<i64>,
    held: Option<(Vec<u8>, u32)>,
    granule: u64,
    page_packets: u32,
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
        let mut ogg = PacketWriter::new(writer);
        ogg.write_packet(head, serial, PacketWriteEndInfo::EndPage, 0)?;
        ogg.write_packet(tags, serial, PacketWriteEndInfo::EndPage, 0)?;
        ogg.inner_mut().flush()?;
        Ok(Self {
            ogg,
            serial,
            window: VecDeque::with_capacity(REORDER_PACKETS + 1),
            anchor: None,
            candidate: None,
            next_ext: None,
            recent: VecDeque::with_capacity(RECENT_WRITTEN),
            held: None,
            granule: 0,
            page_packets: 0,
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
                let end = PacketWriteEndInfo::EndStream;
                let packet = lost_frame_packet(EMPTY_STREAM_TOC).to_vec();
                self.ogg
                    .write_packet(packet, self.serial, end, u64::from(PRE_SKIP))?;
                self.ogg.inner_mut().flush()?;
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
        let payload = payload.to_vec();
        self.window.insert(pos, Pending { ext, samples, payload });
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
        let sizes = [frame_samples(template), 2880, 1920, 960, 480, 240, 120];
        for size in sizes {
            let Some(packet) = lost_frame_packet_of(template, size) else {
                continue;
            };
            while gap >= u64::from(size) {
                self.write_audio(packet.to_vec(), size)?;
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

    fn write_packet(&mut self, packet: Vec<u8>, samples: u32, last: bool) -> Result<(), RecordError> {
        self.granule += u64::from(samples);
        self.page_packets += 1;
        self.page_samples += u64::from(samples);
        let end = if last {
            PacketWriteEndInfo::EndStream
        } else if self.page_packets >= PAGE_MAX_PACKETS || self.page_samples >= PAGE_MAX_SAMPLES {
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        self.ogg.write_packet(packet, self.serial, end, self.granule)?;
        if end != PacketWriteEndInfo::NormalPacket {
            self.page_packets = 0;
            self.page_samples = 0;
            self.ogg.inner_mut().flush()?;
        }
        Ok(())
    }
}

/// Signed, wrap-aware distance from RTP timestamp `from` to `to`.
fn ts_delta(to: u32, from: u32) -> i64 {
    i64::from(to.wrapping_sub(from) as i32)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs::File;
    use std::io::BufWriter;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    type Rtp = (u16, u32, Vec<u8>);
    const FRAME: u32 = 960;

    /// Unique path in the temp dir.
    pub(crate) fn temp_path(name: &str, ext: &str) -> PathBuf {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        std::env::temp_dir().join(format!("oggrec-{name}-{pid}-{n}.{ext}"))
    }

    /// Deterministic xorshift generator for test data.
    pub(crate) fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed | 1;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// `seconds` of 440 Hz + 1 kHz, Opus VoIP, 20 ms frames, 24 kb/s.
    fn encode(seconds: usize) -> Vec<Vec<u8>> {
        use opus::{Application, Bitrate, Channels, Encoder};
        let mut enc = Encoder::new(48_000, Channels::Mono, Application::Voip).unwrap();
        enc.set_bitrate(Bitrate::Bits(24_000)).unwrap();
        let tau = std::f64::consts::TAU;
        let pcm: Vec<i16> = (0..48_000 * seconds)
            .map(|i| {
                let t = i as f64 / 48_000.0;
                let x = 0.3 * (tau * 440.0 * t).sin() + 0.2 * (tau * 1000.0 * t).sin();
                (x * 32767.0) as i16
            })
            .collect();
        pcm.chunks(FRAME as usize)
            .map(|frame| enc.encode_vec(frame, 4000).unwrap())
            .collect()
    }

    fn rtp(packets: &[Vec<u8>], seq0: u16, ts0: u32) -> Vec<Rtp> {
        (0..packets.len())
            .map(|i| {
                let ts = ts0.wrapping_add(i as u32 * FRAME);
                (seq0.wrapping_add(i as u16), ts, packets[i].clone())
            })
            .collect()
    }

    /// Reverses every chunk of 4 packets (reorder distance up to 3).
    fn shuffle(input: &mut [Rtp]) {
        input.chunks_mut(4).for_each(<[Rtp]>::reverse);
    }

    fn record(name: &str, input: &[Rtp]) -> (PathBuf, RecordStats) {
        let path = temp_path(name, "ogg");
        let file = BufWriter::new(File::create(&path).unwrap());
        let mut rec = OggOpusRecorder::new(file, 0x766f_7867, "voxgate-test").unwrap();
        for (seq, ts, payload) in input {
            rec.push(*seq, *ts, payload).unwrap();
        }
        (path, rec.finish().unwrap())
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().expect("tool is installed");
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd:?} failed: {text}");
        text.into_owned()
    }

    /// opusinfo, ffmpeg and opusdec must accept the file without complaint;
    /// returns the number of samples opusdec decodes.
    pub(crate) fn check_with_tools(path: &Path) -> usize {
        let info = run(Command::new("opusinfo").arg(path)).to_lowercase();
        assert!(!info.contains("warning") && !info.contains("error"), "{info}");
        let ffmpeg = run(Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(path).args(["-f", "null", "-"]));
        assert!(ffmpeg.trim().is_empty(), "ffmpeg: {ffmpeg}");
        let wav = path.with_extension("wav");
        let dec = run(Command::new("opusdec").args(["--quiet", "--rate", "48000"]).arg(path).arg(&wav));
        assert!(dec.trim().is_empty(), "opusdec: {dec}");
        let reader = hound::WavReader::open(&wav).unwrap();
        assert_eq!((reader.spec().channels, reader.spec().sample_rate), (1, 48_000));
        let decoded = reader.duration() as usize;
        std::fs::remove_file(&wav).unwrap();
        decoded
    }

    /// Checks stats, plays the file with the tools and compares opusdec's
    /// output length with the sender's timeline.
    fn check(path: PathBuf, stats: RecordStats, expected: RecordStats) {
        assert_eq!(stats, expected);
        let decoded = check_with_tools(&path) as i64;
        let timeline = expected.duration_samples as i64;
        assert!((decoded - timeline).abs() <= i64::from(FRAME), "{decoded} vs {timeline}");
        assert_eq!(decoded, (timeline - i64::from(PRE_SKIP)).max(0), "granule minus pre-skip");
        std::fs::remove_file(path).unwrap();
    }

    fn expect(written: u64, filled: u64, samples: u64) -> RecordStats {
        RecordStats {
            packets_written: written,
            gap_frames_filled: filled,
            duration_samples: samples,
            ..RecordStats::default()
        }
    }

    #[test]
    fn in_order_and_shuffled_streams_play() {
        let packets = encode(3);
        let input = rtp(&packets, 1000, 123_456);
        let (path, stats) = record("in-order", &input);
        check(path, stats, expect(150, 0, 150 * 960));
        let mut shuffled = input.clone();
        shuffle(&mut shuffled);
        let (path, stats) = record("shuffled", &shuffled);
        check(path, stats, expect(150, 0, 150 * 960));
    }

    #[test]
    fn duplicates_are_dropped_and_counted() {
        let input = rtp(&encode(3), 7, 0);
        let mut dup = Vec::new();
        for (i, packet) in input.iter().enumerate() {
            dup.push(packet.clone());
            if i % 10 == 3 {
                dup.push(packet.clone()); // immediate retransmission
            }
            if i >= 20 && i % 25 == 0 {
                dup.push(input[i - 20].clone()); // long written already
            }
        }
        shuffle(&mut dup);
        let (path, stats) = record("dups", &dup);
        check(path, stats, RecordStats { duplicates: 15 + 5, ..expect(150, 0, 150 * 960) });
    }

    #[test]
    fn dropped_and_late_packets_are_concealed() {
        let input = rtp(&encode(3), 40_000, 99);
        let mut next = rng(5);
        let mut lossy: Vec<Rtp> = Vec::new();
        let mut dropped = 0;
        for (i, packet) in input.iter().enumerate() {
            // 5% loss, never the first or last packet (they bound the timeline).
            if i > 0 && i < 149 && next() % 20 == 0 {
                dropped += 1;
            } else if i != 60 {
                lossy.push(packet.clone());
            }
        }
        assert!(dropped >= 4, "{dropped}");
        // Packet 60 arrives 600 ms late: its slot was already concealed.
        lossy.insert(lossy.len() - 60, input[60].clone());
        shuffle(&mut lossy);
        let (path, stats) = record("lossy", &lossy);
        let late = RecordStats { too_late: 1, ..expect(149 - dropped, dropped + 1, 150 * 960) };
        check(path, stats, late);
    }

    #[test]
    fn seq_and_timestamp_wrap_around() {
        let input = rtp(&encode(3), 65_500, u32::MAX - 30 * FRAME + 1);
        let mut lossy: Vec<Rtp> = input.iter().enumerate().filter(|(i, _)| i % 17 != 5).map(|(_, p)| p.clone()).collect();
        shuffle(&mut lossy);
        let (path, stats) = record("wrap", &lossy);
        check(path, stats, expect(141, 9, 150 * 960));
    }

    #[test]
    fn long_pause_is_filled_to_keep_the_timeline() {
        let packets = encode(2);
        // 15 s without packets (sender muted), sequence numbers continue.
        let mut input = rtp(&packets[..50], 10, 5000);
        input.extend(rtp(&packets[50..], 60, 5000 + (50 + 750) * FRAME));
        let (path, stats) = record("pause", &input);
        check(path, stats, expect(100, 750, (100 + 750) * 960));
    }

    #[test]
    fn restart_resyncs_and_stray_packet_is_discarded() {
        let packets = encode(2);
        let mut input = rtp(&packets[..50], 10, 5000);
        // A lone packet with a wild timestamp and sequence number.
        input.insert(30, (30_000, 2_000_000_000, packets[30].clone()));
        // Sender restarts with a new random base.
        input.extend(rtp(&packets[50..], 51_000, 3_000_000_000));
        let (path, stats) = record("restart", &input);
        let expected = RecordStats { resyncs: 1, discarded_jumps: 1, ..expect(100, 0, 100 * 960) };
        check(path, stats, expected);
    }

    #[test]
    fn empty_recording_is_valid_and_silent() {
        let (path, stats) = record("empty", &[]);
        check(path, stats, expect(0, 0, 0));
    }

    #[test]
    fn outcomes_and_odd_frame_sizes() {
        let mut out = Vec::new();
        let mut rec = OggOpusRecorder::new(&mut out, 1, "v").unwrap();
        let silk20 = [0x48u8, 1, 2, 3];
        assert_eq!(rec.push(1, 0, &silk20).unwrap(), PushOutcome::Accepted);
        assert_eq!(rec.push(1, 0, &silk20).unwrap(), PushOutcome::Duplicate);
        assert_eq!(rec.push(2, 960, &[]).unwrap(), PushOutcome::Invalid);
        assert_eq!(rec.push(2, 960, &[0xFB, 0]).unwrap(), PushOutcome::Invalid);
        assert_eq!(rec.push(3, 3_000_000, &silk20).unwrap(), PushOutcome::Deferred);
        // Gap of 2 x 20 ms + 7.5 ms: two SILK lost frames, then 5 + 2.5 ms CELT.
        assert_eq!(rec.push(2, 960 + 2280, &silk20).unwrap(), PushOutcome::Accepted);
        for i in 0..9 {
            rec.push(3 + i, 3240 + u32::from(i + 1) * 960, &silk20).unwrap();
        }
        assert_eq!(rec.push(2, 960 + 2280, &silk20).unwrap(), PushOutcome::Duplicate);
        assert_eq!(rec.push(1, 960, &silk20).unwrap(), PushOutcome::TooLate);
        let stats = rec.finish().unwrap();
        let expected = RecordStats {
            duplicates: 2,
            too_late: 1,
            invalid: 2,
            discarded_jumps: 1,
            ..expect(11, 4, 3240 + 10 * 960)
        };
        assert_eq!(stats, expected);
    }

    #[test]
    fn io_errors_keep_their_source_and_poison() {
        struct Failing(usize);
        impl Write for Failing {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if self.0 < buf.len() {
                    return Err(std::io::Error::other("disk full"));
                }
                self.0 -= buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        assert!(OggOpusRecorder::new(Failing(10), 1, "v").is_err());
        let mut rec = OggOpusRecorder::new(Failing(200), 1, "v").unwrap();
        let err = (0..100u16)
            .find_map(|i| rec.push(i, u32::from(i) * 960, &[0xF8; 40]).err())
            .expect("writer fills up");
        let source = std::error::Error::source(&err).expect("io source kept");
        assert_eq!(source.to_string(), "disk full");
        assert!(matches!(rec.push(200, 0, &[0xF8]), Err(RecordError::Poisoned)));
        assert!(matches!(rec.finish(), Err(RecordError::Poisoned)));
        let long = "x".repeat(MAX_VENDOR_BYTES + 1);
        assert!(matches!(OggOpusRecorder::new(Vec::new(), 1, &long), Err(RecordError::VendorTooLong { .. })));
    }

    #[test]
    fn random_input_never_panics_and_is_accounted() {
        let mut next = rng(42);
        for round in 0..20 {
            let mut out = Vec::new();
            let mut rec = OggOpusRecorder::new(&mut out, round, "fuzz").unwrap();
            let (mut seq, mut ts) = (next() as u16, next() as u32);
            let pushes = 300;
            for _ in 0..pushes {
                match next() % 8 {
                    0 => (seq, ts) = (next() as u16, next() as u32),
                    1 => ts = ts.wrapping_add((next() % 200_000) as u32),
                    2 => ts = ts.wrapping_sub((next() % 20_000) as u32),
                    _ => (seq, ts) = (seq.wrapping_add(1), ts.wrapping_add(960)),
                }
                let len = (next() % 80) as usize;
                let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if next() % 4 != 0 && !payload.is_empty() {
                    payload[0] &= 0xFC; // mostly valid code 0 packets
                }
                rec.push(seq, ts, &payload).unwrap();
            }
            let s = rec.finish().unwrap();
            let accounted = s.packets_written + s.duplicates + s.too_late + s.invalid + s.discarded_jumps;
            assert_eq!(accounted, pushes, "{s:?}");
        }
    }
}
