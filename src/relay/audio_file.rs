//! Downlink audio sources: Ogg Opus files (packets passed through) and WAV
//! files (decoded to 48 kHz mono PCM).
//!
//! Guarantees:
//! - [`OggOpusReader`] needs only `Read` (no seeking), checks every page's
//!   CRC, page sequence numbers and packet continuation, and yields only
//!   packets that are valid Opus packets per RFC 6716, with their duration.
//!   Memory is bounded: one page plus one packet of at most
//!   [`MAX_PACKET_BYTES`]; the OpusTags packet is skipped without buffering,
//!   whatever its size.
//! - Only mono or stereo streams with channel mapping family 0 are accepted;
//!   other logical streams multiplexed into the file are ignored, and reading
//!   stops at the Opus stream's end-of-stream page (chained links are not
//!   followed). A file that ends cleanly at a page boundary without an
//!   end-of-stream page (a recording cut short by a crash) reads as complete.
//! - Pre-skip and end trimming are not applied: packets are passed through
//!   untouched; [`OggOpusReader::head`] gives the pre-skip.
//! - [`read_wav_mono_48k`] accepts 8/16/24/32-bit integer and 32-bit float
//!   WAV, any channel count and any sample rate, and reads at most
//!   [`MAX_WAV_SECONDS`] of audio. Errors name the file.
//! - No `unsafe`, no panic on any input.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::codec::opus_packet::{MAX_PACKET_BYTES, OpusPacketError, packet_samples};

/// Longest WAV file (10 minutes) [`read_wav_mono_48k`] accepts.
pub const MAX_WAV_SECONDS: u64 = 600;

/// Errors from reading a downlink source; I/O and decoder errors keep their source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading the underlying reader failed.
    #[error("reading the Ogg stream failed")]
    Io(#[source] io::Error),
    /// The input does not begin with an Ogg page (no `OggS` capture pattern).
    #[error("not an Ogg file: it does not start with an Ogg page")]
    NotOgg,
    /// The input is Ogg, but its first stream is not Ogg Opus.
    #[error("not an Ogg Opus stream: {0}")]
    NotOpus(&'static str),
    /// The OpusHead packet is malformed.
    #[error("invalid OpusHead: {0}")]
    BadHeader(&'static str),
    /// The OpusHead major version is not 0 (version byte above 15).
    #[error("unsupported Ogg Opus version {0}")]
    UnsupportedVersion(u8),
    /// The channel count is not 1 or 2.
    #[error("unsupported channel count {0}: only mono and stereo are supported")]
    UnsupportedChannels(u8),
    /// The channel mapping family is not 0.
    #[error("unsupported channel mapping family {0}: only family 0 is supported")]
    UnsupportedMapping(u8),
    /// The input ends inside a page header, a page or a packet.
    #[error("truncated Ogg stream: {0}")]
    Truncated(&'static str),
    /// The Ogg structure is damaged (checksum, sequence, continuation).
    #[error("corrupt Ogg stream: {0}")]
    Corrupt(&'static str),
    /// A packet is larger than [`MAX_PACKET_BYTES`].
    #[error("Ogg packet larger than {MAX_PACKET_BYTES} bytes")]
    PacketTooLarge,
    /// An audio packet is not a valid Opus packet (the reader can go on).
    #[error("invalid Opus packet in stream")]
    InvalidPacket(#[from] OpusPacketError),
    /// The WAV file could not be opened, parsed or read.
    #[error("cannot read WAV file {}", path.display())]
    Wav {
        /// The file.
        path: PathBuf,
        /// What hound reported.
        #[source]
        source: hound::Error,
    },
    /// The WAV file's sample format is not supported.
    #[error("unsupported WAV format in {}: {detail}", path.display())]
    WavFormat {
        /// The file.
        path: PathBuf,
        /// The format found.
        detail: String,
    },
    /// The WAV file is longer than [`MAX_WAV_SECONDS`].
    #[error("WAV file {} lasts {seconds} s, limit is {MAX_WAV_SECONDS} s", path.display())]
    WavTooLong {
        /// The file.
        path: PathBuf,
        /// Its duration in whole seconds.
        seconds: u64,
    },
}

/// Fields of the OpusHead identification header (RFC 7845 §5.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpusHead {
    /// Version byte (0–15 accepted).
    pub version: u8,
    /// Output channel count, 1 or 2.
    pub channels: u8,
    /// Samples (48 kHz) to discard from the start of decoder output.
    pub pre_skip: u16,
    /// Sample rate of the original input (informational).
    pub input_sample_rate: u32,
    /// Output gain in Q7.8 dB.
    pub output_gain: i16,
}

/// Streams the audio packets of an Ogg Opus file from any `Read`.
pub struct OggOpusReader<R: Read> {
    reader: R,
    head: OpusHead,
    serial: Option<u32>,
    next_seq: u32,
    queue: VecDeque<Vec<u8>>,
    partial: Vec<u8>,
    partial_len: usize,
    continuing: bool,
    completed: u64,
    eos: bool,
    failed: bool,
}

impl<R: Read> OggOpusReader<R> {
    /// Reads and validates OpusHead (magic, version, 1 or 2 channels,
    /// mapping family 0) and skips OpusTags.
    pub fn open(reader: R) -> Result<Self, SourceError> {
        let mut this = Self {
            reader,
            head: OpusHead::default(),
            serial: None,
            next_seq: 0,
            queue: VecDeque::new(),
            partial: Vec::new(),
            partial_len: 0,
            continuing: false,
            completed: 0,
            eos: false,
            failed: false,
        };
        let head = this
            .next_raw()?
            .ok_or(SourceError::Truncated("no OpusHead packet"))?;
        this.head = parse_head(&head)?;
        let tags = this
            .next_raw()?
            .ok_or(SourceError::Truncated("no OpusTags packet"))?;
        if !tags.starts_with(b"OpusTags") {
            return Err(SourceError::NotOpus("second packet is not OpusTags"));
        }
        Ok(this)
    }

    /// The stream's identification header.
    pub fn head(&self) -> &OpusHead {
        &self.head
    }

    /// Next audio packet and its duration in 48 kHz samples, or `None` at
    /// the end of the stream.
    ///
    /// After a container error (truncation, corruption, I/O) the reader is
    /// finished and returns `Ok(None)`; after [`SourceError::InvalidPacket`]
    /// the bad packet is skipped and reading can go on.
    pub fn next_packet(&mut self) -> Result<Option<(Vec<u8>, u32)>, SourceError> {
        if self.failed {
            return Ok(None);
        }
        match self.next_raw() {
            Ok(Some(packet)) => {
                let samples = packet_samples(&packet)?;
                Ok(Some((packet, samples)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    fn next_raw(&mut self) -> Result<Option<Vec<u8>>, SourceError> {
        loop {
            if let Some(packet) = self.queue.pop_front() {
                return Ok(Some(packet));
            }
            if self.eos {
                return Ok(None);
            }
            self.read_page()?;
        }
    }

    /// Reads one page; queues the packets it completes if it belongs to
    /// our stream.
    fn read_page(&mut self) -> Result<(), SourceError> {
        let mut header = [0u8; 27];
        let n = read_full(&mut self.reader, &mut header)?;
        let magic_len = n.min(4);
        if n == 0 || header[..magic_len] != b"OggS"[..magic_len] {
            return match (self.serial, n) {
                (None, _) => Err(SourceError::NotOgg),
                (Some(_), 0) if self.continuing => {
                    Err(SourceError::Truncated("stream ends inside a packet"))
                }
                (Some(_), 0) => {
                    self.eos = true;
                    Ok(())
                }
                _ => Err(SourceError::Corrupt("no Ogg page where one should start")),
            };
        }
        if n < header.len() {
            return Err(SourceError::Truncated("stream ends inside a page header"));
        }
        if header[4] != 0 {
            return Err(SourceError::Corrupt("unknown Ogg page version"));
        }
        let flags = header[5];
        let serial = u32::from_le_bytes([header[14], header[15], header[16], header[17]]);
        let seq = u32::from_le_bytes([header[18], header[19], header[20], header[21]]);
        let mut lacing = vec![0u8; usize::from(header[26])];
        read_exact(&mut self.reader, &mut lacing)?;
        let mut body = vec![0u8; lacing.iter().map(|&l| usize::from(l)).sum()];
        read_exact(&mut self.reader, &mut body)?;
        verify_crc(header, &lacing, &body)?;

        match self.serial {
            None if flags & 0x02 == 0 => {
                return Err(SourceError::Corrupt(
                    "first page lacks the beginning-of-stream flag",
                ));
            }
            None => self.serial = Some(serial),
            Some(ours) if ours != serial => return Ok(()), // another logical stream
            Some(_) => {}
        }
        if seq != self.next_seq {
            return Err(SourceError::Corrupt(
                "Ogg page missing (sequence number gap)",
            ));
        }
        self.next_seq = seq.wrapping_add(1);
        match (flags & 0x01 != 0, self.continuing) {
            (false, true) => return Err(SourceError::Corrupt("continued packet is cut off")),
            (true, false) => return Err(SourceError::Corrupt("page continues no packet")),
            _ => {}
        }
        let mut offset = 0;
        for &len in &lacing {
            let end = offset + usize::from(len);
            self.append(&body[offset..end])?;
            offset = end;
            if len < 255 {
                self.queue.push_back(std::mem::take(&mut self.partial));
                self.partial_len = 0;
                self.completed += 1;
            }
        }
        if let Some(&last) = lacing.last() {
            self.continuing = last == 255;
        }
        if flags & 0x04 != 0 {
            if self.continuing {
                return Err(SourceError::Truncated("stream ends inside a packet"));
            }
            self.eos = true;
        }
        Ok(())
    }

    fn append(&mut self, segment: &[u8]) -> Result<(), SourceError> {
        self.partial_len = self.partial_len.saturating_add(segment.len());
        if self.completed == 1 {
            // OpusTags: keep the magic only, skip the rest at any size.
            let keep = 8usize.saturating_sub(self.partial.len()).min(segment.len());
            self.partial.extend_from_slice(&segment[..keep]);
        } else if self.partial_len > MAX_PACKET_BYTES {
            return Err(SourceError::PacketTooLarge);
        } else {
            self.partial.extend_from_slice(segment);
        }
        Ok(())
    }
}

fn parse_head(packet: &[u8]) -> Result<OpusHead, SourceError> {
    if !packet.starts_with(b"OpusHead") {
        return Err(SourceError::NotOpus("first packet is not OpusHead"));
    }
    let &[
        version,
        channels,
        p0,
        p1,
        r0,
        r1,
        r2,
        r3,
        g0,
        g1,
        mapping,
        ..,
    ] = &packet[8..]
    else {
        return Err(SourceError::BadHeader("shorter than 19 bytes"));
    };
    if version > 15 {
        return Err(SourceError::UnsupportedVersion(version));
    }
    if !(1..=2).contains(&channels) {
        return Err(SourceError::UnsupportedChannels(channels));
    }
    if mapping != 0 {
        return Err(SourceError::UnsupportedMapping(mapping));
    }
    Ok(OpusHead {
        version,
        channels,
        pre_skip: u16::from_le_bytes([p0, p1]),
        input_sample_rate: u32::from_le_bytes([r0, r1, r2, r3]),
        output_gain: i16::from_le_bytes([g0, g1]),
    })
}

/// Checks the page CRC with the `ogg` crate's page parser.
fn verify_crc(header: [u8; 27], lacing: &[u8], body: &[u8]) -> Result<(), SourceError> {
    let bad = |_| SourceError::Corrupt("page checksum mismatch");
    let (mut parser, _) = ogg::reading::PageParser::new(header).map_err(bad)?;
    parser.parse_segments(lacing.to_vec());
    parser.parse_packet_data(body.to_vec()).map_err(bad)?;
    Ok(())
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize, SourceError> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SourceError::Io(e)),
        }
    }
    Ok(n)
}

fn read_exact(reader: &mut impl Read, buf: &mut [u8]) -> Result<(), SourceError> {
    if read_full(reader, buf)? < buf.len() {
        return Err(SourceError::Truncated("stream ends inside a page"));
    }
    Ok(())
}

/// Reads a WAV file as 48 kHz mono 16-bit PCM.
///
/// Channels are downmixed by averaging. Other sample rates are converted by
/// linear interpolation between neighbouring samples: cheap and adequate for
/// speech prompts, but without an anti-aliasing filter, so downsampling from
/// rates above 48 kHz can alias content above 24 kHz. Files longer than
/// [`MAX_WAV_SECONDS`] are rejected before their samples are read.
pub fn read_wav_mono_48k(path: impl AsRef<Path>) -> Result<Vec<i16>, SourceError> {
    let path = path.as_ref();
    let wav_err = |source| SourceError::Wav {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = hound::WavReader::open(path).map_err(wav_err)?;
    let spec = reader.spec();
    let scale = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => 1.0 / (1u64 << (bits - 1)) as f64,
        (hound::SampleFormat::Float, 32) => 1.0,
        (format, bits) => {
            return Err(SourceError::WavFormat {
                path: path.to_path_buf(),
                detail: format!("{bits}-bit {format:?} samples, {} channels", spec.channels),
            });
        }
    };
    let rate = u64::from(spec.sample_rate);
    let frames = u64::from(reader.duration());
    if rate == 0 || spec.channels == 0 {
        return Err(SourceError::WavFormat {
            path: path.to_path_buf(),
            detail: format!("{rate} Hz, {} channels", spec.channels),
        });
    }
    if frames > MAX_WAV_SECONDS * rate {
        let seconds = frames / rate;
        let path = path.to_path_buf();
        return Err(SourceError::WavTooLong { path, seconds });
    }
    let mut out = Linear::new(rate, frames);
    let channels = usize::from(spec.channels);
    let (mut sum, mut count) = (0.0f64, 0usize);
    let mut add = |x: f64| {
        sum += x;
        count += 1;
        if count == channels {
            out.push(sum / channels as f64);
            (sum, count) = (0.0, 0);
        }
    };
    if spec.sample_format == hound::SampleFormat::Float {
        for sample in reader.samples::<f32>() {
            add(f64::from(sample.map_err(wav_err)?));
        }
    } else {
        for sample in reader.samples::<i32>() {
            add(f64::from(sample.map_err(wav_err)?) * scale);
        }
    }
    Ok(out.finish())
}

/// Streaming linear-interpolation resampler to 48 kHz.
struct Linear {
    in_rate: u64,
    prev: f64,
    frames: u64,
    out: Vec<i16>,
    total: usize,
}

impl Linear {
    fn new(in_rate: u64, frames: u64) -> Self {
        let total = ((frames * 48_000 + in_rate / 2) / in_rate) as usize;
        let out = Vec::with_capacity(total);
        Self {
            in_rate,
            prev: 0.0,
            frames: 0,
            out,
            total,
        }
    }

    /// Adds input frame `self.frames`; emits every output sample whose
    /// source position lies between the previous frame and this one.
    fn push(&mut self, x: f64) {
        if self.frames > 0 {
            let start = (self.frames - 1) * 48_000;
            loop {
                let pos = self.out.len() as u64 * self.in_rate;
                if pos >= self.frames * 48_000 || self.out.len() >= self.total {
                    break;
                }
                let frac = pos.saturating_sub(start) as f64 / 48_000.0;
                self.out.push(to_i16(self.prev + (x - self.prev) * frac));
            }
        }
        self.prev = x;
        self.frames += 1;
    }

    fn finish(mut self) -> Vec<i16> {
        let total = ((self.frames * 48_000 + self.in_rate / 2) / self.in_rate) as usize;
        self.out.resize(total.min(self.total), to_i16(self.prev));
        self.out
    }
}

fn to_i16(x: f64) -> i16 {
    (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

impl<R: Read> std::fmt::Debug for OggOpusReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusReader").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
