//! A participant: prepares, commits and aborts its part of each transaction over a
//! resource manager ([`ResourceManager`]; the built-in key-value store is [`KvResource`]).
//! This module is the protocol side (votes, prepare durability, stale checks, in-doubt
//! resolution, inquiries, queries, recovery); the resource manager holds the data and locks.
//!
//! Invariants:
//! - `Yes` leaves only after the `Prepared` record is durable (over a resource manager whose
//!   prepares are durable themselves, `ResourceManager::PREPARE_DURABLE`, only after the
//!   latest `Epoch` record); the ack of a commit only after the `Committed` record is
//!   durable (both gated on their LSN).
//! - After voting Yes the participant never decides alone: it keeps the locks and asks the
//!   coordinator until it hears the decision, across restarts.
//! - Prepares are accepted only with a transaction id above every one seen before, so a
//!   duplicated or delayed prepare can never run a transaction a second time. Ids rise
//!   across coordinator epochs, so the same check refuses a deposed coordinator.
//! - One-shot prepares never wait for a lock, except that a prepare finding its key held by
//!   an older prepared transaction (not in doubt) waits for that decision (`parked`,
//!   bounded): the coordinator's early `Committed` lets a client's next transaction overtake
//!   the previous one's `Commit`. Waits point only to older transactions: no deadlock.
//! - Interactive transactions (`Execute`, then `PrepareExecuted`) are open here until
//!   prepared or rolled back: bounded (`max_active`), their lock waits reported to the
//!   coordinator (`WaitFor`, which detects deadlocks) and bounded in time
//!   (`lock_wait_timeout`). An open transaction never voted, so presumed abort lets this
//!   participant roll it back alone: on a lock-wait timeout, when idle past `open_idle_max`,
//!   on a new coordinator epoch (the older epoch's), and when the coordinator is lost.
//! - Optimistic transactions never wait and never report a wait: their reads are validated
//!   (and their locks taken, without waiting) by the resource manager at `PrepareExecuted`;
//!   a failed validation is an ordinary `No(Conflict)` vote.
//! - A restarted coordinator's `Query` is answered only once the new epoch is durable here.
//! - Defence in depth against forged or corrupt frames: a message whose txid does not agree
//!   with its frame's epoch, or whose epoch or txid jumps absurdly far ahead of what was seen
//!   ([`EPOCH_AHEAD_MAX`], [`TXID_COUNTER_AHEAD_MAX`]), is refused with an error before it
//!   changes or persists anything, so one such frame cannot fence out the real coordinator.

mod kv;
mod locks;
mod open;
mod optimistic;
mod parked;
mod resource;
mod snapshot;
mod store;
mod waits;

use std::sync::Arc;
use std::time::Duration;

pub use kv::{Evaluation, KvStore, decode_int, encode_int};
pub use locks::{LockMode, LockTable};
pub use open::WAIT_HOLDERS_MAX;
use parked::Parked;
pub use resource::{Execution, Prepare, PrepareResult, ResourceManager, RmEvent};
pub use snapshot::{KvImage, ParticipantSnapshot};
pub use store::{KvLimits, KvPrepared, KvResource};

use crate::effects::{Effects, LogCursor, Timers, step_backoff};
use crate::message::{ToCoordinator, ToParticipant};
use crate::ops::{AbortReason, Isolation, Key, Limits, LocalOp, Read, Vote};
use crate::record::{PartRecord, Write};
use crate::txtable::TxTable;
use crate::types::{Epoch, Lsn, ParticipantId, Time, TxId};

pub type PartEffects = Effects<PartRecord, ToCoordinator>;

/// A coordinator's epoch may be at most this far above the highest this participant has seen
/// (each coordinator start adds one: 65,536 restarts while this participant was away).
pub const EPOCH_AHEAD_MAX: u32 = 1 << 16;
/// A prepare's txid counter may be at most this far above the highest counter seen in its
/// epoch (from 0 in a new epoch): about 21 days of transactions at 150,000 a second that
/// all went elsewhere. Txid counters have 40 bits, so a forged maximum cannot be reached in
/// one frame, and a new coordinator epoch starts counters afresh anyway.
pub const TXID_COUNTER_AHEAD_MAX: u64 = 1 << 38;

/// A message refused before it touched anything: what was wrong with it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bugs that tests plant to prove the simulator's checker catches them.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParticipantBugs {
    /// Vote Yes before the Prepared record is durable.
    pub vote_before_durable: bool,
    /// Abort unilaterally when the decision is late, after having voted Yes.
    pub abort_alone_after_yes: bool,
    /// Release the locks as soon as the transaction is prepared.
    pub release_locks_at_prepare: bool,
    /// Release the read (shared) locks when voting Yes, keeping only the write locks: the
    /// read-only optimisation applied where it is not safe (several participants).
    pub release_read_locks_at_vote: bool,
}

#[derive(Clone, Debug)]
pub struct ParticipantConfig {
    pub id: ParticipantId,
    /// After voting Yes, wait this long for the decision before asking; doubles up to `inquiry_max`.
    pub inquiry_after: Duration,
    pub inquiry_max: Duration,
    /// Bound on prepared transactions; beyond it prepares are refused (vote No).
    pub max_prepared: usize,
    /// Bound on prepares waiting for an older prepared transaction's decision; beyond it a
    /// conflicting prepare is refused at once (vote No, conflict).
    pub max_parked: usize,
    /// Bound on open interactive transactions; an `Execute` that would open one more fails
    /// with `ParticipantBusy`.
    pub max_active: usize,
    /// An interactive execute waiting for a lock longer than this fails with `LockTimeout`
    /// (and its transaction is rolled back here).
    pub lock_wait_timeout: Duration,
    /// An open transaction without an execute for this long is rolled back here: a safety
    /// net above the coordinator's largest idle timeout (60 s).
    pub open_idle_max: Duration,
    /// The built-in store's bounds on waiting requests and open transactions' sizes.
    pub kv_limits: KvLimits,
    pub limits: Limits,
    pub hash_seed: u64,
    #[cfg(test)]
    pub bugs: ParticipantBugs,
}

impl ParticipantConfig {
    pub fn new(id: ParticipantId) -> ParticipantConfig {
        ParticipantConfig {
            id,
            inquiry_after: Duration::from_secs(1),
            inquiry_max: Duration::from_secs(5),
            max_prepared: 200_000,
            max_parked: 65_536,
            max_active: 10_000,
            lock_wait_timeout: Duration::from_secs(1),
            open_idle_max: Duration::from_secs(70),
            kv_limits: KvLimits::default(),
            limits: Limits::default(),
            hash_seed: 0,
            #[cfg(test)]
            bugs: ParticipantBugs::default(),
        }
    }
}

#[derive(Debug)]
struct Prepared<P> {
    /// What the resource manager holds for it (write set, locks).
    held: P,
    /// The Prepared record's LSN: the Yes vote is gated on it.
    lsn: Lsn,
    /// The reads reported with the vote, to answer a duplicated prepare; None after a restart.
    reads: Option<Vec<Read>>,
    /// Asked the coordinator at least once, or recovered after a restart.
    in_doubt: bool,
    next_inquiry: Time,
    backoff: Duration,
}

/// Counters for tests, metrics and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParticipantStats {
    pub prepared: u64,
    pub committed: u64,
    pub aborted: u64,
    pub voted_no: u64,
    pub read_only: u64,
    /// Prepares that waited for an older prepared transaction's decision.
    pub waited: u64,
    pub inquiries: u64,
    /// Interactive executes answered (done or failed).
    pub executes: u64,
    /// Interactive executes that had to wait for a lock (each wait counted once).
    pub lock_waits: u64,
    /// Interactive executes that waited longer than `lock_wait_timeout`.
    pub lock_timeouts: u64,
    /// Open transactions rolled back (by the coordinator's abort or on this participant's own).
    pub rolled_back: u64,
}

/// An open interactive transaction, as the protocol sees it (its data and locks are the
/// resource manager's).
#[derive(Debug)]
struct OpenTx {
    last_active: Time,
    /// When its idle timer fires next (exactly one is set while it is open).
    idle_check: Time,
    /// The lock its execute waits for, and since when.
    waiting: Option<(Time, Key)>,
}

/// Transactions that were open here and ended (prepared or rolled back), most recent
/// `max` kept: a late or reordered `Execute` for one must not open it afresh, without its
/// earlier writes.
#[derive(Debug)]
struct RecentlyEnded {
    order: std::collections::VecDeque<TxId>,
    set: std::collections::HashSet<TxId, crate::hash::SeededState>,
    max: usize,
}

impl RecentlyEnded {
    fn new(max: usize, hash_seed: u64) -> RecentlyEnded {
        let set = std::collections::HashSet::with_hasher(crate::hash::SeededState::new(hash_seed));
        RecentlyEnded { order: std::collections::VecDeque::new(), set, max }
    }

    fn insert(&mut self, txid: TxId) {
        if self.max == 0 || !self.set.insert(txid) {
            return;
        }
        self.order.push_back(txid);
        if self.order.len() > self.max {
            let oldest = self.order.pop_front().expect("not empty");
            self.set.remove(&oldest);
        }
    }

    fn contains(&self, txid: TxId) -> bool {
        self.set.contains(&txid)
    }
}

#[derive(Debug)]
pub struct Participant<R: ResourceManager = KvResource> {
    config: ParticipantConfig,
    rm: R,
    prepared: TxTable<Prepared<R::Prepared>>,
    /// Prepares the resource manager runs asynchronously (answered `Pending`); bounded by
    /// `max_prepared` together with the prepared ones.
    preparing: TxTable<()>,
    /// Open interactive transactions (not yet prepared), bounded by `max_active`.
    open: TxTable<OpenTx>,
    ended: RecentlyEnded,
    parked: Parked,
    max_epoch: Epoch,
    /// The latest `Epoch` record appended since recovery (`Lsn::NONE`: none, everything
    /// recovered is durable): with `R::PREPARE_DURABLE` a Yes waits for it alone.
    epoch_lsn: Lsn,
    max_txid_seen: TxId,
    log: LogCursor,
    timers: Timers,
    stats: ParticipantStats,
}

impl Participant<KvResource> {
    /// Rebuilds a participant over the built-in key-value store from its latest snapshot
    /// (if any) and the log; see [`recover_with`](Self::recover_with).
    pub fn recover(
        config: ParticipantConfig,
        snapshot: Option<ParticipantSnapshot>,
        log: impl IntoIterator<Item = (Lsn, PartRecord)>,
        now: Time,
        fx: &mut PartEffects,
    ) -> Participant<KvResource> {
        let rm = KvResource::new(config.id, config.hash_seed, config.kv_limits);
        Participant::recover_with(rm, config, snapshot, log, now, fx)
    }

    pub fn kv(&self) -> &KvStore {
        self.rm.kv()
    }

    pub fn locked_keys(&self) -> usize {
        self.rm.locked_keys()
    }
}

impl<R: ResourceManager> Participant<R> {
    /// Rebuilds the participant over `rm` (empty) from its latest snapshot (if any) and the
    /// log (oldest first; records the snapshot covers are skipped; both empty for a new
    /// node). Prepared transactions without an outcome are in doubt: their locks are
    /// re-taken and the coordinator is asked at once (the inquiries are in `fx`).
    pub fn recover_with(
        rm: R,
        config: ParticipantConfig,
        snapshot: Option<ParticipantSnapshot>,
        log: impl IntoIterator<Item = (Lsn, PartRecord)>,
        now: Time,
        fx: &mut PartEffects,
    ) -> Participant<R> {
        let seed = config.hash_seed;
        let mut participant = Participant {
            rm,
            prepared: TxTable::new(seed),
            preparing: TxTable::new(seed),
            open: TxTable::new(seed),
            ended: RecentlyEnded::new(config.max_active, seed),
            parked: Parked::new(config.max_parked, seed),
            max_epoch: Epoch(0),
            epoch_lsn: Lsn::NONE,
            max_txid_seen: TxId(0),
            log: LogCursor::after(Lsn::NONE),
            timers: Timers::default(),
            stats: ParticipantStats::default(),
            config,
        };
        let covered = snapshot.as_ref().map_or(Lsn::NONE, |snapshot| snapshot.lsn);
        let mut last_lsn = covered;
        if let Some(snapshot) = snapshot {
            participant.restore(snapshot);
        }
        for (lsn, record) in log {
            if lsn <= covered {
                continue; // Covered by the snapshot.
            }
            assert!(
                last_lsn == Lsn::NONE || lsn == last_lsn.next(),
                "log LSNs not consecutive: {last_lsn:?} then {lsn:?}"
            );
            last_lsn = lsn;
            participant.replay(lsn, record);
        }
        participant.log = LogCursor::after(last_lsn);
        let mut in_doubt: Vec<TxId> = participant.prepared.keys().collect();
        in_doubt.sort();
        for txid in in_doubt {
            participant.relock_in_doubt(now, txid);
        }
        participant.on_tick(now, fx);
        participant
    }

    fn restore(&mut self, snapshot: ParticipantSnapshot) {
        self.max_epoch = snapshot.max_epoch;
        self.max_txid_seen = snapshot.max_txid_seen;
        self.rm.restore(&snapshot.kv);
        for (txid, writes, read_keys) in snapshot.prepared {
            self.replay(Lsn::NONE, PartRecord::Prepared { txid, writes, read_keys });
        }
    }

    /// The whole state as of the last record appended. The driver must keep it until that
    /// LSN is durable before it relies on it (writes it out, truncates the log).
    pub fn snapshot(&self) -> ParticipantSnapshot {
        let kv = self.rm.image();
        let mut prepared: Vec<(TxId, Arc<[Write]>, Vec<Key>)> =
            self.prepared.iter().map(|(txid, p)| (txid, R::writes(&p.held), R::read_keys(&p.held))).collect();
        prepared.sort_unstable_by_key(|(txid, _, _)| *txid);
        ParticipantSnapshot {
            lsn: self.log.last(),
            max_epoch: self.max_epoch,
            max_txid_seen: self.max_txid_seen,
            kv,
            prepared,
        }
    }

    fn replay(&mut self, lsn: Lsn, record: PartRecord) {
        match record {
            PartRecord::Epoch { epoch } => self.max_epoch = self.max_epoch.max(epoch),
            PartRecord::Prepared { txid, writes, read_keys } => {
                self.max_txid_seen = self.max_txid_seen.max(txid);
                self.max_epoch = self.max_epoch.max(txid.epoch());
                let prepared = Prepared {
                    held: self.rm.recovered(txid, writes, read_keys),
                    lsn,
                    reads: None,
                    in_doubt: true,
                    next_inquiry: Time::ZERO,
                    backoff: self.config.inquiry_after,
                };
                self.prepared.insert(txid, prepared);
            }
            PartRecord::Committed { txid } => {
                if let Some(prepared) = self.prepared.remove(txid) {
                    self.rm.commit(txid, prepared.held);
                }
            }
            PartRecord::Aborted { txid } => {
                if let Some(prepared) = self.prepared.remove(txid) {
                    self.rm.abort(txid, prepared.held);
                }
            }
        }
    }

    fn relock_in_doubt(&mut self, now: Time, txid: TxId) {
        let prepared = self.prepared.get_mut(txid).expect("in-doubt transaction");
        self.rm.relock(txid, &mut prepared.held);
        prepared.next_inquiry = now;
        self.timers.schedule(now, Duration::ZERO, txid);
    }

    pub fn id(&self) -> ParticipantId {
        self.config.id
    }

    pub fn stats(&self) -> ParticipantStats {
        self.stats
    }

    pub fn resource_manager(&self) -> &R {
        &self.rm
    }

    /// Prepared transactions awaiting a decision.
    pub fn prepared(&self) -> usize {
        self.prepared.len()
    }

    /// Prepares waiting for an older prepared transaction's decision.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    pub fn in_doubt(&self) -> usize {
        self.prepared.values().filter(|p| p.in_doubt).count()
    }

    /// The LSN a snapshot taken now would cover: the last record appended.
    pub fn snapshot_lsn(&self) -> Lsn {
        self.log.last()
    }

    pub fn max_epoch(&self) -> Epoch {
        self.max_epoch
    }

    pub fn next_deadline(&self) -> Option<Time> {
        self.timers.next_deadline()
    }

    fn send(&self, fx: &mut PartEffects, after: Lsn, message: ToCoordinator) {
        fx.send(after, message);
    }

    /// Checks a whole frame from the coordinator of `epoch` before any of it is run: the
    /// driver refuses the frame (and closes its connection) on an error.
    pub fn check_frame(&self, epoch: Epoch, messages: &[ToParticipant]) -> Result<(), Refused> {
        messages.iter().try_for_each(|message| self.check_message(epoch, message))
    }

    /// A txid must agree with its frame's epoch (a prepare is of that epoch; anything else
    /// of that epoch or an older one, whose transactions a new coordinator finishes), and
    /// neither may jump absurdly far ahead of what was seen.
    fn check_message(&self, epoch: Epoch, message: &ToParticipant) -> Result<(), Refused> {
        if epoch.0 > self.max_epoch.0.saturating_add(EPOCH_AHEAD_MAX) {
            return Err(Refused(format!(
                "coordinator epoch {} is more than {EPOCH_AHEAD_MAX} above the highest seen ({})",
                epoch.0, self.max_epoch.0
            )));
        }
        let txid = message.txid();
        // A coordinator executes and prepares only transactions of its own epoch.
        let is_prepare = matches!(
            message,
            ToParticipant::Prepare { .. } | ToParticipant::Execute { .. } | ToParticipant::PrepareExecuted { .. }
        );
        if (is_prepare && txid.epoch() != epoch) || txid.epoch() > epoch {
            return Err(Refused(format!("{message:?} names {txid}, which does not belong to epoch {}", epoch.0)));
        }
        if is_prepare {
            let seen = if txid.epoch() == self.max_txid_seen.epoch() { self.max_txid_seen.counter() } else { 0 };
            if txid.counter() > seen.saturating_add(TXID_COUNTER_AHEAD_MAX) {
                return Err(Refused(format!(
                    "prepare of {txid} is more than {TXID_COUNTER_AHEAD_MAX} transactions ahead of the highest seen ({})",
                    self.max_txid_seen
                )));
            }
        }
        Ok(())
    }

    /// A message from the coordinator of `epoch`; refused (nothing changed, nothing logged)
    /// if it fails [`check_frame`](Self::check_frame)'s rules.
    pub fn on_message(
        &mut self,
        now: Time,
        epoch: Epoch,
        message: ToParticipant,
        fx: &mut PartEffects,
    ) -> Result<(), Refused> {
        self.check_message(epoch, &message)?;
        self.run_message(now, epoch, message, fx);
        Ok(())
    }

    fn run_message(&mut self, now: Time, epoch: Epoch, message: ToParticipant, fx: &mut PartEffects) {
        if epoch < self.max_epoch {
            // A deposed coordinator: refuse. Its successor re-drives whatever it decided.
            let stale = AbortReason::Stale { participant: self.config.id };
            match message {
                ToParticipant::Prepare { txid, .. } | ToParticipant::PrepareExecuted { txid, .. } => {
                    self.vote_no(txid, stale, fx)
                }
                ToParticipant::Execute { txid, .. } => self.executed(fx, txid, Err(stale)),
                _ => {}
            }
            return;
        }
        if epoch > self.max_epoch {
            self.on_new_epoch(now, epoch, fx);
        }
        match message {
            ToParticipant::Prepare { txid, ops, sole } => self.on_prepare(now, txid, ops, sole, fx),
            ToParticipant::Commit { txid } => self.on_commit(now, txid, fx),
            ToParticipant::Abort { txid } => self.on_abort(now, txid, fx),
            ToParticipant::Query { txid } => self.on_query(txid, fx),
            ToParticipant::Execute { txid, isolation, ops } => self.on_execute(now, txid, isolation, ops, fx),
            ToParticipant::PrepareExecuted { txid, sole } => self.on_prepare_executed(now, txid, sole, fx),
        }
        self.report_events(now, fx);
    }

    /// An interactive execute: opens `txid` here on its first, runs `ops` inside it.
    /// Answered `Executed` now, or once its locks are granted (see `report_events`).
    fn on_execute(&mut self, now: Time, txid: TxId, isolation: Isolation, ops: Vec<LocalOp>, fx: &mut PartEffects) {
        let participant = self.config.id;
        if self.prepared.get(txid).is_some() || self.is_preparing(txid) || self.ended.contains(txid) {
            return self.executed(fx, txid, Err(AbortReason::NotActive));
        }
        let open_count = self.open.len();
        match self.open.get_mut(txid) {
            Some(open) if open.waiting.is_some() => {
                // The coordinator sends one execute at a time: a broken peer. End it here.
                self.roll_back(txid);
                let detail = "an execute arrived while the previous one waits".to_string();
                return self.executed(fx, txid, Err(AbortReason::Invalid { detail }));
            }
            Some(open) => open.last_active = now,
            None if open_count >= self.config.max_active => {
                return self.executed(fx, txid, Err(AbortReason::ParticipantBusy { participant }));
            }
            None => {
                let idle_check = now + self.config.open_idle_max;
                self.open.insert(txid, OpenTx { last_active: now, idle_check, waiting: None });
                self.timers.schedule(now, self.config.open_idle_max, txid);
            }
        }
        match self.rm.execute(txid, isolation, ops) {
            Execution::Done { reads } => self.executed(fx, txid, Ok(reads)),
            Execution::Waiting => {}
            Execution::Failed { reason } => {
                self.forget_open(txid);
                self.executed(fx, txid, Err(reason));
            }
        }
    }

    fn executed(&mut self, fx: &mut PartEffects, txid: TxId, result: Result<Vec<Read>, AbortReason>) {
        self.stats.executes += 1;
        self.send(fx, Lsn::NONE, ToCoordinator::Executed { txid, result });
    }

    /// Prepares what the executes of `txid` did here, and votes as for a one-shot prepare.
    fn on_prepare_executed(&mut self, now: Time, txid: TxId, sole: bool, fx: &mut PartEffects) {
        let participant = self.config.id;
        if self.repeat_vote(txid, fx) || self.is_preparing(txid) {
            return;
        }
        let Some(open) = self.open.get(txid) else {
            // Rolled back here already (or never executed here): it cannot commit.
            return self.vote_no(txid, AbortReason::NotActive, fx);
        };
        if open.waiting.is_some() {
            self.roll_back(txid);
            let detail = "prepare of a transaction whose execute waits".to_string();
            return self.vote_no(txid, AbortReason::Invalid { detail }, fx);
        }
        if self.prepared.len() + self.preparing.len() >= self.config.max_prepared {
            self.roll_back(txid);
            return self.vote_no(txid, AbortReason::ParticipantBusy { participant }, fx);
        }
        self.forget_open(txid);
        match self.rm.prepare_open(txid, sole) {
            Some(result) => self.finish_prepare(now, txid, result, fx),
            None => {
                self.preparing.insert(txid, ());
            }
        }
    }

    /// Rolls the open transaction `txid` back here (nothing to log: it never voted).
    fn roll_back(&mut self, txid: TxId) {
        self.rm.rollback(txid);
        self.forget_open(txid);
        self.stats.rolled_back += 1;
    }

    fn forget_open(&mut self, txid: TxId) {
        self.open.remove(txid);
        self.ended.insert(txid);
    }

    /// Reports what happened in the resource manager: lock waits (to the coordinator's
    /// deadlock detector, and timed here) and waiting executes that finished.
    #[inline]
    fn report_events(&mut self, now: Time, fx: &mut PartEffects) {
        if self.rm.has_events() {
            self.report_pending_events(now, fx);
        }
    }

    fn report_pending_events(&mut self, now: Time, fx: &mut PartEffects) {
        while let Some(event) = self.rm.pop_event() {
            match event {
                RmEvent::Waits { waiter, key, holders } => {
                    self.note_wait(now, waiter, &key, holders.is_empty());
                    self.send(fx, Lsn::NONE, ToCoordinator::WaitFor { waiter, key, holders });
                }
                RmEvent::Executed { txid, result } => {
                    if result.is_err() {
                        self.forget_open(txid);
                    }
                    self.executed(fx, txid, result);
                }
            }
        }
    }

    /// A wait started (timed from now), moved to another key, or ended.
    fn note_wait(&mut self, now: Time, waiter: TxId, key: &Key, ended: bool) {
        let Some(open) = self.open.get_mut(waiter) else { return };
        match (&mut open.waiting, ended) {
            (waiting, true) => *waiting = None,
            (Some((_, waited_key)), false) => waited_key.clone_from(key),
            (waiting @ None, false) => {
                *waiting = Some((now, key.clone()));
                self.stats.lock_waits += 1;
                self.timers.schedule(now, self.config.lock_wait_timeout, waiter);
            }
        }
    }

    /// A timer of the open transaction `txid` fired: its lock wait or its idleness may be
    /// over the limit. Otherwise the timer is set again for its next deadline.
    fn check_open(&mut self, now: Time, txid: TxId, fx: &mut PartEffects) {
        let Some(open) = self.open.get(txid) else { return };
        let participant = self.config.id;
        let idle_at = open.last_active + self.config.open_idle_max;
        // Lock-wait timers come and go; exactly one idle timer is set while it is open.
        let idle_timer = now >= open.idle_check;
        match &open.waiting {
            Some((since, key)) if *since + self.config.lock_wait_timeout <= now => {
                let key = key.clone();
                self.roll_back(txid);
                self.stats.lock_timeouts += 1;
                return self.executed(fx, txid, Err(AbortReason::LockTimeout { participant, key }));
            }
            None if idle_timer && idle_at <= now => return self.roll_back(txid),
            _ => {}
        }
        if idle_timer {
            // Waiting is not idling: look again a whole idle period later.
            let next = if idle_at > now { idle_at } else { now + self.config.open_idle_max };
            self.open.get_mut(txid).expect("open").idle_check = next;
            self.timers.schedule(now, Duration::from_nanos(next.as_nanos() - now.as_nanos()), txid);
        }
    }

    /// The serving coordinator's connection is lost (a driver with connections calls this):
    /// every open transaction is rolled back here. None of them voted, so presumed abort
    /// allows it, and no lock stays held for a coordinator that may never come back.
    pub fn on_coordinator_lost(&mut self, now: Time, fx: &mut PartEffects) {
        let mut open: Vec<TxId> = self.open.keys().collect();
        open.sort_unstable();
        for txid in open {
            self.roll_back(txid);
        }
        self.report_events(now, fx);
    }

    /// Open interactive transactions here.
    pub fn open_transactions(&self) -> usize {
        self.open.len()
    }

    /// A restarted coordinator asks whether `txid` (staged by an earlier incarnation) is
    /// prepared here. The answer is gated on everything logged so far, which includes the
    /// new epoch (logged by `on_message` before this): once the coordinator counts it, this
    /// participant refuses the older epoch's messages even after a restart, so a No can never
    /// turn into a prepare, nor a Yes into that epoch's abort.
    fn on_query(&mut self, txid: TxId, fx: &mut PartEffects) {
        let gate = self.log.last();
        let vote = match self.prepared.get(txid) {
            Some(prepared) => Vote::Yes { reads: prepared.reads.clone().unwrap_or_default() },
            None => {
                self.stats.voted_no += 1;
                Vote::No { reason: AbortReason::Stale { participant: self.config.id } }
            }
        };
        self.send(fx, gate, ToCoordinator::Vote { txid, vote });
    }

    /// A new coordinator incarnation: transactions prepared under older ones will not be
    /// decided unless asked about, so ask now.
    fn on_new_epoch(&mut self, now: Time, epoch: Epoch, fx: &mut PartEffects) {
        self.max_epoch = epoch;
        self.epoch_lsn = self.log.append(fx, PartRecord::Epoch { epoch });
        for txid in self.parked.remove_older_than(epoch) {
            self.vote_no(txid, AbortReason::Stale { participant: self.config.id }, fx);
        }
        // Open transactions of a deposed coordinator will never be prepared: release them.
        let mut deposed: Vec<TxId> = self.open.keys().filter(|txid| txid.epoch() < epoch).collect();
        deposed.sort_unstable();
        for txid in deposed {
            self.roll_back(txid);
        }
        let older: Vec<TxId> = self.prepared.keys().filter(|txid| txid.epoch() < epoch).collect();
        for txid in older {
            let prepared = self.prepared.get_mut(txid).expect("listed");
            prepared.next_inquiry = now;
            prepared.backoff = self.config.inquiry_after;
            self.timers.schedule(now, Duration::ZERO, txid);
        }
    }

    /// A coordinator of `epoch` connected (a driver with connections calls this at the
    /// handshake). Everything in doubt, and everything prepared under an older epoch (whose
    /// coordinator restarted and will not decide it unasked), is asked about now instead of
    /// at the next backoff step, so locks held in doubt are released as soon as the
    /// coordinator is back. Asking early is always safe: an undecided transaction's
    /// coordinator ignores the question.
    pub fn on_coordinator_connected(&mut self, now: Time, epoch: Epoch, fx: &mut PartEffects) {
        let mut due: Vec<TxId> = self
            .prepared
            .iter()
            .filter(|(txid, prepared)| prepared.in_doubt || txid.epoch() < epoch)
            .map(|(txid, _)| txid)
            .collect();
        due.sort_unstable(); // Deterministic order of the questions.
        for txid in due {
            let prepared = self.prepared.get_mut(txid).expect("listed");
            prepared.next_inquiry = now;
            prepared.backoff = self.config.inquiry_after;
            self.timers.schedule(now, Duration::ZERO, txid);
        }
        self.on_tick(now, fx);
    }

    fn vote_no(&mut self, txid: TxId, reason: AbortReason, fx: &mut PartEffects) {
        self.stats.voted_no += 1;
        self.send(fx, Lsn::NONE, ToCoordinator::Vote { txid, vote: Vote::No { reason } });
    }

    fn on_prepare(&mut self, now: Time, txid: TxId, ops: Vec<LocalOp>, sole: bool, fx: &mut PartEffects) {
        if self.parked.contains(txid) || self.is_preparing(txid) {
            return; // A duplicate of a prepare that waits or runs: it votes once done.
        }
        if self.repeat_vote(txid, fx) {
            return;
        }
        let participant = self.config.id;
        if txid <= self.max_txid_seen {
            return self.vote_no(txid, AbortReason::Stale { participant }, fx);
        }
        self.max_txid_seen = txid;
        self.run_prepare(now, txid, ops, sole, fx);
    }

    /// If `txid` is prepared here, a prepare of it is a duplicate: repeat the vote. After a
    /// restart the reads are gone, so stay silent; the coordinator either decided already
    /// or times out and aborts.
    fn repeat_vote(&mut self, txid: TxId, fx: &mut PartEffects) -> bool {
        let Some(prepared) = self.prepared.get(txid) else { return false };
        if let Some(reads) = &prepared.reads {
            let (lsn, reads) = (prepared.lsn, reads.clone());
            self.send(fx, self.vote_gate(lsn), ToCoordinator::Vote { txid, vote: Vote::Yes { reads } });
        }
        true
    }

    /// Prepares an admitted transaction in the resource manager and votes, or parks it
    /// behind an older prepared transaction holding one of its keys (see [`parked`]).
    /// `sole`: the transaction's only participant, so a read-only vote may release at once.
    fn run_prepare(&mut self, now: Time, txid: TxId, ops: Vec<LocalOp>, sole: bool, fx: &mut PartEffects) {
        let participant = self.config.id;
        if self.prepared.len() + self.preparing.len() >= self.config.max_prepared {
            return self.vote_no(txid, AbortReason::ParticipantBusy { participant }, fx);
        }
        match self.rm.prepare(txid, ops, sole) {
            Prepare::Done(result) => self.finish_prepare(now, txid, result, fx),
            Prepare::Blocked { holder, ops, .. } if self.may_wait_for(txid, holder) => {
                self.stats.waited += 1;
                self.parked.park(holder, txid, ops, sole);
            }
            Prepare::Blocked { holder, key, .. } => self.vote_no(txid, self.conflict_reason(holder, key), fx),
            Prepare::Pending => {
                self.preparing.insert(txid, ());
            }
        }
    }

    /// A prepare the resource manager ran asynchronously (it answered `Prepare::Pending`)
    /// finished: log and vote as for a synchronous one. A result for a transaction aborted
    /// meanwhile is rolled back in the resource manager and not voted.
    pub fn on_prepare_done(&mut self, now: Time, txid: TxId, result: PrepareResult<R::Prepared>, fx: &mut PartEffects) {
        if self.preparing.remove(txid).is_some() {
            self.finish_prepare(now, txid, result, fx);
        } else if let PrepareResult::Yes { prepared, .. } = result {
            self.rm.abort(txid, prepared);
        }
        self.report_events(now, fx);
    }

    /// Logs and votes on a prepare's result.
    fn finish_prepare(&mut self, now: Time, txid: TxId, result: PrepareResult<R::Prepared>, fx: &mut PartEffects) {
        let (reads, held) = match result {
            PrepareResult::Yes { reads, prepared } => (reads, prepared),
            PrepareResult::ReadOnly { reads } => {
                self.stats.read_only += 1;
                return self.send(fx, Lsn::NONE, ToCoordinator::Vote { txid, vote: Vote::ReadOnly { reads } });
            }
            PrepareResult::No { reason } => return self.vote_no(txid, reason, fx),
        };
        let record = PartRecord::Prepared { txid, writes: R::writes(&held), read_keys: R::read_keys(&held) };
        let lsn = self.log.append(fx, record);
        let next_inquiry = now + self.config.inquiry_after;
        let prepared = Prepared {
            held,
            lsn,
            reads: Some(reads.clone()),
            in_doubt: false,
            next_inquiry,
            backoff: self.config.inquiry_after,
        };
        self.prepared.insert(txid, prepared);
        self.timers.schedule(now, self.config.inquiry_after, txid);
        self.stats.prepared += 1;
        self.send(fx, self.vote_gate(lsn), ToCoordinator::Vote { txid, vote: Vote::Yes { reads } });
        self.planted_early_release(txid);
    }

    /// Asked for every prepare: nearly always empty, so that is checked before hashing.
    fn is_preparing(&self, txid: TxId) -> bool {
        self.preparing.len() != 0 && self.preparing.get(txid).is_some()
    }

    /// A conflicting prepare may wait for a holder that is prepared here, not in doubt (its
    /// decision is on its way) and older than it.
    fn may_wait_for(&self, txid: TxId, holder: TxId) -> bool {
        self.prepared.get(holder).is_some_and(|prepared| !prepared.in_doubt) && self.parked.may_wait(txid, holder)
    }

    /// Runs the prepares that waited for `holder`, which was just decided.
    fn wake_waiters(&mut self, now: Time, holder: TxId, fx: &mut PartEffects) {
        for (txid, ops, sole) in self.parked.take_waiters(holder) {
            self.run_prepare(now, txid, ops, sole, fx);
        }
    }

    fn conflict_reason(&self, holder: TxId, key: Key) -> AbortReason {
        let participant = self.config.id;
        match self.prepared.get(holder) {
            Some(prepared) if prepared.in_doubt => AbortReason::InDoubt { participant, key },
            _ => AbortReason::Conflict { participant, key },
        }
    }

    fn on_commit(&mut self, now: Time, txid: TxId, fx: &mut PartEffects) {
        let Some(prepared) = self.prepared.remove(txid) else {
            // Already committed (a duplicate or a re-drive): acknowledge once everything
            // logged so far, which includes that commit, is durable.
            let last = self.log.last();
            return self.send(fx, last, ToCoordinator::Ack { txid });
        };
        self.rm.commit(txid, prepared.held);
        let lsn = self.log.append(fx, PartRecord::Committed { txid });
        self.stats.committed += 1;
        self.send(fx, lsn, ToCoordinator::Ack { txid });
        self.wake_waiters(now, txid, fx);
    }

    fn on_abort(&mut self, now: Time, txid: TxId, fx: &mut PartEffects) {
        if self.open.get(txid).is_some() {
            return self.roll_back(txid); // Its waiters are woken (reported by the caller).
        }
        if self.parked.remove(txid) || self.preparing.remove(txid).is_some() {
            return; // It never ran here, or its result will be rolled back when it comes.
        }
        let Some(prepared) = self.prepared.remove(txid) else { return };
        self.rm.abort(txid, prepared.held);
        self.stats.aborted += 1;
        // Not forced (presumed abort); it only spares a question after a restart.
        self.log.append(fx, PartRecord::Aborted { txid });
        self.wake_waiters(now, txid, fx);
    }

    /// Time passed: ask the coordinator about transactions whose decision is late.
    pub fn on_tick(&mut self, now: Time, fx: &mut PartEffects) {
        while let Some(txid) = self.timers.pop_due(now) {
            let Some(prepared) = self.prepared.get_mut(txid) else {
                self.check_open(now, txid, fx);
                continue;
            };
            if prepared.next_inquiry > now {
                continue; // A stale timer entry.
            }
            if self.planted_abort_alone(now, txid, fx) {
                continue;
            }
            let prepared = self.prepared.get_mut(txid).expect("present");
            prepared.in_doubt = true;
            let delay = step_backoff(now, &mut prepared.next_inquiry, &mut prepared.backoff, self.config.inquiry_max);
            self.timers.schedule(now, delay, txid);
            self.stats.inquiries += 1;
            self.send(fx, Lsn::NONE, ToCoordinator::Inquiry { txid });
        }
        self.report_events(now, fx);
    }

    /// What a Yes for the transaction whose `Prepared` record is at `lsn` waits for.
    fn yes_gate(&self, lsn: Lsn) -> Lsn {
        if R::PREPARE_DURABLE { self.epoch_lsn } else { lsn }
    }

    #[cfg(not(test))]
    fn vote_gate(&self, lsn: Lsn) -> Lsn {
        self.yes_gate(lsn)
    }

    #[cfg(test)]
    fn vote_gate(&self, lsn: Lsn) -> Lsn {
        if self.config.bugs.vote_before_durable { Lsn::NONE } else { self.yes_gate(lsn) }
    }

    #[cfg(not(test))]
    fn planted_early_release(&mut self, _txid: TxId) {}

    #[cfg(test)]
    fn planted_early_release(&mut self, txid: TxId) {
        let bugs = self.config.bugs;
        let prepared = self.prepared.get_mut(txid).expect("prepared");
        if bugs.release_locks_at_prepare {
            self.rm.release_locks(txid, &mut prepared.held);
        } else if bugs.release_read_locks_at_vote {
            self.rm.release_read_locks(txid, &mut prepared.held);
        }
    }

    #[cfg(not(test))]
    fn planted_abort_alone(&mut self, _now: Time, _txid: TxId, _fx: &mut PartEffects) -> bool {
        false
    }

    #[cfg(test)]
    fn planted_abort_alone(&mut self, now: Time, txid: TxId, fx: &mut PartEffects) -> bool {
        if !self.config.bugs.abort_alone_after_yes {
            return false;
        }
        self.on_abort(now, txid, fx);
        true
    }
}

#[cfg(test)]
mod interactive_tests;
#[cfg(test)]
mod optimistic_tests;
#[cfg(test)]
mod seam_tests;
#[cfg(test)]
mod tests;
