//! A live view of a running load for a harness that acts while it runs (the chaos run uses
//! it to measure recovery): when the load started, how many transactions have committed so
//! far, and the first commit after a given moment that matches a filter.
//!
//! Invariants: the load threads only report into it and never wait on it for long (one
//! uncontended lock per commit while a watch is armed and unmet, none otherwise); its memory
//! is constant whatever the run's length (one watch at a time).
//!
//! Must not: influence what the load sends or how it counts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::layout::BankLayout;
use crate::workload::Tx;

/// Which commits a watch waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitFilter {
    /// Any committed transaction.
    Any,
    /// A committed transaction that touched the participant at this index of the layout's
    /// participant list and was first sent at or after `sent_since`. Only such a transaction
    /// proves that a participant restarted at `sent_since` or later voted for it.
    Touching { participant: usize, sent_since: Instant },
}

/// The first commit a watch matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// When the load generator received it.
    pub at: Instant,
    /// [`LoadProbe::committed`] right after counting it.
    pub committed: u64,
}

#[derive(Debug)]
struct Watch {
    since: Instant,
    filter: CommitFilter,
    seen: Option<Seen>,
}

/// See the module documentation. Shared through an `Arc` between the load and a harness.
#[derive(Debug, Default)]
pub struct LoadProbe {
    started: OnceLock<Instant>,
    committed: AtomicU64,
    /// Fast path for the load threads: whether a watch is armed and still unmet.
    watching: AtomicBool,
    watch: Mutex<Option<Watch>>,
}

impl LoadProbe {
    pub fn new() -> LoadProbe {
        LoadProbe::default()
    }

    /// When the load started (the time every timeline second counts from), once it has.
    pub fn started(&self) -> Option<Instant> {
        self.started.get().copied()
    }

    /// Transactions committed so far (acknowledged to the load generator).
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Arms a watch, replacing any other: from now on the first commit seen at or after
    /// `since` that `filter` accepts is remembered (see [`seen`](Self::seen)).
    pub fn watch(&self, since: Instant, filter: CommitFilter) {
        *self.lock() = Some(Watch { since, filter, seen: None });
        self.watching.store(true, Ordering::Release);
    }

    /// The armed watch's first matching commit, if the load generator has seen it.
    pub fn seen(&self) -> Option<Seen> {
        self.lock().as_ref().and_then(|watch| watch.seen)
    }

    /// Disarms the watch.
    pub fn clear(&self) {
        self.watching.store(false, Ordering::Release);
        *self.lock() = None;
    }

    pub(crate) fn mark_started(&self, start: Instant) {
        let _ = self.started.set(start);
    }

    /// One committed transaction, seen by the load generator at `at`, first sent at `sent`.
    pub(crate) fn on_commit(&self, at: Instant, sent: Instant, tx: &Tx, layout: &BankLayout) {
        let committed = self.committed.fetch_add(1, Ordering::AcqRel) + 1;
        if !self.watching.load(Ordering::Acquire) {
            return;
        }
        let mut guard = self.lock();
        let Some(watch) = guard.as_mut() else { return };
        if watch.seen.is_some() || at < watch.since {
            return;
        }
        let matches = match watch.filter {
            CommitFilter::Any => true,
            CommitFilter::Touching { participant, sent_since } => {
                sent >= sent_since && touches(tx, layout, participant)
            }
        };
        if matches {
            watch.seen = Some(Seen { at, committed });
            self.watching.store(false, Ordering::Release);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Watch>> {
        // A panicking load thread cannot leave a watch half written: every write is one store.
        self.watch.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether `tx` has an operation on the participant at `participant` in the layout's list.
fn touches(tx: &Tx, layout: &BankLayout, participant: usize) -> bool {
    match tx {
        Tx::Transfer { from, to, .. } => {
            layout.participant_index(*from) == participant || layout.participant_index(*to) == participant
        }
        Tx::Audit { accounts } => accounts.iter().any(|&n| layout.participant_index(n) == participant),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use twophase_engine::ParticipantId;

    use super::*;

    fn layout() -> BankLayout {
        BankLayout {
            accounts: 9,
            participants: (1..=3).map(|i| (ParticipantId(i), format!("p{i}"))).collect(),
            initial_balance: 10,
        }
    }

    #[test]
    fn a_watch_remembers_the_first_matching_commit_only() {
        let l = layout();
        let probe = LoadProbe::new();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let p1_p2 = Tx::Transfer { from: 0, to: 1, amount: 1 };
        let p3 = Tx::Transfer { from: 2, to: 5, amount: 1 };
        probe.on_commit(at(1), t0, &p3, &l);
        assert_eq!(probe.seen(), None, "nothing armed");
        probe.watch(at(10), CommitFilter::Touching { participant: 2, sent_since: at(5) });
        probe.on_commit(at(11), at(6), &p1_p2, &l); // another participant
        probe.on_commit(at(12), at(4), &p3, &l); // sent before the restart
        probe.on_commit(at(9), at(6), &p3, &l); // seen before the watch's moment
        assert_eq!(probe.seen(), None);
        probe.on_commit(at(13), at(7), &p3, &l);
        probe.on_commit(at(14), at(8), &p3, &l);
        assert_eq!(probe.seen(), Some(Seen { at: at(13), committed: 5 }));
        assert_eq!(probe.committed(), 6);
        probe.watch(at(20), CommitFilter::Any);
        probe.on_commit(at(21), t0, &p1_p2, &l);
        assert_eq!(probe.seen(), Some(Seen { at: at(21), committed: 7 }));
        probe.clear();
        assert_eq!(probe.seen(), None);
    }
}
