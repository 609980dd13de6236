//! The global wait-for graph of interactive transactions and its cycle search, kept at the
//! coordinator (pure: no clock, no I/O).
//!
//! Participants report each lock wait as `(participant, waiter) → holders`; a report
//! replaces the waiter's earlier one from that participant, and an empty one removes it. The
//! coordinator removes every edge of a waiter whose Execute was answered or that ended, so
//! the graph holds only waits in progress: a transaction that no longer waits has no
//! outgoing edge and a cycle can never pass through it. An edge *to* a finished transaction
//! is harmless for the same reason: the finished transaction has no outgoing edge, so
//! no cycle can be closed through it. A stale edge therefore never makes a false cycle.
//!
//! Bounds: at most `edges_max` edges (a report beyond that is refused, and the lock-wait
//! timeout ends that wait instead), at most [`LISTED_TXIDS_MAX`] holders per edge, and the
//! search visits at most `depth_max` transactions along a path and `visits_max` in all: a
//! cycle longer than that is left to the lock-wait timeout.

use std::collections::{BTreeMap, HashSet};

use crate::ops::LISTED_TXIDS_MAX;
use crate::types::{ParticipantId, TxId};

/// The graph's bounds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GraphLimits {
    pub edges_max: usize,
    /// Longest wait-for path searched (and so the longest cycle found).
    pub depth_max: usize,
    /// Transactions a search expands at most.
    pub visits_max: usize,
}

impl Default for GraphLimits {
    fn default() -> GraphLimits {
        GraphLimits { edges_max: 100_000, depth_max: LISTED_TXIDS_MAX, visits_max: 10_000 }
    }
}

/// The graph is at `edges_max`: the report was not recorded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GraphFull;

/// A cycle of lock waits and the transaction chosen to break it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Deadlock {
    /// The youngest member (highest txid).
    pub victim: TxId,
    /// The victim first, then the cycle in wait-for order (each waits for the next, the
    /// last for the victim); at most [`LISTED_TXIDS_MAX`] listed.
    pub cycle: Vec<TxId>,
}

#[derive(Debug)]
pub struct WaitForGraph {
    /// `(waiter, participant) → holders`: ordered by waiter so a waiter's edges are one
    /// range, and iteration is deterministic (the simulator replays runs).
    edges: BTreeMap<(TxId, ParticipantId), Vec<TxId>>,
    limits: GraphLimits,
}

impl WaitForGraph {
    pub fn new(limits: GraphLimits) -> WaitForGraph {
        assert!(limits.edges_max > 0 && limits.depth_max > 1, "a graph must hold a 2-cycle");
        WaitForGraph { edges: BTreeMap::new(), limits }
    }

    pub fn len(&self) -> usize {
        self.edges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// `waiter` now waits at `participant` for `holders` (replacing what that participant
    /// reported before; empty: it no longer waits there). A waiter never waits for itself.
    pub fn report(&mut self, participant: ParticipantId, waiter: TxId, holders: &[TxId]) -> Result<(), GraphFull> {
        let mut holders: Vec<TxId> = holders.iter().copied().filter(|&holder| holder != waiter).collect();
        holders.truncate(LISTED_TXIDS_MAX);
        if holders.is_empty() {
            self.edges.remove(&(waiter, participant));
            return Ok(());
        }
        if self.edges.len() >= self.limits.edges_max && !self.edges.contains_key(&(waiter, participant)) {
            return Err(GraphFull);
        }
        self.edges.insert((waiter, participant), holders);
        Ok(())
    }

    /// `waiter` no longer waits at `participant` (its Execute there was answered).
    pub fn answered(&mut self, participant: ParticipantId, waiter: TxId) {
        self.edges.remove(&(waiter, participant));
    }

    /// `txid` no longer waits anywhere (it ended, or none of its Executes is running).
    pub fn remove_waiter(&mut self, txid: TxId) {
        let keys: Vec<(TxId, ParticipantId)> = self.waits_of(txid).map(|(key, _)| *key).collect();
        for key in keys {
            self.edges.remove(&key);
        }
    }

    fn waits_of(&self, txid: TxId) -> impl Iterator<Item = (&(TxId, ParticipantId), &Vec<TxId>)> {
        self.edges.range((txid, ParticipantId(0))..=(txid, ParticipantId(u16::MAX)))
    }

    /// Whom `txid` waits for, anywhere, each once.
    fn successors(&self, txid: TxId) -> Vec<TxId> {
        let mut next: Vec<TxId> = self.waits_of(txid).flat_map(|(_, holders)| holders.iter().copied()).collect();
        next.sort_unstable();
        next.dedup();
        next
    }

    /// A cycle of waits through `start` (the waiter whose report just arrived: any cycle
    /// not through it was already there, and found, before), with its victim. Iterative
    /// depth-first search within the limits.
    pub fn find_cycle(&self, start: TxId) -> Option<Deadlock> {
        let mut path = vec![start];
        let mut pending = vec![self.successors(start).into_iter()];
        let mut visited: HashSet<TxId> = HashSet::from([start]);
        while let Some(next) = pending.last_mut().map(Iterator::next) {
            let Some(next) = next else {
                pending.pop();
                path.pop();
                continue;
            };
            if next == start {
                return Some(Deadlock::from_path(path));
            }
            let room = path.len() < self.limits.depth_max && visited.len() < self.limits.visits_max;
            if room && visited.insert(next) {
                path.push(next);
                pending.push(self.successors(next).into_iter());
            }
        }
        None
    }
}

impl Deadlock {
    /// `path` in wait-for order, its last member waiting for its first.
    fn from_path(mut path: Vec<TxId>) -> Deadlock {
        let (at, &victim) = path.iter().enumerate().max_by_key(|(_, txid)| **txid).expect("a cycle has members");
        path.rotate_left(at);
        path.truncate(LISTED_TXIDS_MAX);
        Deadlock { victim, cycle: path }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: [ParticipantId; 4] = [ParticipantId(1), ParticipantId(2), ParticipantId(3), ParticipantId(4)];

    fn t(n: u64) -> TxId {
        TxId(n)
    }

    fn graph() -> WaitForGraph {
        WaitForGraph::new(GraphLimits::default())
    }

    #[test]
    fn two_transactions_waiting_on_each_other_are_a_cycle_and_the_younger_is_the_victim() {
        let mut g = graph();
        g.report(P[0], t(1), &[t(2)]).unwrap();
        assert_eq!(g.find_cycle(t(1)), None, "one wait is no cycle");
        g.report(P[1], t(2), &[t(1)]).unwrap();
        let found = g.find_cycle(t(2)).expect("T1 waits for T2 waits for T1");
        assert_eq!(found, Deadlock { victim: t(2), cycle: vec![t(2), t(1)] });
        // Found from either end, the victim is the same.
        assert_eq!(g.find_cycle(t(1)).unwrap().victim, t(2));
    }

    #[test]
    fn a_four_cycle_across_four_participants_is_listed_in_wait_for_order_from_the_victim() {
        let mut g = graph();
        // 3 waits for 9 on p1, 9 for 5 on p2, 5 for 7 on p3; 7 for 3 on p4 closes it.
        g.report(P[0], t(3), &[t(9)]).unwrap();
        g.report(P[1], t(9), &[t(5)]).unwrap();
        g.report(P[2], t(5), &[t(7)]).unwrap();
        assert_eq!(g.find_cycle(t(5)), None);
        g.report(P[3], t(7), &[t(3)]).unwrap();
        let found = g.find_cycle(t(7)).expect("a 4-cycle");
        assert_eq!(found.victim, t(9));
        assert_eq!(found.cycle, vec![t(9), t(5), t(7), t(3)]);
    }

    #[test]
    fn a_long_chain_that_is_no_cycle_is_never_a_deadlock() {
        let mut g = graph();
        for n in 1..200 {
            g.report(P[(n % 4) as usize], t(n), &[t(n + 1)]).unwrap();
        }
        // Extra fan-out and a diamond that rejoins without coming back.
        g.report(P[0], t(5), &[t(6), t(150)]).unwrap();
        for n in 1..200 {
            assert_eq!(g.find_cycle(t(n)), None, "from t{n}");
        }
    }

    #[test]
    fn stale_edges_never_make_a_false_cycle() {
        let mut g = graph();
        g.report(P[0], t(1), &[t(2)]).unwrap();
        // T2's wait at p2 ended (its Execute was answered): no cycle through it.
        g.report(P[1], t(2), &[t(1)]).unwrap();
        g.answered(P[1], t(2));
        assert_eq!(g.find_cycle(t(1)), None);
        // An empty report also ends a wait.
        g.report(P[1], t(2), &[t(1)]).unwrap();
        g.report(P[1], t(2), &[]).unwrap();
        assert_eq!(g.find_cycle(t(1)), None);
        // A finished holder: T3 ended, so the edge to it leads nowhere even if its id
        // appears as a holder again.
        g.report(P[2], t(3), &[t(1)]).unwrap();
        g.remove_waiter(t(3));
        g.report(P[3], t(1), &[t(3)]).unwrap();
        assert_eq!(g.find_cycle(t(1)), None);
        assert_eq!(g.len(), 2, "t1's waits at p1 and p4");
        g.remove_waiter(t(1));
        assert!(g.is_empty());
    }

    #[test]
    fn a_report_replaces_the_earlier_one_from_the_same_participant_only() {
        let mut g = graph();
        g.report(P[0], t(1), &[t(2)]).unwrap();
        g.report(P[1], t(1), &[t(3)]).unwrap();
        g.report(P[0], t(1), &[t(4)]).unwrap();
        g.report(P[0], t(4), &[t(1)]).unwrap();
        assert_eq!(g.find_cycle(t(4)).unwrap().cycle, vec![t(4), t(1)]);
        g.report(P[0], t(2), &[t(1)]).unwrap();
        assert_eq!(g.find_cycle(t(2)), None, "t1 no longer waits for t2 at p1");
        g.report(P[0], t(3), &[t(1)]).unwrap();
        // t3 → t1 → t3 (t1 waits for t3 at p2): the cycle found through t3.
        assert_eq!(g.find_cycle(t(3)).unwrap().cycle, vec![t(3), t(1)]);
    }

    #[test]
    fn the_victim_is_the_youngest_wherever_the_search_starts() {
        let mut g = graph();
        let members = [t(40), t(7), t(99), t(12), t(55)];
        for (i, &waiter) in members.iter().enumerate() {
            g.report(P[i % 4], waiter, &[members[(i + 1) % members.len()]]).unwrap();
        }
        for &start in &members {
            let found = g.find_cycle(start).expect("a 5-cycle");
            assert_eq!(found.victim, t(99));
            assert_eq!(found.cycle, vec![t(99), t(12), t(55), t(40), t(7)]);
        }
    }

    #[test]
    fn self_waits_are_ignored_and_the_graph_is_bounded() {
        let mut g = WaitForGraph::new(GraphLimits { edges_max: 2, ..GraphLimits::default() });
        g.report(P[0], t(1), &[t(1)]).unwrap();
        assert!(g.is_empty(), "a transaction never waits for itself");
        g.report(P[0], t(1), &[t(2)]).unwrap();
        g.report(P[0], t(2), &[t(3)]).unwrap();
        assert_eq!(g.report(P[0], t(3), &[t(1)]), Err(GraphFull));
        assert_eq!(g.find_cycle(t(3)), None, "the refused edge is not there");
        g.report(P[0], t(2), &[t(1)]).unwrap(); // Replacing an edge needs no room.
        assert!(g.find_cycle(t(2)).is_some());
    }

    #[test]
    fn a_cycle_longer_than_the_search_depth_is_left_to_the_lock_timeout() {
        let mut g = WaitForGraph::new(GraphLimits { depth_max: 3, ..GraphLimits::default() });
        for n in 1..=4 {
            g.report(P[0], t(n), &[t(n % 4 + 1)]).unwrap();
        }
        assert_eq!(g.find_cycle(t(1)), None);
        g.report(P[1], t(3), &[t(1)]).unwrap(); // 1 → 2 → 3 → 1 fits.
        assert_eq!(g.find_cycle(t(1)).unwrap().cycle, vec![t(3), t(1), t(2)]);
    }
}
