//! Ground truth of lock waits, for the deadlock checks. A participant reports every change
//! of a waiter's wait (`WaitFor` as it leaves the participant: that is its state at that
//! instant); a wait also ends when the participant answers the Execute, rolls the waiter
//! back on an `Abort`, or crashes. From that the world keeps every wait's intervals, and
//! which of the current waits the live coordinator has heard exactly as they stand.
//!
//! Checks:
//! - a deadlock victim's cycle was formed by the participants' waits at one moment
//!   ([`WaitTruth::cycle_existed`]);
//! - "a cycle persisted past detection": right after the coordinator handled a `WaitFor`,
//!   there is no cycle through its waiter made only of waits that (a) stand at their
//!   participants now, (b) reached this incarnation of the coordinator exactly as they
//!   stand (no later or reordered report changed its view since), and (c) belong to
//!   transactions the coordinator has not ended. Such a cycle is one the coordinator had
//!   every report of and let stand: detection runs inside the step that handles a report,
//!   so its bound is that step. (A cycle whose reports were lost in the network or to a
//!   restart is not one: the lock-wait timeout ends it.)
//! - a `LockTimeout` leaves its participant only after the waiter waited there at least
//!   the lock-wait timeout.
//!
//! A wait that a participant ends with `LockTimeout` counts as standing until that answer
//! reaches the coordinator: a detection racing it may abort the timed-out transaction (its
//! client hears `Deadlock` instead of `LockTimeout`), which harms no other transaction.

use std::collections::{BTreeMap, BTreeSet};

use super::{NodeId, World};
use crate::message::ToCoordinator;
use crate::ops::AbortReason;
use crate::types::{Time, TxId};

/// One report's span: `waiter` waited for `holders` from `start` until `end` (None: still).
#[derive(Debug)]
struct Interval {
    start: Time,
    end: Option<Time>,
    holders: Vec<TxId>,
}

#[derive(Debug, Default)]
pub(super) struct WaitTruth {
    /// Every wait interval, per (participant index, waiter), oldest first.
    intervals: BTreeMap<(u16, TxId), Vec<Interval>>,
    /// Since when each current wait has lasted (across changes of holders or key).
    since: BTreeMap<(u16, TxId), Time>,
    /// The current waits the coordinator heard as they stand, with its incarnation then.
    heard: BTreeMap<(u16, TxId), u64>,
    /// Waits ended by `LockTimeout` whose answer has not reached the coordinator yet.
    timed_out: BTreeSet<(u16, TxId)>,
    /// Transactions the coordinator (this incarnation) ended or sent to prepare.
    coordinator_ended: BTreeSet<TxId>,
    /// Deadlock victims heard by clients.
    pub(super) deadlocks: u64,
}

fn sorted(holders: &[TxId], waiter: TxId) -> Vec<TxId> {
    let mut holders: Vec<TxId> = holders.iter().copied().filter(|&h| h != waiter).collect();
    holders.sort_unstable();
    holders.dedup();
    holders
}

impl WaitTruth {
    fn current(&self, at: (u16, TxId)) -> Option<&Interval> {
        self.intervals.get(&at).and_then(|list| list.last()).filter(|interval| interval.end.is_none())
    }

    fn end(&mut self, at: (u16, TxId), now: Time) {
        if let Some(interval) = self.intervals.get_mut(&at).and_then(|list| list.last_mut()) {
            interval.end.get_or_insert(now);
        }
        self.since.remove(&at);
        self.heard.remove(&at);
    }

    /// `waiter` now waits at `participant` for `holders` (empty: no longer).
    fn report(&mut self, participant: u16, waiter: TxId, holders: &[TxId], now: Time) {
        let at = (participant, waiter);
        let holders = sorted(holders, waiter);
        if holders.is_empty() {
            return self.end(at, now);
        }
        if let Some(interval) = self.intervals.get_mut(&at).and_then(|list| list.last_mut()) {
            interval.end.get_or_insert(now);
        }
        self.heard.remove(&at);
        self.since.entry(at).or_insert(now);
        self.intervals.entry(at).or_default().push(Interval { start: now, end: None, holders });
    }

    /// A participant crashed: its waits are gone with its state.
    fn crashed(&mut self, participant: u16, now: Time) {
        self.timed_out.retain(|(p, _)| *p != participant);
        let current: Vec<(u16, TxId)> = self
            .intervals
            .iter()
            .filter(|((p, _), list)| *p == participant && list.last().is_some_and(|i| i.end.is_none()))
            .map(|(at, _)| *at)
            .collect();
        for at in current {
            self.end(at, now);
        }
    }

    /// Whether the waits of `cycle` (each member waiting for the next, the last for the
    /// first) all stood at one moment up to `now`.
    pub(super) fn cycle_existed(&self, cycle: &[TxId], now: Time) -> bool {
        if cycle.len() < 2 {
            return false;
        }
        let edges: Vec<Vec<&Interval>> = (0..cycle.len())
            .map(|i| {
                let (waiter, holder) = (cycle[i], cycle[(i + 1) % cycle.len()]);
                self.intervals
                    .range((0, waiter)..=(u16::MAX, waiter))
                    .filter(|((_, w), _)| *w == waiter)
                    .flat_map(|(_, list)| list.iter())
                    .filter(|interval| interval.holders.contains(&holder))
                    .collect()
            })
            .collect();
        let stands_at = |interval: &Interval, t: Time| interval.start <= t && interval.end.is_none_or(|end| t < end);
        edges
            .iter()
            .flatten()
            .map(|interval| interval.start)
            .filter(|&t| t <= now)
            .any(|t| edges.iter().all(|intervals| intervals.iter().any(|interval| stands_at(interval, t))))
    }

    /// Whom `waiter` waits for in waits the coordinator `incarnation` heard as they stand.
    fn heard_successors(&self, waiter: TxId, incarnation: u64) -> Vec<TxId> {
        if self.coordinator_ended.contains(&waiter) {
            return Vec::new();
        }
        self.heard
            .iter()
            .filter(|((_, w), heard_by)| *w == waiter && **heard_by == incarnation)
            .filter_map(|(at, _)| self.current(*at))
            .flat_map(|interval| interval.holders.iter().copied())
            .collect()
    }

    /// A cycle through `start` of waits the coordinator heard and let stand, if any.
    fn heard_cycle(&self, start: TxId, incarnation: u64) -> Option<Vec<TxId>> {
        let mut path = vec![start];
        let mut pending = vec![self.heard_successors(start, incarnation).into_iter()];
        let mut visited = BTreeSet::from([start]);
        while let Some(next) = pending.last_mut().map(Iterator::next) {
            let Some(next) = next else {
                pending.pop();
                path.pop();
                continue;
            };
            if next == start {
                return Some(path);
            }
            if visited.insert(next) {
                path.push(next);
                pending.push(self.heard_successors(next, incarnation).into_iter());
            }
        }
        None
    }
}

impl World {
    /// What a participant sends, as it leaves: its waits, and the ends of its Executes.
    pub(super) fn observe_participant_output(&mut self, index: u16, message: &ToCoordinator) {
        let now = self.now;
        match message {
            ToCoordinator::WaitFor { waiter, .. } if self.waits.timed_out.contains(&(index, *waiter)) => {}
            ToCoordinator::WaitFor { waiter, holders, .. } => self.waits.report(index, *waiter, holders, now),
            ToCoordinator::Executed { txid, result } => {
                if let Err(AbortReason::LockTimeout { .. }) = result {
                    // The wait ends when the coordinator hears of it: until then, its
                    // detector may still count it (a lock timeout racing a detection
                    // aborts a transaction already rolled back, harming nobody).
                    self.check_lock_timeout(index, *txid);
                    self.waits.since.remove(&(index, *txid));
                    self.waits.timed_out.insert((index, *txid));
                    return;
                }
                self.waits.end((index, *txid), now);
            }
            _ => {}
        }
    }

    fn check_lock_timeout(&mut self, index: u16, txid: TxId) {
        let timeout = self.config.interactive.lock_wait_timeout;
        let message = match self.waits.since.get(&(index, txid)) {
            None => format!("p{} aborted {txid} with LockTimeout while it waited for no lock", index + 1),
            Some(&since) if self.now.since(since) < timeout => format!(
                "p{} aborted {txid} with LockTimeout after a wait of {:?}, under the timeout {timeout:?}",
                index + 1,
                self.now.since(since)
            ),
            Some(_) => return,
        };
        self.observed.violations.push(("lock-timeout", message));
    }

    /// A participant's `LockTimeout` reached the coordinator: that wait is over for all.
    pub(super) fn observe_lock_timeout_delivered(&mut self, index: u16, txid: TxId) {
        if self.waits.timed_out.remove(&(index, txid)) {
            self.waits.end((index, txid), self.now);
        }
    }

    /// An `Abort` reached a live participant: the waiter it names waits there no more.
    pub(super) fn observe_abort_delivered(&mut self, index: u16, txid: TxId) {
        self.waits.end((index, txid), self.now);
    }

    pub(super) fn observe_participant_crash(&mut self, node: NodeId) {
        if let NodeId::Participant(index) = node {
            self.waits.crashed(index, self.now);
        }
    }

    /// The coordinator ended `txid` (sent its Aborts) or took it to prepare.
    pub(super) fn observe_coordinator_ended(&mut self, txid: TxId) {
        self.waits.coordinator_ended.insert(txid);
    }

    pub(super) fn observe_coordinator_restart(&mut self) {
        self.waits.coordinator_ended.clear();
    }

    /// A `WaitFor` from participant `index` reached the live coordinator: it now knows that
    /// wait as it stands, or holds a stale view of it.
    pub(super) fn observe_wait_for_delivered(&mut self, index: u16, waiter: TxId, holders: &[TxId]) {
        let at = (index, waiter);
        let stands = self.waits.current(at).is_some_and(|interval| interval.holders == sorted(holders, waiter));
        if stands {
            self.waits.heard.insert(at, self.coordinator.incarnation);
        } else {
            self.waits.heard.remove(&at);
        }
    }

    /// Right after the coordinator handled `waiter`'s report: no cycle of waits it heard
    /// may stand through it.
    pub(super) fn check_no_cycle_persists(&mut self, waiter: TxId) {
        if self.coordinator.engine.is_none() {
            return;
        }
        if let Some(cycle) = self.waits.heard_cycle(waiter, self.coordinator.incarnation) {
            let message = format!(
                "a cycle persisted past detection: {cycle:?} (each waiting for the next at its participant, every wait reported to the coordinator, none ended)"
            );
            self.observed.violations.push(("deadlock", message));
        }
    }
}
