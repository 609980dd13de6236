//! What a step of a state machine asks its driver to do, and the durability gate that holds
//! outputs back until the log records they depend on are durable.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use std::time::Duration;

use crate::types::{Lsn, Time, TxId};

/// An output that must not leave the process before `after` is durable
/// (`Lsn::NONE`: depends on nothing).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Gated<T> {
    pub after: Lsn,
    pub item: T,
}

/// The actions of one or more steps, in order. The driver appends `appends` to the log (in
/// LSN order, LSNs are consecutive), then passes `outputs` through a [`DurabilityGate`].
#[derive(Debug)]
pub struct Effects<R, O> {
    pub appends: Vec<(Lsn, R)>,
    pub outputs: Vec<Gated<O>>,
}

impl<R, O> Default for Effects<R, O> {
    fn default() -> Self {
        Effects { appends: Vec::new(), outputs: Vec::new() }
    }
}

impl<R, O> Effects<R, O> {
    pub fn is_empty(&self) -> bool {
        self.appends.is_empty() && self.outputs.is_empty()
    }

    pub fn clear(&mut self) {
        self.appends.clear();
        self.outputs.clear();
    }

    pub(crate) fn send(&mut self, after: Lsn, item: O) {
        self.outputs.push(Gated { after, item });
    }
}

/// Assigns consecutive LSNs to a state machine's appends.
#[derive(Debug)]
pub(crate) struct LogCursor {
    next: Lsn,
}

impl LogCursor {
    /// `last` is the highest LSN recovered from the log (`Lsn::NONE` for an empty log).
    pub(crate) fn after(last: Lsn) -> LogCursor {
        LogCursor { next: last.next() }
    }

    pub(crate) fn append<R, O>(&mut self, fx: &mut Effects<R, O>, record: R) -> Lsn {
        let lsn = self.next;
        self.next = lsn.next();
        fx.appends.push((lsn, record));
        lsn
    }

    /// The last LSN handed out: once it is durable, everything appended so far is.
    pub(crate) fn last(&self) -> Lsn {
        Lsn(self.next.0 - 1)
    }
}

/// Holds gated outputs until the log's durable LSN passes theirs. An output whose record is
/// already durable leaves at once; held outputs leave in LSN order (in push order among
/// equal LSNs).
#[derive(Debug)]
pub struct DurabilityGate<T> {
    durable: Lsn,
    /// Sorted by `after`.
    held: VecDeque<Gated<T>>,
}

impl<T> DurabilityGate<T> {
    pub fn new(durable: Lsn) -> DurabilityGate<T> {
        DurabilityGate { durable, held: VecDeque::new() }
    }

    pub fn durable(&self) -> Lsn {
        self.durable
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Releases `output` into `released` now if it may leave, else holds it.
    pub fn push(&mut self, output: Gated<T>, released: &mut Vec<T>) {
        if output.after <= self.durable {
            released.push(output.item);
            return;
        }
        // Outputs arrive almost always in LSN order; an older LSN (a re-sent commit) is
        // inserted after every output with an LSN not above its own.
        let at = match self.held.back() {
            Some(back) if back.after > output.after => self.held.partition_point(|held| held.after <= output.after),
            _ => self.held.len(),
        };
        self.held.insert(at, output);
    }

    /// The log is durable up to `durable`: release what now may leave.
    pub fn advance(&mut self, durable: Lsn, released: &mut Vec<T>) {
        assert!(durable >= self.durable, "durable LSN went backwards: {durable:?} < {:?}", self.durable);
        self.durable = durable;
        while let Some(front) = self.held.front() {
            if front.after > durable {
                break;
            }
            released.push(self.held.pop_front().expect("front exists").item);
        }
    }
}

/// Deadlines keyed by transaction, earliest first. Entries are never removed early: a
/// state machine checks, when one fires, whether it still matters.
///
/// Almost every deadline is `now + d` for one of a few constant delays `d` (the prepare
/// timeout, the first re-drive, the first inquiry), so each delay gets a FIFO lane: with a
/// non-decreasing `now` a lane stays sorted, and scheduling and popping are O(1) however
/// many transactions are in flight. Delays beyond `MAX_LANES` distinct ones (long backoff
/// chains) share a binary heap.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    lanes: Vec<Lane>,
    overflow: BinaryHeap<Reverse<(Time, TxId)>>,
}

#[derive(Debug)]
struct Lane {
    delay: Duration,
    queue: VecDeque<(Time, TxId)>,
}

/// Distinct delays with a lane of their own.
const MAX_LANES: usize = 16;

/// Where the earliest deadline is.
#[derive(Clone, Copy)]
enum Earliest {
    Lane(usize),
    Overflow,
}

impl Timers {
    /// Fires `txid` at `now + delay`.
    pub(crate) fn schedule(&mut self, now: Time, delay: Duration, txid: TxId) {
        let at = now + delay;
        let lane = match self.lanes.iter().position(|lane| lane.delay == delay) {
            Some(index) => index,
            None if self.lanes.len() < MAX_LANES => {
                self.lanes.push(Lane { delay, queue: VecDeque::new() });
                self.lanes.len() - 1
            }
            None => return self.overflow.push(Reverse((at, txid))),
        };
        let queue = &mut self.lanes[lane].queue;
        // A clock that stepped back would unsort the lane; firing a little late is harmless.
        let at = queue.back().map_or(at, |&(last, _)| at.max(last));
        queue.push_back((at, txid));
    }

    fn earliest(&self) -> Option<(Time, Earliest)> {
        let lanes = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, lane)| lane.queue.front().map(|&(at, _)| (at, Earliest::Lane(i))));
        let overflow = self.overflow.peek().map(|Reverse((at, _))| (*at, Earliest::Overflow));
        lanes.chain(overflow).min_by_key(|(at, _)| *at)
    }

    pub(crate) fn next_deadline(&self) -> Option<Time> {
        self.earliest().map(|(at, _)| at)
    }

    /// Pops one entry due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Time) -> Option<TxId> {
        let (at, place) = self.earliest()?;
        if at > now {
            return None;
        }
        let popped = match place {
            Earliest::Lane(i) => self.lanes[i].queue.pop_front().map(|(_, txid)| txid),
            Earliest::Overflow => self.overflow.pop().map(|Reverse((_, txid))| txid),
        };
        debug_assert!(popped.is_some(), "the earliest entry exists");
        popped
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lanes.iter().map(|lane| lane.queue.len()).sum::<usize>() + self.overflow.len()
    }
}

/// One step of a resend's backoff (a coordinator's re-drive or query, a participant's
/// inquiry): the next attempt is due `backoff` from `now` (returned, to schedule its timer),
/// and the step after waits twice as long, at most `max`.
pub(crate) fn step_backoff(now: Time, next: &mut Time, backoff: &mut Duration, max: Duration) -> Duration {
    let delay = *backoff;
    *next = now + delay;
    *backoff = (delay * 2).min(max);
    delay
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_holds_until_durable_and_releases_in_lsn_order() {
        let mut gate = DurabilityGate::new(Lsn(0));
        let mut out = Vec::new();
        gate.push(Gated { after: Lsn(2), item: "two" }, &mut out);
        gate.push(Gated { after: Lsn::NONE, item: "free" }, &mut out);
        gate.push(Gated { after: Lsn(3), item: "three" }, &mut out);
        gate.push(Gated { after: Lsn(1), item: "one" }, &mut out);
        gate.push(Gated { after: Lsn(2), item: "two-b" }, &mut out);
        assert_eq!(out, vec!["free"], "nothing gated leaves early, nothing free waits");
        gate.advance(Lsn(1), &mut out);
        assert_eq!(out, vec!["free", "one"]);
        gate.advance(Lsn(2), &mut out);
        assert_eq!(out, vec!["free", "one", "two", "two-b"]);
        gate.push(Gated { after: Lsn(2), item: "late" }, &mut out);
        assert_eq!(out.last(), Some(&"late"), "already durable: released at once");
        gate.advance(Lsn(9), &mut out);
        assert_eq!(out.last(), Some(&"three"));
        assert_eq!(gate.held(), 0);
    }

    #[test]
    #[should_panic(expected = "went backwards")]
    fn gate_refuses_a_durable_lsn_going_backwards() {
        let mut gate: DurabilityGate<()> = DurabilityGate::new(Lsn(5));
        gate.advance(Lsn(4), &mut Vec::new());
    }

    #[test]
    fn timers_fire_in_deadline_order() {
        let mut timers = Timers::default();
        timers.schedule(Time(0), Duration::from_nanos(30), TxId(3));
        timers.schedule(Time(0), Duration::from_nanos(10), TxId(1));
        timers.schedule(Time(5), Duration::from_nanos(30), TxId(4));
        assert_eq!(timers.next_deadline(), Some(Time(10)));
        assert_eq!(timers.pop_due(Time(5)), None);
        assert_eq!(timers.pop_due(Time(30)), Some(TxId(1)));
        assert_eq!(timers.pop_due(Time(30)), Some(TxId(3)));
        assert_eq!(timers.pop_due(Time(30)), None);
        assert_eq!(timers.pop_due(Time(35)), Some(TxId(4)));
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn many_distinct_delays_overflow_into_the_heap_in_order() {
        let mut timers = Timers::default();
        for delay in (1..=40u64).rev() {
            timers.schedule(Time(100), Duration::from_nanos(delay), TxId(delay));
        }
        // The clock stepped back: 130 would unsort delay 40's lane, so it fires at 140.
        timers.schedule(Time(90), Duration::from_nanos(40), TxId(1000));
        let mut fired = Vec::new();
        while let Some(txid) = timers.pop_due(Time(1000)) {
            fired.push(txid.0);
        }
        let mut expected: Vec<u64> = (1..=40).collect();
        expected.push(1000);
        assert_eq!(fired, expected);
    }
}
