//! A PostgreSQL or MariaDB database as the participant's resource manager (issue 19).
//!
//! [`BackendResource`] is what the engine's [`Participant`](twophase_engine::Participant)
//! holds; it is a handle on a [`BackendDriver`] shared with the node runtime (both live on
//! the engine thread: `Rc<RefCell<_>>`, never borrowed across a call into the engine). The
//! driver turns each transaction into requests on the backends' executor (a one-shot
//! transaction: one `OneShot` request, begin, ops and `PREPARE` in one round trip where the
//! backend can; an interactive one: `Begin`, each execute's ops as `Kv` (an SQL statement as
//! `Execute`, its rows returned as the op's read), then `Prepare` — or
//! `Rollback` when nothing was written and this is its sole participant: a transaction with
//! others prepares what it only read too, so its read locks last until the decision), one
//! request per transaction at a time, many
//! transactions at once, and turns completions into
//! the engine's answers: `Participant::on_prepare_done` for prepares, `RmEvent::Executed` for
//! interactive executes.
//!
//! Invariants:
//! - At most `open_max` transactions hold a database connection (a transaction beyond waits
//!   in a queue bounded by the engine's own bounds on preparing and open transactions), so
//!   the pool's reserved connections stay free for decisions.
//! - A decision (`COMMIT PREPARED` / `XA COMMIT`, and the rollbacks) is retried until the
//!   database says it is done (or that the gid is unknown: done before).
//! - An `Ack` of a commit is held back ([`BackendDriver::ack_may_leave`]) until the
//!   database's commit returned: the coordinator forgets the transaction on the ack, and a
//!   crash between the ack and the database commit would leave a prepared gid whose inquiry
//!   is answered by presumed abort.
//! - A statement on a key that a prepared transaction of this participant touched waits
//!   (holding its connection) until that transaction's decision returned from the database.
//!   The database alone would not do this right: a row a prepared transaction inserted is
//!   invisible to others until COMMIT PREPARED returns, so a client's next transfer, which may
//!   arrive before that (the coordinator acknowledges at its commit point), would see no
//!   account. Waits point from newer transactions to prepared ones, which never wait: no
//!   cycle. The keys of a transaction recovered in doubt are not known (its record logs no
//!   write set); the database's own row locks and lock timeout hold those.
//! - Transactions waiting for a connection are bounded (`QUEUED_MAX`; beyond, the prepare
//!   or execute fails with `ParticipantBusy`).
//! - The database's prepared transaction is the participant's prepare record
//!   (`PREPARE_DURABLE`): the Yes leaves once `PREPARE TRANSACTION` / `XA PREPARE` returned,
//!   and the `Prepared` record rides lazily with a later group. At start, a gid prepared in
//!   the database that the log decided is decided so; every other one is in doubt (the
//!   engine asks the coordinator; presumed abort answers for one whose Yes never left).
//! - A prepare whose connection broke may or may not have prepared in the database: after
//!   its No vote, its gid is rolled back like a decision (an unknown gid is done).
//!
//! Must not: block the engine thread (every database call runs on the executor's threads).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use twophase_backends::{DbError, Executor, Gid, KvOp, KvOutcome, OneShot, Reason, Reply, Request};
use twophase_engine::participant::{Execution, KvImage, Prepare, PrepareResult, ResourceManager, RmEvent};
use twophase_engine::{
    AbortReason, Isolation, Key, Limits, LocalOp, OpKind, ParticipantId, Read, Rows, SqlStatement, SqlValue, Time,
    TxId, Write,
};

/// A failed decision is tried again after this long (the database may be restarting).
const DECISION_RETRY_AFTER: Duration = Duration::from_millis(100);

/// What a prepared transaction holds here: its name in the database (the data and the
/// locks are the database's).
#[derive(Debug)]
pub struct BackendPrepared {
    gid: Gid,
}

/// The engine's handle on the shared driver.
#[derive(Debug)]
pub struct BackendResource {
    driver: Rc<RefCell<BackendDriver>>,
}

impl BackendResource {
    pub fn new(driver: Rc<RefCell<BackendDriver>>) -> BackendResource {
        BackendResource { driver }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    OneShot,
    Interactive,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Waiting for a connection slot (no request submitted yet).
    Queued,
    /// A one-shot transaction with a slot, waiting for prepared holders of its keys to be
    /// decided before it runs.
    Slotted,
    /// A one-shot transaction's `OneShot` request (begin, statements, prepare) submitted.
    OneShot,
    /// `Begin` submitted.
    Beginning,
    /// Open in the database.
    Open,
    /// `Prepare` submitted.
    Preparing,
    /// `Rollback` submitted, to end a read-only transaction (`read_only`) or because the
    /// engine rolled it back.
    RollingBack { read_only: bool },
}

/// A transaction between its first request and its prepare (or rollback).
#[derive(Debug)]
struct TxWork {
    gid: Gid,
    kind: Kind,
    phase: Phase,
    /// Ops not yet submitted, in order.
    ops: VecDeque<LocalOp>,
    /// The op whose `Kv` request runs.
    running_op: Option<LocalOp>,
    /// Reads of the ops run so far (a one-shot's all; an interactive execute's own).
    reads: Vec<Read>,
    wrote: bool,
    /// Not the transaction's sole participant: prepare also when it only read, so that its
    /// read locks last until the decision (`ResourceManager::prepare`'s contract).
    hold_reads: bool,
    /// An interactive execute whose result is owed.
    executing: bool,
    /// An interactive transaction asked to prepare once its ops ran.
    prepare_asked: bool,
    /// Every key its statements touched so far (the rows it may hold locks on).
    keys: Vec<Key>,
    /// The engine rolled it back: roll back once the running request returned.
    rollback_asked: bool,
    /// When its current step started (queued, begin, ops, prepare), for the profile.
    step_since: Time,
}

impl TxWork {
    /// The step its last request was (for the profile).
    fn last_step(&self) -> Step {
        if self.phase == Phase::OneShot { Step::OneShot } else { Step::Prepare }
    }

    fn new(gid: Gid, kind: Kind, now: Time) -> TxWork {
        TxWork {
            step_since: now,
            gid,
            kind,
            phase: Phase::Queued,
            ops: VecDeque::new(),
            running_op: None,
            reads: Vec::new(),
            wrote: false,
            hold_reads: false,
            executing: false,
            prepare_asked: false,
            rollback_asked: false,
            keys: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Decision {
    Commit,
    Rollback,
}

#[derive(Debug)]
struct PendingDecision {
    gid: Gid,
    decision: Decision,
    /// Submitted and not yet answered.
    running: bool,
    retry_at: Time,
    /// When it was first handed to the database (for the profile).
    since: Time,
}

/// A step of a transaction at this participant, as the profile counts it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Step {
    /// Waiting for a connection slot.
    Queued,
    /// `Begin` in the database.
    Begin,
    /// The statements, one round trip each (with waits behind prepared holders' decisions).
    Ops,
    /// `PREPARE TRANSACTION` / `XA PREPARE` (or the read-only rollback).
    Prepare,
    /// A one-shot transaction's whole run in one request (begin, statements, prepare).
    OneShot,
    /// From the prepare's answer to the `Yes` leaving (the participant's own log gate).
    VoteGate,
    /// `COMMIT PREPARED` / `ROLLBACK PREPARED` (and the XA forms), retries included.
    Decision,
}

const STEPS: [Step; 7] =
    [Step::Queued, Step::Begin, Step::Ops, Step::Prepare, Step::OneShot, Step::VoteGate, Step::Decision];

/// How often the profile is logged (info level) and started afresh.
const PROFILE_EVERY: Duration = Duration::from_secs(5);

/// Where transactions' time goes at this participant: per step, how many ended, their mean
/// and longest duration; with the connections in use and the queue at the report. Logged
/// every `PROFILE_EVERY` while transactions run (issue 19's breakdown).
#[derive(Debug, Default)]
struct Profile {
    /// Per step (indexed as `STEPS`): count, total ns, max ns.
    sums: [(u64, u64, u64); STEPS.len()],
    next_report: Time,
}

impl Profile {
    fn record(&mut self, step: Step, since: Time, now: Time) {
        let index = STEPS.iter().position(|s| *s == step).expect("listed");
        let ns = now.as_nanos().saturating_sub(since.as_nanos());
        let (count, total, max) = &mut self.sums[index];
        *count += 1;
        *total += ns;
        *max = (*max).max(ns);
    }

    /// The steps with counts, as `step n=.. mean=..us max=..us`; empty when nothing ran.
    fn summary(&self) -> String {
        let mut out = String::new();
        for (step, (count, total, max)) in STEPS.iter().zip(self.sums) {
            if let Some(mean_ns) = total.checked_div(count) {
                out.push_str(&format!("{step:?} n={count} mean={}us max={}us; ", mean_ns / 1000, max / 1000));
            }
        }
        out
    }
}

/// Drives transactions through the executor; shared by [`BackendResource`] and the runtime.
pub struct BackendDriver {
    participant: ParticipantId,
    /// The participant's name inside gids.
    name: String,
    executor: Executor,
    /// Whether a prepared transaction keeps its connection until decided (MariaDB).
    prepared_holds_connection: bool,
    open_max: usize,
    /// Connections held by transactions (open, or prepared where that holds one).
    slots_in_use: usize,
    /// Prepared transactions holding a slot (only with `prepared_holds_connection`).
    holding: HashSet<TxId>,
    work: HashMap<TxId, TxWork>,
    queued: VecDeque<TxId>,
    decisions: HashMap<TxId, PendingDecision>,
    events: VecDeque<RmEvent>,
    prepares_done: Vec<(TxId, PrepareResult<BackendPrepared>)>,
    /// Acks of commits whose database commit runs, released once it is done.
    acks_held: HashSet<TxId>,
    acks_released: Vec<TxId>,
    /// While the log replays: what the database holds prepared.
    recovering: Option<Recovering>,
    /// Decisions submitted and not yet answered, at most `DECISIONS_RUNNING_MAX`.
    decisions_running: usize,
    /// Keys of prepared transactions whose decision has not yet returned from the database.
    held: HashMap<Key, Vec<TxId>>,
    /// The keys each of those holds.
    held_keys: HashMap<TxId, Vec<Key>>,
    /// Transactions whose next statement waits for a holder's decision, by holder.
    waiting_on: HashMap<TxId, Vec<TxId>>,
    profile: Profile,
    now: Time,
    /// A statement's rows travel back as one read's value: at most this many bytes encoded
    /// (the requests' `max_value_bytes`).
    rows_bytes_max: usize,
}

impl std::fmt::Debug for BackendDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendDriver")
            .field("name", &self.name)
            .field("transactions", &self.work.len())
            .field("decisions", &self.decisions.len())
            .finish()
    }
}

/// Decisions submitted to the executor at once; the rest wait their turn, so that with the
/// open transactions' requests the executor's queue (`PoolConfig::requests_max`) never fills.
pub const DECISIONS_RUNNING_MAX: usize = 1024;

/// Transactions waiting for a database connection at most.
pub const QUEUED_MAX: usize = 4096;

#[derive(Debug, Default)]
struct Recovering {
    /// Gids prepared in the database at start and not decided by the replay so far.
    in_database: HashSet<TxId>,
    /// Transactions the engine rebuilt as prepared (from a `Prepared` record, or from the
    /// database's list where no record names one): their Yes vote may have left.
    logged: HashSet<TxId>,
}

/// The tag of the requests at start, `FenceSessions` and `Recover` (every txid is below it).
pub const RECOVER_TAG: u64 = u64::MAX;

impl BackendDriver {
    /// `db_prepared`: the gids of this participant prepared in the database now (from a
    /// `Recover` at start); the log's replay sorts them out (see the module doc).
    pub fn new(
        participant: ParticipantId,
        name: &str,
        executor: Executor,
        prepared_holds_connection: bool,
        open_max: usize,
        db_prepared: Vec<Gid>,
    ) -> BackendDriver {
        assert!(open_max > 0, "no connection for transactions");
        BackendDriver {
            participant,
            name: name.to_owned(),
            executor,
            prepared_holds_connection,
            open_max,
            slots_in_use: 0,
            holding: HashSet::new(),
            work: HashMap::new(),
            queued: VecDeque::new(),
            decisions: HashMap::new(),
            events: VecDeque::new(),
            prepares_done: Vec::new(),
            acks_held: HashSet::new(),
            acks_released: Vec::new(),
            recovering: Some(Recovering {
                in_database: db_prepared.iter().map(|gid| TxId(gid.txid())).collect(),
                logged: HashSet::new(),
            }),
            decisions_running: 0,
            held: HashMap::new(),
            held_keys: HashMap::new(),
            waiting_on: HashMap::new(),
            profile: Profile::default(),
            now: Time::ZERO,
            rows_bytes_max: Limits::default().max_value_bytes,
        }
    }

    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// The log is replayed. Every transaction the database holds prepared was either decided
    /// by the replay or rebuilt in doubt (from its record, or from the database's list when
    /// no record names it: `node::backend::unlogged_prepared`), so nothing is left unowned.
    pub fn finish_recovery(&mut self) {
        let recovering = self.recovering.take().expect("finish_recovery once");
        for txid in &recovering.in_database {
            assert!(recovering.logged.contains(txid), "{txid} is prepared in the database and unknown to the engine");
        }
    }

    fn gid(&self, txid: TxId) -> Gid {
        Gid::from_txid(&self.name, txid.0).expect("participant names are checked at start")
    }

    /// Whether the ack of `txid`'s commit may go to the coordinator now; if not, it is held
    /// and comes back from [`take_released_acks`](Self::take_released_acks).
    pub fn ack_may_leave(&mut self, txid: TxId) -> bool {
        if self.decisions.get(&txid).is_some_and(|d| d.decision == Decision::Commit) {
            self.acks_held.insert(txid);
            return false;
        }
        true
    }

    pub fn take_released_acks(&mut self) -> Vec<TxId> {
        std::mem::take(&mut self.acks_released)
    }

    pub fn take_prepares_done(&mut self) -> Vec<(TxId, PrepareResult<BackendPrepared>)> {
        std::mem::take(&mut self.prepares_done)
    }

    /// When a waiting decision is submitted next (none while the running ones are at their
    /// bound: a completion makes room).
    pub fn next_deadline(&self) -> Option<Time> {
        if self.decisions_running >= DECISIONS_RUNNING_MAX {
            return None;
        }
        self.decisions.values().filter(|d| !d.running).map(|d| d.retry_at).min()
    }

    /// Takes the executor's completions (at most `max`) and moves their transactions on.
    /// Returns how many it took.
    pub fn on_completions(&mut self, now: Time, max: usize) -> usize {
        self.now = now;
        let mut taken = 0;
        while taken < max {
            let Ok(completion) = self.executor.completions().try_recv() else { break };
            taken += 1;
            if completion.tag == RECOVER_TAG {
                continue; // Answered at start, read there.
            }
            self.route_completion(TxId(completion.tag), completion.result);
        }
        self.start_queued();
        self.submit_due_decisions();
        taken
    }

    /// Time passed: submit decisions whose retry is due.
    pub fn on_tick(&mut self, now: Time) {
        self.now = now;
        self.submit_due_decisions();
        self.report_profile();
    }

    /// A Yes vote whose prepare returned at `since` leaves at `now` (the runtime measures
    /// the participant's own log gate).
    pub fn vote_left(&mut self, since: Time, now: Time) {
        self.profile.record(Step::VoteGate, since, now);
    }

    fn report_profile(&mut self) {
        if self.now < self.profile.next_report {
            return;
        }
        let summary = self.profile.summary();
        if !summary.is_empty() {
            tracing::info!(
                connections_in_use = self.slots_in_use,
                queued = self.queued.len(),
                decisions_running = self.decisions_running,
                "database profile: {summary}"
            );
        }
        self.profile = Profile { next_report: self.now + PROFILE_EVERY, ..Profile::default() };
    }

    fn submit_due_decisions(&mut self) {
        let room = DECISIONS_RUNNING_MAX.saturating_sub(self.decisions_running);
        if room == 0 {
            return;
        }
        let now = self.now;
        let mut due: Vec<TxId> =
            self.decisions.iter().filter(|(_, d)| !d.running && d.retry_at <= now).map(|(txid, _)| *txid).collect();
        due.sort_unstable(); // Oldest first.
        for txid in due.into_iter().take(room) {
            self.submit_decision(txid);
        }
    }

    fn on_completion(&mut self, txid: TxId, result: Result<Reply, DbError>) {
        if self.decisions.get(&txid).is_some_and(|d| d.running) {
            return self.on_decision_done(txid, result);
        }
        let Some(tx) = self.work.get_mut(&txid) else {
            tracing::error!(%txid, ?result, "a database completion for no transaction");
            return;
        };
        match (tx.phase, result) {
            (Phase::Beginning, Ok(_)) => {
                tx.phase = Phase::Open;
                self.profile.record(Step::Begin, tx.step_since, self.now);
                tx.step_since = self.now;
            }
            (Phase::OneShot, Ok(Reply::OneShot(done))) => return self.one_shot_done(txid, done),
            (Phase::OneShot, Ok(Reply::OneShotRefused { op, error })) => {
                return match tx.ops.get(op).cloned() {
                    Some(op) => self.op_failed(txid, &op, error),
                    None => self.failed(txid, error),
                };
            }
            (Phase::OneShot, Ok(other)) => {
                let error = DbError::new(Reason::Other, format!("a one-shot transaction answered {other:?}"));
                return self.failed(txid, error);
            }
            (Phase::Beginning | Phase::OneShot, Err(error)) if error.reason == Reason::Busy => {
                // Every connection is taken (a prepared MariaDB branch after a restart holds
                // one we did not count): wait for the next one freed.
                tx.phase = Phase::Queued;
                self.slots_in_use -= 1;
                self.queued.push_front(txid);
                return;
            }
            (Phase::Open | Phase::Queued | Phase::Slotted, _) => unreachable!("no request runs for {txid}"),
            (Phase::Preparing, Ok(_)) => return self.prepared(txid),
            (Phase::RollingBack { read_only }, Ok(_)) => return self.ended(txid, read_only),
            (Phase::Beginning | Phase::OneShot | Phase::Preparing | Phase::RollingBack { .. }, Err(error)) => {
                return self.failed(txid, error);
            }
        }
        self.advance(txid)
    }

    /// A `Kv` request's answer arrives in `Phase::Open` with `running_op` set.
    fn on_op_done(&mut self, txid: TxId, result: Result<Reply, DbError>) {
        let tx = self.work.get_mut(&txid).expect("running");
        let op = tx.running_op.take().expect("an op ran");
        match result {
            Ok(Reply::Kv(KvOutcome::Read(value))) => tx.reads.push(Read { index: op.index, value }),
            Ok(Reply::Rows(rows)) => match rows_read(rows, self.rows_bytes_max) {
                Ok(value) => tx.reads.push(Read { index: op.index, value: Some(value) }),
                Err(detail) => return self.abandon_execute(txid, AbortReason::Invalid { detail }),
            },
            Ok(_) => {}
            Err(error) => return self.op_failed(txid, &op, error),
        }
        self.advance(txid)
    }

    /// Fails the running execute although the database ran it (its result cannot be sent):
    /// the engine hears the failure and forgets the transaction, so the driver rolls the
    /// database transaction back itself.
    fn abandon_execute(&mut self, txid: TxId, reason: AbortReason) {
        let tx = self.work.get_mut(&txid).expect("running");
        tracing::debug!(gid = %tx.gid, "statement abandoned: {reason}");
        tx.executing = false;
        tx.rollback_asked = true;
        tx.ops.clear();
        self.events.push_back(RmEvent::Executed { txid, result: Err(reason) });
        self.advance(txid)
    }

    /// A one-shot transaction with a slot: once no prepared transaction whose decision is
    /// still on its way holds one of its keys, its whole run goes to the database as one
    /// request (one round trip where the backend can: `Connection::one_shot`).
    fn run_one_shot(&mut self, txid: TxId) {
        let tx = self.work.get(&txid).expect("transaction");
        if let Some(holder) = tx.ops.iter().find_map(|op| self.held.get(&op.key).and_then(|h| h.first().copied())) {
            let waiters = self.waiting_on.entry(holder).or_default();
            if !waiters.contains(&txid) {
                waiters.push(txid);
            }
            return; // Woken by the holder's decision (`release`).
        }
        let tx = self.work.get_mut(&txid).expect("transaction");
        tx.phase = Phase::OneShot;
        tx.wrote = tx.ops.iter().any(|op| op.kind.is_write());
        for op in &tx.ops {
            if !tx.keys.contains(&op.key) {
                tx.keys.push(op.key.clone());
            }
        }
        let ops = tx.ops.iter().map(kv_op).collect();
        let request = Request::OneShot { gid: tx.gid.clone(), ops, hold_reads: tx.hold_reads };
        self.submit(txid, request);
    }

    fn one_shot_done(&mut self, txid: TxId, done: OneShot) {
        let tx = self.work.get_mut(&txid).expect("transaction");
        for (op, outcome) in tx.ops.drain(..).zip(done.outcomes) {
            if let KvOutcome::Read(value) = outcome {
                tx.reads.push(Read { index: op.index, value });
            }
        }
        if done.prepared { self.prepared(txid) } else { self.ended(txid, true) }
    }

    /// Submits the transaction's next request, or answers the engine when there is none.
    fn advance(&mut self, txid: TxId) {
        let tx = self.work.get_mut(&txid).expect("transaction");
        if tx.phase == Phase::Slotted {
            return self.run_one_shot(txid);
        }
        if tx.phase != Phase::Open || tx.running_op.is_some() {
            return;
        }
        if tx.rollback_asked {
            tx.phase = Phase::RollingBack { read_only: false };
            let gid = tx.gid.clone();
            return self.submit(txid, Request::Rollback(gid));
        }
        if let Some(next) = tx.ops.front()
            && let Some(holder) = self.held.get(&next.key).and_then(|holders| holders.first().copied())
        {
            let waiters = self.waiting_on.entry(holder).or_default();
            if !waiters.contains(&txid) {
                waiters.push(txid);
            }
            return; // Woken by the holder's decision (`release`).
        }
        let tx = self.work.get_mut(&txid).expect("transaction");
        if let Some(op) = tx.ops.pop_front() {
            tx.wrote |= op.kind.is_write();
            let request = match &op.kind {
                // A statement names no key: what it touches, the database's row locks hold.
                OpKind::Sql(statement) => sql_request(tx.gid.clone(), statement),
                _ => {
                    if !tx.keys.contains(&op.key) {
                        tx.keys.push(op.key.clone());
                    }
                    Request::Kv(tx.gid.clone(), kv_op(&op))
                }
            };
            tx.running_op = Some(op);
            return self.submit(txid, request);
        }
        if tx.kind == Kind::Interactive && tx.executing {
            tx.executing = false;
            let reads = std::mem::take(&mut tx.reads);
            self.events.push_back(RmEvent::Executed { txid, result: Ok(reads) });
        }
        let tx = self.work.get_mut(&txid).expect("transaction");
        if tx.kind == Kind::OneShot || tx.prepare_asked {
            self.profile.record(Step::Ops, tx.step_since, self.now);
            tx.step_since = self.now;
            let gid = tx.gid.clone();
            if tx.wrote || tx.hold_reads {
                tx.phase = Phase::Preparing;
                self.submit(txid, Request::Prepare(gid));
            } else {
                tx.phase = Phase::RollingBack { read_only: true };
                self.submit(txid, Request::Rollback(gid));
            }
        }
    }

    /// The executor's queue has room for every open transaction's one request and
    /// `DECISIONS_RUNNING_MAX` decisions, so a refusal means the pool stopped (shutdown).
    fn submit(&mut self, txid: TxId, request: Request) {
        if let Err(error) = self.executor.submit(txid.0, request) {
            self.on_submit_refused(txid, error);
        }
    }

    fn on_submit_refused(&mut self, txid: TxId, error: DbError) {
        tracing::warn!(%txid, "database request refused: {error}");
        let tx = self.work.get_mut(&txid).expect("transaction");
        if tx.running_op.is_some() {
            let op = tx.running_op.take().expect("checked");
            return self.op_failed(txid, &op, error);
        }
        self.failed(txid, error)
    }

    fn op_failed(&mut self, txid: TxId, op: &LocalOp, error: DbError) {
        let reason = abort_reason(self.participant, txid, Some(op), &error);
        self.finish_failed(txid, reason, &error);
    }

    fn failed(&mut self, txid: TxId, error: DbError) {
        let reason = abort_reason(self.participant, txid, None, &error);
        let unknown_if_prepared = error.reason == Reason::ConnectionLost
            && self.work.get(&txid).is_some_and(|tx| matches!(tx.phase, Phase::Preparing | Phase::OneShot));
        let gid = self.work.get(&txid).map(|tx| tx.gid.clone());
        self.finish_failed(txid, reason, &error);
        if let (true, Some(gid)) = (unknown_if_prepared, gid) {
            // Its No is on its way: the gid can only be rolled back, now or never prepared.
            self.decide(txid, gid, Decision::Rollback);
        }
    }

    /// The pool ended the transaction (it rolls back on any failure): free its slot and
    /// answer whoever waits for it.
    fn finish_failed(&mut self, txid: TxId, reason: AbortReason, error: &DbError) {
        let tx = self.work.remove(&txid).expect("transaction");
        tracing::debug!(gid = %tx.gid, "database transaction failed: {error}");
        if tx.phase != Phase::Queued {
            self.slots_in_use -= 1;
        }
        if tx.rollback_asked {
            return; // The engine forgot it already.
        }
        match tx.kind {
            Kind::OneShot => self.prepares_done.push((txid, PrepareResult::No { reason })),
            Kind::Interactive if tx.prepare_asked && !tx.executing => {
                self.prepares_done.push((txid, PrepareResult::No { reason }))
            }
            Kind::Interactive => self.events.push_back(RmEvent::Executed { txid, result: Err(reason) }),
        }
    }

    fn prepared(&mut self, txid: TxId) {
        let tx = self.work.remove(&txid).expect("transaction");
        self.profile.record(tx.last_step(), tx.step_since, self.now);
        if self.prepared_holds_connection {
            self.holding.insert(txid);
        } else {
            self.slots_in_use -= 1;
        }
        // What it wrote stays invisible until the database's decision returns: later
        // statements on its keys wait here. One that only read (holding its reads) changed
        // nothing; the database's shared locks make writers wait there.
        if tx.wrote {
            for key in &tx.keys {
                self.held.entry(key.clone()).or_default().push(txid);
            }
            self.held_keys.insert(txid, tx.keys);
        }
        let prepared = BackendPrepared { gid: tx.gid };
        self.prepares_done.push((txid, PrepareResult::Yes { reads: tx.reads, prepared }));
    }

    fn ended(&mut self, txid: TxId, read_only: bool) {
        let tx = self.work.remove(&txid).expect("transaction");
        self.profile.record(tx.last_step(), tx.step_since, self.now);
        self.slots_in_use -= 1;
        if read_only && !tx.rollback_asked {
            self.prepares_done.push((txid, PrepareResult::ReadOnly { reads: tx.reads }));
        }
    }

    fn start_queued(&mut self) {
        while self.slots_in_use < self.open_max {
            let Some(txid) = self.queued.pop_front() else { return };
            let Some(tx) = self.work.get_mut(&txid) else { continue };
            self.profile.record(Step::Queued, tx.step_since, self.now);
            tx.step_since = self.now;
            self.slots_in_use += 1;
            if tx.kind == Kind::OneShot {
                tx.phase = Phase::Slotted;
                self.run_one_shot(txid);
                continue;
            }
            tx.phase = Phase::Beginning;
            let gid = tx.gid.clone();
            self.submit(txid, Request::Begin(gid));
        }
    }

    fn begin_work(&mut self, txid: TxId, kind: Kind) -> &mut TxWork {
        let gid = self.gid(txid);
        self.queued.push_back(txid);
        let now = self.now;
        self.work.entry(txid).or_insert_with(|| TxWork::new(gid, kind, now))
    }

    fn decide(&mut self, txid: TxId, gid: Gid, decision: Decision) {
        if self.holding.remove(&txid) {
            // The connection it holds decides it, then returns to the pool.
            self.slots_in_use -= 1;
        }
        let now = self.now;
        self.decisions.insert(txid, PendingDecision { gid, decision, running: false, retry_at: now, since: now });
        if self.decisions_running < DECISIONS_RUNNING_MAX {
            self.submit_decision(txid);
        }
    }

    fn submit_decision(&mut self, txid: TxId) {
        let pending = self.decisions.get_mut(&txid).expect("decision");
        let request = match pending.decision {
            Decision::Commit => Request::CommitPrepared(pending.gid.clone()),
            Decision::Rollback => Request::RollbackPrepared(pending.gid.clone()),
        };
        match self.executor.submit(txid.0, request) {
            Ok(()) => {
                pending.running = true;
                self.decisions_running += 1;
            }
            Err(error) => {
                tracing::warn!(gid = %pending.gid, "decision not submitted, retrying: {error}");
                pending.retry_at = self.now + DECISION_RETRY_AFTER;
            }
        }
    }

    fn on_decision_done(&mut self, txid: TxId, result: Result<Reply, DbError>) {
        self.decisions_running -= 1;
        match result {
            Err(error) if error.reason != Reason::UnknownTransaction => {
                let pending = self.decisions.get_mut(&txid).expect("decision");
                tracing::warn!(gid = %pending.gid, ?pending.decision, "decision failed, retrying: {error}");
                pending.running = false;
                pending.retry_at = self.now + DECISION_RETRY_AFTER;
            }
            // Done now, or before (a retry after a lost answer, or a restart).
            _ => {
                let done = self.decisions.remove(&txid).expect("decision");
                self.profile.record(Step::Decision, done.since, self.now);
                if self.acks_held.remove(&txid) {
                    self.acks_released.push(txid);
                }
                self.release(txid);
            }
        }
    }

    /// `txid`'s decision returned from the database: its keys are free, its waiters go on.
    fn release(&mut self, txid: TxId) {
        for key in self.held_keys.remove(&txid).unwrap_or_default() {
            if let Some(holders) = self.held.get_mut(&key) {
                holders.retain(|holder| *holder != txid);
                if holders.is_empty() {
                    self.held.remove(&key);
                }
            }
        }
        for waiter in self.waiting_on.remove(&txid).unwrap_or_default() {
            if self.work.contains_key(&waiter) {
                self.advance(waiter);
            }
        }
    }

    fn queue_full(&self) -> bool {
        self.queued.len() >= QUEUED_MAX
    }

    /// Decisions still to run in the database (tests and the shutdown report).
    pub fn decisions_pending(&self) -> usize {
        self.decisions.len()
    }
}

/// Completions of `Kv` requests come through `on_completion` in `Phase::Open`: route them.
impl BackendDriver {
    fn route_completion(&mut self, txid: TxId, result: Result<Reply, DbError>) {
        let is_op = self.work.get(&txid).is_some_and(|tx| tx.phase == Phase::Open && tx.running_op.is_some());
        if is_op { self.on_op_done(txid, result) } else { self.on_completion(txid, result) }
    }
}

/// A key-value op as the backends' table operation. SQL statements never come here: a
/// one-shot transaction with one is refused at `prepare`, an interactive one sends it as
/// [`sql_request`].
fn kv_op(op: &LocalOp) -> KvOp {
    let key = op.key.clone();
    match &op.kind {
        OpKind::Get => KvOp::Get { key },
        OpKind::Put(value) => KvOp::Put { key, value: value.clone() },
        OpKind::Delete => KvOp::Delete { key },
        OpKind::Add { delta, floor } => KvOp::Add { key, delta: *delta, floor: *floor },
        OpKind::Sql(_) => panic!("an SQL statement reached the key-value mapping"),
    }
}

fn sql_request(gid: Gid, statement: &SqlStatement) -> Request {
    Request::Execute { gid, sql: statement.sql.clone(), params: statement.params.iter().map(db_value).collect() }
}

/// The engine's SQL value as the backends' (the same variants; the backends crate depends on
/// no twophase crate, so each has its own type).
fn db_value(value: &SqlValue) -> twophase_backends::SqlValue {
    use twophase_backends::SqlValue as Db;
    match value {
        SqlValue::Null => Db::Null,
        SqlValue::Bool(b) => Db::Bool(*b),
        SqlValue::Int(i) => Db::Int(*i),
        SqlValue::Float(x) => Db::Float(*x),
        SqlValue::Text(text) => Db::Text(text.clone()),
        SqlValue::Bytes(bytes) => Db::Bytes(bytes.clone()),
    }
}

fn engine_value(value: twophase_backends::SqlValue) -> SqlValue {
    use twophase_backends::SqlValue as Db;
    match value {
        Db::Null => SqlValue::Null,
        Db::Bool(b) => SqlValue::Bool(b),
        Db::Int(i) => SqlValue::Int(i),
        Db::Float(x) => SqlValue::Float(x),
        Db::Text(text) => SqlValue::Text(text),
        Db::Bytes(bytes) => SqlValue::Bytes(bytes),
    }
}

/// A statement's rows as the value of its read, or why they cannot travel back.
fn rows_read(rows: twophase_backends::Rows, bytes_max: usize) -> Result<bytes::Bytes, String> {
    let rows = Rows {
        columns: rows.columns,
        rows: rows.rows.into_iter().map(|row| row.into_iter().map(engine_value).collect()).collect(),
        affected: rows.affected,
    };
    rows.check(bytes_max)?;
    Ok(rows.to_bytes())
}

/// A database failure as the reason the transaction aborts.
fn abort_reason(participant: ParticipantId, txid: TxId, op: Option<&LocalOp>, error: &DbError) -> AbortReason {
    let key = || op.map_or_else(Key::new, |op| op.key.clone());
    match error.reason {
        Reason::Constraint => match op.map(|op| &op.kind) {
            // The database does not say the value it refused; the detail is in its log.
            Some(OpKind::Add { delta, floor }) => {
                AbortReason::Constraint { participant, key: key(), value: 0, delta: *delta, floor: *floor }
            }
            _ => AbortReason::Invalid { detail: error.to_string() },
        },
        Reason::NotAnInteger => AbortReason::NotANumber { participant, key: key() },
        Reason::Overflow => AbortReason::Overflow { participant, key: key() },
        Reason::SerializationFailure => AbortReason::Conflict { participant, key: key() },
        Reason::DeadlockDetected => AbortReason::Deadlock { cycle: vec![txid] },
        Reason::LockWaitTimeout => AbortReason::LockTimeout { participant, key: key() },
        Reason::Busy => AbortReason::ParticipantBusy { participant },
        Reason::ConnectionLost => AbortReason::Unavailable { participant },
        Reason::DiskFull | Reason::UnknownTransaction | Reason::InvalidRequest | Reason::Other => {
            AbortReason::Invalid { detail: format!("database: {error}") }
        }
    }
}

impl BackendResource {
    fn with<T>(&self, f: impl FnOnce(&mut BackendDriver) -> T) -> T {
        f(&mut self.driver.borrow_mut())
    }
}

impl ResourceManager for BackendResource {
    type Prepared = BackendPrepared;
    /// The database's prepared transaction is the participant's prepare record: durable when
    /// `PREPARE TRANSACTION` / `XA PREPARE` returned, listed again at start.
    const PREPARE_DURABLE: bool = true;

    /// A transaction that only reads here ends at once (`ReadOnly`) only when this is its
    /// sole participant; else it prepares too, and the database's prepared transaction holds
    /// its `FOR SHARE` / `LOCK IN SHARE MODE` locks until the decision. Released at once,
    /// another transaction could write what it read here before it took its locks at the
    /// other participants (whose prepares run at the same time): not serializable.
    fn prepare(&mut self, txid: TxId, ops: Vec<LocalOp>, sole: bool) -> Prepare<BackendPrepared> {
        self.with(|driver| {
            if ops.iter().any(|op| op.kind.is_sql()) {
                let detail = "SQL statements run only inside interactive transactions".to_string();
                return Prepare::Done(PrepareResult::No { reason: AbortReason::Invalid { detail } });
            }
            if driver.queue_full() {
                let participant = driver.participant;
                return Prepare::Done(PrepareResult::No { reason: AbortReason::ParticipantBusy { participant } });
            }
            let tx = driver.begin_work(txid, Kind::OneShot);
            tx.ops.extend(ops);
            tx.hold_reads = !sole;
            driver.start_queued();
            Prepare::Pending
        })
    }

    fn execute(&mut self, txid: TxId, _isolation: Isolation, ops: Vec<LocalOp>) -> Execution {
        self.with(|driver| {
            if let Some(tx) = driver.work.get_mut(&txid) {
                if tx.executing || tx.prepare_asked {
                    let detail = "an execute arrived while the previous one runs".to_string();
                    tx.rollback_asked = true;
                    driver.advance(txid);
                    return Execution::Failed { reason: AbortReason::Invalid { detail } };
                }
                tx.executing = true;
                tx.ops.extend(ops);
                driver.advance(txid);
            } else if driver.queue_full() {
                let participant = driver.participant;
                return Execution::Failed { reason: AbortReason::ParticipantBusy { participant } };
            } else {
                let tx = driver.begin_work(txid, Kind::Interactive);
                tx.executing = true;
                tx.ops.extend(ops);
                driver.start_queued();
            }
            Execution::Waiting
        })
    }

    /// As `prepare`: what only read is prepared too unless this is the sole participant.
    fn prepare_open(&mut self, txid: TxId, sole: bool) -> Option<PrepareResult<BackendPrepared>> {
        self.with(|driver| match driver.work.get_mut(&txid) {
            Some(tx) => {
                tx.prepare_asked = true;
                tx.hold_reads = !sole;
                driver.advance(txid);
                None
            }
            // Opened by no execute here: nothing to prepare.
            None => Some(PrepareResult::ReadOnly { reads: Vec::new() }),
        })
    }

    fn rollback(&mut self, txid: TxId) {
        self.with(|driver| {
            let Some(tx) = driver.work.get_mut(&txid) else { return };
            tx.rollback_asked = true;
            tx.ops.clear();
            if tx.phase == Phase::Queued {
                driver.work.remove(&txid);
                driver.queued.retain(|queued| *queued != txid);
                return;
            }
            driver.advance(txid);
        })
    }

    fn pop_event(&mut self) -> Option<RmEvent> {
        self.with(|driver| driver.events.pop_front())
    }

    fn writes(_prepared: &BackendPrepared) -> Arc<[Write]> {
        // The writes are in the database, under the gid; the log needs only the txid.
        Arc::new([])
    }

    /// None: the database's prepared transaction keeps its read locks itself, across its
    /// own restarts, so the participant's record need not name them.
    fn read_keys(_prepared: &BackendPrepared) -> Vec<Key> {
        Vec::new()
    }

    fn commit(&mut self, txid: TxId, prepared: BackendPrepared) {
        self.with(|driver| driver.decide_logged(txid, prepared.gid, Decision::Commit));
    }

    fn abort(&mut self, txid: TxId, prepared: BackendPrepared) {
        self.with(|driver| driver.decide_logged(txid, prepared.gid, Decision::Rollback));
    }

    fn recovered(&mut self, txid: TxId, _writes: Arc<[Write]>, _read_keys: Vec<Key>) -> BackendPrepared {
        self.with(|driver| {
            if let Some(recovering) = &mut driver.recovering {
                recovering.logged.insert(txid);
            }
            BackendPrepared { gid: driver.gid(txid) }
        })
    }

    fn relock(&mut self, _txid: TxId, _prepared: &mut BackendPrepared) {
        // The database kept its locks across our restart (and its own).
    }

    fn image(&self) -> KvImage {
        KvImage::default()
    }

    fn restore(&mut self, image: &KvImage) {
        assert_eq!(*image, KvImage::default(), "a database participant has no snapshot of its data");
    }
}

impl BackendDriver {
    /// A decision the engine made (or replays): while the log replays, only gids the
    /// database still holds prepared are decided (the others were decided before).
    fn decide_logged(&mut self, txid: TxId, gid: Gid, decision: Decision) {
        let decided_before = self.recovering.as_mut().is_some_and(|r| !r.in_database.remove(&txid));
        if !decided_before {
            self.decide(txid, gid, decision);
        }
    }
}
