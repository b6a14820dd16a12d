//! Adaptive batch size: move the batch size toward the size whose batch takes
//! `target_batch_time`.
//!
//! Like pt-online-schema-change's chunk-time and GitLab's batch optimizer, it keeps a smoothed
//! estimate of throughput (keys per second, an exponentially weighted moving average) and sizes
//! the next batch as `rate × target`, within `[min, max]`. Growth is bounded per step (at most
//! ×`MAX_GROWTH`), so one lucky fast batch cannot make the next one huge; shrinking is not: a
//! batch that took much longer than the target (lock waits, a cold cache) resets the estimate to
//! what that batch measured, so the next batch is small at once.

use std::time::Duration;

/// Largest factor by which the size may grow from one batch to the next.
pub const MAX_GROWTH: f64 = 2.0;
/// Weight of the newest measurement in the moving average.
const ALPHA: f64 = 0.5;
/// A batch slower than this multiple of the target resets the estimate (shrink fast).
const SLOW: f64 = 1.5;

#[derive(Debug, Clone, PartialEq)]
pub struct Adaptive {
    pub target: Duration,
    pub min: i64,
    pub max: i64,
    /// Smoothed keys per second; None before the first measurement.
    rate: Option<f64>,
}

impl Adaptive {
    pub fn new(target: Duration, min: i64, max: i64) -> Adaptive {
        let min = min.max(1);
        Adaptive {
            target,
            min,
            max: max.max(min),
            rate: None,
        }
    }

    /// Record a batch of `keys` keys that took `took`.
    pub fn observe(&mut self, keys: i64, took: Duration) {
        if keys <= 0 {
            return;
        }
        let secs = took.as_secs_f64().max(1e-6);
        let measured = keys as f64 / secs;
        self.rate = Some(match self.rate {
            None => measured,
            Some(_) if secs > self.target.as_secs_f64() * SLOW => measured,
            Some(r) => ALPHA * measured + (1.0 - ALPHA) * r,
        });
    }

    /// The size of the next batch, given the size of the last one.
    pub fn next_size(&self, current: i64) -> i64 {
        let current = current.clamp(self.min, self.max);
        let Some(rate) = self.rate else {
            return current;
        };
        let ideal = rate * self.target.as_secs_f64();
        let capped = ideal.min(current as f64 * MAX_GROWTH);
        (capped.round() as i64).clamp(self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulate batches whose cost is `us_per_key` microseconds per key plus a fixed cost.
    fn run(a: &mut Adaptive, start: i64, batches: usize, us_per_key: f64) -> Vec<i64> {
        let mut size = start;
        let mut sizes = Vec::new();
        for _ in 0..batches {
            sizes.push(size);
            let took = Duration::from_secs_f64((size as f64 * us_per_key + 2000.0) / 1e6);
            a.observe(size, took);
            size = a.next_size(size);
        }
        sizes
    }

    #[test]
    fn settles_within_ten_batches_when_the_cost_is_stable() {
        let mut a = Adaptive::new(Duration::from_millis(100), 10, 1_000_000);
        // 10 us per key + 2 ms fixed: the ideal size is about 9,800 keys.
        let sizes = run(&mut a, 1000, 20, 10.0);
        let ideal = 9800.0;
        for s in &sizes[10..] {
            assert!((*s as f64 - ideal).abs() / ideal < 0.1, "{sizes:?}");
        }
        // Growth is bounded: never more than doubling per step.
        for w in sizes.windows(2) {
            assert!(w[1] as f64 <= w[0] as f64 * MAX_GROWTH + 1.0, "{sizes:?}");
        }
    }

    #[test]
    fn shrinks_at_once_when_batches_slow_down() {
        let mut a = Adaptive::new(Duration::from_millis(100), 10, 1_000_000);
        let sizes = run(&mut a, 1000, 15, 10.0);
        let settled = *sizes.last().unwrap();
        // Now every key costs 10x (lock waits, cold cache): the next size drops ~10x at once.
        a.observe(
            settled,
            Duration::from_secs_f64(settled as f64 * 100.0 / 1e6),
        );
        let next = a.next_size(settled);
        assert!(next < settled / 5, "{settled} -> {next}");
    }

    #[test]
    fn respects_bounds() {
        let mut a = Adaptive::new(Duration::from_millis(100), 500, 2000);
        let sizes = run(&mut a, 100, 30, 1.0);
        assert!(
            sizes.iter().skip(1).all(|s| (500..=2000).contains(s)),
            "{sizes:?}"
        );
        assert_eq!(*sizes.last().unwrap(), 2000);
        let mut a = Adaptive::new(Duration::from_millis(1), 500, 2000);
        let sizes = run(&mut a, 1000, 10, 1000.0);
        assert_eq!(*sizes.last().unwrap(), 500);
    }

    #[test]
    fn keeps_the_size_until_it_has_measured_something() {
        let mut a = Adaptive::new(Duration::from_millis(100), 1, 10);
        assert_eq!(a.next_size(7), 7);
        a.observe(0, Duration::from_millis(5));
        assert_eq!(a.next_size(7), 7);
    }
}
