//! The coordinator: runs two-phase commit with presumed abort for each client transaction,
//! with the commit point moved off the critical path ("parallel commit").
//!
//! Invariants:
//! - A transaction that writes is `Staged` (a forced record naming its writing
//!   participants) in the same step that sends its prepares, so the coordinator's sync runs
//!   alongside the participants'. It is committed once that record is durable and every
//!   participant it names voted Yes (each Yes leaves only after its `Prepared` record is
//!   durable): the client hears `Committed` then, gated on the `Staged` LSN.
//! - A participant hears `Commit` only after the `Commit` record is durable, so a prepared
//!   participant stays prepared while the decision lives only in the `Staged` record and
//!   the participants' logs. A restart that finds a `Staged` record without an outcome
//!   resolves it from there: it asks every named participant (`Query`) and commits only if
//!   all are prepared; one that is not proves no client heard `Committed`.
//! - A staged transaction that aborts logs `Abort` (forced) before its client hears so, so
//!   a later resolution cannot commit what a client was told aborted. Aborts are never
//!   acknowledged; an unknown transaction is aborted. That answer is safe because a
//!   transaction is unknown only when it has no durable or pending `Staged` or `Commit`
//!   record without an outcome: every such transaction stays in `txs` until it is aborted
//!   or all its participants acknowledged its commit (and so will never ask again).
//! - Transaction ids carry the epoch, which is durable before any prepare of that epoch
//!   leaves (prepares are gated on the epoch record), so ids never repeat across restarts.
//!   Client session ids are drawn from the same space, so they never repeat either.
//! - Exactly-once: a request runs only on a registered session of the identity that asks
//!   (`sessions`); a request on an unknown or expired session is refused `SessionExpired`,
//!   never executed. A client hears `Committed` only with every read its `Get`s made, or
//!   `CommittedReadsUnavailable` when a restart resolved the transaction without them.
//! - A participant's vote is checked against the transaction (its reads must be exactly one
//!   per `Get` sent there, within limits); one that does not match counts as No.
//! - Interactive transactions (`interactive`) stay in memory until their Commit, which
//!   enters the same commit path through `track_prepare`.

mod interactive;
mod saga;
mod sessions;
mod snapshot;

use std::collections::HashMap;
use std::time::Duration;

use smallvec::SmallVec;

#[cfg(test)]
pub use interactive::DetectorBugs;
pub use interactive::{InteractiveConfig, InteractiveStats};
#[cfg(test)]
pub use saga::SagaBugs;
pub use saga::{SagaConfig, SagaStats};
pub use sessions::{Answer, IDENTITY_BYTES_MAX, Known, SessionLimits, Sessions};
pub use snapshot::{CoordinatorSnapshot, SessionSnapshot};

use crate::effects::{Effects, LogCursor, Timers, step_backoff};
use crate::hash::SeededState;
use crate::message::{RejectReason, Reply, Submit, ToCoordinator, ToParticipant};
use crate::ops::{AbortReason, Limits, LocalOp, Op, Outcome, Read, Vote};
use crate::record::{CoordRecord, GetAt};
use crate::txtable::TxTable;
use crate::types::{ClientId, Epoch, Lsn, ParticipantId, Seq, Time, TxId};
use interactive::OpenTxs;
use saga::{SagaReplay, Sagas};

/// An output of the coordinator: a message to a participant or a reply to a client.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum CoordOutput {
    ToParticipant(ParticipantId, ToParticipant),
    /// A reply about a session's request: to the connection that session last submitted on
    /// (one of its own identity).
    ToClient(Reply),
    /// A reply to the connection a request came in on, whatever session it named: answers to
    /// registrations and refusals of requests on sessions that are not the asker's.
    ToConnection {
        conn: u64,
        reply: Reply,
    },
    /// Something a peer did wrong that an operator should see (the driver logs it).
    Warning(String),
}

/// Where a client request came from: the driver's connection and that connection's identity
/// (whom a session belongs to).
#[derive(Clone, Copy, Debug)]
pub struct ClientOrigin<'a> {
    pub conn: u64,
    pub identity: &'a str,
}

pub type CoordEffects = Effects<CoordRecord, CoordOutput>;

/// Bugs that tests plant to prove the simulator's checker catches them.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorBugs {
    /// Send `Commit` to participants before the commit record is durable.
    pub commit_before_durable: bool,
    /// Tell the client `Committed` before the `Staged` record is durable.
    pub reply_before_staged: bool,
    /// After a restart, abort staged transactions without asking their participants.
    pub presume_staged_aborted: bool,
    /// Drop the last read of a committed outcome.
    pub drop_a_read: bool,
}

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// The participants transactions may name.
    pub participants: Vec<ParticipantId>,
    /// A transaction whose votes are not all in by then aborts.
    pub prepare_timeout: Duration,
    /// First interval before re-sending an unacknowledged `Commit`; doubles up to `redrive_max`.
    pub redrive_initial: Duration,
    pub redrive_max: Duration,
    /// Bound on transactions in the prepare phase; beyond it clients get `Busy`.
    pub max_preparing: usize,
    /// Bound on committed transactions awaiting acknowledgements; beyond it clients get `Busy`.
    pub max_committing: usize,
    /// Bounds of the client session table.
    pub sessions: SessionLimits,
    /// Largest encoded outcome a reply may carry (the client frame's limit less its headers):
    /// a transaction whose reads would not fit aborts instead of committing unanswerably.
    pub max_outcome_bytes: usize,
    pub limits: Limits,
    /// Bounds and defaults of interactive transactions.
    pub interactive: InteractiveConfig,
    /// Bounds and retry timing of sagas.
    pub saga: SagaConfig,
    pub hash_seed: u64,
    #[cfg(test)]
    pub bugs: CoordinatorBugs,
    #[cfg(test)]
    pub saga_bugs: SagaBugs,
}

impl CoordinatorConfig {
    pub fn new(participants: Vec<ParticipantId>) -> CoordinatorConfig {
        CoordinatorConfig {
            participants,
            prepare_timeout: Duration::from_secs(2),
            redrive_initial: Duration::from_millis(200),
            redrive_max: Duration::from_secs(5),
            max_preparing: 200_000,
            max_committing: 1_000_000,
            sessions: SessionLimits {
                sessions_max: 4096,
                sessions_per_identity_max: 64,
                outcomes_per_session: 4096,
                session_bytes_max: 512 * 1024,
            },
            max_outcome_bytes: 8 * 1024 * 1024,
            limits: Limits::default(),
            interactive: InteractiveConfig::default(),
            saga: SagaConfig::default(),
            hash_seed: 0,
            #[cfg(test)]
            bugs: CoordinatorBugs::default(),
            #[cfg(test)]
            saga_bugs: SagaBugs::default(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum VoteState {
    Pending,
    Yes,
    ReadOnly,
    No,
    Acked,
}

#[derive(Debug)]
struct Shard {
    participant: ParticipantId,
    vote: VoteState,
    /// Named in the `Staged` record: its Yes is part of the commit. Every participant of a
    /// transaction that writes anywhere (see [`stages_every_participant`]).
    staged: bool,
}

#[derive(Debug)]
enum Phase {
    Preparing {
        deadline: Time,
    },
    /// Staged by an earlier incarnation without an outcome: asking its participants.
    /// Never times out into an abort (its client may have heard `Committed`).
    Resolving {
        next_query: Time,
        backoff: Duration,
    },
    Committing {
        lsn: Lsn,
        next_redrive: Time,
        backoff: Duration,
    },
}

impl Phase {
    fn is_undecided(&self) -> bool {
        matches!(self, Phase::Preparing { .. } | Phase::Resolving { .. })
    }
}

#[derive(Debug)]
struct Tx {
    client: ClientId,
    seq: Seq,
    /// The `Staged` record's LSN; `Lsn::NONE` for a transaction without writes.
    staged: Lsn,
    phase: Phase,
    /// Inline for up to four participants: every vote and ack reads it, and a separate
    /// allocation was a cache miss on each (the hottest loads of `on_vote` and `on_ack`).
    shards: SmallVec<[Shard; 4]>,
    /// Every `Get` of the transaction (empty, without allocating, for a transfer): each
    /// vote's reads are checked against it, and a restart learns it from `Staged`.
    gets: Vec<GetAt>,
    reads: Vec<Read>,
    /// Committed without every read (resolved after a restart).
    reads_lost: bool,
    /// Began as an interactive transaction (counted in its own stats).
    interactive: bool,
}

impl Tx {
    /// A transaction entering its prepare round (one-shot or interactive): not yet staged,
    /// no reads collected, waiting for every shard's vote until `deadline`.
    fn preparing(
        client: ClientId,
        seq: Seq,
        deadline: Time,
        shards: SmallVec<[Shard; 4]>,
        gets: Vec<GetAt>,
        interactive: bool,
    ) -> Tx {
        Tx {
            client,
            seq,
            staged: Lsn::NONE,
            phase: Phase::Preparing { deadline },
            shards,
            gets,
            reads: Vec::new(),
            reads_lost: false,
            interactive,
        }
    }

    fn shard_mut(&mut self, participant: ParticipantId) -> Option<&mut Shard> {
        self.shards.iter_mut().find(|shard| shard.participant == participant)
    }

    fn all_voted(&self) -> bool {
        self.shards.iter().all(|shard| shard.vote != VoteState::Pending)
    }

    /// The `Commit` record this transaction was logged with.
    fn commit_record(&self, txid: TxId) -> CoordRecord {
        CoordRecord::Commit {
            txid,
            client: self.client,
            seq: self.seq,
            participants: self.yes_voters().collect(),
            reads: self.reads.clone(),
            reads_lost: self.reads_lost,
        }
    }

    /// What the client hears when this transaction commits.
    fn committed_outcome(&self) -> Outcome {
        if self.reads_lost {
            Outcome::CommittedReadsUnavailable
        } else {
            Outcome::Committed { reads: self.reads.clone() }
        }
    }

    /// The `Staged` record this transaction was logged with.
    fn staged_record(&self, txid: TxId) -> CoordRecord {
        CoordRecord::Staged {
            txid,
            client: self.client,
            seq: self.seq,
            participants: self.shards.iter().filter(|s| s.staged).map(|s| s.participant).collect(),
            gets: self.gets.clone(),
        }
    }

    fn yes_voters(&self) -> impl Iterator<Item = ParticipantId> + '_ {
        self.shards.iter().filter(|s| matches!(s.vote, VoteState::Yes | VoteState::Acked)).map(|s| s.participant)
    }

    /// Whether the `Staged` record alone carries the commit: every participant it names
    /// voted Yes (always so when staged, since only the sole participant of a transaction
    /// that writes nothing votes read-only; checked anyway, and the `Commit` record is
    /// waited for otherwise).
    fn committed_by_staging(&self) -> bool {
        self.staged != Lsn::NONE && self.shards.iter().all(|s| !s.staged || s.vote == VoteState::Yes)
    }
}

/// Counters for tests, metrics and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    pub committed: u64,
    pub aborted: u64,
    pub rejected_busy: u64,
    pub redrives: u64,
    /// Votes refused as not matching their transaction (counted as No).
    pub bad_votes: u64,
    /// Transactions committed without their reads (resolved after a restart).
    pub reads_lost: u64,
    pub sessions_registered: u64,
    pub sessions_expired: u64,
    /// Interactive transactions (also counted in `committed`/`aborted` above).
    pub interactive: InteractiveStats,
}

#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    epoch: Epoch,
    /// Prepares are gated on this: the epoch must be durable before its txids are used.
    epoch_lsn: Lsn,
    next_counter: u64,
    log: LogCursor,
    txs: TxTable<Tx>,
    preparing: usize,
    committing: usize,
    sessions: Sessions,
    timers: Timers,
    stats: CoordinatorStats,
    /// Participants the driver reported unreachable (no connection); small, bounded by the
    /// configured participants.
    unreachable: Vec<ParticipantId>,
    /// Open interactive transactions, their timers and the wait-for graph.
    interactive: OpenTxs,
    /// Sagas in flight.
    sagas: Sagas,
}

impl Coordinator {
    /// Rebuilds the coordinator from its log (oldest first; empty for a new node) and starts a
    /// new epoch. The epoch record, the re-driven commits of unfinished transactions and the
    /// queries about staged ones without an outcome are in `fx`.
    pub fn recover(
        config: CoordinatorConfig,
        log: impl IntoIterator<Item = (Lsn, CoordRecord)>,
        now: Time,
        fx: &mut CoordEffects,
    ) -> Coordinator {
        Coordinator::recover_from(config, None, log, now, fx)
    }

    /// Like [`recover`](Self::recover), starting from a checkpoint: records the checkpoint
    /// covers (LSN at or below its own) may still be in the log and are skipped; the rest
    /// must follow it without a gap.
    pub fn recover_from(
        config: CoordinatorConfig,
        checkpoint: Option<CoordinatorSnapshot>,
        log: impl IntoIterator<Item = (Lsn, CoordRecord)>,
        now: Time,
        fx: &mut CoordEffects,
    ) -> Coordinator {
        // No floor: the epoch is one above the log's highest.
        Coordinator::recover_as_leader(config, checkpoint, log, Epoch(0), now, fx)
    }

    /// Like [`recover_from`](Self::recover_from), for the leader of a replicated group: its
    /// epoch is at least `epoch_floor` (derived from its Raft term, which no earlier leader
    /// reached), and above every epoch in the committed log, so participants refuse any
    /// earlier leader's messages as stale once they have seen this one's.
    pub fn recover_as_leader(
        config: CoordinatorConfig,
        checkpoint: Option<CoordinatorSnapshot>,
        log: impl IntoIterator<Item = (Lsn, CoordRecord)>,
        epoch_floor: Epoch,
        now: Time,
        fx: &mut CoordEffects,
    ) -> Coordinator {
        let mut sessions = Sessions::new(config.sessions, config.hash_seed);
        let mut unfinished: HashMap<TxId, (Lsn, CoordRecord), SeededState> =
            HashMap::with_hasher(SeededState::new(config.hash_seed));
        let mut staged: HashMap<TxId, (Lsn, CoordRecord), SeededState> =
            HashMap::with_hasher(SeededState::new(config.hash_seed));
        let mut sagas = SagaReplay::default();
        let mut last_epoch = Epoch(0);
        let mut last_lsn = Lsn::NONE;
        let covered = checkpoint.as_ref().map_or(Lsn::NONE, |checkpoint| checkpoint.lsn);
        if let Some(checkpoint) = checkpoint {
            last_epoch = checkpoint.max_epoch;
            last_lsn = checkpoint.lsn;
            sessions.import(checkpoint.sessions);
            for (lsn, record) in checkpoint.unfinished {
                match record {
                    CoordRecord::Commit { txid, .. } => {
                        sagas.committed(txid, lsn);
                        unfinished.insert(txid, (lsn, record));
                    }
                    CoordRecord::Staged { txid, .. } => {
                        staged.insert(txid, (lsn, record));
                    }
                    ref saga if SagaReplay::is_saga_record(saga) => {
                        let ended = sagas.apply(lsn, record);
                        assert!(ended.is_none(), "a checkpoint holds unfinished sagas only");
                    }
                    _ => unreachable!("checked when decoded"),
                };
            }
        }
        for (lsn, record) in log {
            if lsn <= covered {
                continue; // The checkpoint holds what this record meant.
            }
            assert!(
                last_lsn == Lsn::NONE || lsn == last_lsn.next(),
                "log LSNs not consecutive: {last_lsn:?} then {lsn:?}"
            );
            last_lsn = lsn;
            match record {
                CoordRecord::Epoch { epoch } => last_epoch = last_epoch.max(epoch),
                CoordRecord::Staged { txid, .. } => {
                    staged.insert(txid, (lsn, record));
                }
                CoordRecord::Commit { txid, client, seq, ref reads, reads_lost, .. } => {
                    let outcome = if reads_lost {
                        Outcome::CommittedReadsUnavailable
                    } else {
                        Outcome::Committed { reads: reads.clone() }
                    };
                    sessions.finish(client, seq, &outcome, lsn);
                    staged.remove(&txid);
                    sagas.committed(txid, lsn);
                    unfinished.insert(txid, (lsn, record));
                }
                CoordRecord::Register { client, ref identity, expired } => {
                    sessions.register(client, identity, expired);
                }
                CoordRecord::End { txid } => {
                    staged.remove(&txid);
                    unfinished.remove(&txid);
                }
                CoordRecord::Abort { txid } => {
                    staged.remove(&txid);
                    unfinished.remove(&txid);
                    sagas.aborted(txid);
                }
                CoordRecord::SagaBegin { .. }
                | CoordRecord::SagaAttempt { .. }
                | CoordRecord::SagaStepDone { .. }
                | CoordRecord::SagaCompensate { .. }
                | CoordRecord::SagaEnd { .. } => {
                    if let Some((client, seq, outcome)) = sagas.apply(lsn, record) {
                        sessions.finish(client, seq, &outcome, lsn);
                    }
                }
            }
        }
        let epoch = Epoch(last_epoch.0 + 1).max(epoch_floor);
        assert!(epoch <= Epoch::MAX, "coordinator epochs exhausted");
        let mut coordinator = Coordinator {
            epoch,
            epoch_lsn: Lsn::NONE,
            next_counter: 1,
            log: LogCursor::after(last_lsn),
            txs: TxTable::new(config.hash_seed),
            preparing: 0,
            committing: 0,
            sessions,
            timers: Timers::default(),
            stats: CoordinatorStats::default(),
            unreachable: Vec::new(),
            interactive: OpenTxs::new(&config.interactive, config.hash_seed),
            sagas: Sagas::new(config.hash_seed),
            config,
        };
        coordinator.epoch_lsn = coordinator.log.append(fx, CoordRecord::Epoch { epoch });
        let mut redrive: Vec<(Lsn, CoordRecord)> = unfinished.into_values().collect();
        redrive.sort_by_key(|(lsn, _)| *lsn);
        for (lsn, record) in redrive {
            coordinator.resume_commit(now, lsn, record, fx);
        }
        let mut resolve: Vec<(Lsn, CoordRecord)> = staged.into_values().collect();
        coordinator.planted_presumed_abort(&mut resolve);
        resolve.sort_by_key(|(lsn, _)| *lsn);
        for (lsn, record) in resolve {
            coordinator.resume_staged(now, lsn, record, fx);
        }
        coordinator.resume_sagas(now, sagas, fx);
        coordinator
    }

    /// A checkpoint of everything the log up to the last appended record still matters for
    /// (see [`CoordinatorSnapshot`]). Call it between steps; keep it only once its LSN is
    /// durable, then the log up to it may be truncated.
    pub fn snapshot(&self) -> CoordinatorSnapshot {
        let mut unfinished: Vec<(Lsn, CoordRecord)> = self
            .txs
            .iter()
            .filter_map(|(txid, tx)| match tx.phase {
                Phase::Committing { lsn, .. } => Some((lsn, tx.commit_record(txid))),
                Phase::Preparing { .. } | Phase::Resolving { .. } if tx.staged != Lsn::NONE => {
                    Some((tx.staged, tx.staged_record(txid)))
                }
                Phase::Preparing { .. } | Phase::Resolving { .. } => None,
            })
            .collect();
        unfinished.extend(self.sagas.checkpoint_records());
        unfinished.sort_by_key(|(lsn, _)| *lsn);
        CoordinatorSnapshot {
            lsn: self.log.last(),
            max_epoch: self.epoch,
            sessions: self.sessions.export(),
            unfinished,
        }
    }

    fn resume_commit(&mut self, now: Time, lsn: Lsn, record: CoordRecord, fx: &mut CoordEffects) {
        let CoordRecord::Commit { txid, client, seq, participants, reads, reads_lost } = record else {
            unreachable!("only commit records are resumed")
        };
        let shards =
            participants.iter().map(|&participant| Shard { participant, vote: VoteState::Yes, staged: true }).collect();
        let phase = Phase::Committing { lsn, next_redrive: now, backoff: self.config.redrive_initial };
        let tx = Tx {
            client,
            seq,
            staged: Lsn::NONE,
            phase,
            shards,
            gets: Vec::new(),
            reads,
            reads_lost,
            interactive: false,
        };
        self.txs.insert(txid, tx);
        self.committing += 1;
        self.redrive(now, txid, fx);
    }

    /// A transaction an earlier incarnation staged and did not decide: its client may have
    /// heard `Committed` (if every participant had voted Yes), so it is resolved from the
    /// participants, never presumed aborted. Their answers bring back the reads they still
    /// hold; if any `Get` stays unanswered (a read-only participant released everything, a
    /// participant restarted) the commit is `CommittedReadsUnavailable`, never a `Committed`
    /// lacking a read.
    fn resume_staged(&mut self, now: Time, lsn: Lsn, record: CoordRecord, fx: &mut CoordEffects) {
        let CoordRecord::Staged { txid, client, seq, participants, gets } = record else {
            unreachable!("only staged records are resolved")
        };
        let shards = participants
            .iter()
            .map(|&participant| Shard { participant, vote: VoteState::Pending, staged: true })
            .collect();
        let phase = Phase::Resolving { next_query: now, backoff: self.config.redrive_initial };
        let tx = Tx {
            client,
            seq,
            staged: lsn,
            phase,
            shards,
            gets,
            reads: Vec::new(),
            reads_lost: false,
            interactive: false,
        };
        self.txs.insert(txid, tx);
        self.preparing += 1;
        if self.sessions.is_new(client, seq) {
            // A retry waits for the resolution instead of running the request again. This
            // fails only if the client already has the table's whole window in flight, which
            // the staged requests of two crashed incarnations together could reach; a retry
            // of this request would then run again, as one the table forgot does.
            let _ = self.sessions.begin(client, seq, txid);
        }
        self.query(now, txid, fx);
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The LSN of the last record appended: what a [`snapshot`](Self::snapshot) now covers.
    pub fn last_lsn(&self) -> Lsn {
        self.log.last()
    }

    pub fn stats(&self) -> CoordinatorStats {
        self.stats
    }

    /// Transactions not yet forgotten (preparing, or committed and awaiting acks).
    pub fn unfinished(&self) -> usize {
        self.txs.len()
    }

    pub fn preparing(&self) -> usize {
        self.preparing
    }

    pub fn next_deadline(&self) -> Option<Time> {
        match (self.timers.next_deadline(), self.interactive.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    fn is_known(&self, participant: ParticipantId) -> bool {
        self.config.participants.contains(&participant)
    }

    /// The driver lost its connection to `participant`. Transactions still waiting for its
    /// vote abort now, and new ones that name it are refused, instead of each waiting out
    /// its prepare timeout: nothing was decided for them, so presumed abort allows it (a
    /// vote that was on its way is answered `Abort` when the participant asks).
    pub fn participant_unreachable(&mut self, participant: ParticipantId, fx: &mut CoordEffects) {
        if !self.is_known(participant) || self.unreachable.contains(&participant) {
            return;
        }
        self.unreachable.push(participant);
        let mut waiting: Vec<TxId> = self
            .txs
            .iter()
            .filter(|(_, tx)| matches!(tx.phase, Phase::Preparing { .. }))
            .filter(|(_, tx)| tx.shards.iter().any(|s| s.participant == participant && s.vote == VoteState::Pending))
            .map(|(txid, _)| txid)
            .collect();
        waiting.sort_unstable(); // Deterministic order of the replies.
        for txid in waiting {
            self.abort(txid, AbortReason::Unavailable { participant }, fx);
        }
        self.lose_open(participant, fx);
    }

    /// The driver is connected to `participant` again.
    pub fn participant_reachable(&mut self, participant: ParticipantId) {
        self.unreachable.retain(|&p| p != participant);
    }

    fn reply(&self, fx: &mut CoordEffects, after: Lsn, reply: Reply) {
        fx.send(after, CoordOutput::ToClient(reply));
    }

    fn reply_to_conn(&self, fx: &mut CoordEffects, after: Lsn, conn: u64, reply: Reply) {
        fx.send(after, CoordOutput::ToConnection { conn, reply });
    }

    fn warn(&self, fx: &mut CoordEffects, warning: String) {
        fx.send(Lsn::NONE, CoordOutput::Warning(warning));
    }

    /// Whether `client` is a session of `identity`: the driver routes a session's replies
    /// only to connections for which this held when they submitted.
    pub fn session_owner_is(&self, client: ClientId, identity: &str) -> bool {
        self.sessions.owner_is(client, identity)
    }

    /// Opens session `client` without a record, for tests that start from a fresh table.
    #[cfg(test)]
    pub(crate) fn adopt_session(&mut self, client: ClientId, identity: &str) {
        self.sessions.register(client, identity, None);
    }

    /// The session table (for metrics and tests).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// A client asks for a session, bound to its connection's identity. The answer waits for
    /// the `Register` record; nothing is recorded when it is refused.
    fn on_register(&mut self, origin: ClientOrigin, nonce: u64, fx: &mut CoordEffects) {
        let expired = match self.sessions.plan_registration(origin.identity) {
            Ok(expired) => expired,
            Err(reason) => {
                return self.reply_to_conn(fx, Lsn::NONE, origin.conn, Reply::RegisterRefused { nonce, reason });
            }
        };
        let client = ClientId(self.allocate_txid(fx).0);
        let record = CoordRecord::Register { client, identity: origin.identity.to_string(), expired };
        let lsn = self.log.append(fx, record);
        self.sessions.register(client, origin.identity, expired);
        self.stats.sessions_registered += 1;
        self.stats.sessions_expired += u64::from(expired.is_some());
        self.reply_to_conn(fx, lsn, origin.conn, Reply::Registered { nonce, client });
    }

    fn send(&self, fx: &mut CoordEffects, after: Lsn, to: ParticipantId, message: ToParticipant) {
        fx.send(after, CoordOutput::ToParticipant(to, message));
    }

    /// A client's request from `origin`: a registration or a transaction on a session.
    pub fn on_submit(&mut self, now: Time, origin: ClientOrigin, submit: Submit, fx: &mut CoordEffects) {
        if let Some(nonce) = submit.registration_nonce() {
            return self.on_register(origin, nonce, fx);
        }
        let Submit { client, seq, ops } = submit;
        if !self.admit(origin, client, seq, fx) {
            return;
        }
        if let Err(detail) = self.config.limits.check_ops(&ops) {
            return self.finish_unexecuted(client, seq, AbortReason::Invalid { detail }, fx);
        }
        if let Some(op) = ops.iter().find(|op| !self.is_known(op.participant)) {
            let reason = AbortReason::UnknownParticipant { participant: op.participant };
            return self.finish_unexecuted(client, seq, reason, fx);
        }
        if let Some(op) = ops.iter().find(|op| self.unreachable.contains(&op.participant)) {
            let reason = AbortReason::Unavailable { participant: op.participant };
            return self.finish_unexecuted(client, seq, reason, fx);
        }
        if self.preparing >= self.config.max_preparing || self.committing >= self.config.max_committing {
            return self.reject_busy(client, seq, fx);
        }
        let txid = self.allocate_txid(fx);
        if self.sessions.begin(client, seq, txid).is_err() {
            return self.reject_busy(client, seq, fx);
        }
        self.start_prepare(now, txid, client, seq, ops, Lsn::NONE, fx);
    }

    /// Exactly-once admission of request `(client, seq)` from `origin`: true if it is new
    /// and must run; otherwise it was answered (or its answer will follow the decision).
    #[inline]
    fn admit(&mut self, origin: ClientOrigin, client: ClientId, seq: Seq, fx: &mut CoordEffects) -> bool {
        match self.sessions.lookup(client, origin.identity, seq) {
            Known::New => return true,
            Known::InFlight(_) => {} // A retry: the reply follows the decision.
            Known::Done { outcome, after } => self.reply(fx, after, Reply::Outcome { client, seq, outcome }),
            Known::Answered { answer, after } => self.reply(fx, after, answer.into_reply(client, seq)),
            Known::TooOld => {
                self.reply(fx, Lsn::NONE, Reply::Rejected { client, seq, reason: RejectReason::SeqTooOld });
            }
            Known::Expired => {
                // After everything logged so far: a `Register` that expired the session may
                // still be on its way to the disk, and a restart must not revive it.
                let reply = Reply::Rejected { client, seq, reason: RejectReason::SessionExpired };
                self.reply_to_conn(fx, self.log.last(), origin.conn, reply);
            }
            Known::NotOwner => {
                let reply = Reply::Rejected { client, seq, reason: RejectReason::NotSessionOwner };
                self.reply_to_conn(fx, Lsn::NONE, origin.conn, reply);
            }
        }
        false
    }

    fn reject_busy(&mut self, client: ClientId, seq: Seq, fx: &mut CoordEffects) {
        self.stats.rejected_busy += 1;
        self.reply(fx, Lsn::NONE, Reply::Rejected { client, seq, reason: RejectReason::Busy });
    }

    fn finish_unexecuted(&mut self, client: ClientId, seq: Seq, reason: AbortReason, fx: &mut CoordEffects) {
        self.stats.aborted += 1;
        let outcome = Outcome::Aborted { reason };
        self.sessions.finish(client, seq, &outcome, Lsn::NONE);
        self.reply(fx, Lsn::NONE, Reply::Outcome { client, seq, outcome });
    }

    fn allocate_txid(&mut self, fx: &mut CoordEffects) -> TxId {
        if self.next_counter > TxId::COUNTER_MAX {
            // Counter space of this epoch used up: move to a fresh epoch.
            self.epoch = Epoch(self.epoch.0 + 1);
            assert!(self.epoch <= Epoch::MAX, "coordinator epochs exhausted");
            self.epoch_lsn = self.log.append(fx, CoordRecord::Epoch { epoch: self.epoch });
            self.next_counter = 1;
        }
        let txid = TxId::new(self.epoch, self.next_counter);
        self.next_counter += 1;
        txid
    }

    /// Starts the prepare round of `ops`; the prepares wait for the epoch record and for
    /// `gate` (a saga attempt's record; `Lsn::NONE` for a client's transaction).
    #[allow(clippy::too_many_arguments)]
    fn start_prepare(
        &mut self,
        now: Time,
        txid: TxId,
        client: ClientId,
        seq: Seq,
        ops: Vec<Op>,
        gate: Lsn,
        fx: &mut CoordEffects,
    ) {
        let (per_participant, gets) = split_ops(ops);
        let staged =
            stages_every_participant(per_participant.iter().map(|(_, ops)| ops.iter().any(|op| op.kind.is_write())));
        let shards: SmallVec<[Shard; 4]> = per_participant
            .iter()
            .map(|(participant, _)| Shard { participant: *participant, vote: VoteState::Pending, staged })
            .collect();
        let tx = Tx::preparing(client, seq, now + self.config.prepare_timeout, shards, gets, false);
        self.track_prepare(now, txid, tx, fx);
        let sole = per_participant.len() == 1;
        let gate = self.epoch_lsn.max(gate);
        for (participant, ops) in per_participant {
            self.send(fx, gate, participant, ToParticipant::Prepare { txid, ops, sole });
        }
    }

    /// Enters `tx` into the prepare phase: staged (if it writes anywhere), tracked, timed.
    /// The caller sends its prepares (one-shot `Prepare`, or interactive `PrepareExecuted`).
    #[inline]
    fn track_prepare(&mut self, now: Time, txid: TxId, mut tx: Tx, fx: &mut CoordEffects) {
        // Reads only: nothing to stage, nothing to resolve after a crash.
        if tx.shards.iter().any(|shard| shard.staged) {
            tx.staged = self.log.append(fx, tx.staged_record(txid));
        }
        self.txs.insert(txid, tx);
        self.preparing += 1;
        self.timers.schedule(now, self.config.prepare_timeout, txid);
    }

    /// A participant's message.
    pub fn on_message(&mut self, now: Time, from: ParticipantId, message: ToCoordinator, fx: &mut CoordEffects) {
        self.sagas.observe_time(now);
        match message {
            ToCoordinator::Vote { txid, vote } => self.on_vote(now, from, txid, vote, fx),
            ToCoordinator::Ack { txid } => self.on_ack(from, txid, fx),
            ToCoordinator::Inquiry { txid } => self.on_inquiry(from, txid, fx),
            ToCoordinator::Executed { txid, result } => self.on_executed(now, from, txid, result, fx),
            ToCoordinator::WaitFor { waiter, key, holders } => self.on_wait_for(now, from, waiter, key, holders, fx),
        }
    }

    fn on_vote(&mut self, now: Time, from: ParticipantId, txid: TxId, vote: Vote, fx: &mut CoordEffects) {
        let value_bytes_max = self.config.limits.max_value_bytes;
        let Some(tx) = self.txs.get_mut(txid) else {
            // Decided and forgotten, or from before a restart: it can never commit.
            if matches!(vote, Vote::Yes { .. }) {
                self.send(fx, Lsn::NONE, from, ToParticipant::Abort { txid });
            }
            return;
        };
        if !tx.phase.is_undecided() {
            return; // A duplicate of a vote already counted.
        }
        let resolving = matches!(tx.phase, Phase::Resolving { .. });
        let Some(at) = tx.shards.iter().position(|shard| shard.participant == from) else { return };
        if tx.shards[at].vote != VoteState::Pending {
            return;
        }
        let (state, reads) = match vote {
            Vote::Yes { reads } => (VoteState::Yes, reads),
            Vote::ReadOnly { reads } => (VoteState::ReadOnly, reads),
            Vote::No { reason } => {
                tx.shards[at].vote = VoteState::No;
                return self.abort(txid, reason, fx);
            }
        };
        match check_reads(from, &tx.gets, &reads, value_bytes_max) {
            Ok(()) => {
                tx.shards[at].vote = state;
                tx.reads.extend(reads);
            }
            // Prepared, so it counts as Yes: the client may have heard Committed already.
            // Only the reads are not trusted.
            Err(_) if resolving && state == VoteState::Yes => {
                tx.shards[at].vote = state;
                tx.reads_lost = true;
            }
            Err(detail) => {
                tx.shards[at].vote = VoteState::No;
                self.stats.bad_votes += 1;
                self.warn(fx, format!("{from} voted on {txid} with reads that do not match it: {detail}"));
                return self.abort(txid, AbortReason::BadVote { participant: from, detail }, fx);
            }
        }
        if tx.all_voted() {
            self.commit(now, txid, fx);
        }
    }

    fn abort(&mut self, txid: TxId, reason: AbortReason, fx: &mut CoordEffects) {
        let tx = self.txs.remove(txid).expect("aborting a known transaction");
        debug_assert!(tx.phase.is_undecided(), "a committed transaction never aborts");
        self.preparing -= 1;
        self.stats.aborted += 1;
        if tx.interactive {
            self.stats.interactive.count_abort(&reason);
        }
        // Participants may hear it at once: one that aborts answers No to any later query,
        // so the transaction resolves to abort whether or not the record below survives.
        for shard in &tx.shards {
            if matches!(shard.vote, VoteState::Pending | VoteState::Yes) {
                self.send(fx, Lsn::NONE, shard.participant, ToParticipant::Abort { txid });
            }
        }
        // The client only once a restart can no longer resolve the staged record to commit
        // (every participant may have prepared while a vote was lost, say).
        let after = if tx.staged == Lsn::NONE { Lsn::NONE } else { self.log.append(fx, CoordRecord::Abort { txid }) };
        if self.sagas.is_attempt(txid) {
            return self.saga_attempt_decided(txid, Err(reason), fx);
        }
        let outcome = Outcome::Aborted { reason };
        self.sessions.finish(tx.client, tx.seq, &outcome, after);
        self.reply(fx, after, Reply::Outcome { client: tx.client, seq: tx.seq, outcome });
    }

    fn commit(&mut self, now: Time, txid: TxId, fx: &mut CoordEffects) {
        let max_outcome_bytes = self.config.max_outcome_bytes;
        let tx = self.txs.get_mut(txid).expect("committing a known transaction");
        let resolving = matches!(tx.phase, Phase::Resolving { .. });
        let reads_bytes = encoded_reads_bytes(&tx.reads);
        if reads_bytes > max_outcome_bytes && !resolving {
            let detail = format!("the reads take {reads_bytes} bytes, more than a reply holds ({max_outcome_bytes})");
            return self.abort(txid, AbortReason::Invalid { detail }, fx);
        }
        tx.reads.sort_by_key(|read| read.index);
        // Each read passed `check_reads`: one per Get, no two alike, so the count tells.
        if tx.reads.len() != tx.gets.len() || reads_bytes > max_outcome_bytes {
            tx.reads_lost = true;
        }
        if tx.reads_lost {
            tx.reads = Vec::new();
            self.stats.reads_lost += 1;
        }
        self.planted_dropped_read(txid);
        let tx = self.txs.get_mut(txid).expect("committing a known transaction");
        let participants: Vec<ParticipantId> = tx.yes_voters().collect();
        let (client, seq, reads, reads_lost) = (tx.client, tx.seq, tx.reads.clone(), tx.reads_lost);
        self.preparing -= 1;
        self.stats.committed += 1;
        self.stats.interactive.committed += u64::from(tx.interactive);
        let outcome = tx.committed_outcome();
        if participants.is_empty() || tx.staged == Lsn::NONE {
            // Wrote nothing anywhere: nothing to commit, no record. Yes voters (participants
            // of a transaction with several, holding its read locks durably) are released
            // with Abort: for a participant without writes commit and abort are the same
            // release, and Abort is what presumed abort answers its inquiry with anyway.
            let staged = tx.staged;
            self.txs.remove(txid);
            if staged != Lsn::NONE {
                self.log.append(fx, CoordRecord::End { txid }); // Spares a restart a resolution.
            }
            for participant in participants {
                self.send(fx, Lsn::NONE, participant, ToParticipant::Abort { txid });
            }
            if self.sagas.is_attempt(txid) {
                return self.saga_attempt_decided(txid, Ok(()), fx);
            }
            self.sessions.finish(client, seq, &outcome, Lsn::NONE);
            return self.reply(fx, Lsn::NONE, Reply::Outcome { client, seq, outcome });
        }
        let by_staging = tx.committed_by_staging().then_some(tx.staged);
        let record = CoordRecord::Commit { txid, client, seq, participants: participants.clone(), reads, reads_lost };
        let lsn = self.log.append(fx, record);
        let next_redrive = now + self.config.redrive_initial;
        tx.phase = Phase::Committing { lsn, next_redrive, backoff: self.config.redrive_initial };
        self.committing += 1;
        self.timers.schedule(now, self.config.redrive_initial, txid);
        let reply_gate = self.reply_gate(by_staging.unwrap_or(lsn));
        let saga_attempt = self.sagas.is_attempt(txid);
        if !saga_attempt {
            self.sessions.finish(client, seq, &outcome, reply_gate);
            self.reply(fx, reply_gate, Reply::Outcome { client, seq, outcome });
        }
        let gate = self.commit_gate(lsn);
        for participant in participants {
            self.send(fx, gate, participant, ToParticipant::Commit { txid });
        }
        if saga_attempt {
            self.saga_attempt_decided(txid, Ok(()), fx);
        }
    }

    #[cfg(not(test))]
    fn commit_gate(&self, lsn: Lsn) -> Lsn {
        lsn
    }

    #[cfg(test)]
    fn commit_gate(&self, lsn: Lsn) -> Lsn {
        if self.config.bugs.commit_before_durable { Lsn::NONE } else { lsn }
    }

    #[cfg(not(test))]
    fn planted_dropped_read(&mut self, _txid: TxId) {}

    #[cfg(test)]
    fn planted_dropped_read(&mut self, txid: TxId) {
        if self.config.bugs.drop_a_read {
            self.txs.get_mut(txid).expect("committing").reads.pop();
        }
    }

    #[cfg(not(test))]
    fn planted_presumed_abort(&self, _staged: &mut Vec<(Lsn, CoordRecord)>) {}

    #[cfg(test)]
    fn planted_presumed_abort(&self, staged: &mut Vec<(Lsn, CoordRecord)>) {
        if self.config.bugs.presume_staged_aborted {
            staged.clear();
        }
    }

    #[cfg(not(test))]
    fn reply_gate(&self, lsn: Lsn) -> Lsn {
        lsn
    }

    #[cfg(test)]
    fn reply_gate(&self, lsn: Lsn) -> Lsn {
        if self.config.bugs.reply_before_staged { Lsn::NONE } else { lsn }
    }

    fn on_ack(&mut self, from: ParticipantId, txid: TxId, fx: &mut CoordEffects) {
        let Some(tx) = self.txs.get_mut(txid) else { return };
        if !matches!(tx.phase, Phase::Committing { .. }) {
            return;
        }
        if let Some(shard) = tx.shard_mut(from)
            && shard.vote == VoteState::Yes
        {
            shard.vote = VoteState::Acked;
        }
        if tx.shards.iter().any(|shard| shard.vote == VoteState::Yes) {
            return;
        }
        self.txs.remove(txid);
        self.committing -= 1;
        // Not forced: losing it only means re-driving a commit that is already applied.
        self.log.append(fx, CoordRecord::End { txid });
    }

    fn on_inquiry(&mut self, from: ParticipantId, txid: TxId, fx: &mut CoordEffects) {
        match self.txs.get(txid).map(|tx| &tx.phase) {
            Some(Phase::Committing { lsn, .. }) => {
                let gate = *lsn;
                self.send(fx, gate, from, ToParticipant::Commit { txid });
            }
            Some(Phase::Preparing { .. }) => {} // Undecided: the decision will be sent.
            // Only a prepared participant asks: ask it back, in case the query was lost.
            Some(Phase::Resolving { .. }) => self.send(fx, self.epoch_lsn, from, ToParticipant::Query { txid }),
            None => self.send(fx, Lsn::NONE, from, ToParticipant::Abort { txid }),
        }
    }

    /// Time passed: abort prepares that timed out, re-send unacknowledged commits, roll back
    /// idle interactive transactions.
    pub fn on_tick(&mut self, now: Time, fx: &mut CoordEffects) {
        self.sagas.observe_time(now);
        self.tick_open(now, fx);
        while let Some(txid) = self.timers.pop_due(now) {
            let Some(tx) = self.txs.get(txid) else {
                self.saga_timer(now, txid, fx);
                continue;
            };
            match tx.phase {
                Phase::Preparing { deadline } if deadline <= now => {
                    let silent = tx.shards.iter().find(|s| s.vote == VoteState::Pending).expect("a pending voter");
                    let reason = AbortReason::Timeout { participant: silent.participant };
                    self.abort(txid, reason, fx);
                }
                Phase::Committing { next_redrive, .. } if next_redrive <= now => self.redrive(now, txid, fx),
                Phase::Resolving { next_query, .. } if next_query <= now => self.query(now, txid, fx),
                _ => {} // A stale timer entry.
            }
        }
    }

    /// Asks the participants of a transaction being resolved that have not answered yet,
    /// again after a backoff. Gated on the epoch record, like prepares: the answer is only
    /// good once the participant knows this incarnation's epoch.
    fn query(&mut self, now: Time, txid: TxId, fx: &mut CoordEffects) {
        let tx = self.txs.get_mut(txid).expect("resolving a known transaction");
        let Phase::Resolving { next_query, backoff } = &mut tx.phase else {
            unreachable!("a query about a transaction not being resolved")
        };
        let delay = step_backoff(now, next_query, backoff, self.config.redrive_max);
        let silent: SmallVec<[ParticipantId; 4]> =
            tx.shards.iter().filter(|s| s.vote == VoteState::Pending).map(|s| s.participant).collect();
        self.timers.schedule(now, delay, txid);
        for participant in silent {
            self.send(fx, self.epoch_lsn, participant, ToParticipant::Query { txid });
        }
    }

    fn redrive(&mut self, now: Time, txid: TxId, fx: &mut CoordEffects) {
        let tx = self.txs.get_mut(txid).expect("re-driving a known transaction");
        let Phase::Committing { lsn, next_redrive, backoff } = &mut tx.phase else {
            unreachable!("re-drive of an undecided transaction")
        };
        let delay = step_backoff(now, next_redrive, backoff, self.config.redrive_max);
        let lsn = *lsn;
        let pending: Vec<ParticipantId> =
            tx.shards.iter().filter(|s| s.vote == VoteState::Yes).map(|s| s.participant).collect();
        self.timers.schedule(now, delay, txid);
        self.stats.redrives += 1;
        for participant in pending {
            self.send(fx, lsn, participant, ToParticipant::Commit { txid });
        }
    }
}

/// Whether a transaction whose participants write as `writes_at` says is staged, naming
/// every participant (true) or none (false: it writes nowhere, nothing to resolve).
///
/// Every participant, not only those that write: with several participants one that only
/// reads votes Yes after a durable `Prepared` record and holds its read locks until the
/// decision, so its vote is part of the commit. A restart that asked only the writers could
/// commit although the reader voted No (or never prepared, its open transaction rolled
/// back): the transaction's reads there would not have been locked to its commit point.
/// The sole participant of a transaction that writes is a writer, so nothing changes there.
fn stages_every_participant(mut writes_at: impl Iterator<Item = bool>) -> bool {
    writes_at.any(|writes| writes)
}

/// A request's ops grouped by participant: inline for up to four participants (nearly every
/// transaction), since the list lives only until its prepares are sent and a heap
/// allocation for it per request bought nothing.
type OpsPerParticipant = SmallVec<[(ParticipantId, Vec<LocalOp>); 4]>;

/// Groups a client's ops by participant, each tagged with its position in the request, and
/// lists the `Get`s (one-shot Prepares and interactive Executes alike).
fn split_ops(ops: Vec<Op>) -> (OpsPerParticipant, Vec<GetAt>) {
    let mut per_participant = OpsPerParticipant::new();
    let mut gets = Vec::new();
    for (index, op) in ops.into_iter().enumerate() {
        // A statement's rows come back as its read, checked and routed like a Get's value.
        if op.kind.answers_with_read() {
            gets.push(GetAt { index: index as u16, participant: op.participant });
        }
        let local = LocalOp { index: index as u16, key: op.key, kind: op.kind };
        match per_participant.iter_mut().find(|(p, _)| *p == op.participant) {
            Some((_, list)) => list.push(local),
            None => per_participant.push((op.participant, vec![local])),
        }
    }
    (per_participant, gets)
}

/// Checks the reads a participant voted with against the transaction's `Get`s there: one
/// read per `Get`, each naming one of them, none twice, values within the limit.
fn check_reads(from: ParticipantId, gets: &[GetAt], reads: &[Read], value_bytes_max: usize) -> Result<(), String> {
    let expected = gets.iter().filter(|get| get.participant == from).count();
    if reads.len() != expected {
        return Err(format!("{} reads for the {expected} Gets sent there", reads.len()));
    }
    for (position, read) in reads.iter().enumerate() {
        if !gets.iter().any(|get| get.participant == from && get.index == read.index) {
            return Err(format!("a read for op {}, which is no Get sent there", read.index));
        }
        if reads[..position].iter().any(|earlier| earlier.index == read.index) {
            return Err(format!("two reads for op {}", read.index));
        }
        if let Some(value) = &read.value
            && value.len() > value_bytes_max
        {
            return Err(format!(
                "a read of {} bytes for op {}, above the limit of {value_bytes_max}",
                value.len(),
                read.index
            ));
        }
    }
    Ok(())
}

/// Bytes the reads take in an encoded outcome (tag, count, then each read).
fn encoded_reads_bytes(reads: &[Read]) -> usize {
    3 + reads.iter().map(|read| 3 + read.value.as_ref().map_or(0, |value| 4 + value.len())).sum::<usize>()
}

#[cfg(test)]
mod interactive_tests;
#[cfg(test)]
mod leader_tests;
#[cfg(test)]
mod tests;
