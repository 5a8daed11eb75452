//! One phone call's media, sans-IO: the phone's plain RTP on one side, the
//! relay's RTP-over-QUIC flows on the other.
//!
//! Phone → relay: the phone's packets go through a jitter buffer on the
//! phone's RTP clock and packet time; each Opus frame time the playout side
//! decodes as many G.711 or G.722 packets as it takes to fill one Opus frame
//! and encodes it straight from the codec's own rate (8 or 16 kHz: libopus
//! takes it without a resampler) onto the uplink flow.
//! When the phone speaks Opus, its packets are forwarded as they arrive, only
//! re-stamped into the flow's sequence and timestamp space. RFC 4733 events
//! become [`KeyPress`]es for the control stream.
//!
//! Relay → phone: Opus from the relay goes through a second jitter buffer
//! (48 kHz clock); each phone packet time as many frames as it takes are
//! decoded (with FEC and PLC) at the phone codec's rate, and one packet time
//! of it is encoded and framed as plain RTP.
//!
//! The phone's packet time (10-60 ms, what its SDP asked for) and the Opus
//! frame on the QUIC side (10, 20, 40 or 60 ms) are independent: a phone at
//! 30 ms is repacketized through a small PCM FIFO in each direction. The
//! caller drives the leg with one [`PhoneLeg::poll_uplink`] and one
//! [`PhoneLeg::poll_downlink`] per [`PhoneLeg::tick`] (the greatest common
//! divisor of the two frame times). Digits the relay
//! sends are played as RFC 4733 events in the same RTP stream.
//!
//! Every buffer is allocated in [`PhoneLeg::new`]; the per-packet calls
//! allocate nothing except inside the G.722 codec.

use super::dtmf::{Digit, DtmfError, DtmfReceiver, DtmfSender, KeyPress};
use super::jitter::{JitterBuffer, JitterConfig, Playout, Push};
use super::rtp::{Packet, RtpError};
use super::sender::RtpSender;
use crate::codec::CodecConfig;
use crate::codec::telephony::{PcmDecoder, PcmEncoder, PhoneCodec};
use crate::codec::{CodecError, OPUS_PAYLOAD_TYPE, OpusDecoder, OpusEncoder};
use std::time::Duration;
use thiserror::Error;

/// RTP payload type of comfort noise (RFC 3389), which phones may send in silence.
pub const COMFORT_NOISE_PT: u8 = 13;
/// Largest PCM frame handled: 60 ms at 48 kHz.
const MAX_PCM: usize = 2880;
/// Largest phone payload: 60 ms of G.711, or an Opus packet.
const MAX_PHONE_PAYLOAD: usize = 1500;
/// PCM FIFO between the two frame times: a packet time plus a frame, with room.
const FIFO: usize = 2 * MAX_PCM;

/// Static settings of one call leg, from the SDP answer and the config.
#[derive(Debug, Clone)]
pub struct PhoneLegConfig {
    /// The codec the phone and the box agreed on.
    pub codec: PhoneCodec,
    /// Its payload type in the phone's SDP.
    pub phone_pt: u8,
    /// The telephone-event payload type, if negotiated.
    pub dtmf_pt: Option<u8>,
    /// The phone's packet time (both directions): 10-60 ms in steps of 10.
    pub ptime: Duration,
    /// Opus settings for the transcoded uplink; `frame` (10, 20, 40 or 60
    /// ms) is the frame on the QUIC side, independent of `ptime`.
    pub opus: CodecConfig,
    /// The RTP-over-QUIC flow id of the phone → relay direction.
    pub up_flow: u64,
    /// SSRCs of the two streams we originate (uplink flow, towards the phone).
    pub up_ssrc: u32,
    /// SSRC of the stream towards the phone.
    pub down_ssrc: u32,
    /// Initial sequence numbers and timestamps (random per RFC 3550 §5.1).
    pub initial: (u16, u32, u16, u32),
    /// Jitter buffer bounds (both directions).
    pub min_delay: Duration,
    /// Upper bound of the jitter buffer's delay.
    pub max_delay: Duration,
}

/// Why a leg could not be set up or a packet was refused.
#[derive(Debug, Error)]
pub enum PhoneLegError {
    /// Packet time outside 10-60 ms or not a multiple of 10 ms (Opus frames).
    #[error("packet time {0:?} is not 10, 20, 30, 40, 50 or 60 ms")]
    Ptime(Duration),
    /// The Opus frame on the QUIC side is not one Opus has.
    #[error("Opus frame {0:?} is not 10, 20, 40 or 60 ms")]
    OpusFrame(Duration),
    /// libopus refused the settings.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The datagram is not RTP.
    #[error("phone RTP: {0}")]
    Rtp(#[from] RtpError),
    /// A telephone-event payload was malformed.
    #[error("phone DTMF: {0}")]
    Dtmf(#[from] DtmfError),
}

/// What a phone datagram turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromPhone {
    /// Audio, buffered for transcoding (with the jitter buffer's verdict).
    Buffered(Push),
    /// Opus forwarded: the first `n` bytes of the output buffer are the uplink datagram.
    Forward(usize),
    /// A key press, reported once.
    Key(KeyPress),
    /// A repeat of a key press already reported, or comfort noise.
    Nothing,
    /// A payload type that was not negotiated.
    UnknownPayloadType(u8),
}

/// Counters of one leg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegStats {
    /// Packets from the phone (all kinds).
    pub phone_packets: u64,
    /// Uplink datagrams produced.
    pub uplink_frames: u64,
    /// Phone frames concealed (lost or late) on the uplink.
    pub uplink_concealed: u64,
    /// Packets sent to the phone.
    pub downlink_packets: u64,
    /// Relay frames lost towards the phone (FEC or PLC played).
    pub downlink_lost: u64,
    /// Key presses from the phone.
    pub keys: u64,
    /// RFC 4733 event packets sent to the phone (digits from the relay).
    pub dtmf_packets: u64,
}

/// The media state of one call.
#[derive(Debug)]
pub struct PhoneLeg {
    codec: PhoneCodec,
    phone_pt: u8,
    dtmf_pt: Option<u8>,
    /// PCM samples per phone packet time at the codec's rate.
    frame_pcm: usize,
    /// PCM samples per Opus frame at the codec's rate.
    opus_pcm: usize,
    /// RTP units per packet time on the phone's clock.
    frame_phone_ts: u32,
    /// 48 kHz units per Opus frame.
    frame_48k: u32,
    /// Milliseconds per tick, per phone packet, per Opus frame.
    tick_ms: u32,
    ptime_ms: u32,
    opus_ms: u32,
    /// Milliseconds since the last uplink frame and the last phone packet.
    up_clock: u32,
    down_clock: u32,
    /// Decoded phone audio not yet encoded, and relay audio not yet sent.
    up_fifo: Box<[i16; FIFO]>,
    up_fill: usize,
    down_fifo: Box<[i16; FIFO]>,
    down_fill: usize,
    // phone → relay
    up_jitter: JitterBuffer,
    pcm_dec: Option<PcmDecoder>,
    opus_enc: Option<OpusEncoder>,
    up: RtpSender,
    phone_ssrc: Option<u32>,
    /// For Opus passthrough: the phone's first timestamp, mapped to ours.
    fwd_base: Option<(u32, u32)>,
    keys: DtmfReceiver,
    last_pcm: Box<[i16; MAX_PCM]>,
    concealed_run: u32,
    // relay → phone
    down_jitter: JitterBuffer,
    opus_dec: Option<OpusDecoder>,
    pcm_enc: Option<PcmEncoder>,
    down: RtpSender,
    dtmf_out: Option<DtmfSender>,
    pending_digits: heapless::Deque<(Digit, u32), 16>,
    pcm: Box<[i16; MAX_PCM]>,
    payload: Box<[u8; MAX_PHONE_PAYLOAD]>,
    stats: LegStats,
}

impl PhoneLeg {
    /// Set up a leg; fails only on settings libopus or the packet time refuse.
    pub fn new(cfg: &PhoneLegConfig) -> Result<PhoneLeg, PhoneLegError> {
        let ms = cfg.ptime.as_millis() as u32;
        if !(10..=60).contains(&ms)
            || !ms.is_multiple_of(10)
            || !cfg.ptime.subsec_micros().is_multiple_of(1000)
        {
            return Err(PhoneLegError::Ptime(cfg.ptime));
        }
        let codec = cfg.codec;
        let transcode = codec != PhoneCodec::Opus;
        let opus_ms = cfg.opus.frame.as_millis() as u32;
        if ![10, 20, 40, 60].contains(&opus_ms) {
            return Err(PhoneLegError::OpusFrame(cfg.opus.frame));
        }
        // An Opus phone's packets are forwarded as they are: one per packet time.
        let opus_ms = if transcode { opus_ms } else { ms };
        let frame_pcm = (codec.sample_rate() * ms / 1000) as usize;
        let opus_pcm = (codec.sample_rate() * opus_ms / 1000) as usize;
        let frame_phone_ts = codec.rtp_clock() * ms / 1000;
        let opus_cfg = cfg.opus;
        let tick_ms = gcd(ms, opus_ms);
        let jitter = |clock_rate: u32, frame_samples: u32| {
            JitterBuffer::new(JitterConfig {
                frame_samples,
                clock_rate,
                min_delay: cfg.min_delay,
                max_delay: cfg.max_delay,
                // 16 slots: 320 ms at 20 ms, enough for a LAN and a relay path.
                capacity: 16,
                // Phone audio is G.711/G.722 on one side: no quiet skips.
                adaptive_floor: false,
            })
        };
        let (useq, uts, dseq, dts) = cfg.initial;
        Ok(PhoneLeg {
            codec,
            phone_pt: cfg.phone_pt,
            dtmf_pt: cfg.dtmf_pt,
            frame_pcm,
            opus_pcm,
            frame_phone_ts,
            frame_48k: 48 * opus_ms,
            tick_ms,
            ptime_ms: ms,
            opus_ms,
            // Due on the first tick.
            up_clock: opus_ms - tick_ms,
            down_clock: ms - tick_ms,
            up_fifo: Box::new([0; FIFO]),
            up_fill: 0,
            down_fifo: Box::new([0; FIFO]),
            down_fill: 0,
            up_jitter: jitter(codec.rtp_clock(), frame_phone_ts),
            pcm_dec: PcmDecoder::new(codec),
            opus_enc: if transcode {
                Some(OpusEncoder::with_rate(&opus_cfg, codec.sample_rate())?)
            } else {
                None
            },
            up: RtpSender::new(cfg.up_flow, OPUS_PAYLOAD_TYPE, cfg.up_ssrc, useq, uts),
            phone_ssrc: None,
            fwd_base: None,
            keys: DtmfReceiver::new(),
            last_pcm: Box::new([0; MAX_PCM]),
            concealed_run: 0,
            down_jitter: jitter(48_000, 48 * opus_ms),
            opus_dec: if transcode {
                Some(OpusDecoder::with_rate(codec.sample_rate())?)
            } else {
                None
            },
            pcm_enc: PcmEncoder::new(codec),
            down: RtpSender::plain(cfg.phone_pt, cfg.down_ssrc, dseq, dts),
            dtmf_out: None,
            pending_digits: heapless::Deque::new(),
            pcm: Box::new([0; MAX_PCM]),
            payload: Box::new([0; MAX_PHONE_PAYLOAD]),
            stats: LegStats::default(),
        })
    }

    /// How often to call [`PhoneLeg::poll_uplink`] and
    /// [`PhoneLeg::poll_downlink`] (each once per tick).
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms.into())
    }

    /// True when the phone's Opus is forwarded as it arrives (no transcoding).
    pub fn forwards(&self) -> bool {
        self.codec == PhoneCodec::Opus
    }

    /// Counters so far.
    pub fn stats(&self) -> LegStats {
        self.stats
    }

    /// The uplink flow's SSRC.
    pub fn uplink_ssrc(&self) -> u32 {
        self.up.ssrc()
    }

    /// A datagram from the phone's RTP socket, at `now`. Forwarded Opus is
    /// written to `out` (see [`FromPhone::Forward`]).
    pub fn push_phone(
        &mut self,
        now: Duration,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Result<FromPhone, PhoneLegError> {
        let p = Packet::new_checked(datagram)?;
        self.stats.phone_packets += 1;
        let pt = p.payload_type();
        if Some(pt) == self.dtmf_pt {
            return Ok(match self.keys.push(p.timestamp(), p.payload())? {
                Some(k) => {
                    self.stats.keys += 1;
                    FromPhone::Key(k)
                }
                None => FromPhone::Nothing,
            });
        }
        if pt == COMFORT_NOISE_PT {
            return Ok(FromPhone::Nothing);
        }
        if pt != self.phone_pt {
            return Ok(FromPhone::UnknownPayloadType(pt));
        }
        // A new SSRC (a re-INVITE, a transfer) starts a new stream.
        if self.phone_ssrc != Some(p.ssrc()) {
            self.phone_ssrc = Some(p.ssrc());
            self.up_jitter.reset();
            self.fwd_base = None;
        }
        if self.codec == PhoneCodec::Opus {
            let (theirs, ours) = *self
                .fwd_base
                .get_or_insert((p.timestamp(), self.up.timestamp()));
            let ts = ours.wrapping_add(p.timestamp().wrapping_sub(theirs));
            let n = self
                .up
                .frame_event(OPUS_PAYLOAD_TYPE, p.marker(), ts, p.payload(), out);
            return Ok(match n {
                Some(n) => {
                    self.stats.uplink_frames += 1;
                    FromPhone::Forward(n)
                }
                None => FromPhone::Nothing,
            });
        }
        Ok(FromPhone::Buffered(self.up_jitter.push(
            now,
            p.sequence(),
            p.timestamp(),
            p.payload(),
        )))
    }

    /// Called once per [`PhoneLeg::tick`]: the next uplink datagram (one
    /// Opus frame transcoded from the phone) when one is due, or `None`
    /// between frames, while the phone is silent or not started, or for a
    /// forwarded Opus leg.
    pub fn poll_uplink(&mut self, now: Duration, out: &mut [u8]) -> Option<usize> {
        self.up_clock += self.tick_ms;
        if self.up_clock < self.opus_ms {
            return None;
        }
        self.up_clock -= self.opus_ms;
        let (Some(dec), Some(enc)) = (self.pcm_dec.as_mut(), self.opus_enc.as_mut()) else {
            return None;
        };
        let (n, need) = (self.frame_pcm, self.opus_pcm);
        while self.up_fill < need {
            match self.up_jitter.pop(now) {
                Playout::Packet(payload) => {
                    let got = dec.decode(payload, &mut self.last_pcm[..n]);
                    // A short packet: the rest of the frame is silence.
                    self.last_pcm[got..n].fill(0);
                    self.concealed_run = 0;
                }
                Playout::Fec(_) | Playout::Conceal => {
                    // G.711/G.722 have no FEC: repeat the last frame, halving it
                    // each time, then silence (a simple G.711 Appendix I-style PLC).
                    self.concealed_run += 1;
                    self.stats.uplink_concealed += 1;
                    for s in &mut self.last_pcm[..n] {
                        *s = if self.concealed_run > 3 { 0 } else { *s / 2 };
                    }
                }
                Playout::Idle if self.up_fill == 0 => {
                    // Time passes while the phone sends nothing (a stall, a
                    // silence-suppressing phone): the Opus stream's timestamps
                    // say so, and the relay's recording keeps the timeline.
                    self.up.skip(self.frame_48k);
                    return None;
                }
                Playout::Idle => {
                    // The phone stopped mid-frame: finish it with silence.
                    self.up_fifo[self.up_fill..need].fill(0);
                    self.up_fill = need;
                    break;
                }
            }
            let m = n.min(FIFO - self.up_fill);
            self.up_fifo[self.up_fill..self.up_fill + m].copy_from_slice(&self.last_pcm[..m]);
            self.up_fill += m;
        }
        let packet = enc.encode(&self.up_fifo[..need]);
        self.up_fifo.copy_within(need..self.up_fill, 0);
        self.up_fill -= need;
        let len = self.up.frame(packet.ok()?, self.frame_48k, out)?;
        self.stats.uplink_frames += 1;
        Some(len)
    }

    /// The phone's RTP sequence number whose audio the last
    /// [`PhoneLeg::poll_uplink`] encoded (`None` after a concealed frame).
    pub fn uplink_played_seq(&self) -> Option<u16> {
        self.up_jitter.played_seq()
    }

    /// When the relay datagram whose audio the last [`PhoneLeg::poll_downlink`]
    /// took last arrived (the `now` it was pushed with), for the
    /// relay-to-phone latency histogram; `None` after a concealed frame.
    pub fn downlink_played_arrival(&self) -> Option<Duration> {
        self.down_jitter.played_arrival()
    }

    /// Opus from the relay for this call (the RTP inside an uplink datagram of the far side).
    pub fn push_relay(&mut self, now: Duration, packet: &Packet<&[u8]>) -> Push {
        self.down_jitter
            .push(now, packet.sequence(), packet.timestamp(), packet.payload())
    }

    /// Queue a digit to play to the phone as an RFC 4733 event. Returns
    /// false when no telephone-event type was negotiated or 16 are queued.
    pub fn send_digit(&mut self, digit: Digit, duration_ms: u32) -> bool {
        self.dtmf_pt.is_some() && self.pending_digits.push_back((digit, duration_ms)).is_ok()
    }

    /// Called once per [`PhoneLeg::tick`]: the next plain RTP packet for
    /// the phone when one is due. Plays silence while the relay sends
    /// nothing, so the phone's jitter buffer and any NAT binding stay alive.
    pub fn poll_downlink(&mut self, now: Duration, out: &mut [u8]) -> Option<usize> {
        self.down_clock += self.tick_ms;
        if self.down_clock < self.ptime_ms {
            return None;
        }
        self.down_clock -= self.ptime_ms;
        let n = self.frame_pcm;
        // The relay's audio keeps its clock even while a digit plays: one
        // packet time of it is taken either way.
        let forwarded = match (self.opus_dec.as_mut(), self.pcm_enc.as_mut()) {
            (Some(dec), Some(_)) => {
                let frame = self.opus_pcm;
                while self.down_fill < n {
                    let pcm = match self.down_jitter.pop(now) {
                        Playout::Packet(p) => dec.decode(p).ok(),
                        Playout::Fec(next) => {
                            self.stats.downlink_lost += 1;
                            dec.decode_fec(next, frame).ok()
                        }
                        Playout::Conceal => {
                            self.stats.downlink_lost += 1;
                            dec.conceal(frame).ok()
                        }
                        Playout::Idle => None,
                    };
                    let Some(pcm) = pcm else {
                        // Nothing from the relay: the rest is silence.
                        self.down_fifo[self.down_fill..n].fill(0);
                        self.down_fill = n;
                        break;
                    };
                    let m = pcm.len().min(FIFO - self.down_fill);
                    self.down_fifo[self.down_fill..self.down_fill + m].copy_from_slice(&pcm[..m]);
                    self.down_fill += m;
                }
                self.pcm[..n].copy_from_slice(&self.down_fifo[..n]);
                self.down_fifo.copy_within(n..self.down_fill, 0);
                self.down_fill -= n;
                None
            }
            // Opus to an Opus phone: forward the relay's packet.
            _ => Some(match self.down_jitter.pop(now) {
                Playout::Packet(p) if p.len() <= self.payload.len() => {
                    self.payload[..p.len()].copy_from_slice(p);
                    Some(p.len())
                }
                Playout::Packet(_) | Playout::Fec(_) | Playout::Conceal => {
                    self.stats.downlink_lost += 1;
                    None
                }
                Playout::Idle => None,
            }),
        };
        if self.dtmf_out.is_none()
            && let Some((digit, ms)) = self.pending_digits.pop_front()
        {
            let clock = self.codec.rtp_clock();
            self.dtmf_out = Some(DtmfSender::new(
                digit,
                self.down.timestamp(),
                ms,
                self.frame_phone_ts * 1000 / clock,
                clock,
            ));
        }
        if let (Some(tx), Some(pt)) = (self.dtmf_out.as_mut(), self.dtmf_pt) {
            if let Some(ev) = tx.next_packet() {
                let n = self
                    .down
                    .frame_event(pt, ev.marker, ev.timestamp, &ev.payload, out)?;
                self.stats.downlink_packets += 1;
                self.stats.dtmf_packets += 1;
                return Some(n);
            }
            // The event is over: audio resumes after its duration.
            let d = u32::from(tx.duration());
            self.dtmf_out = None;
            self.down.skip(d);
        }
        let len = match forwarded {
            None => {
                let enc = self.pcm_enc.as_mut()?;
                enc.encode(&self.pcm[..n], &mut self.payload[..])
            }
            Some(Some(len)) => len,
            Some(None) => {
                self.down.skip(self.frame_phone_ts);
                return None;
            }
        };
        let len = self
            .down
            .frame(&self.payload[..len], self.frame_phone_ts, out)?;
        self.stats.downlink_packets += 1;
        Some(len)
    }
}

/// Greatest common divisor (frame times in ms).
fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
#[path = "leg/tests.rs"]
mod tests;
