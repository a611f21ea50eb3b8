//! Per-source limit on handshake messages, applied while the device is under load to
//! messages that carry a valid cookie (MAC2): a source that proved its address can still
//! make the device do at most [`PER_SECOND`] Diffie-Hellman handshakes a second (plus a
//! burst of [`BURST`]), whatever its packet rate.
//!
//! The numbers and the keying are the Linux module's and wireguard-go's: a token bucket
//! per IPv4 address and per IPv6 /64 (one host usually owns a whole /64). Time is a
//! parameter: the caller reads the clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Handshake messages a second one source may have processed under load.
pub(crate) const PER_SECOND: u64 = 20;
/// How many it may send at once before the rate applies.
pub(crate) const BURST: u64 = 5;
/// The cost of one message in nanoseconds of credit.
const COST: u64 = 1_000_000_000 / PER_SECOND;
/// Most credit a source can hold.
const MAX_TOKENS: u64 = COST * BURST;
/// A source idle this long is forgotten (its bucket would be full anyway).
const IDLE: Duration = Duration::from_secs(1);
/// Most sources tracked at once: beyond this (after forgetting idle ones) a new source
/// is refused rather than letting a spoofed-address flood grow the table without bound.
/// 64 bytes an entry, so about 4 MiB at most.
pub(crate) const MAX_SOURCES: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4([u8; 4]),
    /// The /64 prefix.
    V6([u8; 8]),
}

impl Source {
    fn of(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Source::V6(prefix)
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    last: Instant,
    tokens: u64,
}

/// Token buckets by source.
#[derive(Debug, Default)]
pub(crate) struct SourceLimiter {
    buckets: HashMap<Source, Bucket>,
}

impl SourceLimiter {
    /// Whether one more handshake message from `ip` may be processed at `now`; spends
    /// its credit when so.
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let source = Source::of(ip);
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_SOURCES {
            self.forget_idle(now);
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            last: now,
            tokens: MAX_TOKENS,
        });
        let earned = now.saturating_duration_since(bucket.last).as_nanos();
        bucket.tokens = u64::try_from(earned)
            .unwrap_or(u64::MAX)
            .saturating_add(bucket.tokens)
            .min(MAX_TOKENS);
        bucket.last = now;
        if bucket.tokens >= COST {
            bucket.tokens -= COST;
            true
        } else {
            false
        }
    }

    /// Drops the sources not heard from for [`IDLE`]; the caller runs it about once a
    /// second.
    pub(crate) fn forget_idle(&mut self, now: Instant) {
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < IDLE);
    }

    /// Sources tracked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Allowed messages of `n` sent evenly over `over` from `from`.
    fn allowed(l: &mut SourceLimiter, from: &str, n: u32, over: Duration, t0: Instant) -> u32 {
        (0..n)
            .filter(|i| l.allow(ip(from), t0 + over * *i / n))
            .count() as u32
    }

    #[test]
    fn a_flooding_source_gets_its_burst_then_twenty_a_second() {
        let mut l = SourceLimiter::default();
        let t0 = Instant::now();
        // 10,000 a second for 10 s.
        let got = allowed(&mut l, "192.0.2.1", 100_000, Duration::from_secs(10), t0);
        let expected = (PER_SECOND * 10 + BURST) as u32;
        assert!(
            (expected - 2..=expected).contains(&got),
            "{got} allowed, expected about {expected}"
        );
    }

    #[test]
    fn sources_are_independent_and_v6_is_keyed_by_its_64() {
        let mut l = SourceLimiter::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert!(l.allow(ip("2001:db8:1:2::1"), t0));
        }
        // Same /64, another host: same bucket.
        assert!(!l.allow(ip("2001:db8:1:2::99"), t0));
        // Another /64, another v4, and the v4-mapped form of a v4 source.
        assert!(l.allow(ip("2001:db8:1:3::1"), t0));
        assert!(l.allow(ip("192.0.2.7"), t0));
        for _ in 1..BURST {
            assert!(l.allow(ip("::ffff:192.0.2.7"), t0));
        }
        assert!(!l.allow(ip("192.0.2.7"), t0));
        // Credit comes back at 20 a second.
        assert!(l.allow(ip("192.0.2.7"), t0 + Duration::from_millis(50)));
        assert!(!l.allow(ip("192.0.2.7"), t0 + Duration::from_millis(51)));
    }

    #[test]
    fn the_table_is_bounded_and_idle_sources_are_forgotten() {
        let mut l = SourceLimiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_SOURCES as u32 {
            assert!(l.allow(IpAddr::from(i.to_be_bytes()), t0));
        }
        // Full, nobody idle: a new source is refused, a known one still served.
        assert!(!l.allow(ip("203.0.113.1"), t0));
        assert!(l.allow(ip("0.0.0.1"), t0));
        // A second later everyone is idle: the new source gets in.
        assert!(l.allow(ip("203.0.113.1"), t0 + IDLE));
        assert_eq!(l.len(), 1);
        l.forget_idle(t0 + IDLE * 3);
        assert_eq!(l.len(), 0);
    }
}
