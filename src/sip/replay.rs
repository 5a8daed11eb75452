//! The (nonce, nc) pairs that already authenticated a request, so a captured
//! request cannot be replayed while its nonce is fresh (RFC 7616 3.3: the
//! server "should" check that `nc` is not reused).
//!
//! Guarantees:
//! - a pair is accepted at most once ([`SeenNonces::first_use`]);
//! - only answers that were right are recorded (the caller checks the
//!   digest first), so only holders of a password can add entries;
//! - memory is bounded: at most [`MAX_NONCES`] nonces, each with at most
//!   [`MAX_NC_PER_NONCE`] counts; a nonce whose counts are used up refuses
//!   every further count (the client is challenged again and gets a new
//!   nonce), and when the table is full the entry issued earliest goes
//!   (its nonce then still fails as expired once its lifetime ends, and a
//!   replay inside that lifetime needs the table to have been flooded by
//!   authenticated requests).

use std::collections::HashMap;

/// Most nonces remembered at once.
pub const MAX_NONCES: usize = 4096;
/// Most `nc` values remembered for one nonce.
pub const MAX_NC_PER_NONCE: usize = 64;

#[derive(Debug, Clone)]
struct Seen {
    /// When the nonce was issued (seconds since the digest server's epoch).
    issued: u64,
    counts: Vec<u32>,
}

/// Used (nonce, nc) pairs (see the module docs).
#[derive(Debug, Default)]
pub struct SeenNonces {
    by_nonce: HashMap<String, Seen>,
}

impl SeenNonces {
    /// Records `(nonce, nc)`; `false` when it was seen before (a replay) or
    /// the nonce's counts are used up. `issued` and `now` are seconds since
    /// the digest server's epoch; `ttl` its nonce lifetime in seconds.
    pub fn first_use(&mut self, nonce: &str, nc: u32, issued: u64, now: u64, ttl: u64) -> bool {
        if let Some(s) = self.by_nonce.get_mut(nonce) {
            if s.counts.contains(&nc) || s.counts.len() >= MAX_NC_PER_NONCE {
                return false;
            }
            s.counts.push(nc);
            return true;
        }
        if self.by_nonce.len() >= MAX_NONCES {
            self.by_nonce
                .retain(|_, s| now.saturating_sub(s.issued) <= ttl);
        }
        if self.by_nonce.len() >= MAX_NONCES
            && let Some(oldest) = self
                .by_nonce
                .iter()
                .min_by_key(|(_, s)| s.issued)
                .map(|(k, _)| k.clone())
        {
            self.by_nonce.remove(&oldest);
        }
        self.by_nonce.insert(
            nonce.to_string(),
            Seen {
                issued,
                counts: vec![nc],
            },
        );
        true
    }

    /// Nonces remembered.
    pub fn len(&self) -> usize {
        self.by_nonce.len()
    }

    /// Nothing remembered.
    pub fn is_empty(&self) -> bool {
        self.by_nonce.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_accepted_once_and_counts_are_bounded() {
        let mut s = SeenNonces::default();
        assert!(s.first_use("n1", 1, 0, 0, 300));
        assert!(!s.first_use("n1", 1, 0, 0, 300), "replay");
        assert!(s.first_use("n1", 2, 0, 0, 300));
        assert!(s.first_use("n2", 1, 0, 0, 300), "another nonce");
        for nc in 3..=MAX_NC_PER_NONCE as u32 {
            assert!(s.first_use("n1", nc, 0, 1, 300));
        }
        assert!(!s.first_use("n1", 10_000, 0, 1, 300), "counts used up");
    }

    #[test]
    fn the_table_is_bounded_and_drops_expired_nonces_first() {
        let mut s = SeenNonces::default();
        for i in 0..MAX_NONCES {
            assert!(s.first_use(&format!("n{i}"), 1, i as u64, i as u64, 1_000_000));
        }
        assert_eq!(s.len(), MAX_NONCES);
        // Full of live nonces: the earliest issued goes.
        assert!(s.first_use("new", 1, 5000, 5000, 1_000_000));
        assert_eq!(s.len(), MAX_NONCES);
        assert!(s.first_use("n0", 1, 0, 5000, 1_000_000), "n0 was evicted");
        assert!(!s.first_use("n2", 1, 2, 5000, 1_000_000), "n2 kept");
        // Expired ones are swept when the table fills.
        assert!(s.first_use("later", 1, 10_000_000, 10_000_000, 10));
        assert_eq!(s.len(), 1);
    }
}
