//! What the writer thread measured: each group's write + fdatasync time and its size in
//! records. Updated by the writer thread only (relaxed atomics: one group at a time, a
//! reader may see a group's count before its sum), read by anyone through [`WalStats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the write + sync buckets in microseconds (`+Inf` implied).
pub const SYNC_BOUNDS_US: [u64; 13] =
    [50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];
/// Upper bounds of the group size buckets in records (`+Inf` implied).
pub const GROUP_BOUNDS_RECORDS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

#[derive(Debug, Default)]
pub struct WalStats {
    sync_ns_sum: AtomicU64,
    sync_counts: [AtomicU64; SYNC_BOUNDS_US.len() + 1],
    group_records_sum: AtomicU64,
    group_counts: [AtomicU64; GROUP_BOUNDS_RECORDS.len() + 1],
}

/// A histogram read from [`WalStats`]: `(upper bound, count in this bucket)` pairs (not
/// cumulative; the last bound is `f64::INFINITY`), the sum and the count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl WalStats {
    /// A non-empty group of `records` was written and synced in `elapsed`.
    pub(crate) fn record_group(&self, records: u64, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sync_ns_sum.fetch_add(ns, Ordering::Relaxed);
        self.sync_counts[bucket(&SYNC_BOUNDS_US, ns / 1000)].fetch_add(1, Ordering::Relaxed);
        self.group_records_sum.fetch_add(records, Ordering::Relaxed);
        self.group_counts[bucket(&GROUP_BOUNDS_RECORDS, records)].fetch_add(1, Ordering::Relaxed);
    }

    /// Write + fdatasync time of each group, in seconds.
    pub fn sync_seconds(&self) -> Histogram {
        let sum = self.sync_ns_sum.load(Ordering::Relaxed) as f64 / 1e9;
        read(&SYNC_BOUNDS_US, &self.sync_counts, 1e6, sum)
    }

    /// Records per group.
    pub fn group_records(&self) -> Histogram {
        read(&GROUP_BOUNDS_RECORDS, &self.group_counts, 1.0, self.group_records_sum.load(Ordering::Relaxed) as f64)
    }
}

fn bucket(bounds: &[u64], value: u64) -> usize {
    bounds.iter().position(|&bound| value <= bound).unwrap_or(bounds.len())
}

/// `per_unit`: bound values per reported unit (1e6 µs per second), divided so that the
/// bounds print as written (50 µs is 5e-5 s exactly, not 4.9999e-5).
fn read(bounds: &[u64], counts: &[AtomicU64], per_unit: f64, sum: f64) -> Histogram {
    let buckets: Vec<(f64, u64)> = bounds
        .iter()
        .map(|&bound| bound as f64 / per_unit)
        .chain(std::iter::once(f64::INFINITY))
        .zip(counts.iter().map(|count| count.load(Ordering::Relaxed)))
        .collect();
    let count = buckets.iter().map(|(_, count)| count).sum();
    Histogram { buckets, sum, count }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_land_in_the_buckets_that_hold_them() {
        let stats = WalStats::default();
        stats.record_group(1, Duration::from_micros(50));
        stats.record_group(3, Duration::from_micros(700));
        stats.record_group(10_000, Duration::from_secs(3));
        let sync = stats.sync_seconds();
        assert_eq!(sync.count, 3);
        assert_eq!(sync.buckets[0], (50e-6, 1));
        assert_eq!(sync.buckets[4], (1e-3, 1));
        assert_eq!(sync.buckets[SYNC_BOUNDS_US.len()], (f64::INFINITY, 1));
        assert!((sync.sum - 3.00075).abs() < 1e-9);
        let groups = stats.group_records();
        assert_eq!((groups.buckets[0], groups.buckets[2]), ((1.0, 1), (4.0, 1)));
        assert_eq!(groups.buckets[GROUP_BOUNDS_RECORDS.len()], (f64::INFINITY, 1));
        assert_eq!(groups.sum, 10_004.0);
    }
}
