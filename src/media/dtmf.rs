//! RFC 4733 telephone events (DTMF digits in RTP), sans-IO.
//!
//! [`DtmfReceiver`] turns a phone's event packets into one [`Digit`] per key
//! press, however many start, update and (triply sent) end packets carry it,
//! and in whatever order they arrive. [`DtmfSender`] produces the packets for
//! a digit the relay asks a phone to hear: start with the marker bit, an
//! update every packet time, and the end packet three times (RFC 4733 §2.5.1).

use thiserror::Error;

/// Payload length of one event (RFC 4733 §2.3).
pub const EVENT_LEN: usize = 4;
/// Longest key press reported (RFC 4733 durations are 16-bit; longer events
/// are split into segments, which we merge up to this bound).
pub const MAX_DURATION_MS: u32 = 10_000;

/// Why a telephone-event payload was rejected.
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum DtmfError {
    /// Shorter than the 4-byte event.
    #[error("telephone-event payload of {0} bytes (4 needed)")]
    Short(usize),
    /// An event code that is not a DTMF key (RFC 4733 §3.2: 0-15).
    #[error("telephone-event code {0} is not a DTMF key")]
    NotDtmf(u8),
}

/// One DTMF key: `0`-`9`, `*`, `#`, `A`-`D`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digit(char);

impl Digit {
    /// The key for an RFC 4733 event code.
    pub fn from_event(code: u8) -> Result<Digit, DtmfError> {
        const KEYS: &[u8; 16] = b"0123456789*#ABCD";
        KEYS.get(usize::from(code))
            .map(|&c| Digit(c as char))
            .ok_or(DtmfError::NotDtmf(code))
    }

    /// The key for a character (also lowercase `a`-`d`).
    pub fn from_char(c: char) -> Option<Digit> {
        let c = c.to_ascii_uppercase();
        matches!(c, '0'..='9' | '*' | '#' | 'A'..='D').then_some(Digit(c))
    }

    /// The RFC 4733 event code.
    pub fn event(self) -> u8 {
        match self.0 {
            '0'..='9' => self.0 as u8 - b'0',
            '*' => 10,
            '#' => 11,
            c => c as u8 - b'A' + 12,
        }
    }

    /// The key as a character.
    pub fn as_char(self) -> char {
        self.0
    }
}

/// One decoded event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The key.
    pub digit: Digit,
    /// The end bit.
    pub end: bool,
    /// Volume in -dBm0 (0-63).
    pub volume: u8,
    /// Duration so far, in RTP timestamp units.
    pub duration: u16,
}

impl Event {
    /// Parse the first 4 bytes of a telephone-event payload.
    pub fn parse(payload: &[u8]) -> Result<Event, DtmfError> {
        let b: &[u8; EVENT_LEN] = payload
            .get(..EVENT_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(DtmfError::Short(payload.len()))?;
        Ok(Event {
            digit: Digit::from_event(b[0])?,
            end: b[1] & 0x80 != 0,
            volume: b[1] & 0x3f,
            duration: u16::from_be_bytes([b[2], b[3]]),
        })
    }

    /// The 4-byte payload.
    pub fn emit(&self) -> [u8; EVENT_LEN] {
        let d = self.duration.to_be_bytes();
        [
            self.digit.event(),
            (u8::from(self.end) << 7) | (self.volume & 0x3f),
            d[0],
            d[1],
        ]
    }
}

/// A completed or newly started key press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPress {
    /// The key.
    pub digit: Digit,
    /// RTP timestamp of the event's start: identifies the press.
    pub timestamp: u32,
}

/// Reports each key press once.
#[derive(Debug, Default, Clone)]
pub struct DtmfReceiver {
    /// Start timestamps of the most recent presses already reported.
    seen: [Option<u32>; 4],
    next: usize,
}

impl DtmfReceiver {
    /// A receiver with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one telephone-event packet (its RTP timestamp and payload).
    /// Returns the key press the first time any packet of it arrives: start,
    /// update or end, so a lost start packet still yields the digit.
    pub fn push(&mut self, timestamp: u32, payload: &[u8]) -> Result<Option<KeyPress>, DtmfError> {
        let ev = Event::parse(payload)?;
        if self.seen.contains(&Some(timestamp)) {
            return Ok(None);
        }
        self.seen[self.next] = Some(timestamp);
        self.next = (self.next + 1) % self.seen.len();
        Ok(Some(KeyPress {
            digit: ev.digit,
            timestamp,
        }))
    }
}

/// One packet a [`DtmfSender`] wants sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    /// Marker bit (first packet of the event).
    pub marker: bool,
    /// RTP timestamp: the event's start, the same for all its packets.
    pub timestamp: u32,
    /// The payload.
    pub payload: [u8; EVENT_LEN],
}

/// Generates the packets of one key press, one per packet time.
#[derive(Debug, Clone)]
pub struct DtmfSender {
    digit: Digit,
    start_ts: u32,
    step: u16,
    total: u16,
    elapsed: u16,
    ends_left: u8,
    started: bool,
}

impl DtmfSender {
    /// A key press of `duration_ms` starting at RTP timestamp `start_ts`, with
    /// packets every `ptime_ms`, on an RTP clock of `clock` Hz.
    pub fn new(digit: Digit, start_ts: u32, duration_ms: u32, ptime_ms: u32, clock: u32) -> Self {
        let units =
            |ms: u32| (u64::from(ms) * u64::from(clock) / 1000).min(u64::from(u16::MAX)) as u16;
        DtmfSender {
            digit,
            start_ts,
            step: units(ptime_ms.max(1)).max(1),
            total: units(duration_ms.clamp(40, MAX_DURATION_MS)),
            elapsed: 0,
            ends_left: 3,
            started: false,
        }
    }

    /// Total RTP time the event covers; the audio stream resumes after it.
    pub fn duration(&self) -> u16 {
        self.total
    }

    /// The next packet, or `None` once the three end packets are out.
    pub fn next_packet(&mut self) -> Option<EventPacket> {
        let marker = !self.started;
        self.started = true;
        let end;
        if self.elapsed < self.total {
            self.elapsed = self.elapsed.saturating_add(self.step).min(self.total);
            end = self.elapsed >= self.total;
            if end {
                self.ends_left -= 1;
            }
        } else if self.ends_left > 0 {
            self.ends_left -= 1;
            end = true;
        } else {
            return None;
        }
        Some(EventPacket {
            marker,
            timestamp: self.start_ts,
            payload: Event {
                digit: self.digit,
                end,
                volume: 10,
                duration: self.elapsed,
            }
            .emit(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rfc_4733_example_layout() {
        // Digit 5, end bit, volume 10, duration 800 (100 ms at 8 kHz).
        let ev = Event::parse(&[5, 0x8a, 0x03, 0x20]).unwrap();
        assert_eq!(ev.digit.as_char(), '5');
        assert!(ev.end);
        assert_eq!((ev.volume, ev.duration), (10, 800));
        assert_eq!(ev.emit(), [5, 0x8a, 0x03, 0x20]);
        assert_eq!(Event::parse(&[1, 2, 3]), Err(DtmfError::Short(3)));
        assert_eq!(Event::parse(&[16, 0, 0, 0]), Err(DtmfError::NotDtmf(16)));
        for (c, code) in [
            ('0', 0),
            ('9', 9),
            ('*', 10),
            ('#', 11),
            ('A', 12),
            ('D', 15),
        ] {
            let d = Digit::from_char(c).unwrap();
            assert_eq!(d.event(), code);
            assert_eq!(Digit::from_event(code).unwrap(), d);
        }
        assert_eq!(Digit::from_char('b').unwrap().as_char(), 'B');
        assert!(Digit::from_char('E').is_none());
    }

    #[test]
    fn sender_packets_give_one_digit_each_even_with_loss_and_reorder() {
        let mut rx = DtmfReceiver::new();
        let mut got = Vec::new();
        for (i, key) in "159#".chars().enumerate() {
            let ts = 1000 + i as u32 * 4000;
            let mut tx = DtmfSender::new(Digit::from_char(key).unwrap(), ts, 100, 20, 8000);
            let mut pkts = Vec::new();
            while let Some(p) = tx.next_packet() {
                pkts.push(p);
            }
            // 100 ms in 20 ms steps: 5 packets, the last an end, plus 2 repeats.
            assert_eq!(pkts.len(), 7, "{pkts:?}");
            assert!(pkts[0].marker && pkts[1..].iter().all(|p| !p.marker));
            assert!(
                pkts[4..]
                    .iter()
                    .all(|p| Event::parse(&p.payload).unwrap().end)
            );
            assert!(
                pkts[..4]
                    .iter()
                    .all(|p| !Event::parse(&p.payload).unwrap().end)
            );
            assert_eq!(Event::parse(&pkts[6].payload).unwrap().duration, 800);
            // Lose the start packet, deliver the rest reversed.
            for p in pkts[1..].iter().rev() {
                if let Some(k) = rx.push(p.timestamp, &p.payload).unwrap() {
                    got.push(k.digit.as_char());
                }
            }
        }
        assert_eq!(got.into_iter().collect::<String>(), "159#");
    }

    #[test]
    fn the_same_digit_pressed_twice_is_reported_twice() {
        let mut rx = DtmfReceiver::new();
        let five = Event {
            digit: Digit::from_char('5').unwrap(),
            end: false,
            volume: 10,
            duration: 160,
        }
        .emit();
        assert!(rx.push(100, &five).unwrap().is_some());
        assert!(rx.push(100, &five).unwrap().is_none());
        assert!(rx.push(2000, &five).unwrap().is_some());
    }
}
