//! Rate limits for the audit lines of refusals, sans-IO (time in seconds
//! is passed in): a flood of refused handshakes, enrollments or renewals
//! cannot grow the audit table without bound.
//!
//! [`AuditBudget`] allows at most one line per key (a device, a source) per
//! minute and [`PER_MINUTE`] lines in all (or, [`AuditBudget::global`],
//! only the cap in all); the next line written carries the number left
//! out. [`RefusalLog`] queues the lines a budget allows,
//! for a task that writes them to the registry off the async workers.

use std::collections::HashMap;
use std::sync::Mutex;

/// Refusal lines written to the audit log per minute, in all (per budget).
pub const PER_MINUTE: u32 = 30;
/// Keys remembered (beyond it, those older than a minute are forgotten).
const MAX_KEYS: usize = 4096;

/// The budget.
#[derive(Debug)]
pub struct AuditBudget {
    per_minute: u32,
    per_key: bool,
    last_by_key: HashMap<String, i64>,
    minute: i64,
    written_this_minute: u32,
    suppressed: u64,
}

impl Default for AuditBudget {
    fn default() -> Self {
        Self::new(PER_MINUTE)
    }
}

impl AuditBudget {
    /// At most `per_minute` lines a minute in all.
    pub fn new(per_minute: u32) -> Self {
        AuditBudget {
            per_minute,
            per_key: true,
            last_by_key: HashMap::new(),
            minute: i64::MIN,
            written_this_minute: 0,
            suppressed: 0,
        }
    }

    /// At most `per_minute` lines a minute, with no limit per key: for
    /// refusals whose key the sender chooses (a claimed device id), where
    /// a limit per key would only hide the first refusal of each.
    pub fn global(per_minute: u32) -> Self {
        AuditBudget {
            per_key: false,
            ..Self::new(per_minute)
        }
    }

    /// May a line for `key` be written at `at` (Unix seconds)? `Some(n)`:
    /// yes, and `n` lines were left out since the last one written; `None`:
    /// no (counted).
    pub fn admit(&mut self, key: &str, at: i64) -> Option<u64> {
        if self.minute != at.div_euclid(60) {
            self.minute = at.div_euclid(60);
            self.written_this_minute = 0;
        }
        let recent = self.per_key
            && self
                .last_by_key
                .get(key)
                .is_some_and(|&t| at.saturating_sub(t) < 60);
        if recent || self.written_this_minute >= self.per_minute {
            self.suppressed += 1;
            return None;
        }
        if !self.per_key {
            self.written_this_minute += 1;
            return Some(std::mem::take(&mut self.suppressed));
        }
        if self.last_by_key.len() >= MAX_KEYS {
            self.last_by_key.retain(|_, t| at.saturating_sub(*t) < 60);
            if self.last_by_key.len() >= MAX_KEYS {
                // Only possible with more than MAX_KEYS lines a minute,
                // which the cap above forbids; kept bounded regardless.
                self.last_by_key.clear();
            }
        }
        self.last_by_key.insert(key.to_string(), at);
        self.written_this_minute += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// One audit line to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLine {
    /// The event.
    pub event: &'static str,
    /// The source address.
    pub source: String,
    /// The device, if known.
    pub device: String,
    /// What happened (with the count of lines left out, if any).
    pub detail: String,
}

/// Refusal lines a budget allowed, waiting to be written.
#[derive(Debug, Default)]
pub struct RefusalLog {
    inner: Mutex<(AuditBudget, Vec<AuditLine>)>,
}

impl RefusalLog {
    /// Note a refusal keyed by `key` at `at`; queued if the budget allows.
    pub fn note(
        &self,
        key: &str,
        at: i64,
        event: &'static str,
        source: &str,
        device: &str,
        detail: &str,
    ) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(left_out) = g.0.admit(key, at) else {
            return;
        };
        g.1.push(AuditLine {
            event,
            source: source.to_string(),
            device: device.to_string(),
            detail: with_left_out(detail, left_out),
        });
    }

    /// The lines noted since the last call.
    pub fn take(&self) -> Vec<AuditLine> {
        std::mem::take(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()).1)
    }
}

/// `detail`, with the count of refusals the rate limit left out.
pub fn with_left_out(detail: &str, left_out: u64) -> String {
    if left_out == 0 {
        detail.to_string()
    } else {
        format!("{detail} ({left_out} more refusals not written: rate limit)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_minute_and_a_cap_in_all() {
        let mut b = AuditBudget::new(5);
        let at = 6000;
        assert_eq!(b.admit("a", at), Some(0));
        assert_eq!(b.admit("a", at + 59), None);
        for i in 0..100 {
            let _ = b.admit(&format!("k{i}"), at + 1);
        }
        // 4 more keys fit in the minute (the first of them carried the
        // "a" left out), 96 were left out, then "z".
        assert_eq!(b.admit("z", at + 2), None);
        assert_eq!(b.admit("a", at + 61), Some(97));
    }

    #[test]
    fn a_global_budget_has_no_limit_per_key() {
        let mut b = AuditBudget::global(3);
        assert_eq!(b.admit("a", 60), Some(0));
        assert_eq!(b.admit("a", 61), Some(0));
        assert_eq!(b.admit("a", 62), Some(0));
        assert_eq!(b.admit("b", 63), None);
        assert_eq!(b.admit("a", 120), Some(1));
    }

    #[test]
    fn a_flood_of_keys_writes_a_bounded_number_of_lines() {
        let log = RefusalLog::default();
        let mut written = 0;
        for s in 0..600i64 {
            for i in 0..100 {
                log.note(
                    &format!("10.0.{}.{}", s % 256, i),
                    s,
                    "x",
                    "",
                    "",
                    "refused",
                );
            }
            written += log.take().len();
        }
        // Ten minutes: at most PER_MINUTE a minute.
        assert!(written <= 10 * PER_MINUTE as usize, "{written}");
        assert!(written >= 9 * PER_MINUTE as usize, "{written}");
    }
}
