//! Start times of sampled requests, matched with their answers to time a round.
//!
//! Only one request in [`SAMPLE_ONE_IN`] is timed (chosen by its own number, so both ends
//! agree without a lookup): the histograms stay representative and the engine thread
//! touches the sampler for a few transactions, not for every one.
//!
//! The sampler is direct-mapped: a fixed table of [`SLOTS`] entries, the slot chosen by the
//! key's number ([`SlotKey`]), no hashing and no allocation after start. Sampled numbers are
//! consecutive multiples of [`SAMPLE_ONE_IN`], so the requests in flight at once fill
//! consecutive slots. A start whose slot is still held by another request is not timed:
//! skipping the newcomer, rather than replacing the older start, keeps slow requests from
//! losing their timing more often than fast ones (which would pull the percentiles down). A
//! start older than [`FORGET_AFTER`] gives way: its answer is not coming. Keys from the wire
//! can aim at a slot; the worst they do is leave a few requests untimed.
//!
//! Times are the engine's [`Time`]: a hook passes the time its batch was read, or a
//! [`StepTime`] that reads the clock once for all the outputs released together.

use std::time::Duration;

use twophase_engine::{ClientId, ParticipantId, Seq, Time};

use crate::node::Clock;

/// Time one request in this many.
pub const SAMPLE_ONE_IN: u64 = 8;
/// Entries of a sampler's table (a power of two): 4,096 sampled requests in flight are
/// 32,768 requests, more than a coordinator lets wait at once.
const SLOTS: usize = 4096;
/// A start held this long is forgotten when its slot is wanted (its connection dropped).
const FORGET_AFTER: Duration = Duration::from_secs(30);

pub fn sampled(number: u64) -> bool {
    number.is_multiple_of(SAMPLE_ONE_IN)
}

/// A request's number for its slot: consecutive sampled requests get consecutive numbers.
pub trait SlotKey: Copy + Eq {
    fn slot_number(&self) -> u64;
}

impl SlotKey for u64 {
    #[inline]
    fn slot_number(&self) -> u64 {
        self / SAMPLE_ONE_IN
    }
}

/// Slots a transaction's rounds take side by side, one per participant (a transaction with
/// more participants overlaps the next one's slots: some of its rounds go untimed).
const ROUNDS_PER_TRANSACTION: u64 = 8;

/// A participant's rounds of one transaction: the participants of a transaction sit side by
/// side, [`ROUNDS_PER_TRANSACTION`] slots from the next transaction's.
impl SlotKey for (ParticipantId, u64) {
    #[inline]
    fn slot_number(&self) -> u64 {
        (self.1 / SAMPLE_ONE_IN).wrapping_mul(ROUNDS_PER_TRANSACTION).wrapping_add(u64::from(self.0.0))
    }
}

/// A client's requests: each client's run of consecutive numbers starts somewhere else (the
/// top bits of a multiplicative hash of its id).
impl SlotKey for (ClientId, Seq) {
    #[inline]
    fn slot_number(&self) -> u64 {
        (self.1 / SAMPLE_ONE_IN).wrapping_add(self.0.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32)
    }
}

#[derive(Debug)]
pub struct Sampler<K> {
    slots: Box<[Option<(K, Time)>]>,
}

impl<K: SlotKey> Default for Sampler<K> {
    fn default() -> Self {
        Sampler { slots: vec![None; SLOTS].into_boxed_slice() }
    }
}

impl<K: SlotKey> Sampler<K> {
    #[inline]
    fn slot(&mut self, key: &K) -> &mut Option<(K, Time)> {
        &mut self.slots[key.slot_number() as usize & (SLOTS - 1)]
    }

    /// Remembers when `key` started, if its slot is free (a repeat, e.g. a re-driven commit,
    /// keeps the first start).
    #[inline]
    pub fn start(&mut self, key: K, now: Time) {
        let slot = self.slot(&key);
        let free = match slot {
            None => true,
            Some((_, at)) => now.since(*at) >= FORGET_AFTER,
        };
        if free {
            *slot = Some((key, now));
        }
    }

    /// How long ago `key` started, if it was timed.
    #[inline]
    pub fn finish(&mut self, key: &K, now: Time) -> Option<Duration> {
        let slot = self.slot(key);
        match slot {
            Some((held, at)) if held == key => {
                let at = *at;
                *slot = None;
                Some(now.since(at))
            }
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|slot| slot.is_some()).count()
    }
}

/// The time of one engine step, read from the clock once ([`restart`](Self::restart)) and
/// shared by what the step does after: its publish check and the outputs it releases.
#[derive(Debug)]
pub struct StepTime {
    clock: Clock,
    now: Option<Time>,
}

impl StepTime {
    pub fn new(clock: Clock) -> StepTime {
        StepTime { clock, now: None }
    }

    /// A new step: reads the clock now, and hands out this time until the next one.
    #[inline]
    pub fn restart(&mut self) -> Time {
        *self.now.insert(self.clock.now())
    }

    #[inline]
    pub fn now(&mut self) -> Time {
        *self.now.get_or_insert_with(|| self.clock.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Time {
        Time::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn a_round_is_timed_from_its_first_start_and_only_once() {
        let mut sampler = Sampler::default();
        sampler.start(8u64, ms(0));
        sampler.start(8u64, ms(5));
        assert_eq!(sampler.finish(&8, ms(7)), Some(Duration::from_millis(7)));
        assert_eq!(sampler.finish(&8, ms(9)), None);
        assert_eq!(sampler.finish(&16, ms(9)), None);
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_the_older_start_until_it_is_stale() {
        let mut sampler = Sampler::default();
        for number in (0..SLOTS as u64).map(|n| n * SAMPLE_ONE_IN) {
            sampler.start(number, ms(0));
        }
        assert_eq!(sampler.len(), SLOTS, "a table's worth of requests in flight are all timed");
        let late = SLOTS as u64 * SAMPLE_ONE_IN;
        sampler.start(late, ms(1));
        assert_eq!(sampler.len(), SLOTS, "no growth");
        assert_eq!(sampler.finish(&late, ms(2)), None, "its slot was held: not timed");
        assert_eq!(sampler.finish(&0, ms(3)), Some(Duration::from_millis(3)), "the older start kept its timing");
        let forget = FORGET_AFTER.as_millis() as u64;
        sampler.start(late + SAMPLE_ONE_IN, ms(forget));
        assert_eq!(sampler.finish(&SAMPLE_ONE_IN, ms(forget)), None, "a stale start gave way");
        assert_eq!(sampler.finish(&(late + SAMPLE_ONE_IN), ms(forget + 1)), Some(Duration::from_millis(1)));
    }

    #[test]
    fn the_participants_of_a_transaction_and_the_clients_of_a_coordinator_do_not_collide() {
        let mut rounds = Sampler::default();
        let mut requests = Sampler::default();
        for txid in (0..512).map(|n: u64| n * SAMPLE_ONE_IN) {
            for participant in 0..8 {
                rounds.start((ParticipantId(participant), txid), ms(0));
            }
            for client in 1..=8 {
                requests.start((ClientId(client), txid), ms(0));
            }
        }
        assert_eq!(rounds.len(), SLOTS);
        // 8 clients' runs of 512 at hashed offsets overlap somewhat; most still find a slot.
        assert!(requests.len() > SLOTS / 2, "{} of {SLOTS} client requests timed", requests.len());
    }

    #[test]
    fn a_step_reads_the_clock_once() {
        let mut step = StepTime::new(Clock::new());
        let first = step.restart();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(step.now(), first);
        assert!(step.restart() > first, "a new step reads the clock again");
    }

    #[test]
    fn one_number_in_eight_is_sampled() {
        assert_eq!((0..64).filter(|&n| sampled(n)).count(), 8);
    }
}
