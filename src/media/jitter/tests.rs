//! Jitter buffer tests, all in simulated time.

use super::*;

const F: Duration = Duration::from_millis(20);

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn jc(frame_samples: u32, min: Duration, max: Duration, capacity: usize) -> JitterConfig {
    let (min_delay, max_delay) = (min, max);
    JitterConfig {
        frame_samples,
        clock_rate: CLOCK_RATE,
        min_delay,
        max_delay,
        capacity,
        adaptive_floor: true,
    }
}

fn cfg(min: u64, max: u64) -> JitterConfig {
    jc(960, ms(min), ms(max), 64)
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Playout as seen by the tests: payloads carry the packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    P(u32),
    F(u32),
    C,
    I,
}

/// One arrival: (time, seq, timestamp, id).
type Arr = (Duration, u16, u32, u32);

/// Packet `i` is sent at `i * 20 ms` and arrives `delay(i)` later.
fn stream(n: u32, seq0: u16, ts0: u32, delay: impl Fn(u32) -> Duration) -> Vec<Arr> {
    let pkt = |i: u32| (seq0.wrapping_add(i as u16), ts0.wrapping_add(960 * i));
    (0..n)
        .map(|i| (F * i + delay(i), pkt(i).0, pkt(i).1, i))
        .collect()
}

fn swap_arrivals(arr: &mut [Arr], a: usize, b: usize) {
    (arr[a].0, arr[b].0) = (arr[b].0, arr[a].0);
}

fn again(a: Arr, later: Duration) -> Arr {
    (a.0 + later, a.1, a.2, a.3)
}

struct Sim {
    jb: JitterBuffer,
    arr: Vec<Arr>,
    t: Duration,
    outs: Vec<(Duration, Out)>,
    res: Vec<(u32, Push)>,
    /// Packets that decode as silence (the caller's verdict, as
    /// `is_quiet` on decoded audio gives it in the gateway).
    quiet: fn(u32) -> bool,
    quiet_run: u32,
}

impl Sim {
    fn new(c: JitterConfig, mut arr: Vec<Arr>) -> Self {
        arr.reverse(); // popped from the back; equal arrival times keep their order
        arr.sort_by_key(|a| std::cmp::Reverse(a.0));
        let (jb, t, outs, res) = (JitterBuffer::new(c), ms(7), vec![], vec![]);
        Self {
            jb,
            arr,
            t,
            outs,
            res,
            quiet: |_| false,
            quiet_run: 0,
        }
    }

    /// Pops every 20 ms (phase 7 ms) up to `end`, pushing due arrivals first.
    fn run(&mut self, end: Duration) {
        while self.t <= end {
            while let Some(a) = self.arr.pop_if(|a| a.0 <= self.t) {
                let mut p = a.3.to_le_bytes().to_vec();
                p.resize(40, 0xAB);
                let r = self.jb.push(a.0, a.1, a.2, &p);
                self.res.push((a.3, r));
            }
            let id = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let o = loop {
                let o = match self.jb.pop(self.t) {
                    Playout::Packet(b) => Out::P(id(b)),
                    Playout::Fec(b) => Out::F(id(b)),
                    Playout::Conceal => Out::C,
                    Playout::Idle => Out::I,
                };
                // As the gateway's decoder does: a packet that "decodes" as
                // silence is dropped when the buffer wants a quiet skip.
                self.quiet_run = match o {
                    Out::P(i) if (self.quiet)(i) => self.quiet_run + 1,
                    _ => 0,
                };
                match o {
                    Out::P(_) if self.quiet_run >= QUIET_RUN && self.jb.wants_quiet_skip() => {
                        self.jb.quiet_skipped();
                    }
                    o => break o,
                }
            };
            self.outs.push((self.t, o));
            self.t += F;
        }
    }

    fn played(&self) -> Vec<u32> {
        let f = |o: &(Duration, Out)| if let Out::P(i) = o.1 { Some(i) } else { None };
        self.outs.iter().filter_map(f).collect()
    }

    fn pos(&self, o: Out) -> usize {
        self.outs
            .iter()
            .position(|x| x.1 == o)
            .expect("no such output")
    }

    /// True if every output from `a` to `b` (inclusive) is a plain packet.
    fn all_packets(&self, a: Out, b: Out) -> bool {
        let (a, b) = (self.pos(a), self.pos(b));
        self.outs[a..=b].iter().all(|o| matches!(o.1, Out::P(_)))
    }

    fn results(&self, id: u32) -> Vec<Push> {
        self.res.iter().filter(|r| r.0 == id).map(|r| r.1).collect()
    }

    fn assert_counts(&self) {
        let st = self.jb.stats();
        let n = |k: fn(&Out) -> bool| self.outs.iter().filter(|o| k(&o.1)).count() as u64;
        assert_eq!(st.fec_recovered, n(|o| matches!(o, Out::F(_))));
        assert_eq!(st.concealed, n(|o| *o == Out::C));
        assert_eq!(st.lost, st.fec_recovered + st.concealed);
    }
}

#[test]
fn in_order_constant_delay() {
    let arr = stream(100, 1000, 5000, |_| ms(5));
    let mut sim = Sim::new(cfg(40, 200), arr.clone());
    sim.run(ms(2600));
    let first = sim.pos(Out::P(0));
    assert!(sim.outs[..first].iter().all(|o| o.1 == Out::I));
    let got: Vec<Out> = sim.outs[first..first + 100].iter().map(|o| o.1).collect();
    assert_eq!(got, (0..100).map(Out::P).collect::<Vec<_>>());
    let delays: Vec<Duration> = (0..100).map(|i| sim.outs[first + i].0 - arr[i].0).collect();
    assert!(delays.iter().all(|&d| d == delays[0]), "{delays:?}");
    assert!(delays[0] >= ms(40) && delays[0] < ms(60), "{:?}", delays[0]);
    let st = sim.jb.stats();
    assert_eq!(
        (st.received, st.late, st.duplicates, st.skipped),
        (100, 0, 0, 0)
    );
    assert_eq!(
        sim.outs.last().unwrap().1,
        Out::I,
        "idle after the stream ends"
    );
    sim.assert_counts();
}

#[test]
fn reordering_plays_in_order() {
    let mut arr = stream(60, 7, 0, |_| ms(5));
    swap_arrivals(&mut arr, 0, 1); // even the very first packet
    swap_arrivals(&mut arr, 10, 11);
    arr[20].0 += ms(60); // three slots late, still within the 100 ms delay
    let mut sim = Sim::new(cfg(100, 300), arr);
    sim.run(ms(1600));
    assert_eq!(sim.played(), (0..60).collect::<Vec<_>>());
    assert!(sim.all_packets(Out::P(0), Out::P(59)));
    assert!(sim.res.iter().all(|r| r.1 == Push::Accepted));
    assert_eq!(sim.jb.stats().late, 0);
}

#[test]
fn duplicates_played_once() {
    let base = stream(30, 0, 0, |_| ms(5));
    let mut arr = base.clone();
    arr.extend(base.iter().map(|&a| again(a, ms(1))));
    arr.push(again(base[5], ms(300))); // long after it was played
    let mut sim = Sim::new(cfg(40, 200), arr);
    sim.run(ms(1200));
    assert_eq!(sim.played(), (0..30).collect::<Vec<_>>());
    let dup = Push::Duplicate;
    assert_eq!(sim.results(5), [Push::Accepted, dup, dup]);
    let dups = sim.res.iter().filter(|r| r.1 == dup).count();
    assert_eq!(
        (dups, sim.jb.stats().duplicates, sim.jb.stats().late),
        (31, 31, 0)
    );
}

#[test]
fn loss_gives_fec_then_conceal() {
    let arr = stream(40, 0, 0, |_| ms(5)).into_iter();
    let arr = arr.filter(|a| ![10, 20, 21].contains(&a.3)).collect();
    let mut sim = Sim::new(cfg(60, 200), arr);
    sim.run(ms(1400));
    let first = sim.pos(Out::P(0));
    let got: Vec<Out> = sim.outs[first..first + 40].iter().map(|o| o.1).collect();
    let want = |i| match i {
        10 => Out::F(11),
        20 => Out::C,
        21 => Out::F(22),
        i => Out::P(i),
    };
    assert_eq!(got, (0..40).map(want).collect::<Vec<_>>());
    sim.assert_counts();
    let st = sim.jb.stats();
    assert!(st.fec_recovered == 2 && st.concealed >= 1 && st.lost >= 3);
}

#[test]
fn late_packet_reported() {
    let mut arr = stream(30, 0, 0, |_| ms(5));
    arr[10].0 += ms(200);
    let mut sim = Sim::new(cfg(40, 200), arr);
    sim.run(ms(1000));
    assert_eq!(sim.results(10), [Push::Late]);
    assert_eq!(sim.jb.stats().late, 1);
    assert_eq!(
        sim.played(),
        (0..30).filter(|&i| i != 10).collect::<Vec<_>>()
    );
    assert_eq!(sim.outs[sim.pos(Out::P(9)) + 1].1, Out::F(11));
    sim.assert_counts();
}

#[test]
fn wraparound_seq_and_ts() {
    // seq wraps between packets 5 and 6, ts between packets 4 and 5.
    let mut arr = stream(40, u16::MAX - 5, u32::MAX - 960 * 5 + 17, |_| ms(5));
    swap_arrivals(&mut arr, 5, 6);
    arr[4].0 += ms(45);
    arr.push(again(arr[6], ms(400))); // seq 0 again, after playout
    let mut sim = Sim::new(cfg(80, 300), arr);
    sim.run(ms(1200));
    assert_eq!(sim.played(), (0..40).collect::<Vec<_>>());
    assert!(sim.all_packets(Out::P(0), Out::P(39)));
    assert_eq!(sim.results(6), [Push::Accepted, Push::Duplicate]);
    assert_eq!((sim.jb.stats().late, sim.jb.stats().resyncs), (0, 0));
}

#[test]
fn adapts_to_jitter() {
    // 30 s of one-way delay 20..80 ms (50 ± 30 ms), starting at the best case so
    // the initial 20 ms target is far too small; then 30 s of a constant 20 ms.
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut jit: Vec<u64> = (0..1500).map(|_| xorshift(&mut rng) % 61).collect();
    jit[0] = 0;
    let arr = stream(3000, 0, 0, |i| ms(20 + jit.get(i as usize).unwrap_or(&0)));
    let mut sim = Sim::new(cfg(20, 300), arr.clone());
    sim.run(ms(30_000));
    let st = sim.jb.stats();
    assert!(st.jitter_ms > 10.0 && st.target_delay >= ms(60), "{st:?}");
    assert!(st.late <= 5, "{st:?}");
    sim.run(ms(30_300));
    let soon = sim.jb.stats();
    assert!(
        soon.target_delay > st.target_delay.mul_f64(0.8),
        "too fast: {soon:?}"
    );
    sim.run(ms(61_000));
    let end = sim.jb.stats();
    assert!(end.target_delay < ms(30), "{end:?}");
    assert!(
        end.skipped > soon.skipped,
        "depth must shrink by skipping: {end:?}"
    );
    let wait = sim.outs[sim.pos(Out::P(2900))].0 - arr[2900].0;
    assert!(wait < ms(60), "playout delay did not shrink: {wait:?}");
    let played = sim.played();
    assert!(played.windows(2).all(|w| w[0] < w[1]));
    let dropped = end.skipped + end.late;
    assert_eq!(
        played.len() as u64 + dropped,
        3000,
        "only skips/lates may drop"
    );
    sim.assert_counts();
}

#[test]
fn silence_goes_idle_then_resumes() {
    // 2 s of DTX silence: ids 50..150 never sent, timestamps keep running.
    let arr = stream(200, 0, 0, |_| ms(5)).into_iter();
    let mut sim = Sim::new(
        cfg(40, 200),
        arr.filter(|a| !(50..150).contains(&a.3)).collect(),
    );
    sim.run(ms(4500));
    assert_eq!(sim.played(), (0..50).chain(150..200).collect::<Vec<_>>());
    let gap = &sim.outs[sim.pos(Out::P(49)) + 1..sim.pos(Out::P(150))];
    let count = |o: Out| gap.iter().filter(|x| x.1 == o).count();
    assert!(count(Out::I) > 50 && count(Out::C) <= 21, "{gap:?}");
    assert_eq!(gap.last().unwrap().1, Out::I, "re-prebuffered");
    assert!(sim.all_packets(Out::P(150), Out::P(199)));
    assert_eq!(sim.jb.stats().resyncs, 0);
    sim.assert_counts();
}

#[test]
fn huge_timestamp_jump_resyncs() {
    let mut arr = stream(50, 0, 0, |_| ms(5));
    arr.extend(stream(100, 0, 1_000_000_000, |_| ms(5)).split_off(50));
    let mut sim = Sim::new(cfg(40, 200), arr);
    sim.run(ms(2500));
    assert_eq!(sim.jb.stats().resyncs, 1);
    let played = sim.played();
    assert!(played.windows(2).all(|w| w[0] < w[1]));
    assert!(
        (0..46).chain(50..100).all(|i| played.contains(&i)),
        "{played:?}"
    );
    let last_old = played.iter().copied().filter(|&i| i < 50).max().unwrap();
    let gap = sim.pos(Out::P(50)) - sim.pos(Out::P(last_old)) - 1;
    assert!(gap <= 5, "gap of {gap} slots");
    sim.assert_counts();
}

#[test]
fn random_operations_never_panic() {
    let configs = [
        cfg(40, 200),
        jc(0, ms(500), ms(0), 0),
        jc(u32::MAX, Duration::ZERO, Duration::MAX, usize::MAX),
        jc(480, ms(0), ms(60), 5),
    ];
    let mut rng = 12345u64;
    let buf = [0x5Au8; 1600];
    for c in configs {
        let mut jb = JitterBuffer::new(c);
        let (mut now, mut seq, mut ts) = (Duration::ZERO, 0u16, 0u32);
        for _ in 0..10_000 {
            let r = xorshift(&mut rng);
            now = match r % 499 {
                0 => Duration::from_nanos(r >> 20), // time going backwards
                1 => Duration::MAX,
                _ => now.saturating_add(ms(r % 25)),
            };
            let len = (r >> 32) as usize % 1600;
            match r >> 60 {
                0..=7 => {
                    (seq, ts) = (seq.wrapping_add(1), ts.wrapping_add(960));
                    let back = (r >> 8) as u32 % 5; // reorder / duplicate
                    let (s, t) = (seq.wrapping_sub(back as u16), ts.wrapping_sub(960 * back));
                    jb.push(now, s, t, &buf[..len]);
                }
                8 | 9 => drop(jb.push(now, (r >> 8) as u16, (r >> 24) as u32, &buf[..len])),
                10 if r.is_multiple_of(64) => jb.reset(),
                _ => {
                    if let Playout::Packet(p) | Playout::Fec(p) = jb.pop(now) {
                        assert!(p.len() <= MAX_PAYLOAD);
                    }
                }
            }
            let st = jb.stats();
            let stored = jb.meta.iter().filter(|m| m.state == State::Stored).count();
            assert!(st.depth == stored && st.depth <= jb.cfg.capacity);
            assert!(st.target_delay <= jb.cfg.max_delay && st.jitter_ms.is_finite());
            assert_eq!(st.lost, st.fec_recovered + st.concealed);
        }
    }
}

/// Packet `i` arrives `base` plus a pseudo-random 0..`spread_ms` late.
fn noisy(n: u32, base: u64, spread_ms: u64, seed: u64) -> Vec<Arr> {
    let mut rng = seed;
    let d: Vec<u64> = (0..n)
        .map(|_| xorshift(&mut rng) % (spread_ms + 1))
        .collect();
    stream(n, 0, 0, |i| ms(base + d[i as usize]))
}

/// Talk spurts: 1 s of speech, then a 0.4 s pause of silent frames.
fn pause(id: u32) -> bool {
    id % 70 >= 50
}

#[test]
fn clean_link_delay_falls_to_one_frame_in_the_pauses() {
    // 20 s of a clean link (5 ms one way, 0..2 ms of scheduling noise) with
    // the hard floor at one frame: the floor starts at FLOOR_START and ends
    // near one frame, and the playout delay follows it down by skipping
    // silent frames only, without a concealed frame; a hard 40 ms floor
    // keeps every packet at least a frame longer.
    let arr = noisy(1000, 5, 2, 7);
    let mut sim = Sim::new(cfg(20, 300), arr.clone());
    let mut fixed = Sim::new(cfg(40, 300), arr.clone());
    sim.quiet = pause;
    fixed.quiet = pause;
    sim.run(ms(500));
    assert!(sim.jb.stats().floor_delay >= ms(35), "{:?}", sim.jb.stats());
    sim.run(ms(19_950)); // the stream's end stretches (conceals) by design
    fixed.run(ms(19_950));
    let st = sim.jb.stats();
    assert!(st.floor_delay < ms(25), "{st:?}");
    assert!(st.target_delay < ms(26), "{st:?}");
    assert_eq!((st.concealed, st.lost, st.late), (0, 0, 0), "{st:?}");
    assert!(st.skipped >= 1 && st.skipped <= 3, "{st:?}");
    let played = sim.played();
    let gone: Vec<u32> = (0..990).filter(|i| !played.contains(i)).collect();
    assert!(gone.iter().all(|&i| pause(i)), "speech skipped: {gone:?}");
    let wait = |s: &Sim, id: u32| s.outs[s.pos(Out::P(id))].0 - arr[id as usize].0;
    assert!(wait(&sim, 10) >= ms(40), "{:?}", wait(&sim, 10));
    for id in [900, 940] {
        assert!(wait(&sim, id) <= ms(40), "{id}: {:?}", wait(&sim, id));
        assert!(
            wait(&sim, id) + ms(20) <= wait(&fixed, id),
            "{id}: {:?} vs {:?}",
            wait(&sim, id),
            wait(&fixed, id)
        );
    }
    assert!(wait(&fixed, 940) >= ms(20), "{:?}", wait(&fixed, 940));
    sim.assert_counts();
}

#[test]
fn speech_is_not_skipped_for_a_falling_floor() {
    // The same link without pauses: the delay stays where prebuffering put
    // it rather than cutting 20 ms out of speech.
    let arr = noisy(1000, 5, 2, 7);
    let mut sim = Sim::new(cfg(20, 300), arr);
    sim.run(ms(19_950));
    let st = sim.jb.stats();
    assert!(st.floor_delay < ms(25), "{st:?}");
    assert_eq!((st.concealed, st.skipped), (0, 0), "{st:?}");
}

#[test]
fn floor_rises_at_once_when_jitter_appears() {
    // 10 s clean, then the route's delay steps up by 60 ms from packet
    // 500: the floor covers that spread at once (not over the RFC 3550
    // estimator's 16 packets), and decays again once the step is the new
    // normal.
    let mut arr = stream(1500, 0, 0, |_| ms(5));
    for a in &mut arr[500..] {
        a.0 += ms(60);
    }
    let mut sim = Sim::new(cfg(20, 300), arr);
    sim.run(ms(9_990));
    let before = sim.jb.stats();
    assert!(before.floor_delay < ms(25), "{before:?}");
    sim.run(ms(10_070));
    let after = sim.jb.stats();
    assert!(after.floor_delay >= ms(75), "{after:?}");
    assert!(after.target_delay >= ms(75), "{after:?}");
    sim.run(ms(29_900));
    let end = sim.jb.stats();
    assert!(end.floor_delay < ms(25), "{end:?}");
    assert!(end.target_delay < ms(30), "{end:?}");
}

#[test]
fn hard_floor_is_kept_on_a_clean_link() {
    let mut sim = Sim::new(cfg(60, 300), noisy(500, 5, 1, 3));
    sim.run(ms(10_000));
    let st = sim.jb.stats();
    assert!(st.floor_delay < ms(25), "{st:?}");
    assert!(st.target_delay >= ms(60), "{st:?}");
    assert_eq!((st.concealed, st.skipped), (0, 0), "{st:?}");
}

#[test]
fn adaptive_floor_conceals_no_more_than_a_fixed_one() {
    // Same moderately jittery stream (0..30 ms): an adaptive floor
    // (hard floor one frame) against the old fixed 40 ms.
    let arr = noisy(1500, 5, 30, 11);
    let mut fixed = Sim::new(cfg(40, 300), arr.clone());
    let mut adaptive = Sim::new(cfg(20, 300), arr);
    fixed.run(ms(30_500));
    adaptive.run(ms(30_500));
    let (f, a) = (fixed.jb.stats(), adaptive.jb.stats());
    assert!(a.concealed <= f.concealed + 2, "{a:?} vs {f:?}");
    assert!(a.late <= f.late + 2, "{a:?} vs {f:?}");
    assert!(a.floor_delay >= ms(40), "spread seen: {a:?}");
}

#[test]
fn decoded_pauses_are_quiet_and_speech_is_not_at_any_bitrate() {
    // Quiet skips drop only what decodes as silence. At every bitrate the
    // gateway may be configured with, a pause decodes at or below
    // QUIET_DBFS and soft speech (a -40 dBFS two-tone syllable) above it,
    // although at the low rates speech packets are as small as a pause is
    // at 24 kbit/s (the old rule, payload size, skipped them).
    for bitrate in [6_000, 10_000, 24_000, 64_000] {
        let c = crate::codec::CodecConfig {
            bitrate,
            ..crate::codec::CodecConfig::default()
        };
        let mut enc = crate::codec::OpusEncoder::new(&c).unwrap();
        let mut dec = crate::codec::OpusDecoder::new().unwrap();
        let n = c.frame_samples();
        let soft = |k: usize| -> Vec<i16> {
            (0..n)
                .map(|i| {
                    let t = (i + k * n) as f32 / 48_000.0;
                    let f = |hz: f32| (2.0 * std::f32::consts::PI * hz * t).sin();
                    (230.0 * (f(310.0) + f(1_270.0))) as i16
                })
                .collect()
        };
        let mut sizes = vec![];
        for k in 0..25 {
            let pkt = enc.encode(&soft(k)).unwrap().to_vec();
            sizes.push(pkt.len());
            let pcm = dec.decode(&pkt).unwrap();
            assert!(k < 3 || !is_quiet(pcm), "{bitrate}: speech frame {k} quiet");
        }
        for k in 0..25 {
            let pkt = enc.encode(&vec![0; n]).unwrap().to_vec();
            let pcm = dec.decode(&pkt).unwrap();
            assert!(k < 5 || is_quiet(pcm), "{bitrate}: pause frame {k} loud");
        }
        if bitrate <= 10_000 {
            assert!(sizes.iter().any(|&l| l <= 24), "{bitrate}: {sizes:?}");
        }
    }
    assert!(is_quiet(&[]));
    assert!(is_quiet(&[20, -20, 20, -20]));
    assert!(!is_quiet(&[400, -400, 400, -400]));
}

#[test]
fn without_the_adaptive_floor_the_hold_is_the_margin_and_the_pop_phase() {
    // The phone legs: no adaptive floor, min_delay one engine tick. On a
    // clean link (5 ms one way, 0..2 ms of noise) the target is that margin
    // plus 3J, each packet waits for it and then for the next 20 ms pop
    // (the clock's phase, which no frame in the target has to cover), and
    // nothing is concealed, skipped or late.
    let arr = noisy(500, 5, 2, 5);
    let c = JitterConfig {
        adaptive_floor: false,
        ..jc(960, ms(10), ms(200), 16)
    };
    let mut sim = Sim::new(c, arr.clone());
    sim.run(ms(9_900));
    let st = sim.jb.stats();
    assert!(
        st.target_delay >= ms(10) && st.target_delay < ms(15),
        "{st:?}"
    );
    assert_eq!(
        (st.concealed, st.lost, st.late, st.skipped),
        (0, 0, 0, 0),
        "{st:?}"
    );
    let first = sim.pos(Out::P(0));
    assert!(sim.outs[first].0 - arr[0].0 >= ms(10));
    for id in 0..490 {
        let wait = sim.outs[sim.pos(Out::P(id))].0 - arr[id as usize].0;
        assert!(wait < ms(35), "{id}: {wait:?}");
    }
    sim.assert_counts();
}
