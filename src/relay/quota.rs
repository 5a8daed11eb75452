//! Per-device daily quotas, sans-IO (the day is passed in): certificate
//! renewals, and bytes of recordings, so that one box cannot exhaust what
//! every box shares (the signer, the registry's disk, the recordings'
//! disk).
//!
//! Keys are authenticated device ids, so the table is bounded by the
//! fleet; entries of an earlier day are dropped when the day changes.

use std::collections::HashMap;

/// One quota: at most `per_day` units per device per day.
#[derive(Debug)]
pub struct DailyQuota {
    per_day: u64,
    day: i64,
    used: HashMap<String, u64>,
}

impl DailyQuota {
    /// At most `per_day` units per device per day.
    pub fn new(per_day: u64) -> Self {
        DailyQuota {
            per_day,
            day: i64::MIN,
            used: HashMap::new(),
        }
    }

    /// The quota per day.
    pub fn per_day(&self) -> u64 {
        self.per_day
    }

    /// Take `amount` units for `device` on `day` (Unix days); `false`, and
    /// nothing taken, when that would pass the quota.
    pub fn take(&mut self, device: &str, day: i64, amount: u64) -> bool {
        if day != self.day {
            self.day = day;
            self.used.clear();
        }
        let used = self.used.get(device).copied().unwrap_or(0);
        if used.saturating_add(amount) > self.per_day {
            return false;
        }
        self.used.insert(device.to_string(), used + amount);
        true
    }

    /// What `device` used on `day`.
    pub fn used(&self, device: &str, day: i64) -> u64 {
        if day != self.day {
            return 0;
        }
        self.used.get(device).copied().unwrap_or(0)
    }
}

/// The Unix day of `unix_seconds`.
pub fn day_of(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_held_to_its_quota_for_the_day_and_others_are_not() {
        let mut q = DailyQuota::new(3);
        let day = day_of(1_800_000_000);
        for _ in 0..3 {
            assert!(q.take("gw-a", day, 1));
        }
        assert!(!q.take("gw-a", day, 1));
        assert!(q.take("gw-b", day, 1));
        assert_eq!(q.used("gw-a", day), 3);
        // The next day starts afresh.
        assert!(q.take("gw-a", day + 1, 1));
        assert_eq!(q.used("gw-a", day + 1), 1);
    }

    #[test]
    fn an_amount_that_does_not_fit_takes_nothing() {
        let mut q = DailyQuota::new(1000);
        assert!(q.take("gw", 5, 600));
        assert!(!q.take("gw", 5, 600));
        assert!(q.take("gw", 5, 400));
        assert!(!q.take("gw", 5, 1));
    }
}
