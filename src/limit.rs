//! Token buckets per key: the one request-rate limiter behind the relay (per identity) and the
//! rendezvous server (per client address).
//!
//! - every key starts with a full bucket of `burst` tokens, refilled at `per_sec` tokens per
//!   second (kept in thousandths, so a refill of one millisecond counts);
//! - a request takes one token, or is refused with the time until the next one;
//! - a full bucket is indistinguishable from a new one, so full buckets may be forgotten at any
//!   time ([`TokenBuckets::forget_full`]); when more than `max_keys` keys are held, a new key
//!   first makes room that way and is refused if there is still none.
//!
//! No I/O and no clock: times are milliseconds from any fixed origin, passed in by the caller.
//! Time going backwards never adds tokens.

use std::collections::HashMap;
use std::hash::Hash;

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limited {
    /// The key's bucket is empty: the next token comes in `retry_after_ms` (`u64::MAX` when the
    /// rate is zero).
    Empty {
        /// Milliseconds until one token is back.
        retry_after_ms: u64,
    },
    /// `max_keys` keys are held and none of them is full: a new key is not tracked.
    TooManyKeys {
        /// The limit.
        max_keys: usize,
    },
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens, in thousandths.
    milli_tokens: u64,
    last_ms: u64,
}

/// Per-key token buckets (see the module docs).
#[derive(Debug)]
pub struct TokenBuckets<K> {
    per_sec: u64,
    burst: u64,
    max_keys: usize,
    /// With more than this many keys held, [`TokenBuckets::take`] forgets full buckets (at most
    /// once a second).
    prune_above: usize,
    last_prune_ms: u64,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq> TokenBuckets<K> {
    /// `per_sec` tokens per second on average, bursts of `burst`, at most `max_keys` keys held;
    /// beyond `prune_above` keys, full buckets are forgotten (at most once a second) as requests
    /// come in.
    pub fn new(per_sec: u32, burst: u32, max_keys: usize, prune_above: usize) -> Self {
        TokenBuckets {
            per_sec: u64::from(per_sec),
            burst: u64::from(burst),
            max_keys,
            prune_above,
            last_prune_ms: 0,
            buckets: HashMap::new(),
        }
    }

    fn cap(&self) -> u64 {
        self.burst.saturating_mul(1000)
    }

    /// Takes one token for `key` at `now_ms`.
    pub fn take(&mut self, key: K, now_ms: u64) -> Result<(), Limited> {
        if self.buckets.len() > self.prune_above && now_ms.saturating_sub(self.last_prune_ms) > 1000
        {
            self.last_prune_ms = now_ms;
            self.forget_full(now_ms);
        }
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_keys {
            self.forget_full(now_ms);
            if self.buckets.len() >= self.max_keys {
                return Err(Limited::TooManyKeys {
                    max_keys: self.max_keys,
                });
            }
        }
        let (cap, per_sec) = (self.cap(), self.per_sec);
        let b = self.buckets.entry(key).or_insert(Bucket {
            milli_tokens: cap,
            last_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(b.last_ms);
        b.last_ms = b.last_ms.max(now_ms);
        b.milli_tokens = b
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(per_sec))
            .min(cap);
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            Ok(())
        } else {
            let missing = 1000 - b.milli_tokens;
            Err(Limited::Empty {
                retry_after_ms: if per_sec == 0 {
                    u64::MAX
                } else {
                    missing.div_ceil(per_sec)
                },
            })
        }
    }

    /// Forgets every key whose bucket is full at `now_ms`.
    pub fn forget_full(&mut self, now_ms: u64) {
        let cap = self.cap();
        let per_sec = self.per_sec;
        self.buckets.retain(|_, b| {
            let elapsed = now_ms.saturating_sub(b.last_ms);
            b.milli_tokens
                .saturating_add(elapsed.saturating_mul(per_sec))
                .min(cap)
                < cap
        });
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_per_key_and_never_backwards() {
        let mut tb = TokenBuckets::new(10, 3, usize::MAX, 4096);
        for _ in 0..3 {
            tb.take(1u8, 1000).unwrap();
        }
        assert_eq!(
            tb.take(1, 1000),
            Err(Limited::Empty {
                retry_after_ms: 100
            })
        );
        tb.take(2, 1000).unwrap();
        // 100 ms at 10/s is one token.
        tb.take(1, 1100).unwrap();
        assert!(tb.take(1, 1100).is_err());
        assert!(tb.take(1, 500).is_err());
    }

    #[test]
    fn key_limit_makes_room_from_full_buckets() {
        let mut tb = TokenBuckets::new(1, 1, 2, usize::MAX);
        tb.take(1u8, 0).unwrap();
        tb.take(2, 0).unwrap();
        assert_eq!(tb.take(3, 0), Err(Limited::TooManyKeys { max_keys: 2 }));
        // A second later key 1 and 2 are full again: forgotten to make room.
        tb.take(3, 1000).unwrap();
        assert_eq!(tb.len(), 1);
    }

    #[test]
    fn zero_rate_never_refills() {
        let mut tb = TokenBuckets::new(0, 1, 8, 8);
        tb.take(1u8, 0).unwrap();
        assert_eq!(
            tb.take(1, u64::MAX),
            Err(Limited::Empty {
                retry_after_ms: u64::MAX
            })
        );
    }
}
