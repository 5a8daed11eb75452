//! The speech fixture and the codec settings' figures.

use super::*;

pub(crate) struct Fixture {
    pub(crate) raw: PathBuf,
    pub(crate) wav: PathBuf,
    pub(crate) short_wav: PathBuf,
    pub(crate) pcm: Vec<i16>,
    pub(crate) seconds: f64,
    pub(crate) frames: u64,
    pub(crate) short_seconds: f64,
}

pub(crate) fn write_wav(path: &Path, pcm: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("create wav");
    for &s in pcm {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

pub(crate) fn fixture(dir: &Path, frame_samples: usize) -> Fixture {
    let raw = speech_fixture(dir, TEXT);
    let bytes = std::fs::read(&raw).unwrap();
    let pcm: Vec<i16> = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let short = ((SHORT_CLIP_S * 48_000.0) as usize).min(pcm.len());
    let short_wav = dir.join("speech-short.wav");
    write_wav(&short_wav, &pcm[..short]);
    Fixture {
        wav: raw.with_extension("wav"),
        raw,
        seconds: pcm.len() as f64 / 48_000.0,
        frames: (pcm.len() / frame_samples) as u64,
        short_seconds: short as f64 / 48_000.0,
        pcm,
        short_wav,
    }
}

pub(crate) fn kbps(c: &CodecConfig) -> String {
    let k = f64::from(c.bitrate) / 1000.0;
    format!("{k}")
}

pub(crate) fn frame_ms(c: &CodecConfig) -> u128 {
    c.frame.as_millis()
}
