//! The audit log's keyed hash chain, sans-IO: the MAC of a row, the head,
//! and the verifier that walks the rows in sequence order.
//!
//! Row `n` carries `seq = n` and
//!
//! ```text
//! mac_n = HMAC-SHA256(key, mac_{n-1} || "VXAUDIT1" || u64be(seq) || i64be(ts)
//!                          || str(event) || str(source) || str(device) || str(detail))
//! str(s) = u32be(len(s)) || s          mac_0 = 32 zero bytes
//! ```
//!
//! The key lives outside the database (sealed to the relay's machine), so
//! whoever can only write the SQLite file cannot recompute a MAC: an edited
//! row fails its own check, a deleted row leaves a gap in `seq`, and rows
//! cut from the end are found by comparing with the head the relay logged
//! (`audit_head_seq`, `audit_head`).
//!
//! The verifier checks each row against its stored predecessor's MAC, so one
//! edited row is reported alone and the rows after it still verify.

pub use crate::pki::name::hex;
use ring::hmac;
use std::fmt;

/// The MAC of no row: what the first row chains from.
pub const ZERO: [u8; 32] = [0; 32];

/// Domain tag in every MAC input (version of the encoding).
const TAG: &[u8; 8] = b"VXAUDIT1";

/// The event of the row that starts a chain. Rows before it (lower `seq`)
/// were written by a release without the chain and chained at upgrade.
pub const GENESIS: &str = "audit_chain_started";

/// Problems listed in a [`Report`]; more are counted, not kept.
pub const MAX_LISTED: usize = 50;

/// The audit log's MAC key (32 bytes, held sealed by the relay).
pub struct AuditKey(hmac::Key);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    /// Key length in bytes.
    pub const LEN: usize = 32;

    /// A key from its 32 bytes; `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (bytes.len() == Self::LEN).then(|| AuditKey(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// A fresh random key that is never stored (in-memory registries).
    pub fn random() -> Option<Self> {
        use ring::rand::SecureRandom;
        let mut raw = zeroize::Zeroizing::new([0u8; Self::LEN]);
        ring::rand::SystemRandom::new().fill(&mut raw[..]).ok()?;
        Self::from_bytes(&raw[..])
    }

    /// A 32-byte key for another purpose, derived from this one
    /// (HMAC-SHA256 of `label`): what seals the webhook secrets in the
    /// registry, so that they travel with the audit key in a backup.
    pub fn derive(&self, label: &[u8]) -> zeroize::Zeroizing<[u8; 32]> {
        let tag = hmac::sign(&self.0, label);
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// The content of a row that the MAC covers.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    /// Sequence number, from 1.
    pub seq: u64,
    /// Unix seconds.
    pub ts: i64,
    /// Event name.
    pub event: &'a str,
    /// Source address, or empty.
    pub source: &'a str,
    /// Device id, or empty.
    pub device: &'a str,
    /// Free text.
    pub detail: &'a str,
}

/// The MAC of a row chained after `prev`.
pub fn mac(key: &AuditKey, prev: &[u8; 32], row: &Fields<'_>) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(&key.0);
    ctx.update(prev);
    ctx.update(TAG);
    ctx.update(&row.seq.to_be_bytes());
    ctx.update(&row.ts.to_be_bytes());
    for s in [row.event, row.source, row.device, row.detail] {
        // Lengths bound by SQLite's own limit (1 GB), far below u32.
        ctx.update(&(s.len() as u32).to_be_bytes());
        ctx.update(s.as_bytes());
    }
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The newest row of the chain: its sequence number and MAC. Written as
/// `SEQ:HEX` (what `--head` takes and the log's two fields make).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Sequence number.
    pub seq: u64,
    /// MAC.
    pub mac: [u8; 32],
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, hex(&self.mac))
    }
}

impl std::str::FromStr for Head {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not SEQ:HEX (the relay log's `audit_head_seq` and `audit_head`, e.g. 42:9f86d0…, 64 hex digits)"
            )
        };
        let (seq, h) = s.trim().split_once(':').ok_or_else(bad)?;
        let seq = seq.parse().map_err(|_| bad())?;
        let mac = unhex(h).ok_or_else(bad)?;
        Ok(Head { seq, mac })
    }
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// A row as the verifier reads it.
#[derive(Debug, Clone)]
pub struct StoredRow<'a> {
    /// The content.
    pub fields: Fields<'a>,
    /// The stored MAC (any length: a hand edit may have changed it).
    pub mac: Option<&'a [u8]>,
}

/// What the verifier found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The row's MAC does not match its content: it was edited after it
    /// was written (or its MAC was).
    Changed {
        /// Its sequence number.
        seq: u64,
        /// Its time (as stored).
        ts: i64,
        /// Its event (as stored).
        event: String,
        /// Its device (as stored).
        device: String,
    },
    /// Rows `from..=to` are missing: deleted. The row after them cannot be
    /// checked (the MAC it chains from is gone).
    Missing {
        /// First missing sequence number.
        from: u64,
        /// Last missing sequence number.
        to: u64,
    },
    /// A row without a sequence number or MAC after the chain started:
    /// inserted outside voxgate.
    Unchained {
        /// Its SQLite rowid.
        rowid: i64,
        /// Its time.
        ts: i64,
        /// Its event.
        event: String,
        /// Its device.
        device: String,
    },
    /// The relay logged a head beyond the last row: rows were cut from
    /// the end.
    TailCut {
        /// The last sequence number in the registry (0: none).
        have: u64,
        /// The head the log holds.
        logged: u64,
    },
    /// The row at the logged head's sequence number has another MAC: the
    /// chain from there was rewritten, or the head is from another relay.
    HeadDiffers {
        /// The logged head's sequence number.
        seq: u64,
    },
}

impl Problem {
    /// The sequence number the problem is at (for "the first break").
    pub fn seq(&self) -> Option<u64> {
        match self {
            Problem::Changed { seq, .. } | Problem::HeadDiffers { seq } => Some(*seq),
            Problem::Missing { from, .. } => Some(*from),
            Problem::TailCut { have, .. } => Some(have + 1),
            Problem::Unchained { .. } => None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = |ts: i64, event: &str, device: &str| {
            let mut s = format!("{} {}", iso8601(ts), event.escape_debug());
            if !device.is_empty() {
                s += &format!(" {}", device.escape_debug());
            }
            s
        };
        match self {
            Problem::Changed {
                seq,
                ts,
                event,
                device,
            } => write!(
                f,
                "seq {seq} ({}): changed after it was written (its MAC does not match its content)",
                what(*ts, event, device)
            ),
            Problem::Missing { from, to } if from == to => write!(
                f,
                "seq {from}: missing (deleted); seq {} cannot be checked without it",
                to + 1
            ),
            Problem::Missing { from, to } => write!(
                f,
                "seq {from}..{to}: missing ({} rows deleted); seq {} cannot be checked without them",
                to - from + 1,
                to + 1
            ),
            Problem::Unchained {
                rowid,
                ts,
                event,
                device,
            } => write!(
                f,
                "row {rowid} ({}): has no sequence number or MAC (inserted outside voxgate)",
                what(*ts, event, device)
            ),
            Problem::TailCut { have, logged } => {
                match have + 1 {
                    first if first == *logged => write!(f, "seq {first}")?,
                    first => write!(f, "seq {first}..{logged}")?,
                }
                write!(
                    f,
                    ": cut from the end (the relay logged head {logged}, the registry ends at {have})"
                )
            }
            Problem::HeadDiffers { seq } => write!(
                f,
                "seq {seq}: its MAC differs from the head the relay logged (the chain was rewritten from there, or the head is from another relay)"
            ),
        }
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Chained rows read.
    pub rows: u64,
    /// The last chained row.
    pub head: Option<Head>,
    /// Rows written by a release before the chain and chained at upgrade:
    /// (how many, when the chain started).
    pub pre_chain: Option<(u64, i64)>,
    /// The first [`MAX_LISTED`] problems, in the order found.
    pub problems: Vec<Problem>,
    /// All problems, listed or not.
    pub problem_count: u64,
    /// Whether a logged head was given and it matched.
    pub head_matched: bool,
}

impl Report {
    /// No problem found.
    pub fn ok(&self) -> bool {
        self.problem_count == 0
    }
}

/// Walks chained rows in `seq` order, then unchained rows.
#[derive(Debug)]
pub struct Verifier<'k> {
    key: &'k AuditKey,
    logged: Option<Head>,
    next: u64,
    prev: [u8; 32],
    genesis_seen: bool,
    report: Report,
}

impl<'k> Verifier<'k> {
    /// Verify with `key`; `logged` is the head the relay's log last showed.
    pub fn new(key: &'k AuditKey, logged: Option<Head>) -> Self {
        Verifier {
            key,
            logged,
            next: 1,
            prev: ZERO,
            genesis_seen: false,
            report: Report {
                rows: 0,
                head: None,
                pre_chain: None,
                problems: Vec::new(),
                problem_count: 0,
                head_matched: false,
            },
        }
    }

    fn problem(&mut self, p: Problem) {
        self.report.problem_count += 1;
        if self.report.problems.len() < MAX_LISTED {
            self.report.problems.push(p);
        }
    }

    /// The next chained row (ascending `seq`).
    pub fn chained(&mut self, row: &StoredRow<'_>) {
        let f = row.fields;
        self.report.rows += 1;
        let stored: Option<[u8; 32]> = row.mac.and_then(|m| m.try_into().ok());
        let checkable = if f.seq > self.next {
            self.problem(Problem::Missing {
                from: self.next,
                to: f.seq - 1,
            });
            false
        } else {
            true
        };
        let intact = f.seq >= self.next && stored == Some(mac(self.key, &self.prev, &f));
        if checkable && !intact {
            self.problem(Problem::Changed {
                seq: f.seq,
                ts: f.ts,
                event: f.event.into(),
                device: f.device.into(),
            });
        }
        if f.event == GENESIS && !self.genesis_seen && intact {
            self.genesis_seen = true;
            self.report.pre_chain = Some((f.seq - 1, f.ts)).filter(|p| p.0 > 0);
        }
        if let Some(h) = self.logged
            && h.seq == f.seq
        {
            if stored == Some(h.mac) {
                self.report.head_matched = true;
            } else {
                self.problem(Problem::HeadDiffers { seq: f.seq });
            }
        }
        // Chain on from what is stored, so that one bad row is reported
        // alone and its successors still verify.
        self.prev = stored.unwrap_or(ZERO);
        self.next = f.seq.max(self.next - 1) + 1;
        self.report.head = Some(Head {
            seq: f.seq,
            mac: self.prev,
        });
    }

    /// A row with no `seq` (after every chained row was given).
    pub fn unchained(&mut self, rowid: i64, f: &Fields<'_>) {
        self.problem(Problem::Unchained {
            rowid,
            ts: f.ts,
            event: f.event.into(),
            device: f.device.into(),
        });
    }

    /// The report.
    pub fn finish(mut self) -> Report {
        if let Some(h) = self.logged {
            let have = self.report.head.map_or(0, |h| h.seq);
            if have < h.seq {
                self.problem(Problem::TailCut {
                    have,
                    logged: h.seq,
                });
            }
        }
        self.report
    }
}

/// `2026-12-01T08:30:00Z` (UTC, seconds).
pub fn iso8601(ts: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(ts) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("@{ts}"),
    }
}

#[cfg(test)]
mod tests;
