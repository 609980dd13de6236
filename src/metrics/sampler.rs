//! Start times of sampled requests, matched with their answers to time a round.
//!
//! Only one request in [`SAMPLE_ONE_IN`] is timed (chosen by its own number, so both ends
//! agree without a lookup): the histograms stay representative and the engine thread reads
//! the clock for a few transactions, not for every one. The map is bounded: a request whose
//! answer never comes (its connection dropped) is forgotten when the map fills.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use twophase_engine::hash::SeededState;

/// Time one request in this many.
pub const SAMPLE_ONE_IN: u64 = 8;
/// Requests timed at once at most, per round.
const IN_FLIGHT_MAX: usize = 4096;
/// When the map is full, starts older than this are dropped (their answer is not coming).
const FORGET_AFTER: Duration = Duration::from_secs(30);

pub fn sampled(number: u64) -> bool {
    number.is_multiple_of(SAMPLE_ONE_IN)
}

#[derive(Debug)]
pub struct Sampler<K> {
    /// Foldhash with a random seed: fast on the engine thread, and the keys (client ids,
    /// sequence numbers) cannot be chosen to collide.
    started: HashMap<K, Instant, SeededState>,
}

impl<K: Hash + Eq> Default for Sampler<K> {
    fn default() -> Self {
        Sampler { started: HashMap::with_hasher(SeededState::new(rand::random())) }
    }
}

impl<K: Hash + Eq> Sampler<K> {
    /// Remembers when `key` started (a repeat, e.g. a re-driven commit, keeps the first).
    pub fn start(&mut self, key: K, now: Instant) {
        if self.started.len() >= IN_FLIGHT_MAX {
            self.started.retain(|_, at| now.duration_since(*at) < FORGET_AFTER);
            if self.started.len() >= IN_FLIGHT_MAX {
                return;
            }
        }
        self.started.entry(key).or_insert(now);
    }

    /// How long ago `key` started, if it was timed.
    pub fn finish(&mut self, key: &K, now: Instant) -> Option<Duration> {
        self.started.remove(key).map(|at| now.duration_since(at))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.started.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_is_timed_from_its_first_start_and_only_once() {
        let mut sampler = Sampler::default();
        let t0 = Instant::now();
        sampler.start(1u64, t0);
        sampler.start(1u64, t0 + Duration::from_millis(5));
        assert_eq!(sampler.finish(&1, t0 + Duration::from_millis(7)), Some(Duration::from_millis(7)));
        assert_eq!(sampler.finish(&1, t0 + Duration::from_millis(9)), None);
        assert_eq!(sampler.finish(&2, t0), None);
    }

    #[test]
    fn the_map_stays_bounded_and_forgets_unanswered_requests() {
        let mut sampler = Sampler::default();
        let t0 = Instant::now();
        for key in 0..IN_FLIGHT_MAX as u64 {
            sampler.start(key, t0);
        }
        sampler.start(u64::MAX, t0 + Duration::from_secs(1));
        assert_eq!(sampler.len(), IN_FLIGHT_MAX, "full of recent starts: the new one is not timed");
        sampler.start(u64::MAX, t0 + FORGET_AFTER);
        assert_eq!(sampler.len(), 1, "the stale starts were dropped");
    }

    #[test]
    fn one_number_in_eight_is_sampled() {
        assert_eq!((0..64).filter(|&n| sampled(n)).count(), 8);
    }
}
