//! The 3PC participant, with the termination protocol it runs with its peers when the
//! coordinator is lost (see the module doc of [`super`] for the rules).
//!
//! Per transaction: `Preparing` (the driver's resource manager works on the payload) →
//! `Uncertain` (voted Yes, record forced) → `PreCommitted` (record forced) → `Decided`
//! (record forced). A participant that has not voted Yes may abort on its own at any time;
//! one that has may not.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Envelope, Message, PARTICIPANTS_MAX, PartEffects3, PartRecord3, Peer, ReportedState, Timeouts, backup_of};
use crate::effects::LogCursor;
use crate::types::{Lsn, ParticipantId, TxId};

/// What a participant asks its driver to do.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PartOutput {
    Send(Envelope),
    /// Prepare `payload` in the resource manager, then call
    /// [`ThreePcParticipant::prepared`] with the answer.
    Prepare {
        txid: TxId,
        payload: Vec<u8>,
    },
    /// Commit or roll back what the resource manager prepared for `txid`.
    Apply {
        txid: TxId,
        commit: bool,
    },
    /// `from` said `txid` was decided otherwise than here: the split a partition can cause
    /// (never applied; the operator must reconcile).
    SplitDecision {
        txid: TxId,
        ours: bool,
        heard: bool,
        from: Peer,
    },
    /// Input that makes no sense here (logged by the driver, otherwise ignored).
    Warning(String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Preparing,
    Uncertain,
    PreCommitted,
    Decided(bool),
}

/// This participant runs termination round `round` as its backup.
#[derive(Debug)]
struct BackupRun {
    round: u32,
    stage: Stage,
    deadline: u64,
    next_resend: u64,
}

#[derive(Debug)]
enum Stage {
    Collecting { reports: BTreeMap<ParticipantId, ReportedState> },
    PreCommitting { targets: BTreeSet<ParticipantId>, acked: BTreeSet<ParticipantId> },
}

#[derive(Debug)]
struct Tx {
    participants: Vec<ParticipantId>,
    state: State,
    /// The record that made the state (what is said about the state waits for it).
    lsn: Lsn,
    /// Crashed since voting, undecided: only asks for the decision.
    recovered: bool,
    /// The highest termination round heard of (0: the coordinator's).
    round: u32,
    /// The coordinator or the round's backup is suspected at this tick.
    deadline: u64,
    /// Resend period of a recovered participant's question, doubling.
    backoff: u64,
    run: Option<BackupRun>,
}

/// Longest wait between a recovered participant's questions, in resend periods.
const ASK_BACKOFF_MAX: u64 = 64;

#[derive(Debug)]
pub struct ThreePcParticipant {
    id: ParticipantId,
    now: u64,
    log: LogCursor,
    timeouts: Timeouts,
    /// Undecided transactions at most; beyond, CanCommit gets No.
    txs_max: usize,
    /// Decided transactions remembered (to answer peers) at most, oldest forgotten first.
    decided_max: usize,
    txs: BTreeMap<TxId, Tx>,
    decided: VecDeque<TxId>,
}

impl ThreePcParticipant {
    /// Rebuilds participant `id` from its durable records (in LSN order). Every transaction
    /// left undecided is "recovered": it asks for the decision at the first tick.
    pub fn recover(
        id: ParticipantId,
        timeouts: Timeouts,
        txs_max: usize,
        decided_max: usize,
        records: Vec<(Lsn, PartRecord3)>,
    ) -> ThreePcParticipant {
        let last = records.last().map_or(Lsn::NONE, |(lsn, _)| *lsn);
        let mut participant = ThreePcParticipant {
            id,
            now: 0,
            log: LogCursor::after(last),
            timeouts,
            txs_max,
            decided_max,
            txs: BTreeMap::new(),
            decided: VecDeque::new(),
        };
        for (lsn, record) in records {
            participant.replay(lsn, record);
        }
        for tx in participant.txs.values_mut() {
            if !matches!(tx.state, State::Decided(_)) {
                tx.recovered = true;
                tx.deadline = 0;
            }
        }
        participant
    }

    fn replay(&mut self, lsn: Lsn, record: PartRecord3) {
        match record {
            PartRecord3::Uncertain { txid, participants } => {
                self.txs.insert(txid, Tx::new(participants, State::Uncertain, lsn));
            }
            PartRecord3::PreCommitted { txid } => {
                if let Some(tx) = self.txs.get_mut(&txid) {
                    tx.state = State::PreCommitted;
                    tx.lsn = lsn;
                }
            }
            PartRecord3::Decided { txid, commit } => {
                let tx = self.txs.entry(txid).or_insert_with(|| Tx::new(Vec::new(), State::Decided(commit), lsn));
                tx.state = State::Decided(commit);
                tx.lsn = lsn;
                self.remember_decided(txid);
            }
        }
    }

    pub fn id(&self) -> ParticipantId {
        self.id
    }

    /// The decision known here for `txid`.
    pub fn decision(&self, txid: TxId) -> Option<bool> {
        match self.txs.get(&txid)?.state {
            State::Decided(commit) => Some(commit),
            _ => None,
        }
    }

    /// Whether `txid` is pre-committed here (and not decided).
    pub fn is_precommitted(&self, txid: TxId) -> bool {
        self.txs.get(&txid).is_some_and(|tx| tx.state == State::PreCommitted)
    }

    /// Transactions voted Yes and not decided.
    pub fn undecided(&self) -> usize {
        self.txs.values().filter(|tx| matches!(tx.state, State::Uncertain | State::PreCommitted)).count()
    }

    /// A message from `from`.
    pub fn on_message(&mut self, from: Peer, message: Message, fx: &mut PartEffects3) {
        match message {
            Message::CanCommit { txid, participants, payload } if from == Peer::Coordinator => {
                self.on_can_commit(txid, participants, payload, fx)
            }
            Message::PreCommit { txid, round } => self.on_precommit(from, txid, round, fx),
            Message::PreCommitAck { txid, round } => self.on_precommit_ack(from, txid, round, fx),
            Message::Decision { txid, commit } => self.on_decision(from, txid, commit, fx),
            Message::Elect { txid, round } => self.on_elect(from, txid, round, fx),
            Message::StateReq { txid, round } => self.on_state_req(from, txid, round, fx),
            Message::StateReport { txid, round, state } => self.on_state_report(from, txid, round, state, fx),
            Message::DecisionReq { txid } => self.tell_decision(from, txid, fx),
            Message::DecisionAck { .. } => {}
            other => self.warn(fx, format!("unexpected from {from:?}: {other:?}")),
        }
    }

    fn on_can_commit(&mut self, txid: TxId, participants: Vec<ParticipantId>, payload: Vec<u8>, fx: &mut PartEffects3) {
        if let Some(tx) = self.txs.get(&txid) {
            // A resend: repeat the vote (Preparing: it comes once the resource manager answers).
            match tx.state {
                State::Preparing | State::Decided(true) => {}
                State::Uncertain | State::PreCommitted => self.vote(tx.lsn, txid, true, fx),
                State::Decided(false) => self.vote(tx.lsn, txid, false, fx),
            }
            return;
        }
        let sorted = participants.windows(2).all(|pair| pair[0] < pair[1]);
        if participants.len() > PARTICIPANTS_MAX || !sorted || !participants.contains(&self.id) {
            self.warn(fx, format!("{txid}: CanCommit names a bad participant list {participants:?}"));
            return self.vote(Lsn::NONE, txid, false, fx);
        }
        if self.txs.len() - self.decided.len() >= self.txs_max {
            return self.vote(Lsn::NONE, txid, false, fx);
        }
        let deadline = self.now + self.timeouts.uncertain_ticks;
        let mut tx = Tx::new(participants, State::Preparing, Lsn::NONE);
        tx.deadline = deadline;
        self.txs.insert(txid, tx);
        fx.send(Lsn::NONE, PartOutput::Prepare { txid, payload });
    }

    /// The resource manager's answer to [`PartOutput::Prepare`]: Yes forces `Uncertain`
    /// and votes Yes; No aborts here and votes No.
    pub fn prepared(&mut self, txid: TxId, yes: bool, fx: &mut PartEffects3) {
        let Some(tx) = self.txs.get(&txid) else { return };
        match tx.state {
            State::Preparing if yes => {
                let participants = tx.participants.clone();
                let lsn = self.log.append(fx, PartRecord3::Uncertain { txid, participants });
                let tx = self.txs.get_mut(&txid).expect("known");
                tx.state = State::Uncertain;
                tx.lsn = lsn;
                tx.deadline = self.now + self.timeouts.uncertain_ticks;
                self.vote(lsn, txid, true, fx);
            }
            State::Preparing => {
                let lsn = self.decide(txid, false, fx);
                self.vote(lsn, txid, false, fx);
            }
            // Aborted while the resource manager worked: roll its work back.
            State::Decided(false) if yes => fx.send(Lsn::NONE, PartOutput::Apply { txid, commit: false }),
            _ => {}
        }
    }

    fn vote(&self, after: Lsn, txid: TxId, yes: bool, fx: &mut PartEffects3) {
        self.send(fx, after, Peer::Coordinator, Message::Vote { txid, yes });
    }

    fn on_precommit(&mut self, from: Peer, txid: TxId, round: u32, fx: &mut PartEffects3) {
        let Some(tx) = self.txs.get_mut(&txid) else {
            return self.warn(fx, format!("{txid}: PreCommit from {from:?} for a transaction never voted here"));
        };
        if round < tx.round {
            return; // An older round's backup, or the coordinator after a newer round began.
        }
        let lsn = match tx.state {
            State::Decided(_) => return self.tell_decision(from, txid, fx),
            State::Preparing => return self.warn(fx, format!("{txid}: PreCommit from {from:?} before a vote")),
            State::PreCommitted => tx.lsn,
            State::Uncertain => {
                let lsn = self.log.append(fx, PartRecord3::PreCommitted { txid });
                let tx = self.txs.get_mut(&txid).expect("known");
                tx.state = State::PreCommitted;
                tx.lsn = lsn;
                lsn
            }
        };
        let tx = self.txs.get_mut(&txid).expect("known");
        if tx.run.as_ref().is_some_and(|run| run.round < round) {
            tx.run = None; // A newer round supersedes ours.
        }
        tx.round = round;
        let wait = if round == 0 { self.timeouts.precommitted_ticks } else { self.timeouts.backup_ticks };
        tx.deadline = self.now + wait;
        self.send(fx, lsn, from, Message::PreCommitAck { txid, round });
    }

    fn on_precommit_ack(&mut self, from: Peer, txid: TxId, round: u32, fx: &mut PartEffects3) {
        let Peer::Participant(from) = from else { return };
        let Some(tx) = self.txs.get_mut(&txid) else { return };
        let Some(run) = tx.run.as_mut().filter(|run| run.round == round) else { return };
        if let Stage::PreCommitting { targets, acked } = &mut run.stage {
            acked.insert(from);
            if targets.is_subset(acked) {
                self.backup_decides(txid, true, fx);
            }
        }
    }

    fn on_decision(&mut self, from: Peer, txid: TxId, commit: bool, fx: &mut PartEffects3) {
        let Some(tx) = self.txs.get(&txid) else { return }; // Forgotten, or never ours.
        match tx.state {
            State::Decided(ours) if ours != commit => {
                fx.send(Lsn::NONE, PartOutput::SplitDecision { txid, ours, heard: commit, from });
            }
            State::Decided(_) => {
                if from == Peer::Coordinator {
                    self.send(fx, tx.lsn, from, Message::DecisionAck { txid });
                }
            }
            State::Preparing if commit => self.warn(fx, format!("{txid}: commit from {from:?} before our vote")),
            State::Preparing | State::Uncertain | State::PreCommitted => {
                let lsn = self.decide(txid, commit, fx);
                if from == Peer::Coordinator {
                    self.send(fx, lsn, from, Message::DecisionAck { txid });
                }
            }
        }
    }

    /// Decides `txid` here: forces `Decided`, applies (unless the resource manager still
    /// prepares: it hears at `prepared`), stops any round this participant runs.
    fn decide(&mut self, txid: TxId, commit: bool, fx: &mut PartEffects3) -> Lsn {
        let lsn = self.log.append(fx, PartRecord3::Decided { txid, commit });
        let tx = self.txs.get_mut(&txid).expect("known");
        let preparing = tx.state == State::Preparing;
        assert!(!matches!(tx.state, State::Decided(_)), "3pc {txid}: decided twice here");
        assert!(!(preparing && commit), "3pc {txid}: commit without a Yes vote");
        tx.state = State::Decided(commit);
        tx.lsn = lsn;
        tx.run = None;
        if !preparing {
            fx.send(lsn, PartOutput::Apply { txid, commit });
        }
        self.remember_decided(txid);
        lsn
    }

    fn remember_decided(&mut self, txid: TxId) {
        self.decided.push_back(txid);
        while self.decided.len() > self.decided_max {
            let oldest = self.decided.pop_front().expect("not empty");
            self.txs.remove(&oldest);
        }
    }

    /// Aborts alone a transaction not voted Yes here (asked about by a backup or a peer):
    /// once logged, no later CanCommit can turn it into a Yes. Memory stays bounded: the
    /// entry is a decided one, and at most `decided_max` of those are kept.
    fn abort_unvoted(&mut self, txid: TxId, fx: &mut PartEffects3) -> Lsn {
        self.txs.entry(txid).or_insert_with(|| Tx::new(Vec::new(), State::Preparing, Lsn::NONE));
        self.decide(txid, false, fx)
    }

    fn tell_decision(&mut self, to: Peer, txid: TxId, fx: &mut PartEffects3) {
        if let Some(Tx { state: State::Decided(commit), lsn, .. }) = self.txs.get(&txid) {
            let (commit, lsn) = (*commit, *lsn);
            self.send(fx, lsn, to, Message::Decision { txid, commit });
        }
    }

    fn on_elect(&mut self, from: Peer, txid: TxId, round: u32, fx: &mut PartEffects3) {
        let state = self.txs.get(&txid).map(|tx| tx.state);
        match state {
            Some(State::Decided(_)) => return self.tell_decision(from, txid, fx),
            None | Some(State::Preparing) => {
                // Never voted Yes: abort alone, which ends the question for everyone.
                let lsn = self.abort_unvoted(txid, fx);
                return self.send(fx, lsn, from, Message::Decision { txid, commit: false });
            }
            Some(_) => {}
        }
        let tx = &self.txs[&txid];
        if tx.recovered || round == 0 || backup_of(&tx.participants, round) != self.id {
            return;
        }
        let running = tx.run.as_ref().map(|run| run.round);
        if round > tx.round || (round == tx.round && running.is_none()) {
            self.start_round(txid, round, fx);
        }
    }

    fn on_state_req(&mut self, from: Peer, txid: TxId, round: u32, fx: &mut PartEffects3) {
        let state = self.txs.get(&txid).map(|tx| tx.state);
        match state {
            Some(State::Decided(_)) => return self.tell_decision(from, txid, fx),
            None | Some(State::Preparing) => {
                let lsn = self.abort_unvoted(txid, fx);
                let report = Message::StateReport { txid, round, state: ReportedState::Aborted };
                return self.send(fx, lsn, from, report);
            }
            Some(_) => {}
        }
        let tx = self.txs.get_mut(&txid).expect("known");
        if tx.recovered {
            let report = Message::StateReport { txid, round, state: ReportedState::Recovering };
            return self.send(fx, Lsn::NONE, from, report);
        }
        let running = tx.run.as_ref().map(|run| run.round);
        if round < tx.round || running.is_some_and(|ours| ours >= round) {
            return; // An older round (or our own): its backup takes us for crashed.
        }
        tx.run = None;
        tx.round = round;
        tx.deadline = self.now + self.timeouts.backup_ticks;
        let state =
            if tx.state == State::PreCommitted { ReportedState::PreCommitted } else { ReportedState::Uncertain };
        let lsn = tx.lsn;
        self.send(fx, lsn, from, Message::StateReport { txid, round, state });
    }

    fn on_state_report(&mut self, from: Peer, txid: TxId, round: u32, state: ReportedState, fx: &mut PartEffects3) {
        let Peer::Participant(from) = from else { return };
        let Some(tx) = self.txs.get_mut(&txid) else { return };
        if !tx.participants.contains(&from) {
            return;
        }
        let others = tx.participants.len() - 1;
        let Some(run) = tx.run.as_mut().filter(|run| run.round == round) else { return };
        let Stage::Collecting { reports } = &mut run.stage else { return };
        reports.insert(from, state);
        let final_answer = matches!(state, ReportedState::Committed | ReportedState::Aborted);
        if final_answer || reports.len() == others {
            self.evaluate(txid, fx);
        }
    }

    /// Becomes the backup of `round`: asks every other participant for its state.
    fn start_round(&mut self, txid: TxId, round: u32, fx: &mut PartEffects3) {
        let now = self.now;
        let tx = self.txs.get_mut(&txid).expect("known");
        tx.round = round;
        tx.run = Some(BackupRun {
            round,
            stage: Stage::Collecting { reports: BTreeMap::new() },
            deadline: now + self.timeouts.collect_ticks,
            next_resend: now,
        });
        if tx.participants.len() == 1 {
            return self.evaluate(txid, fx);
        }
        self.resend_round(txid, fx);
    }

    /// The backup's decision rule, over the reports and its own state.
    fn evaluate(&mut self, txid: TxId, fx: &mut PartEffects3) {
        let tx = self.txs.get_mut(&txid).expect("known");
        let run = tx.run.as_mut().expect("a backup evaluates its round");
        let Stage::Collecting { reports } = &run.stage else { return };
        let own = if tx.state == State::PreCommitted { ReportedState::PreCommitted } else { ReportedState::Uncertain };
        let states: Vec<ReportedState> = reports.values().copied().chain([own]).collect();
        if states.contains(&ReportedState::Committed) {
            return self.backup_decides(txid, true, fx);
        }
        if states.contains(&ReportedState::Aborted) || !states.contains(&ReportedState::PreCommitted) {
            return self.backup_decides(txid, false, fx);
        }
        let targets: BTreeSet<ParticipantId> =
            reports.iter().filter(|(_, state)| **state == ReportedState::Uncertain).map(|(p, _)| *p).collect();
        if tx.state == State::Uncertain {
            tx.lsn = self.log.append(fx, PartRecord3::PreCommitted { txid });
            tx.state = State::PreCommitted;
        }
        if targets.is_empty() {
            return self.backup_decides(txid, true, fx);
        }
        run.stage = Stage::PreCommitting { targets, acked: BTreeSet::new() };
        run.deadline = self.now + self.timeouts.acks_ticks;
        run.next_resend = self.now;
        self.resend_round(txid, fx);
    }

    fn backup_decides(&mut self, txid: TxId, commit: bool, fx: &mut PartEffects3) {
        let lsn = self.decide(txid, commit, fx);
        let others: Vec<ParticipantId> =
            self.txs[&txid].participants.iter().copied().filter(|p| *p != self.id).collect();
        for other in others {
            self.send(fx, lsn, Peer::Participant(other), Message::Decision { txid, commit });
        }
    }

    /// Resends the backup's question or PreCommit to those that have not answered.
    fn resend_round(&mut self, txid: TxId, fx: &mut PartEffects3) {
        let me = self.id;
        let tx = self.txs.get_mut(&txid).expect("known");
        let lsn = tx.lsn;
        let run = tx.run.as_mut().expect("running");
        run.next_resend = self.now + self.timeouts.resend_ticks;
        let round = run.round;
        let sends: Vec<(ParticipantId, Message)> = match &run.stage {
            Stage::Collecting { reports } => tx
                .participants
                .iter()
                .filter(|p| **p != me && !reports.contains_key(p))
                .map(|p| (*p, Message::StateReq { txid, round }))
                .collect(),
            Stage::PreCommitting { targets, acked } => {
                targets.difference(acked).map(|p| (*p, Message::PreCommit { txid, round })).collect()
            }
        };
        let after = if matches!(run.stage, Stage::PreCommitting { .. }) { lsn } else { Lsn::NONE };
        for (to, message) in sends {
            self.send(fx, after, Peer::Participant(to), message);
        }
    }

    /// One tick passed: resend, and act on the waits that ran out.
    pub fn tick(&mut self, fx: &mut PartEffects3) {
        self.now += 1;
        let now = self.now;
        let due: Vec<TxId> = self
            .txs
            .iter()
            .filter(|(_, tx)| match (&tx.run, tx.state) {
                (Some(run), _) => run.deadline <= now || run.next_resend <= now,
                (None, State::Uncertain | State::PreCommitted) => tx.deadline <= now,
                _ => false,
            })
            .map(|(txid, _)| *txid)
            .collect();
        for txid in due {
            self.on_due(txid, fx);
        }
    }

    fn on_due(&mut self, txid: TxId, fx: &mut PartEffects3) {
        let now = self.now;
        let tx = self.txs.get_mut(&txid).expect("listed");
        if let Some(run) = &tx.run {
            if run.deadline > now {
                return self.resend_round(txid, fx);
            }
            return match run.stage {
                Stage::Collecting { .. } => self.evaluate(txid, fx),
                // The silent ones crashed: they learn the decision when they recover.
                Stage::PreCommitting { .. } => self.backup_decides(txid, true, fx),
            };
        }
        if tx.recovered {
            let period = tx.backoff.max(self.timeouts.resend_ticks);
            tx.backoff = (period * 2).min(self.timeouts.resend_ticks * ASK_BACKOFF_MAX);
            tx.deadline = now + period;
            let peers: Vec<Peer> = tx
                .participants
                .iter()
                .filter(|p| **p != self.id)
                .map(|p| Peer::Participant(*p))
                .chain([Peer::Coordinator])
                .collect();
            for peer in peers {
                self.send(fx, Lsn::NONE, peer, Message::DecisionReq { txid });
            }
            return;
        }
        // The coordinator, or our round's backup, is silent past its bound: next round.
        let round = tx.round + 1;
        tx.round = round;
        tx.deadline = now + self.timeouts.backup_ticks;
        let backup = backup_of(&tx.participants, round);
        if backup == self.id {
            self.start_round(txid, round, fx);
        } else {
            self.send(fx, Lsn::NONE, Peer::Participant(backup), Message::Elect { txid, round });
        }
    }

    fn send(&self, fx: &mut PartEffects3, after: Lsn, to: Peer, message: Message) {
        fx.send(after, PartOutput::Send(Envelope { to, message }));
    }

    fn warn(&self, fx: &mut PartEffects3, detail: String) {
        fx.send(Lsn::NONE, PartOutput::Warning(format!("3pc participant {}: {detail}", self.id)));
    }
}

impl Tx {
    fn new(participants: Vec<ParticipantId>, state: State, lsn: Lsn) -> Tx {
        Tx { participants, state, lsn, recovered: false, round: 0, deadline: 0, backoff: 0, run: None }
    }
}
