//! Throttling of management: [`Throttle`], a token bucket per account for
//! key changes and management reads made by API keys (so one tenant cannot
//! monopolise the single writer), and per address for failed credentials.
//! Not the keys' own rate limits: those are `ratelimit` (the rules) and
//! `counters` (their counts). What every request passes first is `gate`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket per account (or address): `rate` per second, bursts of
/// `rate`.
pub struct Throttle {
    rate: f64,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before idle (full) ones are dropped.
const MAX_BUCKETS: usize = 10_000;

impl Throttle {
    pub fn new(per_second: u32) -> Throttle {
        Throttle {
            rate: f64::from(per_second.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `account`, or says how long until one is free.
    pub fn take(&self, account: &Arc<str>) -> Result<(), Duration> {
        self.take_at(account, Instant::now())
    }

    /// Whether `account` has a token now, without taking it.
    pub fn peek(&self, account: &Arc<str>) -> Result<(), Duration> {
        let now = Instant::now();
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match buckets.get(account) {
            None => Ok(()),
            Some(bucket) => {
                let bucket = refill(*bucket, self.rate, now);
                if bucket.tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
                }
            }
        }
    }

    fn take_at(&self, account: &Arc<str>, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(account) {
            let rate = self.rate;
            buckets.retain(|_, bucket| refill(*bucket, rate, now).tokens < rate);
        }
        let bucket = buckets.entry(account.clone()).or_insert(Bucket {
            tokens: self.rate,
            at: now,
        });
        *bucket = refill(*bucket, self.rate, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

fn refill(bucket: Bucket, rate: f64, now: Instant) -> Bucket {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    Bucket {
        tokens: (bucket.tokens + elapsed * rate).min(rate),
        at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_with_a_retry_hint() {
        let rate = Throttle::new(4);
        let acme: Arc<str> = "acme".into();
        let other: Arc<str> = "other".into();
        let start = Instant::now();
        for _ in 0..4 {
            rate.take_at(&acme, start).unwrap();
        }
        let wait = rate.take_at(&acme, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(250));
        // Another account is untouched.
        rate.take_at(&other, start).unwrap();
        // A quarter second later, one more.
        let later = start + Duration::from_millis(250);
        rate.take_at(&acme, later).unwrap();
        assert!(rate.take_at(&acme, later).is_err());
    }
}
