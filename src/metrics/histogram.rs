//! A latency histogram the engine thread owns outright: plain counters, no atomics and no
//! locks, copied into the published snapshot every [`super::PUBLISH_EVERY`].

use std::time::Duration;

/// Upper bounds of the buckets in seconds (a last `+Inf` bucket is implied): 50 µs to 10 s,
/// about three per decade, covering a lone transaction (~0.5 ms) to a prepare timeout.
pub const BUCKET_BOUNDS_SECONDS: [f64; 17] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

const BUCKETS: usize = BUCKET_BOUNDS_SECONDS.len() + 1;

/// The bounds in nanoseconds, so that an observation compares integers.
const BUCKET_BOUNDS_NS: [u64; BUCKET_BOUNDS_SECONDS.len()] = {
    let mut bounds = [0u64; BUCKET_BOUNDS_SECONDS.len()];
    let mut at = 0;
    while at < bounds.len() {
        bounds[at] = (BUCKET_BOUNDS_SECONDS[at] * 1e9) as u64;
        at += 1;
    }
    bounds
};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: [u64; BUCKETS],
    sum_ns: u64,
}

impl LatencyHistogram {
    pub fn observe(&mut self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_BOUNDS_NS.iter().position(|&bound| ns <= bound).unwrap_or(BUCKETS - 1);
        self.counts[bucket] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }

    /// `(upper bound, count in this bucket)` pairs as prometheus-client's encoder takes them
    /// (it accumulates them itself); `f64::MAX` stands for `+Inf`.
    pub fn buckets(&self) -> [(f64, u64); BUCKETS] {
        let mut buckets = [(f64::MAX, 0); BUCKETS];
        for (at, bucket) in buckets.iter_mut().enumerate() {
            let bound = BUCKET_BOUNDS_SECONDS.get(at).copied().unwrap_or(f64::MAX);
            *bucket = (bound, self.counts[at]);
        }
        buckets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(50)); // on the first bound
        histogram.observe(Duration::from_micros(51));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(60)); // past every bound
        let buckets = histogram.buckets();
        assert_eq!(buckets[0], (0.00005, 1));
        assert_eq!(buckets[1], (0.0001, 1));
        assert_eq!(buckets[6], (0.005, 1));
        assert_eq!(buckets[BUCKETS - 1], (f64::MAX, 1));
        assert_eq!(histogram.count(), 4);
        assert!((histogram.sum_seconds() - 60.003101).abs() < 1e-9);
    }
}
