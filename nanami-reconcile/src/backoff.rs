//! The one backoff of every Nanami retry loop: the reconciler's failed passes, an
//! agent following its manager, a store reopening its notification connection.
//!
//! Exponential with "equal jitter": after `n` failures in a row the wait is drawn
//! uniformly from the upper half of `initial · 2ⁿ⁻¹` (capped at `max`), so a fleet
//! that failed together does not retry together, and no wait is shorter than half
//! the nominal one. Pure: the randomness is the caller's ([`RngCore`]), there is no
//! clock, and the same draws give the same waits.

use std::time::Duration;

use rand_core::RngCore;

/// The wait after `failures` failures in a row (1 for the first): see the
/// [module](self) docs. `failures` 0 counts as 1.
pub fn jittered(
    initial: Duration,
    max: Duration,
    failures: u32,
    rng: &mut dyn RngCore,
) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    let base = initial.saturating_mul(1u32 << doublings).min(max);
    let half = base / 2;
    let span = u64::try_from((base - half).as_nanos()).unwrap_or(u64::MAX);
    let jitter = match span.checked_add(1) {
        Some(modulus) => rng.next_u64() % modulus,
        None => rng.next_u64(),
    };
    half + Duration::from_nanos(jitter)
}

/// A retry loop's backoff: counts failures in a row and draws the next wait.
///
/// ```
/// use std::time::Duration;
/// use nanami_reconcile::Backoff;
/// # struct Zero;
/// # impl rand_core::RngCore for Zero {
/// #     fn next_u32(&mut self) -> u32 { 0 }
/// #     fn next_u64(&mut self) -> u64 { 0 }
/// #     fn fill_bytes(&mut self, d: &mut [u8]) { d.fill(0) }
/// #     fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> { d.fill(0); Ok(()) }
/// # }
/// let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
/// let first = backoff.next_wait(&mut Zero);
/// assert_eq!(first, Duration::from_millis(100)); // the lower end of [100, 200] ms
/// assert_eq!(backoff.failures(), 1);
/// backoff.reset(); // after a success
/// assert_eq!(backoff.failures(), 0);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff whose first wait is at most `initial`, doubling up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: 0,
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// One more failure: the wait before the next try.
    pub fn next_wait(&mut self, rng: &mut dyn RngCore) -> Duration {
        self.failures = self.failures.saturating_add(1);
        jittered(self.initial, self.max, self.failures, rng)
    }

    /// A success: the next failure waits the shortest again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A small deterministic generator for the jitter: SplitMix64 (Steele, Lea and
/// Flood), one 64-bit state, every seed usable. For callers that are pure state
/// machines (seeded by their driver) and for tests; not for secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

impl RngCore for SplitMix64 {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand_core::impls::fill_bytes_via_next(self, dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter as randomness: every draw differs, runs repeat.
    struct Counter(u64);

    impl RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = self.next_u64() as u8;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    #[test]
    fn waits_double_within_the_upper_half_and_stop_at_the_ceiling() {
        let initial = Duration::from_millis(200);
        let max = Duration::from_secs(10);
        let mut backoff = Backoff::new(initial, max);
        let mut rng = Counter(7);
        for n in 1..=40u32 {
            let nominal = initial.saturating_mul(1 << (n - 1).min(31)).min(max);
            let wait = backoff.next_wait(&mut rng);
            assert!(
                wait >= nominal / 2 && wait <= nominal,
                "failure {n}: {wait:?} of {nominal:?}"
            );
        }
        assert_eq!(backoff.failures(), 40);
        backoff.reset();
        assert!(backoff.next_wait(&mut rng) <= initial);
    }

    #[test]
    fn waits_are_jittered_and_repeat_with_the_same_draws() {
        let mut a = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut b = a.clone();
        let (mut ra, mut rb) = (Counter(1), Counter(1));
        let waits: Vec<_> = (0..8).map(|_| a.next_wait(&mut ra)).collect();
        let again: Vec<_> = (0..8).map(|_| b.next_wait(&mut rb)).collect();
        assert_eq!(waits, again);
        // A fleet: the first wait of 100 agents is spread, not one value.
        let firsts: std::collections::BTreeSet<_> = (0..100u64)
            .map(|seed| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
                    .next_wait(&mut Counter(seed))
            })
            .collect();
        assert!(
            firsts.len() > 90,
            "{} distinct first waits of 100",
            firsts.len()
        );
    }

    #[test]
    fn huge_failure_counts_and_ceilings_do_not_overflow() {
        let mut rng = Counter(3);
        let wait = jittered(Duration::MAX, Duration::MAX, u32::MAX, &mut rng);
        assert!(wait >= Duration::MAX / 2);
        assert_eq!(
            jittered(Duration::ZERO, Duration::ZERO, 5, &mut rng),
            Duration::ZERO
        );
    }
}
