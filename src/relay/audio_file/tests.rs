//! Tests for [`super`].

use super::*;
use crate::relay::recorder::OggOpusRecorder;
use crate::relay::recorder::tests::{rng, temp_path};
use ogg::{PacketWriteEndInfo, PacketWriter};
use std::io::Cursor;

/// Valid Opus packets of assorted configs, codes and sizes (up to 1275
/// bytes, so pages overflow and packets continue across pages).
fn packets() -> Vec<Vec<u8>> {
    let mut next = rng(7);
    (0..200)
        .map(|i| match i % 4 {
            0 => [0x48]
                .into_iter()
                .chain((0..next() % 1275).map(|_| next() as u8))
                .collect(),
            1 => vec![0xF9, 1, 2, 3, 4], // CELT 20 ms x2, code 1
            2 => vec![0x1B, 0x02, 9, 9], // SILK 60 ms x2, code 3 CBR
            _ => vec![0x78; 1276],       // hybrid FB 20 ms, largest frame
        })
        .collect()
}

fn recorded(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rec = OggOpusRecorder::new(&mut out, 42, "src-test").unwrap();
    let mut ts = 0u32;
    for (i, p) in packets.iter().enumerate() {
        rec.push(i as u16, ts, p).unwrap();
        ts += packet_samples(p).unwrap();
    }
    rec.finish().unwrap();
    out
}

fn read_all(bytes: &[u8]) -> Result<Vec<(Vec<u8>, u32)>, SourceError> {
    let mut reader = OggOpusReader::open(Cursor::new(bytes))?;
    let mut all = Vec::new();
    while let Some(p) = reader.next_packet()? {
        all.push(p);
    }
    Ok(all)
}

/// Ogg file with arbitrary header and audio packets.
fn ogg_file(head: &[u8], tags: &[u8], audio: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = PacketWriter::new(&mut out);
    w.write_packet(head.to_vec(), 9, PacketWriteEndInfo::EndPage, 0)
        .unwrap();
    w.write_packet(tags.to_vec(), 9, PacketWriteEndInfo::EndPage, 0)
        .unwrap();
    for (i, p) in audio.iter().enumerate() {
        let end = if i + 1 == audio.len() {
            PacketWriteEndInfo::EndStream
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        w.write_packet(p.clone(), 9, end, 960 * (i as u64 + 1))
            .unwrap();
    }
    out
}

fn head(channels: u8, mapping: u8, version: u8) -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.extend([version, channels, 0x38, 1, 0x80, 0xBB, 0, 0, 0, 0, mapping]);
    h
}

#[test]
fn round_trip_through_recorder() {
    let sent = packets();
    let bytes = recorded(&sent);
    let mut reader = OggOpusReader::open(Cursor::new(&bytes)).unwrap();
    let expected = OpusHead {
        version: 1,
        channels: 1,
        pre_skip: 312,
        input_sample_rate: 48_000,
        output_gain: 0,
    };
    assert_eq!(reader.head(), &expected);
    for p in &sent {
        let (got, samples) = reader.next_packet().unwrap().expect("packet");
        assert_eq!(&got, p);
        assert_eq!(samples, packet_samples(p).unwrap());
    }
    assert!(reader.next_packet().unwrap().is_none());
    assert!(reader.next_packet().unwrap().is_none());
}

#[test]
fn stereo_other_streams_and_huge_tags() {
    let mut tags = b"OpusTags".to_vec();
    tags.resize(300_000, b'x'); // cover art sized: skipped, not buffered
    let audio = vec![vec![0xFC, 1, 2], vec![0xFC, 3]];
    let mut bytes = ogg_file(&head(2, 0, 1), &tags, &audio);
    // Another logical stream appended (e.g. multiplexed metadata) is ignored.
    let mut w = PacketWriter::new(&mut bytes);
    w.write_packet(vec![1, 2, 3], 77, PacketWriteEndInfo::EndStream, 0)
        .unwrap();
    let mut reader = OggOpusReader::open(Cursor::new(&bytes)).unwrap();
    assert_eq!(reader.head().channels, 2);
    assert_eq!(reader.next_packet().unwrap(), Some((audio[0].clone(), 960)));
    assert_eq!(reader.next_packet().unwrap(), Some((audio[1].clone(), 960)));
    assert_eq!(reader.next_packet().unwrap(), None);
}

#[test]
fn rejects_non_ogg_and_non_opus() {
    let err = |bytes: &[u8]| read_all(bytes).expect_err("must be rejected");
    assert!(matches!(err(b""), SourceError::NotOgg));
    assert!(matches!(
        err(b"garbage, not an ogg file at all........"),
        SourceError::NotOgg
    ));
    let wav = temp_path("as-ogg", "wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    (0..800).for_each(|i| w.write_sample(i as i16).unwrap());
    w.finalize().unwrap();
    assert!(matches!(
        err(&std::fs::read(&wav).unwrap()),
        SourceError::NotOgg
    ));
    std::fs::remove_file(wav).unwrap();
    let vorbis = ogg_file(b"\x01vorbis\0\0\0\0\x01", b"\x03vorbis", &[]);
    assert!(matches!(err(&vorbis), SourceError::NotOpus(_)));
    let no_tags = ogg_file(&head(1, 0, 1), b"NotTags!", &[]);
    assert!(matches!(err(&no_tags), SourceError::NotOpus(_)));
    assert!(matches!(
        err(&ogg_file(&head(3, 0, 1), b"OpusTags", &[])),
        SourceError::UnsupportedChannels(3)
    ));
    assert!(matches!(
        err(&ogg_file(&head(0, 0, 1), b"OpusTags", &[])),
        SourceError::UnsupportedChannels(0)
    ));
    assert!(matches!(
        err(&ogg_file(&head(2, 1, 1), b"OpusTags", &[])),
        SourceError::UnsupportedMapping(1)
    ));
    assert!(matches!(
        err(&ogg_file(&head(1, 0, 16), b"OpusTags", &[])),
        SourceError::UnsupportedVersion(16)
    ));
    assert!(matches!(
        err(&ogg_file(&head(1, 0, 1)[..18], b"OpusTags", &[])),
        SourceError::BadHeader(_)
    ));
    let big = ogg_file(&head(1, 0, 1), b"OpusTags", &[vec![0xF8; 70_000]]);
    assert!(matches!(err(&big), SourceError::PacketTooLarge));
    let bad_audio = ogg_file(&head(1, 0, 1), b"OpusTags", &[vec![0xFB, 0]]);
    assert!(matches!(
        err(&bad_audio),
        SourceError::InvalidPacket(OpusPacketError::ZeroFrames)
    ));
}

#[test]
fn rejects_truncated_and_corrupt_files() {
    let bytes = recorded(&packets());
    // Cut inside an audio page: headers fine, reading fails.
    let mut reader = OggOpusReader::open(Cursor::new(&bytes[..bytes.len() - 100])).unwrap();
    let err = std::iter::from_fn(|| reader.next_packet().transpose()).find_map(Result::err);
    assert!(matches!(err, Some(SourceError::Truncated(_))), "{err:?}");
    assert!(
        reader.next_packet().unwrap().is_none(),
        "finished after an error"
    );
    // Cut inside the header pages.
    for cut in [10, 30, 60] {
        let e = OggOpusReader::open(Cursor::new(&bytes[..cut])).err();
        assert!(
            matches!(e, Some(SourceError::Truncated(_))),
            "cut {cut}: {e:?}"
        );
    }
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    assert!(matches!(read_all(&flipped), Err(SourceError::Corrupt(_))));
}

#[test]
fn random_inputs_never_panic() {
    let valid = recorded(&packets()[..40]);
    let mut next = rng(99);
    let mut outcomes = [0usize; 2];
    for i in 0..3000 {
        let bytes: Vec<u8> = match i % 4 {
            0 => (0..next() % 400).map(|_| next() as u8).collect(),
            1 => b"OggS\0\x02"
                .iter()
                .copied()
                .chain((0..next() % 400).map(|_| next() as u8))
                .collect(),
            2 => {
                let mut b = valid.clone();
                for _ in 0..1 + next() % 3 {
                    let at = (next() % b.len() as u64) as usize;
                    b[at] = next() as u8;
                }
                b.truncate((next() % (b.len() as u64 + 1)) as usize);
                b
            }
            _ => {
                // Valid pages, random packets: exercises everything past the CRC.
                let rand_packet = |next: &mut dyn FnMut() -> u64| -> Vec<u8> {
                    (0..next() % 700).map(|_| next() as u8).collect()
                };
                let mut h = head((next() % 3) as u8, (next() % 2) as u8, (next() % 17) as u8);
                h.truncate(15 + (next() % 6) as usize);
                let audio: Vec<Vec<u8>> =
                    (0..next() % 20).map(|_| rand_packet(&mut next)).collect();
                ogg_file(&h, b"OpusTags", &audio)
            }
        };
        // Count how deep the input got: rejected at open, or read to the end.
        if let Ok(mut reader) = OggOpusReader::open(Cursor::new(&bytes)) {
            outcomes[1] += 1;
            for _ in 0..1000 {
                match reader.next_packet() {
                    Ok(None) => break,
                    Ok(Some((p, samples))) => assert_eq!(packet_samples(&p), Ok(samples)),
                    Err(_) => {}
                }
            }
        } else {
            outcomes[0] += 1;
        }
    }
    assert!(outcomes[0] > 100 && outcomes[1] > 100, "{outcomes:?}");
}

fn write_wav<S: hound::Sample + Copy>(name: &str, spec: hound::WavSpec, samples: &[S]) -> PathBuf {
    let path = temp_path(name, "wav");
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    samples.iter().for_each(|&s| w.write_sample(s).unwrap());
    w.finalize().unwrap();
    path
}

#[test]
fn wav_16k_stereo_is_downmixed_and_resampled() {
    use std::f64::consts::TAU;
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    // Left: 1 kHz sine at half scale; right: constant quarter scale.
    let stereo: Vec<i16> = (0..16_000)
        .flat_map(|i| {
            [
                ((TAU * 1000.0 * i as f64 / 16_000.0).sin() * 16384.0) as i16,
                8192,
            ]
        })
        .collect();
    let path = write_wav("stereo16k", spec, &stereo);
    let mono = read_wav_mono_48k(&path).unwrap();
    std::fs::remove_file(path).unwrap();
    assert_eq!(mono.len(), 48_000);
    for (j, &s) in mono.iter().enumerate().take(47_997) {
        let ideal = (TAU * 1000.0 * j as f64 / 48_000.0).sin() * 8192.0 + 4096.0;
        assert!(
            (f64::from(s) - ideal).abs() < 300.0,
            "sample {j}: {s} vs {ideal}"
        );
    }
}

#[test]
fn wav_48k_float_and_8bit_scaling() {
    let float = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let input = [0.0f32, 0.5, -0.5, 1.0, -1.0, 2.0, 0.25];
    let path = write_wav("float48k", float, &input);
    assert_eq!(
        read_wav_mono_48k(&path).unwrap(),
        [0, 16384, -16384, 32767, -32768, 32767, 8192]
    );
    std::fs::remove_file(path).unwrap();
    let int8 = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 8,
        sample_format: hound::SampleFormat::Int,
    };
    let path = write_wav("int8", int8, &[64i8, 64]);
    assert_eq!(read_wav_mono_48k(&path).unwrap(), [16384; 12]);
    std::fs::remove_file(path).unwrap();
    let int24 = hound::WavSpec {
        channels: 3,
        sample_rate: 96_000,
        bits_per_sample: 24,
        sample_format: hound::SampleFormat::Int,
    };
    let path = write_wav("int24", int24, &[-(1i32 << 23), 0, 0, -(1 << 23), 0, 0]);
    assert_eq!(read_wav_mono_48k(&path).unwrap(), [-10923]);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn wav_errors_name_the_file() {
    let missing = temp_path("missing", "wav");
    let e = read_wav_mono_48k(&missing).unwrap_err();
    assert!(
        matches!(e, SourceError::Wav { .. }) && e.to_string().contains(&*missing.to_string_lossy()),
        "{e}"
    );
    assert!(std::error::Error::source(&e).is_some());
    let long = hound::WavSpec {
        channels: 1,
        sample_rate: 1000,
        bits_per_sample: 8,
        sample_format: hound::SampleFormat::Int,
    };
    let path = write_wav("long", long, &vec![0i8; 601_000]);
    let e = read_wav_mono_48k(&path).unwrap_err();
    assert!(
        matches!(e, SourceError::WavTooLong { seconds: 601, .. }),
        "{e}"
    );
    assert!(e.to_string().contains(&*path.to_string_lossy()));
    std::fs::remove_file(path).unwrap();
    // A 40-bit integer WAV: a valid header hound parses, but unsupported here.
    let mut wav = b"RIFF\x2e\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x40\x1f\0\0\x40\x9c\0\0\x05\0\x28\0data\x0a\0\0\0".to_vec();
    wav.extend([0u8; 10]);
    let path = temp_path("int40", "wav");
    std::fs::write(&path, wav).unwrap();
    let e = read_wav_mono_48k(&path).unwrap_err();
    assert!(
        matches!(e, SourceError::WavFormat { .. })
            && e.to_string().contains(&*path.to_string_lossy()),
        "{e}"
    );
    std::fs::remove_file(path).unwrap();
}
