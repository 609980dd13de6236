//! Sagas: an ordered list of steps, each a local transaction on one participant with a
//! compensating transaction there. The coordinator runs the steps forward; when one fails
//! it runs the compensations of the steps before it in reverse order. A saga ends
//! completed (client hears `Committed` without reads) or compensated (`Aborted` with the
//! failed step's reason), recorded in the session table like any outcome.
//!
//! Invariants:
//! - Each step and each compensation runs as a one-participant two-phase-commit
//!   transaction (an "attempt") through the ordinary commit path, with a txid the
//!   `SagaAttempt` record names; its prepare leaves only once that record is durable.
//! - Exactly once: a step is done when an attempt of it commits (`SagaStepDone` is appended
//!   in the step the commit is decided). No new attempt of a step starts while one is
//!   undecided; a restart resolves an undecided attempt through its own `Staged` record
//!   (asking the participant, as for any staged transaction), and only an attempt that
//!   aborted or was never staged (so never committed: presumed abort) is retried, with a
//!   new txid. A participant refuses a prepare whose txid it has seen (`Stale`), so an old
//!   attempt's prepare can never apply twice.
//! - Forward steps failing for a retryable reason (busy, conflict, timeout, unreachable)
//!   are retried with backoff up to `step_attempts_max` times; any other failure, or the
//!   last retry's, starts compensation (`SagaCompensate`). Compensations are retried until
//!   they apply: they must be written to always apply (a business failure of one is logged
//!   as a warning and retried at the longest backoff, the saga stays open).
//! - The client hears the outcome only once `SagaEnd` is durable; a restart replays every
//!   unfinished saga from its records and carries on, forward or compensating.
//! - Bounded: `sagas_max` in flight, [`SAGA_STEPS_MAX`] steps, [`SAGA_BYTES_MAX`] bytes each.
//! - No locks are held between steps: other transactions see intermediate states (lost
//!   isolation; see docs/PROTOCOL.md, "Sagas").

use std::collections::HashMap;
use std::time::Duration;

use super::{ClientOrigin, CoordEffects, CoordOutput, Coordinator};
use crate::codec::Encode;
use crate::effects::step_backoff;
use crate::hash::SeededState;
use crate::message::{Reply, SAGA_BYTES_MAX, SAGA_STEPS_MAX, SagaStep, SagaSubmit};
use crate::ops::{AbortReason, Outcome};
use crate::record::CoordRecord;
use crate::types::{ClientId, Lsn, Seq, Time, TxId};

/// Bounds and retry timing of sagas.
#[derive(Clone, Copy, Debug)]
pub struct SagaConfig {
    /// Sagas in flight; beyond it clients get `Busy`.
    pub sagas_max: usize,
    /// Attempts of a forward step that fails for a retryable reason before the saga
    /// compensates.
    pub step_attempts_max: u32,
    /// First wait before retrying a failed attempt; doubles up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Default for SagaConfig {
    fn default() -> SagaConfig {
        SagaConfig {
            sagas_max: 10_000,
            step_attempts_max: 5,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
        }
    }
}

/// Saga counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SagaStats {
    pub completed: u64,
    pub compensated: u64,
    /// Attempts started (steps and compensations, first tries and retries).
    pub attempts: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
}

/// Bugs a test plants to prove the simulator's checker catches them.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SagaBugs {
    /// Compensate the completed steps in forward order instead of reverse.
    pub compensate_forward: bool,
}

#[derive(Clone, Copy, Debug)]
struct Attempt {
    txid: TxId,
    lsn: Lsn,
}

#[derive(Debug)]
struct Saga {
    client: ClientId,
    seq: Seq,
    steps: Vec<SagaStep>,
    begin_lsn: Lsn,
    /// Set once a step failed: the `SagaCompensate` LSN, the failed step and why.
    failure: Option<(Lsn, u16, AbortReason)>,
    /// Forward: the next step to run (steps before it are done). Compensating: how many
    /// compensations remain (the next is that of step `cursor - 1`).
    cursor: usize,
    /// The LSN of the last `SagaStepDone` of the current direction (NONE: none yet).
    done_lsn: Lsn,
    attempt: Option<Attempt>,
    /// Failed attempts of the current step or compensation.
    failures: u32,
    next_retry: Time,
    backoff: Duration,
}

impl Saga {
    fn new(client: ClientId, seq: Seq, steps: Vec<SagaStep>, begin_lsn: Lsn) -> Saga {
        Saga {
            client,
            seq,
            steps,
            begin_lsn,
            failure: None,
            cursor: 0,
            done_lsn: Lsn::NONE,
            attempt: None,
            failures: 0,
            next_retry: Time::ZERO,
            backoff: Duration::ZERO,
        }
    }

    fn compensating(&self) -> bool {
        self.failure.is_some()
    }

    /// The step whose action (forward) or compensation runs next; None when none is left.
    fn next_step(&self) -> Option<usize> {
        if self.compensating() {
            self.cursor.checked_sub(1)
        } else {
            Some(self.cursor).filter(|&i| i < self.steps.len())
        }
    }

    /// A step or compensation committed: move the cursor past it.
    fn step_done(&mut self, step: u16, compensating: bool, lsn: Lsn) {
        assert_eq!(compensating, self.compensating(), "a step done in the direction the saga runs");
        let step = usize::from(step);
        self.cursor = if compensating { step } else { step + 1 };
        self.done_lsn = lsn;
        self.attempt = None;
        self.failures = 0;
    }

    fn start_compensating(&mut self, lsn: Lsn, failed: u16, reason: AbortReason) {
        assert!(!self.compensating(), "a saga compensates once");
        self.cursor = usize::from(failed);
        self.failure = Some((lsn, failed, reason));
        self.done_lsn = Lsn::NONE;
        self.attempt = None;
        self.failures = 0;
    }

    fn outcome(&self) -> Outcome {
        match &self.failure {
            None => Outcome::Committed { reads: Vec::new() },
            Some((_, _, reason)) => Outcome::Aborted { reason: reason.clone() },
        }
    }

    /// The records a restart needs to carry on from this state, with their LSNs.
    fn records(&self, saga: TxId) -> Vec<(Lsn, CoordRecord)> {
        let begin = CoordRecord::SagaBegin { saga, client: self.client, seq: self.seq, steps: self.steps.clone() };
        let mut records = vec![(self.begin_lsn, begin)];
        let compensating = self.compensating();
        if let Some((lsn, failed, reason)) = &self.failure {
            records.push((*lsn, CoordRecord::SagaCompensate { saga, failed: *failed, reason: reason.clone() }));
        }
        if self.done_lsn != Lsn::NONE {
            let step = if compensating { self.cursor } else { self.cursor - 1 };
            let step = u16::try_from(step).expect("steps are bounded");
            records.push((self.done_lsn, CoordRecord::SagaStepDone { saga, step, compensating }));
        }
        if let (Some(attempt), Some(step)) = (self.attempt, self.next_step()) {
            let step = u16::try_from(step).expect("steps are bounded");
            records.push((attempt.lsn, CoordRecord::SagaAttempt { saga, step, compensating, txid: attempt.txid }));
        }
        records
    }
}

/// The sagas in flight and the attempts that run them.
#[derive(Debug)]
pub(super) struct Sagas {
    by_id: HashMap<TxId, Saga, SeededState>,
    /// Attempt txid → its saga.
    by_attempt: HashMap<TxId, TxId, SeededState>,
    /// The time of the latest event: attempts decided where no time is passed (a lost
    /// participant's aborts) schedule their retry from it.
    now: Time,
    stats: SagaStats,
}

impl Sagas {
    pub(super) fn new(hash_seed: u64) -> Sagas {
        Sagas {
            by_id: HashMap::with_hasher(SeededState::new(hash_seed)),
            by_attempt: HashMap::with_hasher(SeededState::new(hash_seed)),
            now: Time::ZERO,
            stats: SagaStats::default(),
        }
    }

    pub(super) fn is_attempt(&self, txid: TxId) -> bool {
        !self.by_attempt.is_empty() && self.by_attempt.contains_key(&txid)
    }

    pub(super) fn stats(&self) -> SagaStats {
        self.stats
    }

    pub(super) fn in_flight(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn observe_time(&mut self, now: Time) {
        self.now = self.now.max(now);
    }

    /// Records for a checkpoint: every unfinished saga's state.
    pub(super) fn checkpoint_records(&self) -> Vec<(Lsn, CoordRecord)> {
        self.by_id.iter().flat_map(|(saga, state)| state.records(*saga)).collect()
    }
}

/// Saga state rebuilt from the log (and checkpoint) during a restart.
#[derive(Default)]
pub(super) struct SagaReplay {
    sagas: Vec<(TxId, Saga)>,
    /// Attempt txid → saga, for attempts without an outcome yet.
    attempts: Vec<(TxId, TxId)>,
}

impl SagaReplay {
    fn saga_mut(&mut self, saga: TxId) -> &mut Saga {
        &mut self.sagas.iter_mut().find(|(id, _)| *id == saga).expect("a saga record follows its SagaBegin").1
    }

    /// Applies a saga record; returns the ended saga's request and outcome for `SagaEnd`.
    pub(super) fn apply(&mut self, lsn: Lsn, record: CoordRecord) -> Option<(ClientId, Seq, Outcome)> {
        match record {
            CoordRecord::SagaBegin { saga, client, seq, steps } => {
                self.sagas.push((saga, Saga::new(client, seq, steps, lsn)));
            }
            CoordRecord::SagaAttempt { saga, txid, .. } => {
                self.saga_mut(saga).attempt = Some(Attempt { txid, lsn });
                self.attempts.push((txid, saga));
            }
            CoordRecord::SagaStepDone { saga, step, compensating } => {
                self.forget_attempt_of(saga);
                self.saga_mut(saga).step_done(step, compensating, lsn);
            }
            CoordRecord::SagaCompensate { saga, failed, reason } => {
                self.forget_attempt_of(saga);
                self.saga_mut(saga).start_compensating(lsn, failed, reason);
            }
            CoordRecord::SagaEnd { saga } => {
                self.forget_attempt_of(saga);
                let at = self.sagas.iter().position(|(id, _)| *id == saga).expect("SagaEnd follows SagaBegin");
                let (_, ended) = self.sagas.swap_remove(at);
                return Some((ended.client, ended.seq, ended.outcome()));
            }
            other => unreachable!("not a saga record: {other:?}"),
        }
        None
    }

    fn forget_attempt_of(&mut self, saga: TxId) {
        self.attempts.retain(|(_, owner)| *owner != saga);
    }

    /// A `Commit` record: if it is an attempt's, that step is done (its `SagaStepDone` may
    /// not have reached the disk).
    pub(super) fn committed(&mut self, txid: TxId, lsn: Lsn) {
        let Some(at) = self.attempts.iter().position(|(attempt, _)| *attempt == txid) else { return };
        let (_, saga) = self.attempts.swap_remove(at);
        let state = self.saga_mut(saga);
        let step = state.next_step().expect("an attempt runs a step");
        let compensating = state.compensating();
        state.step_done(u16::try_from(step).expect("steps are bounded"), compensating, lsn);
    }

    /// An `Abort` record: the attempt failed; it will be retried.
    pub(super) fn aborted(&mut self, txid: TxId) {
        let Some(at) = self.attempts.iter().position(|(attempt, _)| *attempt == txid) else { return };
        let (_, saga) = self.attempts.swap_remove(at);
        self.saga_mut(saga).attempt = None;
    }

    pub(super) fn is_saga_record(record: &CoordRecord) -> bool {
        matches!(
            record,
            CoordRecord::SagaBegin { .. }
                | CoordRecord::SagaAttempt { .. }
                | CoordRecord::SagaStepDone { .. }
                | CoordRecord::SagaCompensate { .. }
                | CoordRecord::SagaEnd { .. }
        )
    }
}

impl Coordinator {
    /// A client's saga request from `origin`.
    pub fn on_saga(&mut self, now: Time, origin: ClientOrigin, request: SagaSubmit, fx: &mut CoordEffects) {
        self.sagas.observe_time(now);
        let SagaSubmit { client, seq, steps } = request;
        if !self.admit(origin, client, seq, fx) {
            return;
        }
        if let Err(reason) = self.check_saga(&steps) {
            return self.finish_unexecuted(client, seq, reason, fx);
        }
        if self.sagas.in_flight() >= self.config.saga.sagas_max {
            return self.reject_busy(client, seq, fx);
        }
        let saga = self.allocate_txid(fx);
        if self.sessions.begin(client, seq, saga).is_err() {
            return self.reject_busy(client, seq, fx);
        }
        let lsn = self.log.append(fx, CoordRecord::SagaBegin { saga, client, seq, steps: steps.clone() });
        self.sagas.by_id.insert(saga, Saga::new(client, seq, steps, lsn));
        self.run_saga(now, saga, fx);
    }

    /// Whether a saga's steps are within limits: 1 to [`SAGA_STEPS_MAX`] steps, each action
    /// and compensation valid ops all on one known participant, [`SAGA_BYTES_MAX`] in all.
    fn check_saga(&self, steps: &[SagaStep]) -> Result<(), AbortReason> {
        let invalid = |detail: String| AbortReason::Invalid { detail };
        if steps.is_empty() || steps.len() > SAGA_STEPS_MAX {
            return Err(invalid(format!("a saga needs 1 to {SAGA_STEPS_MAX} steps, not {}", steps.len())));
        }
        let mut bytes = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            self.config.limits.check_ops(&step.action).map_err(|e| invalid(format!("step {index}: {e}")))?;
            if !step.compensation.is_empty() {
                self.config
                    .limits
                    .check_ops(&step.compensation)
                    .map_err(|e| invalid(format!("compensation {index}: {e}")))?;
            }
            let participant = step.participant().expect("checked: not empty");
            if step.action.iter().chain(&step.compensation).any(|op| op.participant != participant) {
                return Err(invalid(format!("step {index} names more than one participant")));
            }
            if !self.is_known(participant) {
                return Err(AbortReason::UnknownParticipant { participant });
            }
            step.encode(&mut bytes);
        }
        if bytes.len() > SAGA_BYTES_MAX {
            return Err(invalid(format!("the saga takes {} bytes, above {SAGA_BYTES_MAX}", bytes.len())));
        }
        Ok(())
    }

    /// Starts the saga's next step or compensation, or ends it when none is left.
    fn run_saga(&mut self, now: Time, saga: TxId, fx: &mut CoordEffects) {
        let state = self.sagas.by_id.get(&saga).expect("running a known saga");
        assert!(state.attempt.is_none(), "one attempt at a time");
        let Some(step) = state.next_step() else { return self.end_saga(saga, fx) };
        let compensating = state.compensating();
        let runs = self.planted_compensation_order(state, step);
        let ops = if compensating { state.steps[runs].compensation.clone() } else { state.steps[runs].action.clone() };
        if ops.is_empty() {
            // Nothing to undo: done at once.
            return self.saga_step_done(now, saga, fx);
        }
        let participant = ops[0].participant;
        let busy = self.preparing >= self.config.max_preparing || self.committing >= self.config.max_committing;
        if busy || self.unreachable.contains(&participant) {
            let reason = if busy {
                AbortReason::ParticipantBusy { participant }
            } else {
                AbortReason::Unavailable { participant }
            };
            return self.saga_attempt_failed(now, saga, reason, fx);
        }
        let txid = self.allocate_txid(fx);
        let step = u16::try_from(step).expect("steps are bounded");
        let lsn = self.log.append(fx, CoordRecord::SagaAttempt { saga, step, compensating, txid });
        let state = self.sagas.by_id.get_mut(&saga).expect("running a known saga");
        state.attempt = Some(Attempt { txid, lsn });
        self.sagas.by_attempt.insert(txid, saga);
        self.sagas.stats.attempts += 1;
        self.start_prepare(now, txid, ClientId::NONE, 0, ops, lsn, fx);
    }

    /// An attempt of a saga was decided by the commit path (`Ok` committed).
    pub(super) fn saga_attempt_decided(&mut self, txid: TxId, result: Result<(), AbortReason>, fx: &mut CoordEffects) {
        let Some(saga) = self.sagas.by_attempt.remove(&txid) else { return };
        let now = self.sagas.now;
        let state = self.sagas.by_id.get_mut(&saga).expect("an attempt's saga is in flight");
        assert_eq!(state.attempt.map(|a| a.txid), Some(txid), "the saga's current attempt");
        state.attempt = None;
        match result {
            Ok(()) => self.saga_step_done(now, saga, fx),
            Err(reason) => self.saga_attempt_failed(now, saga, reason, fx),
        }
    }

    fn saga_step_done(&mut self, now: Time, saga: TxId, fx: &mut CoordEffects) {
        let state = self.sagas.by_id.get(&saga).expect("a known saga");
        let step = state.next_step().expect("a step was running");
        let compensating = state.compensating();
        let step = u16::try_from(step).expect("steps are bounded");
        let lsn = self.log.append(fx, CoordRecord::SagaStepDone { saga, step, compensating });
        self.sagas.by_id.get_mut(&saga).expect("a known saga").step_done(step, compensating, lsn);
        self.run_saga(now, saga, fx);
    }

    /// An attempt failed (or could not start): retry later, or compensate.
    fn saga_attempt_failed(&mut self, now: Time, saga: TxId, reason: AbortReason, fx: &mut CoordEffects) {
        let config = self.config.saga;
        let state = self.sagas.by_id.get_mut(&saga).expect("a known saga");
        state.failures += 1;
        let compensating = state.compensating();
        if !compensating && (!reason.is_retryable() || state.failures >= config.step_attempts_max) {
            let failed = u16::try_from(state.cursor).expect("steps are bounded");
            let record = CoordRecord::SagaCompensate { saga, failed, reason: reason.clone() };
            let lsn = self.log.append(fx, record);
            self.sagas.by_id.get_mut(&saga).expect("a known saga").start_compensating(lsn, failed, reason);
            return self.run_saga(now, saga, fx);
        }
        if state.failures == 1 {
            state.backoff = config.retry_initial;
            state.next_retry = now;
        }
        if compensating && !reason.is_retryable() {
            // A compensation must always apply; one that cannot is an operator's problem.
            state.backoff = config.retry_max;
            let warning = format!("saga {saga}: a compensation failed ({reason}); retrying until it applies");
            fx.send(Lsn::NONE, CoordOutput::Warning(warning));
        }
        let delay = step_backoff(now, &mut state.next_retry, &mut state.backoff, config.retry_max);
        self.sagas.stats.retries += 1;
        self.timers.schedule(now, delay, saga);
    }

    /// A timer fired for `saga` (the timer table is keyed by txid; saga ids share that
    /// space): retry its attempt if one is due.
    pub(super) fn saga_timer(&mut self, now: Time, saga: TxId, fx: &mut CoordEffects) {
        let Some(state) = self.sagas.by_id.get(&saga) else { return };
        if state.attempt.is_none() && state.next_retry <= now {
            self.run_saga(now, saga, fx);
        }
    }

    fn end_saga(&mut self, saga: TxId, fx: &mut CoordEffects) {
        let state = self.sagas.by_id.remove(&saga).expect("ending a known saga");
        let lsn = self.log.append(fx, CoordRecord::SagaEnd { saga });
        let outcome = state.outcome();
        if state.compensating() {
            self.sagas.stats.compensated += 1;
        } else {
            self.sagas.stats.completed += 1;
        }
        self.sessions.finish(state.client, state.seq, &outcome, lsn);
        self.reply(fx, lsn, Reply::Outcome { client: state.client, seq: state.seq, outcome });
    }

    /// After a restart: carries on every saga the log left unfinished, in id order. An
    /// attempt still being resolved (its `Staged` record without an outcome) is waited for;
    /// any other undecided attempt never committed and is retried.
    pub(super) fn resume_sagas(&mut self, now: Time, replay: SagaReplay, fx: &mut CoordEffects) {
        self.sagas.observe_time(now);
        let mut sagas = replay.sagas;
        sagas.sort_by_key(|(saga, _)| *saga);
        for (saga, mut state) in sagas {
            if self.sessions.is_new(state.client, state.seq) {
                let _ = self.sessions.begin(state.client, state.seq, saga); // As in resume_staged.
            }
            let waiting = state.attempt.filter(|attempt| self.txs.get(attempt.txid).is_some());
            state.attempt = waiting;
            self.sagas.by_id.insert(saga, state);
            match waiting {
                Some(attempt) => {
                    self.sagas.by_attempt.insert(attempt.txid, saga);
                }
                None => self.run_saga(now, saga, fx),
            }
        }
    }

    pub fn saga_stats(&self) -> SagaStats {
        self.sagas.stats()
    }

    /// Sagas not yet ended.
    pub fn sagas_in_flight(&self) -> usize {
        self.sagas.in_flight()
    }

    /// The step whose ops run when `step` is next: itself, but for a planted bug.
    #[cfg(not(test))]
    fn planted_compensation_order(&self, _state: &Saga, step: usize) -> usize {
        step
    }

    /// With the planted bug, compensations run first step first.
    #[cfg(test)]
    fn planted_compensation_order(&self, state: &Saga, step: usize) -> usize {
        match &state.failure {
            Some((_, failed, _)) if self.config.saga_bugs.compensate_forward => usize::from(*failed) - 1 - step,
            _ => step,
        }
    }
}

#[cfg(test)]
#[path = "saga_tests.rs"]
mod tests;
