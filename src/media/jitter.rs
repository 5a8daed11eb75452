//! Adaptive jitter buffer for the voxgate downlink (Opus over RTP-over-QUIC).
//!
//! Sans-IO: no clocks, sockets or threads. The caller passes monotonic `now`
//! to [`JitterBuffer::push`] on every packet and calls [`JitterBuffer::pop`]
//! once per frame period; the same inputs always give the same outputs.
//!
//! # Model
//! RTP timestamps and sequence numbers are extended to 64 bits against the
//! highest accepted value, so wrap-around is invisible. A packet's *slot* is
//! `round((ext_ts - origin) / frame_samples)`, `origin` being the timestamp
//! of the packet that (re)started the stream; the gateway uses a fixed ptime.
//! Slots live in a ring of `capacity` entries indexed by `slot mod capacity`
//! and only slots in `[next, next + capacity)` are stored, so one slot
//! holds at most one packet and reordering is simply "fill the hole".
//!
//! # Adaptation policy
//! * **Jitter**: RFC 3550 §6.4.1, `J += (|D| - J) / 16` where `D` is the
//!   change of `arrival*48 kHz - ext_ts` between consecutive arrivals.
//! * **Floor**: an adaptive lower bound of the target. It starts at
//!   [`FLOOR_START`] (what `min_delay` used to be), rises at once to `frame + spread` when a packet arrives `spread`
//!   later than the fastest recent packet (its transit over the minimum
//!   transit, the minimum creeping up by 1 % of a frame per packet, 10 ms/s
//!   at 20 ms, to
//!   follow clock drift and absorb a step in the route's delay), and otherwise decays back towards one frame with a
//!   [`FLOOR_TAU_S`] time constant. On a clean link it ends near one frame
//!   and the delay follows it down by quiet skips (below); the first
//!   delayed packet lifts it, before the RFC 3550 estimate has moved. `min_delay` stays a
//!   hard floor an operator can raise. The first 25 packets
//!   of a stream (a sender's start-up burst) do not move the floor.
//! * **Target** `= clamp(max(floor, k*J + frame), min_delay, max_delay)`,
//!   k = 3 ([`JITTER_K`]): for Gaussian delay J ≈ 1.13σ, so 3J ≈ 3.4σ
//!   (>99.9 % of packets in time); for uniform ±a delay J = 2a/3 and 3J = 2a
//!   is the whole spread. One frame covers the pop-clock phase. k = 4 would
//!   only add latency that the late-arrival bump already provides on demand.
//!   Without the adaptive floor (the phone legs) the target is
//!   `min(min_delay + k*J, max_delay)`: the first packet waits the target
//!   and then for the next pop, so the pop clock's phase (up to a frame) is
//!   already in every packet's hold; `min_delay` is the margin for reading
//!   (the media engine reads and pops on the same 10 ms tick) and `k*J`
//!   the arrival jitter. A frame more was 20 ms of each phone leg's delay.
//! * **Fast up**: the target jumps up at once when the formula exceeds it, and
//!   grows one frame per `Late` packet and per underrun (the awaited packet
//!   arrived after the buffer ran dry). **Slow down**: exponential decay
//!   towards the formula with a 2 s time constant.
//! * **Stretch**: if the next slot is missing while the buffered span is at
//!   or below target, [`Playout::Conceal`] is emitted *without* advancing
//!   (waiting one more frame for a probably-delayed packet), at most
//!   `target / frame` times in a row. Otherwise the missing slot is lost:
//!   [`Playout::Fec`] if the following packet is buffered, else `Conceal`.
//! * **Skip**: when the buffered span exceeds target by more than a frame
//!   (span > target + 2 frames) on every pop for 0.5 s, the oldest slot is
//!   dropped (free if it is a hole) and counted in `skipped`. **Quiet
//!   skip**: past target + half a frame for 0.5 s (more than a whole frame
//!   to spare besides the one playing), [`JitterBuffer::wants_quiet_skip`]
//!   says so, and the caller, which has decoded the frame just played,
//!   drops it if it decoded as silence ([`is_quiet`]), as the
//!   [`QUIET_RUN`]th quiet frame in a row or later, and calls
//!   [`JitterBuffer::quiet_skipped`]: the delay shrinks in the pauses of
//!   speech, where a missing 20 ms is not heard. The decision is on the
//!   decoded audio, not the packet's size: at 10 kbit/s or less a speech
//!   frame is as small as a pause is at 24 kbit/s. The decoder has then
//!   decoded the dropped frame, so its state runs on without a jump.
//! * **Idle / resync**: with an empty buffer and no accepted packet for
//!   `max_delay + 200 ms`, `pop` returns [`Playout::Idle`] and the next packet
//!   re-prebuffers. A jump of more than 3 s (either way), a packet beyond the
//!   window while the buffer is empty, or 8 `Late` packets in a row flush the
//!   buffer and restart prebuffering from that packet (`resyncs`).
//! * **Prebuffering**: playout starts at the first `pop` where the first
//!   packet of the stream has waited at least the target delay; packets that
//!   piled up beyond target + 1 frame meanwhile (the playout clock was not
//!   running yet) are dropped then, before anything was heard (`skipped`).
//! * **DTX**: gaps shorter than the idle timeout are played as `Conceal`
//!   (Opus PLC/CNG, as the decoder expects); the stretch at the end of a talk
//!   spurt adds at most `target` of delay, which skipping later removes.
//!
//! Sequence numbers only identify duplicates (a late copy of a played
//! packet is `Duplicate`, not `Late`); ordering is by timestamp.
//!
//! # Guarantees
//! * No allocation after [`JitterBuffer::new`]: one metadata `Vec` and one
//!   `capacity * 1500` byte arena; `push`/`pop`/`stats`/`reset` only copy.
//! * Bounded memory: `capacity` is clamped to 4..=4096, and the number of
//!   buffered packets never exceeds it.
//! * Never panics on any input: the config is normalised (`frame_samples >= 1`,
//!   `max_delay >= min_delay`), payloads over [`MAX_PAYLOAD`] are
//!   [`Push::Overflow`], time math saturates, float state stays finite.
//! * No `unsafe` code.
#![deny(unsafe_code, missing_docs)]

use std::time::Duration;

/// RTP clock rate of Opus (RFC 7587), ticks per second: the default.
pub const CLOCK_RATE: u32 = 48_000;
/// Largest payload [`JitterBuffer::push`] accepts; longer ones are [`Push::Overflow`].
pub const MAX_PAYLOAD: usize = 1500;
/// Jitter multiplier `k` of the target formula (see module docs).
pub const JITTER_K: f64 = 3.0;
const DECAY_TAU_S: f64 = 2.0;
/// Time constant of the adaptive floor's decay towards one frame, seconds.
pub const FLOOR_TAU_S: f64 = 4.0;
/// Where the adaptive floor starts on a new stream (see the module docs).
pub const FLOOR_START: Duration = Duration::from_millis(40);
/// Decoded audio whose RMS level is at or below this (dBFS) is silence a
/// quiet skip may drop: what a codec makes of a digital pause, far below
/// the softest speech frames (-40 dBFS and up). A test in `jitter/tests.rs`
/// decodes the codec's output at 6 to 64 kbit/s against it.
pub const QUIET_DBFS: f64 = -60.0;
/// Decoded frames in a row that must be quiet before one is dropped (100 ms
/// into a pause with 20 ms frames): a pause between utterances, not a gap
/// between syllables or words (a skip inside an utterance is heard, and
/// costs PESQ: with 3, the echo test's PESQ-WB fell by about 0.15 and the
/// file downlink's by more).
pub const QUIET_RUN: u32 = 5;
/// Packets at the start of a stream whose delay spread the floor ignores
/// (a sender's start-up burst, a device still opening).
const SETTLE_PACKETS: u32 = 25;
/// How far the minimum transit creeps up per packet, in frames.
const BASE_CREEP: f64 = 0.01;
const SKIP_HOLD_S: f64 = 0.5;
const IDLE_SLACK: Duration = Duration::from_millis(200);
const RESYNC_JUMP_S: f64 = 3.0;
const LATE_RESYNC: u32 = 8;
const MIN_CAPACITY: usize = 4;
const MAX_CAPACITY: usize = 4096;

/// Static configuration of a [`JitterBuffer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// RTP timestamp units per frame, e.g. 960 for 20 ms of Opus; 0 is treated as 1.
    pub frame_samples: u32,
    /// RTP clock rate in Hz: 48000 for Opus, 8000 for G.711 and G.722; 0 is treated as 48000.
    pub clock_rate: u32,
    /// Lower bound of the target delay.
    pub min_delay: Duration,
    /// Upper bound of the target delay; raised to `min_delay` if smaller.
    pub max_delay: Duration,
    /// Maximum number of packets held; clamped to 4..=4096.
    pub capacity: usize,
    /// The adaptive floor, quiet skips and the prebuffer trim (see the
    /// module docs): the gateway's speaker path. Off, the target is
    /// `min_delay + k*J` and only the plain skip shrinks the
    /// delay (the phone legs, whose frames are not skipped in pauses).
    pub adaptive_floor: bool,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            frame_samples: 960,
            clock_rate: CLOCK_RATE,
            min_delay: Duration::from_millis(40),
            max_delay: Duration::from_millis(300),
            capacity: 64,
            adaptive_floor: false,
        }
    }
}

/// Outcome of [`JitterBuffer::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Stored for playout (possibly as the first packet after a resync).
    Accepted,
    /// Its slot is already buffered, or was already played from the same packet.
    Duplicate,
    /// Arrived after its playout slot passed.
    Late,
    /// Dropped: payload too long, too far ahead, or buffer window full.
    Overflow,
}

/// What to play for one slot, returned by [`JitterBuffer::pop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout<'a> {
    /// Decode normally.
    Packet(&'a [u8]),
    /// This slot is missing but the next slot's packet is here: decode it with FEC to recover this slot.
    Fec(&'a [u8]),
    /// Missing and no FEC available: run PLC.
    Conceal,
    /// Not started or stream idle: output silence, nothing is counted.
    Idle,
}

/// Counters and current state, see [`JitterBuffer::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct JitterStats {
    /// Calls to `push` (every outcome).
    pub received: u64,
    /// Pushes answered [`Push::Duplicate`].
    pub duplicates: u64,
    /// Pushes answered [`Push::Late`].
    pub late: u64,
    /// Slots played as [`Playout::Fec`] or [`Playout::Conceal`] (`fec_recovered + concealed`).
    pub lost: u64,
    /// Slots played as [`Playout::Fec`].
    pub fec_recovered: u64,
    /// Slots played as [`Playout::Conceal`] (losses and stretches).
    pub concealed: u64,
    /// RFC 3550 interarrival jitter in milliseconds.
    pub jitter_ms: f64,
    /// Current target delay.
    pub target_delay: Duration,
    /// Current adaptive floor of the target.
    pub floor_delay: Duration,
    /// Packets currently buffered.
    pub depth: usize,
    /// Pushes answered [`Push::Overflow`].
    pub overflow: u64,
    /// Slots dropped to reduce depth.
    pub skipped: u64,
    /// Stream restarts caused by timestamp jumps or runs of late packets.
    pub resyncs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Free,
    Stored,
    /// Played or skipped; kept to tell a late duplicate from a late packet.
    Done,
}

#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    state: State,
    slot: i64,
    seq: i64,
    len: usize,
    arrival: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Empty,
    Prebuffering(Duration),
    Playing,
}

fn extend_ts(r: i64, v: u32) -> i64 {
    r + i64::from(v.wrapping_sub(r as u32) as i32)
}

fn extend_seq(r: i64, v: u16) -> i64 {
    r + i64::from(v.wrapping_sub(r as u16) as i16)
}

/// Adaptive jitter buffer; see the module docs for policy and guarantees.
pub struct JitterBuffer {
    cfg: JitterConfig,
    frame_s: f64,
    min_s: f64,
    max_s: f64,
    resync_slots: i64,
    skip_hold: u32,
    decay: f64,
    floor_decay: f64,
    meta: Vec<Meta>,
    data: Vec<u8>,
    phase: Phase,
    origin: i64,
    ref_ts: i64,
    ref_seq: i64,
    next: i64,
    high: i64,
    count: usize,
    stall: u32,
    over: u32,
    over_quiet: u32,
    late_streak: u32,
    last_arrival: Duration,
    prev_transit: Option<f64>,
    base_transit: Option<f64>,
    /// Packets left before the floor measures the delay spread.
    settle: u32,
    floor_s: f64,
    jitter: f64,
    target_s: f64,
    stats: JitterStats,
    /// RTP sequence number of the packet the last `pop` returned as `Packet`.
    played_seq: Option<u16>,
    /// When the packet the last `pop` returned as `Packet` arrived.
    played_arrival: Option<Duration>,
}

impl JitterBuffer {
    /// Creates a buffer, normalising `cfg`; this is the only allocating call.
    pub fn new(cfg: JitterConfig) -> Self {
        let capacity = cfg.capacity.clamp(MIN_CAPACITY, MAX_CAPACITY);
        let cfg = JitterConfig {
            frame_samples: cfg.frame_samples.max(1),
            clock_rate: if cfg.clock_rate == 0 {
                CLOCK_RATE
            } else {
                cfg.clock_rate
            },
            max_delay: cfg.max_delay.max(cfg.min_delay),
            capacity,
            ..cfg
        };
        let frame_s = f64::from(cfg.frame_samples) / f64::from(cfg.clock_rate);
        let mut jb = Self {
            cfg,
            frame_s,
            min_s: cfg.min_delay.as_secs_f64(),
            max_s: cfg.max_delay.as_secs_f64(),
            resync_slots: ((RESYNC_JUMP_S / frame_s).ceil() as i64).max(capacity as i64),
            skip_hold: ((SKIP_HOLD_S / frame_s).ceil() as u32).max(1),
            decay: (frame_s / DECAY_TAU_S).min(1.0),
            floor_decay: (frame_s / FLOOR_TAU_S).min(1.0),
            meta: vec![Meta::default(); capacity],
            data: vec![0; capacity * MAX_PAYLOAD],
            phase: Phase::Empty,
            origin: 0,
            ref_ts: 0,
            ref_seq: 0,
            next: 0,
            high: 0,
            count: 0,
            stall: 0,
            over: 0,
            over_quiet: 0,
            late_streak: 0,
            last_arrival: Duration::ZERO,
            prev_transit: None,
            base_transit: None,
            settle: 0,
            floor_s: 0.0,
            jitter: 0.0,
            target_s: 0.0,
            stats: JitterStats::default(),
            played_seq: None,
            played_arrival: None,
        };
        jb.reset();
        jb
    }

    /// Forgets the stream, estimates and counters without reallocating (reconnect, new SSRC).
    pub fn reset(&mut self) {
        self.flush();
        self.phase = Phase::Empty;
        self.prev_transit = None;
        self.base_transit = None;
        self.floor_s = if self.cfg.adaptive_floor {
            FLOOR_START.as_secs_f64().max(self.frame_s)
        } else {
            0.0
        };
        self.jitter = 0.0;
        self.stats = JitterStats::default();
        self.target_s = self.jitter_target();
    }

    /// Snapshot of counters, jitter estimate, target delay and depth.
    pub fn stats(&self) -> JitterStats {
        JitterStats {
            jitter_ms: self.jitter * 1000.0 / f64::from(self.cfg.clock_rate),
            target_delay: Duration::try_from_secs_f64(self.target_s).unwrap_or(self.cfg.max_delay),
            floor_delay: Duration::try_from_secs_f64(self.floor_s).unwrap_or(self.cfg.max_delay),
            depth: self.count,
            ..self.stats
        }
    }

    /// Offers a packet that arrived at `now`.
    pub fn push(&mut self, now: Duration, seq: u16, timestamp: u32, payload: &[u8]) -> Push {
        self.stats.received += 1;
        if payload.len() > MAX_PAYLOAD {
            return self.overflow();
        }
        if self.phase == Phase::Empty {
            return self.restart(now, seq, timestamp, payload, false);
        }
        let ts = extend_ts(self.ref_ts, timestamp);
        let sq = extend_seq(self.ref_seq, seq);
        let half = i64::from(self.cfg.frame_samples / 2);
        let s = (ts - self.origin + half).div_euclid(i64::from(self.cfg.frame_samples));
        if (s - self.next).abs() > self.resync_slots {
            return self.restart(now, seq, timestamp, payload, true);
        }
        let cap = self.cfg.capacity as i64;
        if s < self.next {
            if self.phase != Phase::Playing {
                // Still prebuffering: an earlier packet extends the window downwards.
                if self.high - s >= cap {
                    return self.overflow();
                }
                self.next = s;
            } else {
                let m = self.meta[self.idx(s)];
                if m.slot == s && m.state == State::Done && m.seq == sq {
                    self.stats.duplicates += 1;
                    return Push::Duplicate;
                }
                self.update_jitter(now, ts);
                self.stats.late += 1;
                self.late_streak += 1;
                if self.late_streak >= LATE_RESYNC {
                    return self.restart(now, seq, timestamp, payload, true);
                }
                self.bump();
                return Push::Late;
            }
        }
        if s >= self.next + cap {
            if self.count == 0 {
                return self.restart(now, seq, timestamp, payload, true);
            }
            return self.overflow();
        }
        if self.is_stored(s) {
            self.stats.duplicates += 1;
            return Push::Duplicate;
        }
        if s == self.next && self.stall > 0 && self.count == 0 {
            self.bump(); // underrun: the awaited packet came after the buffer ran dry
        }
        self.store(s, sq, payload, now);
        self.ref_ts = self.ref_ts.max(ts);
        self.ref_seq = self.ref_seq.max(sq);
        self.late_streak = 0;
        self.last_arrival = now;
        self.update_jitter(now, ts);
        Push::Accepted
    }

    /// The RTP sequence number of the packet the last [`JitterBuffer::pop`]
    /// returned as [`Playout::Packet`] (for latency accounting).
    pub fn played_seq(&self) -> Option<u16> {
        self.played_seq
    }

    /// When the packet the last [`JitterBuffer::pop`] returned as
    /// [`Playout::Packet`] was pushed (its hold is `now` minus this).
    pub fn played_arrival(&self) -> Option<Duration> {
        self.played_arrival
    }

    /// True when nothing is buffered and nothing plays: no stream, or
    /// between streams.
    pub fn is_idle(&self) -> bool {
        self.count == 0 && !matches!(self.phase, Phase::Playing)
    }

    /// True when the playout delay has stood more than half a frame above
    /// target for the skip hold (adaptive floor only): if the frame just
    /// played decodes as silence ([`is_quiet`]), the caller may drop it and
    /// call [`quiet_skipped`](Self::quiet_skipped).
    pub fn wants_quiet_skip(&self) -> bool {
        self.cfg.adaptive_floor && self.over_quiet >= self.skip_hold
    }

    /// The caller dropped the packet [`pop`](Self::pop) just returned, as
    /// silence: the delay is a frame shorter. Counted in `skipped`.
    pub fn quiet_skipped(&mut self) {
        self.over = 0;
        self.over_quiet = 0;
        self.stats.skipped += 1;
    }

    /// Called once per frame period by the playout clock. Returns what to play for the next slot.
    pub fn pop(&mut self, now: Duration) -> Playout<'_> {
        self.played_seq = None;
        self.played_arrival = None;
        match self.phase {
            Phase::Empty => return Playout::Idle,
            Phase::Prebuffering(since) => {
                if now.saturating_sub(since).as_secs_f64() < self.target_s {
                    return Playout::Idle;
                }
                self.phase = Phase::Playing;
                self.trim_prebuffer();
            }
            Phase::Playing => {}
        }
        self.floor_s -= (self.floor_s - self.frame_s) * self.floor_decay;
        let goal = self.jitter_target();
        if self.target_s > goal {
            self.target_s -= (self.target_s - goal) * self.decay;
        }
        let idle_after = self.cfg.max_delay.saturating_add(IDLE_SLACK);
        if self.count == 0 && now.saturating_sub(self.last_arrival) > idle_after {
            self.flush();
            self.phase = Phase::Empty;
            self.prev_transit = None;
            return Playout::Idle;
        }
        let excess = self.buffered_s() - self.target_s;
        self.over = if excess > 2.0 * self.frame_s {
            self.over + 1
        } else {
            0
        };
        self.over_quiet = if excess > 0.5 * self.frame_s {
            self.over_quiet.saturating_add(1)
        } else {
            0
        };
        if self.over >= self.skip_hold {
            self.over = 0;
            self.over_quiet = 0;
            self.skip_next();
        }
        if self.is_stored(self.next) {
            let i = self.idx(self.next);
            self.meta[i].state = State::Done;
            self.count -= 1;
            self.next += 1;
            self.stall = 0;
            self.played_seq = Some(self.meta[i].seq as u16);
            self.played_arrival = Some(self.meta[i].arrival);
            return Playout::Packet(self.payload(i));
        }
        self.stats.lost += 1;
        let room = self.span() + 1 < self.cfg.capacity as i64;
        let patience = f64::from(self.stall) * self.frame_s < self.target_s;
        if room && patience && self.buffered_s() <= self.target_s {
            self.stall = self.stall.saturating_add(1); // stretch: wait one more frame
            self.stats.concealed += 1;
            return Playout::Conceal;
        }
        self.next += 1;
        if self.is_stored(self.next) {
            self.stall = 0;
            self.stats.fec_recovered += 1;
            return Playout::Fec(self.payload(self.idx(self.next)));
        }
        self.stats.concealed += 1;
        Playout::Conceal
    }

    fn restart(&mut self, now: Duration, seq: u16, ts: u32, payload: &[u8], resync: bool) -> Push {
        self.stats.resyncs += u64::from(resync);
        self.flush();
        self.phase = Phase::Prebuffering(now);
        self.origin = i64::from(ts);
        self.ref_ts = self.origin;
        self.ref_seq = i64::from(seq);
        self.next = 0;
        self.prev_transit = None;
        self.base_transit = None;
        self.settle = SETTLE_PACKETS;
        self.store(0, self.ref_seq, payload, now);
        self.last_arrival = now;
        self.update_jitter(now, self.origin);
        Push::Accepted
    }

    /// At the start of playout nothing has been heard yet: packets beyond
    /// target + 1 frame (they piled up while the playout clock was not
    /// running, e.g. a device still opening) are dropped now, silently,
    /// instead of by skips in the middle of the audio later.
    fn trim_prebuffer(&mut self) {
        while self.cfg.adaptive_floor
            && self.count > 1
            && self.buffered_s() > self.target_s + self.frame_s
        {
            self.skip_next();
        }
    }

    /// Drops the next slot unplayed (free if it is a hole), counted in `skipped`.
    fn skip_next(&mut self) {
        if self.is_stored(self.next) {
            let i = self.idx(self.next);
            self.meta[i].state = State::Done;
            self.count -= 1;
        }
        self.next += 1;
        self.stats.skipped += 1;
    }

    fn flush(&mut self) {
        self.meta.fill(Meta::default());
        self.count = 0;
        self.stall = 0;
        self.over = 0;
        self.over_quiet = 0;
        self.late_streak = 0;
    }

    fn overflow(&mut self) -> Push {
        self.stats.overflow += 1;
        Push::Overflow
    }

    fn idx(&self, slot: i64) -> usize {
        slot.rem_euclid(self.cfg.capacity as i64) as usize
    }

    fn is_stored(&self, slot: i64) -> bool {
        let m = &self.meta[self.idx(slot)];
        m.state == State::Stored && m.slot == slot
    }

    fn store(&mut self, slot: i64, seq: i64, payload: &[u8], arrival: Duration) {
        let i = self.idx(slot);
        let off = i * MAX_PAYLOAD;
        self.data[off..off + payload.len()].copy_from_slice(payload);
        self.meta[i] = Meta {
            state: State::Stored,
            slot,
            seq,
            len: payload.len(),
            arrival,
        };
        if self.count == 0 || slot > self.high {
            self.high = slot;
        }
        self.count += 1;
    }

    fn payload(&self, i: usize) -> &[u8] {
        let off = i * MAX_PAYLOAD;
        &self.data[off..off + self.meta[i].len]
    }

    /// Slots from `next` to the newest buffered packet, inclusive.
    fn span(&self) -> i64 {
        if self.count == 0 {
            0
        } else {
            self.high - self.next + 1
        }
    }

    fn buffered_s(&self) -> f64 {
        self.span() as f64 * self.frame_s
    }

    fn jitter_target(&self) -> f64 {
        let spread = JITTER_K * self.jitter / f64::from(self.cfg.clock_rate);
        let t = match self.cfg.adaptive_floor {
            true => (spread + self.frame_s).max(self.floor_s).max(self.min_s),
            // The pop clock's phase is in every hold already (module docs).
            false => self.min_s + spread,
        };
        t.min(self.max_s)
    }

    fn bump(&mut self) {
        self.target_s = (self.target_s + self.frame_s).min(self.max_s);
    }

    fn update_jitter(&mut self, now: Duration, ts: i64) {
        let transit = now.as_secs_f64() * f64::from(self.cfg.clock_rate) - ts as f64;
        if let Some(prev) = self.prev_transit {
            self.jitter += ((transit - prev).abs() - self.jitter) / 16.0;
            if !self.jitter.is_finite() {
                self.jitter = 0.0;
            }
        }
        self.prev_transit = Some(transit);
        self.settle = self.settle.saturating_sub(1);
        if self.settle > 0 || !self.cfg.adaptive_floor {
            // A stream's first packets come in the sender's start-up burst.
            self.target_s = self.target_s.max(self.jitter_target());
            return;
        }
        let creep = BASE_CREEP * f64::from(self.cfg.frame_samples);
        let base = match self.base_transit {
            Some(b) if b + creep < transit => b + creep,
            _ => transit,
        };
        self.base_transit = Some(base);
        let spread = (transit - base) / f64::from(self.cfg.clock_rate);
        if spread.is_finite() {
            self.floor_s = self.floor_s.max((self.frame_s + spread).min(self.max_s));
        }
        self.target_s = self.target_s.max(self.jitter_target());
    }
}

impl std::fmt::Debug for JitterBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitterBuffer")
            .field("depth", &self.count)
            .field("target_s", &self.target_s)
            .field("jitter", &self.jitter)
            .finish_non_exhaustive()
    }
}

/// True if `pcm` is silence for a quiet skip: its RMS level is at or
/// below [`QUIET_DBFS`]. An empty frame is quiet.
pub fn is_quiet(pcm: &[i16]) -> bool {
    if pcm.is_empty() {
        return true;
    }
    let energy: f64 = pcm.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let limit = 32_768.0 * 10f64.powf(QUIET_DBFS / 20.0);
    energy / pcm.len() as f64 <= limit * limit
}

#[cfg(test)]
mod tests;
