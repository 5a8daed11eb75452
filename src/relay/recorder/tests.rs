//! Tests for [`super`]: run with `cargo test`; the recorder tests need
//! `opusinfo`, `opusdec` and `ffmpeg` on `PATH`.

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
    encode_at(seconds, 24_000, false)
}

/// Like [`encode`], at `bitrate` (constant when `cbr`).
fn encode_at(seconds: usize, bitrate: i32, cbr: bool) -> Vec<Vec<u8>> {
    use opus::{Application, Bitrate, Channels, Encoder};
    let mut enc = Encoder::new(48_000, Channels::Mono, Application::Voip).unwrap();
    enc.set_bitrate(Bitrate::Bits(bitrate)).unwrap();
    enc.set_vbr(!cbr).unwrap();
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
    assert!(
        !info.contains("warning") && !info.contains("error"),
        "{info}"
    );
    let ffmpeg = run(Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"]));
    assert!(ffmpeg.trim().is_empty(), "ffmpeg: {ffmpeg}");
    let wav = path.with_extension("wav");
    let dec = run(Command::new("opusdec")
        .args(["--quiet", "--rate", "48000"])
        .arg(path)
        .arg(&wav));
    assert!(dec.trim().is_empty(), "opusdec: {dec}");
    let reader = hound::WavReader::open(&wav).unwrap();
    assert_eq!(
        (reader.spec().channels, reader.spec().sample_rate),
        (1, 48_000)
    );
    let decoded = reader.duration() as usize;
    std::fs::remove_file(&wav).unwrap();
    decoded
}

/// Checks stats, plays the file with the tools and compares opusdec's
/// output length with the sender's timeline.
/// Checks the page structure with the `ogg` crate's reader: headers alone
/// on their pages, every audio page's granule equals the samples completed so
/// far, at most 50 packets per page, end-of-stream on the last packet.
fn check_pages(path: &Path, duration: u64) {
    let mut reader = ogg::PacketReader::new(File::open(path).unwrap());
    for magic in [&b"OpusHead"[..], b"OpusTags"] {
        let p = reader.read_packet().unwrap().unwrap();
        assert!(p.data.starts_with(magic) && p.first_in_page() && p.last_in_page());
        assert_eq!(p.absgp_page(), 0);
    }
    let (mut granule, mut in_page, mut last) = (0u64, 0, None);
    while let Some(p) = reader.read_packet().unwrap() {
        granule += u64::from(crate::codec::opus_packet::packet_samples(&p.data).unwrap());
        in_page += 1;
        assert!(in_page <= 50, "page too long");
        if p.last_in_page() {
            // An empty recording's lone lost frame is trimmed to nothing.
            let expected = if duration == 0 {
                u64::from(PRE_SKIP)
            } else {
                granule
            };
            assert_eq!(p.absgp_page(), expected);
            in_page = 0;
        }
        last = Some(p.last_in_stream());
    }
    assert_eq!(last, Some(true), "end-of-stream flag on the last page");
}

fn check(path: PathBuf, stats: RecordStats, expected: RecordStats) {
    assert_eq!(stats, expected);
    check_pages(&path, expected.duration_samples);
    let decoded = check_with_tools(&path) as i64;
    let timeline = expected.duration_samples as i64;
    assert!(
        (decoded - timeline).abs() <= i64::from(FRAME),
        "{decoded} vs {timeline}"
    );
    assert_eq!(
        decoded,
        (timeline - i64::from(PRE_SKIP)).max(0),
        "granule minus pre-skip"
    );
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

/// Packets of 1275 bytes (510 kb/s CBR) take 6 lacing values each: 42 fill
/// a page's 255, so pages end after 42 packets instead of 50 (the writer
/// starts the next page; no packet is split across pages), and the file
/// still plays with the right length and granule positions.
#[test]
fn large_packets_end_pages_early_without_splitting() {
    let packets = encode_at(3, 510_000, true);
    assert!(
        packets.iter().all(|p| p.len() == 1275),
        "CBR at the maximum size"
    );
    let input = rtp(&packets, 7, 99);
    let (path, stats) = record("large-packets", &input);
    let mut reader = ogg::PacketReader::new(File::open(&path).unwrap());
    let mut per_page = Vec::new();
    let mut n = 0;
    while let Some(p) = reader.read_packet().unwrap() {
        if p.data.starts_with(b"Opus") {
            continue; // OpusHead, OpusTags
        }
        n += 1;
        if p.last_in_page() {
            per_page.push(n);
            n = 0;
        }
    }
    assert_eq!(per_page, [42, 42, 42, 24]);
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
    check(
        path,
        stats,
        RecordStats {
            duplicates: 15 + 5,
            ..expect(150, 0, 150 * 960)
        },
    );
}

#[test]
fn dropped_and_late_packets_are_concealed() {
    let input = rtp(&encode(3), 40_000, 99);
    let mut next = rng(5);
    let mut lossy: Vec<Rtp> = Vec::new();
    let mut dropped = 0;
    for (i, packet) in input.iter().enumerate() {
        // 5% loss, never the first or last packet (they bound the timeline).
        if i > 0 && i < 149 && next().is_multiple_of(20) {
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
    let late = RecordStats {
        too_late: 1,
        ..expect(149 - dropped, dropped + 1, 150 * 960)
    };
    check(path, stats, late);
}

#[test]
fn seq_and_timestamp_wrap_around() {
    let input = rtp(&encode(3), 65_500, u32::MAX - 30 * FRAME + 1);
    let mut lossy: Vec<Rtp> = input
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 17 != 5)
        .map(|(_, p)| p.clone())
        .collect();
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
    let expected = RecordStats {
        resyncs: 1,
        discarded_jumps: 1,
        ..expect(100, 0, 100 * 960)
    };
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
    assert_eq!(
        rec.push(3, 3_000_000, &silk20).unwrap(),
        PushOutcome::Deferred
    );
    // Gap of 2 x 20 ms + 7.5 ms: two SILK lost frames, then 5 + 2.5 ms CELT.
    assert_eq!(
        rec.push(2, 960 + 2280, &silk20).unwrap(),
        PushOutcome::Accepted
    );
    for i in 0..9 {
        rec.push(3 + i, 3240 + u32::from(i + 1) * 960, &silk20)
            .unwrap();
    }
    assert_eq!(
        rec.push(2, 960 + 2280, &silk20).unwrap(),
        PushOutcome::Duplicate
    );
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
    assert!(matches!(
        rec.push(200, 0, &[0xF8]),
        Err(RecordError::Poisoned)
    ));
    assert!(matches!(rec.finish(), Err(RecordError::Poisoned)));
    let long = "x".repeat(MAX_VENDOR_BYTES + 1);
    assert!(matches!(
        OggOpusRecorder::new(Vec::new(), 1, &long),
        Err(RecordError::VendorTooLong { .. })
    ));
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
            if !next().is_multiple_of(4) && !payload.is_empty() {
                payload[0] &= 0xFC; // mostly valid code 0 packets
            }
            rec.push(seq, ts, &payload).unwrap();
        }
        let s = rec.finish().unwrap();
        let accounted =
            s.packets_written + s.duplicates + s.too_late + s.invalid + s.discarded_jumps;
        assert_eq!(accounted, pushes, "{s:?}");
    }
}

#[test]
fn recordings_are_private_files_in_private_directories() {
    use std::os::unix::fs::PermissionsExt;
    let root = temp_path("private", "d");
    let path = root.join("device-1/nested/1-s1-f1.ogg");
    let f = create_file(&path).unwrap();
    drop(f);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&path), 0o600);
    for d in [&root, &root.join("device-1"), &root.join("device-1/nested")] {
        assert_eq!(mode(d), 0o700, "{}", d.display());
    }
    // Never written through a link planted where a recording goes.
    let target = root.join("elsewhere");
    std::fs::write(&target, b"keep").unwrap();
    let link = root.join("device-1/2-s1-f1.ogg");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(create_file(&link).is_err());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    std::fs::remove_dir_all(&root).unwrap();
}
