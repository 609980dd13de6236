//! Interactive transactions at the coordinator: Begin, any number of Executes on any
//! participants, then Commit or Rollback (issue 17).
//!
//! Invariants:
//! - An open transaction lives only here, in memory: nothing is logged until its Commit,
//!   which moves it into the one-shot commit path (`Staged` record, votes, `Commit` record,
//!   acks) with `PrepareExecuted` in place of `Prepare`. A restart forgets every open
//!   transaction; its participants roll them back on the new epoch (presumed abort: none of
//!   them voted).
//! - At most one Execute runs per transaction. Every participant an Execute was sent to is
//!   in `touched` before it is sent, so ending the transaction sends `Abort` to every
//!   participant that may hold its locks.
//! - The wait-for graph holds only waits of Executes still running: an answer, an end or a
//!   lost participant removes them, so a stale edge never closes a false cycle. A cycle
//!   ends its youngest member (highest txid) with `Deadlock`.
//! - Every request goes through the session table like a Submit: a retry of Begin or
//!   Execute gets the same `Began`/`Executed` reply, never a second execution.
//! - Bounded: at most `open_max` open transactions (Begin beyond that is refused `Busy`),
//!   `ended_max` remembered endings, and the graph's own limits.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use smallvec::SmallVec;

use super::sessions::Answer;
use super::{ClientOrigin, CoordEffects};
use super::{Coordinator, Shard, Tx, VoteState, check_reads, encoded_reads_bytes, split_ops, stages_every_participant};
use crate::deadlock::{GraphLimits, WaitForGraph};
use crate::effects::Timers;
use crate::hash::SeededState;
use crate::message::{Interactive, Reply, ToParticipant};
use crate::ops::{AbortReason, Isolation, Key, Op, Outcome, Read};
use crate::record::GetAt;
use crate::types::{ClientId, Lsn, ParticipantId, Seq, Time, TxId};

/// Bounds and defaults of interactive transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InteractiveConfig {
    /// Open transactions at most; a Begin beyond is refused `Busy`.
    pub open_max: usize,
    /// Ended transactions whose reason a late request still hears (oldest forgotten first).
    pub ended_max: usize,
    /// Idle timeout of a Begin that asks for 0.
    pub idle_timeout_default: Duration,
    /// The largest idle timeout a Begin may ask for (larger ones are capped). Participants
    /// roll back an open transaction idle longer than their `open_idle_max`, which must
    /// stay above this.
    pub idle_timeout_max: Duration,
    pub graph: GraphLimits,
    #[cfg(test)]
    pub bugs: DetectorBugs,
}

/// Bugs planted in the deadlock detector, to prove the simulator's checker catches them.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectorBugs {
    /// Never search for cycles: deadlocks end only by lock-wait timeouts.
    pub never_fires: bool,
    /// Abort the oldest member of a cycle instead of the youngest.
    pub victim_oldest: bool,
}

impl Default for InteractiveConfig {
    fn default() -> InteractiveConfig {
        InteractiveConfig {
            open_max: 10_000,
            ended_max: 10_000,
            idle_timeout_default: Duration::from_secs(10),
            idle_timeout_max: Duration::from_secs(60),
            graph: GraphLimits::default(),
            #[cfg(test)]
            bugs: DetectorBugs::default(),
        }
    }
}

impl InteractiveConfig {
    /// The idle timeout a Begin gets: its own (0: the default), at most the maximum.
    pub fn idle_timeout(&self, asked_ms: u32) -> Duration {
        match asked_ms {
            0 => self.idle_timeout_default,
            ms => Duration::from_millis(u64::from(ms)).min(self.idle_timeout_max),
        }
    }
}

/// Counters of interactive transactions (a part of [`super::CoordinatorStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InteractiveStats {
    pub begun: u64,
    pub committed: u64,
    /// Every abort, whatever the reason; the reasons below add up to it.
    pub aborted: u64,
    pub aborted_deadlock: u64,
    pub aborted_lock_timeout: u64,
    pub aborted_idle_timeout: u64,
    pub rolled_back: u64,
    pub aborted_other: u64,
    /// WaitFor reports with holders (a lock wait began or changed).
    pub lock_waits_reported: u64,
    /// WaitFor reports not recorded because the graph was full (the lock-wait timeout ends
    /// such a wait instead).
    pub wait_edges_dropped: u64,
    pub deadlocks_detected: u64,
    /// Detection latency, from the step that handled the WaitFor closing the cycle to the
    /// victim's Abort leaving the coordinator, in engine time: the search runs inside that
    /// step, so this stays 0 unless detection is ever deferred. Wall-clock latency (frames,
    /// batching) is the runtime's to measure.
    pub deadlock_detection_ns_total: u64,
    pub deadlock_detection_ns_max: u64,
}

impl InteractiveStats {
    pub(super) fn count_abort(&mut self, reason: &AbortReason) {
        self.aborted += 1;
        match reason {
            AbortReason::Deadlock { .. } => self.aborted_deadlock += 1,
            AbortReason::LockTimeout { .. } => self.aborted_lock_timeout += 1,
            AbortReason::IdleTimeout => self.aborted_idle_timeout += 1,
            AbortReason::RolledBack => self.rolled_back += 1,
            _ => self.aborted_other += 1,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Touched {
    participant: ParticipantId,
    /// An Execute there had a write: the participant is named in the `Staged` record.
    wrote: bool,
}

/// The Execute in progress: who has not answered yet, and the reads so far.
#[derive(Debug)]
struct Running {
    seq: Seq,
    waiting: SmallVec<[ParticipantId; 4]>,
    gets: Vec<GetAt>,
    reads: Vec<Read>,
}

#[derive(Debug)]
struct OpenTx {
    client: ClientId,
    isolation: Isolation,
    idle_timeout: Duration,
    last_activity: Time,
    touched: SmallVec<[Touched; 4]>,
    running: Option<Running>,
}

/// The coordinator's interactive state: open transactions, recently ended ones, their idle
/// timers and the wait-for graph.
#[derive(Debug)]
pub(super) struct OpenTxs {
    open: HashMap<TxId, OpenTx, SeededState>,
    /// Why recently ended transactions ended, for the client that owned them.
    ended: HashMap<TxId, (ClientId, AbortReason), SeededState>,
    ended_order: VecDeque<TxId>,
    timers: Timers,
    graph: WaitForGraph,
}

impl OpenTxs {
    pub(super) fn new(config: &InteractiveConfig, hash_seed: u64) -> OpenTxs {
        OpenTxs {
            open: HashMap::with_hasher(SeededState::new(hash_seed ^ 0x0917)),
            ended: HashMap::with_hasher(SeededState::new(hash_seed ^ 0x0e4d)),
            ended_order: VecDeque::new(),
            timers: Timers::default(),
            graph: WaitForGraph::new(config.graph),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.open.len()
    }

    pub(super) fn next_deadline(&self) -> Option<Time> {
        self.timers.next_deadline()
    }

    fn remember(&mut self, txid: TxId, client: ClientId, reason: AbortReason, ended_max: usize) {
        if ended_max == 0 {
            return;
        }
        while self.ended_order.len() >= ended_max {
            let oldest = self.ended_order.pop_front().expect("not empty");
            self.ended.remove(&oldest);
        }
        self.ended.insert(txid, (client, reason));
        self.ended_order.push_back(txid);
    }

    /// The open transaction `txid` if `client` owns it.
    fn owned(&mut self, client: ClientId, txid: TxId) -> Option<&mut OpenTx> {
        self.open.get_mut(&txid).filter(|tx| tx.client == client)
    }
}

impl Coordinator {
    /// A client's interactive request from `origin` (see [`Interactive`]).
    pub fn on_interactive(&mut self, now: Time, origin: ClientOrigin, request: Interactive, fx: &mut CoordEffects) {
        let (client, seq) = request.request();
        if !self.admit(origin, client, seq, fx) {
            return;
        }
        match request {
            Interactive::Begin { isolation, idle_timeout_ms, .. } => {
                self.begin_open(now, client, seq, isolation, idle_timeout_ms, fx)
            }
            Interactive::Execute { txid, ops, .. } => self.execute(now, client, seq, txid, ops, fx),
            Interactive::Commit { txid, .. } => self.commit_open(now, client, seq, txid, fx),
            Interactive::Rollback { txid, .. } => self.rollback(client, seq, txid, fx),
        }
    }

    /// Open interactive transactions (for metrics and tests).
    pub fn open_transactions(&self) -> usize {
        self.interactive.len()
    }

    fn begin_open(
        &mut self,
        now: Time,
        client: ClientId,
        seq: Seq,
        isolation: Isolation,
        idle_timeout_ms: u32,
        fx: &mut CoordEffects,
    ) {
        if self.interactive.open.len() >= self.config.interactive.open_max {
            return self.reject_busy(client, seq, fx);
        }
        let txid = self.allocate_txid(fx);
        let idle_timeout = self.config.interactive.idle_timeout(idle_timeout_ms);
        let tx =
            OpenTx { client, isolation, idle_timeout, last_activity: now, touched: SmallVec::new(), running: None };
        self.interactive.open.insert(txid, tx);
        self.interactive.timers.schedule(now, idle_timeout, txid);
        self.stats.interactive.begun += 1;
        // The txid is only good once its epoch is durable (like a one-shot's prepares).
        let after = self.epoch_lsn;
        self.sessions.answer(client, seq, &Answer::Began(txid), after);
        self.reply(fx, after, Reply::Began { client, seq, txid });
    }

    fn execute(&mut self, now: Time, client: ClientId, seq: Seq, txid: TxId, ops: Vec<Op>, fx: &mut CoordEffects) {
        let Some(tx) = self.interactive.owned(client, txid) else { return self.answer_ended(client, seq, txid, fx) };
        tx.last_activity = tx.last_activity.max(now);
        if tx.running.is_some() {
            let detail = "an Execute arrived while the previous one was still running".to_string();
            return self.end_with_request(txid, client, seq, AbortReason::Invalid { detail }, fx);
        }
        if let Err(reason) = self.check_executable(&ops) {
            return self.end_with_request(txid, client, seq, reason, fx);
        }
        if self.sessions.begin(client, seq, txid).is_err() {
            return self.reject_busy(client, seq, fx);
        }
        let (per_participant, gets) = split_ops(ops);
        let tx = self.interactive.open.get_mut(&txid).expect("checked above");
        for (participant, ops) in &per_participant {
            let wrote = ops.iter().any(|op| op.kind.is_write());
            match tx.touched.iter_mut().find(|touched| touched.participant == *participant) {
                Some(touched) => touched.wrote |= wrote,
                None => tx.touched.push(Touched { participant: *participant, wrote }),
            }
        }
        let waiting = per_participant.iter().map(|(participant, _)| *participant).collect();
        tx.running = Some(Running { seq, waiting, gets, reads: Vec::new() });
        let isolation = tx.isolation;
        for (participant, ops) in per_participant {
            self.send(fx, self.epoch_lsn, participant, ToParticipant::Execute { txid, isolation, ops });
        }
    }

    /// Why `ops` cannot run, if they cannot (the checks a Submit's ops get; SQL statements
    /// allowed).
    fn check_executable(&self, ops: &[Op]) -> Result<(), AbortReason> {
        self.config.limits.check_interactive_ops(ops).map_err(|detail| AbortReason::Invalid { detail })?;
        if let Some(op) = ops.iter().find(|op| !self.is_known(op.participant)) {
            return Err(AbortReason::UnknownParticipant { participant: op.participant });
        }
        if let Some(op) = ops.iter().find(|op| self.unreachable.contains(&op.participant)) {
            return Err(AbortReason::Unavailable { participant: op.participant });
        }
        Ok(())
    }

    /// A participant answered an Execute.
    pub(super) fn on_executed(
        &mut self,
        now: Time,
        from: ParticipantId,
        txid: TxId,
        result: Result<Vec<Read>, AbortReason>,
        fx: &mut CoordEffects,
    ) {
        let value_bytes_max = self.config.limits.max_value_bytes;
        let Some(tx) = self.interactive.open.get_mut(&txid) else {
            // Ended here (its Abort is on its way) or from before a restart: make sure the
            // participant lets it go, unless it is committing now.
            if result.is_ok() && self.txs.get(txid).is_none() {
                self.send(fx, Lsn::NONE, from, ToParticipant::Abort { txid });
            }
            return;
        };
        let Some(running) = tx.running.as_mut() else { return };
        let Some(at) = running.waiting.iter().position(|&participant| participant == from) else { return };
        self.interactive.graph.answered(from, txid);
        let reads = match result {
            Ok(reads) => reads,
            // The participant already rolled it back there; the others hear Abort now.
            Err(reason) => return self.end_open(txid, reason, fx),
        };
        if let Err(detail) = check_reads(from, &running.gets, &reads, value_bytes_max) {
            self.stats.bad_votes += 1;
            self.warn(fx, format!("{from} answered an Execute of {txid} with reads that do not match it: {detail}"));
            return self.end_open(txid, AbortReason::BadVote { participant: from, detail }, fx);
        }
        running.reads.extend(reads);
        running.waiting.swap_remove(at);
        if running.waiting.is_empty() {
            self.finish_execute(now, txid, fx);
        }
    }

    /// Every participant answered the running Execute: the client hears its reads.
    fn finish_execute(&mut self, now: Time, txid: TxId, fx: &mut CoordEffects) {
        let max_outcome_bytes = self.config.max_outcome_bytes;
        let tx = self.interactive.open.get_mut(&txid).expect("finishing an open transaction's Execute");
        let mut running = tx.running.take().expect("a running Execute");
        tx.last_activity = tx.last_activity.max(now);
        let client = tx.client;
        let reads_bytes = encoded_reads_bytes(&running.reads);
        if reads_bytes > max_outcome_bytes {
            let detail = format!("the reads take {reads_bytes} bytes, more than a reply holds ({max_outcome_bytes})");
            return self.end_with_request(txid, client, running.seq, AbortReason::Invalid { detail }, fx);
        }
        running.reads.sort_by_key(|read| read.index);
        let answer = Answer::Executed(running.reads);
        self.sessions.answer(client, running.seq, &answer, Lsn::NONE);
        let Answer::Executed(reads) = answer else { unreachable!("built above") };
        self.reply(fx, Lsn::NONE, Reply::Executed { client, seq: running.seq, reads });
    }

    /// A participant reports that `waiter` waits there for `holders` (empty: no longer).
    pub(super) fn on_wait_for(
        &mut self,
        now: Time,
        from: ParticipantId,
        waiter: TxId,
        key: Key,
        holders: Vec<TxId>,
        fx: &mut CoordEffects,
    ) {
        let _ = key; // Named in the participant's LockTimeout; the graph needs only who waits.
        if !holders.is_empty() {
            self.stats.interactive.lock_waits_reported += 1;
        }
        let waits_there = self
            .interactive
            .open
            .get(&waiter)
            .and_then(|tx| tx.running.as_ref())
            .is_some_and(|running| running.waiting.contains(&from));
        if !waits_there {
            return; // Late: that Execute was answered, or the transaction ended.
        }
        if self.interactive.graph.report(from, waiter, &holders).is_err() {
            self.stats.interactive.wait_edges_dropped += 1;
            return;
        }
        let closed_at = now;
        #[cfg(test)]
        if self.config.interactive.bugs.never_fires {
            return;
        }
        while let Some(deadlock) = self.interactive.graph.find_cycle(waiter) {
            #[cfg(test)]
            let deadlock = if self.config.interactive.bugs.victim_oldest {
                let oldest = *deadlock.cycle.iter().min().expect("a cycle has members");
                crate::deadlock::Deadlock { victim: oldest, ..deadlock }
            } else {
                deadlock
            };
            let victim = deadlock.victim;
            assert!(self.interactive.open.contains_key(&victim), "a deadlock victim {victim} that is not open");
            self.end_open(victim, AbortReason::Deadlock { cycle: deadlock.cycle }, fx);
            let latency_ns = u64::try_from(now.since(closed_at).as_nanos()).unwrap_or(u64::MAX);
            let stats = &mut self.stats.interactive;
            stats.deadlocks_detected += 1;
            stats.deadlock_detection_ns_total = stats.deadlock_detection_ns_total.saturating_add(latency_ns);
            stats.deadlock_detection_ns_max = stats.deadlock_detection_ns_max.max(latency_ns);
            if victim == waiter {
                break;
            }
        }
    }

    fn commit_open(&mut self, now: Time, client: ClientId, seq: Seq, txid: TxId, fx: &mut CoordEffects) {
        let Some(tx) = self.interactive.owned(client, txid) else { return self.answer_ended(client, seq, txid, fx) };
        tx.last_activity = tx.last_activity.max(now);
        if tx.running.is_some() {
            let detail = "a Commit arrived while an Execute was still running".to_string();
            return self.end_with_request(txid, client, seq, AbortReason::Invalid { detail }, fx);
        }
        if self.preparing >= self.config.max_preparing || self.committing >= self.config.max_committing {
            return self.reject_busy(client, seq, fx); // Still open: the client may retry.
        }
        let tx = self.interactive.open.remove(&txid).expect("checked above");
        self.interactive.graph.remove_waiter(txid);
        if tx.touched.is_empty() {
            // Nothing ran anywhere: nothing to prepare.
            self.stats.committed += 1;
            self.stats.interactive.committed += 1;
            let outcome = Outcome::Committed { reads: Vec::new() };
            self.sessions.finish(client, seq, &outcome, Lsn::NONE);
            return self.reply(fx, Lsn::NONE, Reply::Outcome { client, seq, outcome });
        }
        if self.sessions.begin(client, seq, txid).is_err() {
            // The session's window is full of requests in flight: the transaction stays
            // open and the client may retry the Commit after a backoff.
            self.interactive.open.insert(txid, tx);
            return self.reject_busy(client, seq, fx);
        }
        let staged = stages_every_participant(tx.touched.iter().map(|touched| touched.wrote));
        let shards: SmallVec<[Shard; 4]> = tx
            .touched
            .iter()
            .map(|touched| Shard { participant: touched.participant, vote: VoteState::Pending, staged })
            .collect();
        // The reads went back with each Execute; votes carry none.
        let gets = Vec::new();
        let prepared = Tx::preparing(client, seq, now + self.config.prepare_timeout, shards, gets, true);
        self.track_prepare(now, txid, prepared, fx);
        let sole = tx.touched.len() == 1;
        for touched in &tx.touched {
            self.send(fx, self.epoch_lsn, touched.participant, ToParticipant::PrepareExecuted { txid, sole });
        }
    }

    fn rollback(&mut self, client: ClientId, seq: Seq, txid: TxId, fx: &mut CoordEffects) {
        if self.interactive.owned(client, txid).is_none() {
            return self.answer_ended(client, seq, txid, fx);
        }
        self.end_with_request(txid, client, seq, AbortReason::RolledBack, fx);
    }

    /// Ends open `txid` for `reason`, answering the request `(client, seq)` that ended it
    /// (and the running Execute, if that is another request) with `Aborted(reason)`.
    fn end_with_request(&mut self, txid: TxId, client: ClientId, seq: Seq, reason: AbortReason, fx: &mut CoordEffects) {
        let running = self.interactive.open.get(&txid).and_then(|tx| tx.running.as_ref()).map(|running| running.seq);
        self.end_open(txid, reason.clone(), fx);
        if running != Some(seq) {
            self.answer_aborted(client, seq, reason, fx);
        }
    }

    /// Ends open `txid`: every participant it touched hears Abort (releasing its locks and
    /// waking its waiters), its running Execute hears `Aborted(reason)`, and a later request
    /// on it hears `reason` while it is remembered.
    fn end_open(&mut self, txid: TxId, reason: AbortReason, fx: &mut CoordEffects) {
        let tx = self.interactive.open.remove(&txid).expect("ending an open transaction");
        self.interactive.graph.remove_waiter(txid);
        for touched in &tx.touched {
            self.send(fx, Lsn::NONE, touched.participant, ToParticipant::Abort { txid });
        }
        self.stats.aborted += 1;
        self.stats.interactive.count_abort(&reason);
        let ended_max = self.config.interactive.ended_max;
        self.interactive.remember(txid, tx.client, reason.clone(), ended_max);
        if let Some(running) = tx.running {
            self.answer_aborted(tx.client, running.seq, reason, fx);
        }
    }

    /// A request on a transaction that is not open (for this client): the reason it ended
    /// if remembered, `NotActive` otherwise.
    fn answer_ended(&mut self, client: ClientId, seq: Seq, txid: TxId, fx: &mut CoordEffects) {
        let reason = match self.interactive.ended.get(&txid) {
            Some((owner, reason)) if *owner == client => reason.clone(),
            _ => AbortReason::NotActive,
        };
        self.answer_aborted(client, seq, reason, fx);
    }

    fn answer_aborted(&mut self, client: ClientId, seq: Seq, reason: AbortReason, fx: &mut CoordEffects) {
        let outcome = Outcome::Aborted { reason };
        self.sessions.finish(client, seq, &outcome, Lsn::NONE);
        self.reply(fx, Lsn::NONE, Reply::Outcome { client, seq, outcome });
    }

    /// Idle timeouts: an open transaction without a request for its idle timeout (and no
    /// Execute running) is rolled back.
    pub(super) fn tick_open(&mut self, now: Time, fx: &mut CoordEffects) {
        while let Some(txid) = self.interactive.timers.pop_due(now) {
            let Some(tx) = self.interactive.open.get(&txid) else { continue };
            let idle_until = tx.last_activity + tx.idle_timeout;
            if tx.running.is_some() {
                // Waiting for participants is not idleness: their lock-wait timeout or
                // a lost connection ends the wait.
                let delay = tx.idle_timeout;
                self.interactive.timers.schedule(now, delay, txid);
            } else if idle_until > now {
                self.interactive.timers.schedule(now, idle_until - now, txid);
            } else {
                self.end_open(txid, AbortReason::IdleTimeout, fx);
            }
        }
    }

    /// `participant` is lost: open transactions that touched it end `Unavailable` (their
    /// work there is gone or will be rolled back).
    pub(super) fn lose_open(&mut self, participant: ParticipantId, fx: &mut CoordEffects) {
        let mut touching: Vec<TxId> = self
            .interactive
            .open
            .iter()
            .filter(|(_, tx)| tx.touched.iter().any(|touched| touched.participant == participant))
            .map(|(txid, _)| *txid)
            .collect();
        touching.sort_unstable(); // Deterministic order of the replies.
        for txid in touching {
            self.end_open(txid, AbortReason::Unavailable { participant }, fx);
        }
    }
}
