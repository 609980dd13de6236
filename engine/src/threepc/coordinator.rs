//! The 3PC coordinator: CanCommit to every participant, PreCommit once all voted Yes (after
//! its forced `PreCommit` record), DoCommit once all acknowledged or the acknowledgement
//! wait ran out (after its forced `Decided` record). Presumed abort before the PreCommit
//! record: an abort is not logged, and a transaction it does not know is aborted.
//!
//! After a restart a transaction with a `PreCommit` record and no decision is not decided
//! here: the participants may have terminated it without us. The coordinator asks them
//! (`DecisionReq`) until one knows.

use std::collections::{BTreeMap, BTreeSet};

use super::{CoordEffects3, CoordRecord3, Envelope, Message, PARTICIPANTS_MAX, PAYLOAD_BYTES_MAX, Peer, Timeouts};
use crate::effects::LogCursor;
use crate::types::{Epoch, Lsn, ParticipantId, TxId};

/// What the coordinator asks its driver to do.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum CoordOutput3 {
    Send(Envelope),
    /// The outcome to report to the client.
    Outcome {
        txid: TxId,
        committed: bool,
    },
    /// Input that makes no sense here (logged by the driver, otherwise ignored).
    Warning(String),
}

/// Why `begin` refused a transaction.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum BeginError {
    /// 1 to [`PARTICIPANTS_MAX`] distinct participants.
    Participants(String),
    /// A payload above [`PAYLOAD_BYTES_MAX`].
    Payload(usize),
    /// `txs_max` transactions are in flight.
    Busy,
}

#[derive(Debug)]
enum Phase {
    Voting {
        yes: BTreeSet<ParticipantId>,
    },
    PreCommitting {
        acked: BTreeSet<ParticipantId>,
        lsn: Lsn,
    },
    Decided {
        commit: bool,
        acked: BTreeSet<ParticipantId>,
        lsn: Lsn,
    },
    /// Restarted after the PreCommit record without a decision: asking the participants.
    Recovering,
}

#[derive(Debug)]
struct Tx {
    participants: Vec<ParticipantId>,
    /// Each participant's work, resent with CanCommit (dropped once voting ends).
    payloads: Vec<Vec<u8>>,
    phase: Phase,
    /// The current phase gives up at this tick (Voting, PreCommitting).
    deadline: u64,
    next_resend: u64,
    /// Resend period of decisions and questions, doubling up to `RESEND_BACKOFF_MAX`
    /// periods.
    backoff: u64,
}

/// Longest wait between resends of a decision or a question, in resend periods.
const RESEND_BACKOFF_MAX: u64 = 64;

#[derive(Debug)]
pub struct ThreePcCoordinator {
    epoch: Epoch,
    counter: u64,
    now: u64,
    log: LogCursor,
    timeouts: Timeouts,
    txs_max: usize,
    txs: BTreeMap<TxId, Tx>,
}

impl ThreePcCoordinator {
    /// Rebuilds the coordinator from its durable records (`records` in LSN order, the last
    /// one's LSN is the log's end). `epoch` must exceed every earlier incarnation's (the
    /// driver persists it), so txids never repeat. Resends what the log leaves unfinished.
    pub fn recover(
        epoch: Epoch,
        timeouts: Timeouts,
        txs_max: usize,
        records: Vec<(Lsn, CoordRecord3)>,
        fx: &mut CoordEffects3,
    ) -> ThreePcCoordinator {
        let last = records.last().map_or(Lsn::NONE, |(lsn, _)| *lsn);
        let mut coordinator = ThreePcCoordinator {
            epoch,
            counter: 0,
            now: 0,
            log: LogCursor::after(last),
            timeouts,
            txs_max,
            txs: BTreeMap::new(),
        };
        for (lsn, record) in records {
            coordinator.replay(lsn, record);
        }
        let unfinished: Vec<TxId> = coordinator.txs.keys().copied().collect();
        for txid in unfinished {
            coordinator.resend(txid, fx);
        }
        coordinator
    }

    fn replay(&mut self, lsn: Lsn, record: CoordRecord3) {
        match record {
            CoordRecord3::PreCommit { txid, participants } => {
                self.txs.insert(txid, Tx::new(participants, Vec::new(), Phase::Recovering, 0));
            }
            CoordRecord3::Decided { txid, commit, participants } => {
                let phase = Phase::Decided { commit, acked: BTreeSet::new(), lsn };
                self.txs.insert(txid, Tx::new(participants, Vec::new(), phase, 0));
            }
            CoordRecord3::End { txid } => {
                self.txs.remove(&txid);
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.txs.len()
    }

    /// The decision the coordinator knows for `txid` (None: undecided or forgotten).
    pub fn decision(&self, txid: TxId) -> Option<bool> {
        match self.txs.get(&txid)?.phase {
            Phase::Decided { commit, .. } => Some(commit),
            _ => None,
        }
    }

    /// Starts a transaction: `work` is each participant's payload. Returns its txid.
    pub fn begin(&mut self, work: Vec<(ParticipantId, Vec<u8>)>, fx: &mut CoordEffects3) -> Result<TxId, BeginError> {
        let mut participants: Vec<ParticipantId> = work.iter().map(|(p, _)| *p).collect();
        participants.sort_unstable();
        participants.dedup();
        if work.is_empty() || work.len() > PARTICIPANTS_MAX || participants.len() != work.len() {
            let detail = format!("a transaction needs 1 to {PARTICIPANTS_MAX} distinct participants");
            return Err(BeginError::Participants(detail));
        }
        if let Some(bytes) = work.iter().map(|(_, payload)| payload.len()).find(|len| *len > PAYLOAD_BYTES_MAX) {
            return Err(BeginError::Payload(bytes));
        }
        if self.txs.len() >= self.txs_max {
            return Err(BeginError::Busy);
        }
        self.counter += 1;
        let txid = TxId::new(self.epoch, self.counter);
        let mut work = work;
        work.sort_unstable_by_key(|(p, _)| *p);
        let payloads = work.into_iter().map(|(_, payload)| payload).collect();
        let phase = Phase::Voting { yes: BTreeSet::new() };
        let deadline = self.now + self.timeouts.votes_ticks;
        self.txs.insert(txid, Tx::new(participants, payloads, phase, deadline));
        self.resend(txid, fx);
        Ok(txid)
    }

    /// A message from participant `from`.
    pub fn on_message(&mut self, from: ParticipantId, message: Message, fx: &mut CoordEffects3) {
        let txid = message.txid();
        let Some(tx) = self.txs.get(&txid) else { return self.on_unknown(from, message, fx) };
        if !tx.participants.contains(&from) {
            let warning = format!("3pc {txid}: {from} is not a participant, ignoring {message:?}");
            return fx.send(Lsn::NONE, CoordOutput3::Warning(warning));
        }
        match message {
            Message::Vote { yes, .. } => self.on_vote(txid, from, yes, fx),
            Message::PreCommitAck { round: 0, .. } => self.on_precommit_ack(txid, from, fx),
            Message::DecisionAck { .. } => self.on_decision_ack(txid, from, fx),
            Message::DecisionReq { .. } => self.answer_decision(txid, from, fx),
            Message::Decision { commit, .. } => self.on_decision_heard(txid, from, commit, fx),
            // Round messages of backups, and a PreCommitAck of a backup's round: not ours.
            _ => {}
        }
    }

    /// A message about a transaction not in flight here: never begun in this incarnation's
    /// memory, aborted before its PreCommit record (presumed abort), or ended.
    fn on_unknown(&mut self, from: ParticipantId, message: Message, fx: &mut CoordEffects3) {
        let txid = message.txid();
        match message {
            Message::Vote { yes: true, .. } | Message::DecisionReq { .. } => {
                self.send(fx, Lsn::NONE, from, Message::Decision { txid, commit: false });
            }
            _ => {}
        }
    }

    fn on_vote(&mut self, txid: TxId, from: ParticipantId, yes: bool, fx: &mut CoordEffects3) {
        let tx = self.txs.get_mut(&txid).expect("known");
        match &mut tx.phase {
            Phase::Voting { .. } if !yes => self.decide(txid, false, fx),
            Phase::Voting { yes: voted } => {
                voted.insert(from);
                if voted.len() == tx.participants.len() {
                    self.start_precommit(txid, fx);
                }
            }
            Phase::Decided { commit, lsn, .. } => {
                let (commit, lsn) = (*commit, *lsn);
                self.send(fx, lsn, from, Message::Decision { txid, commit });
            }
            Phase::PreCommitting { .. } | Phase::Recovering => {}
        }
    }

    /// Every vote is Yes: force the PreCommit record, then send PreCommit.
    fn start_precommit(&mut self, txid: TxId, fx: &mut CoordEffects3) {
        let participants = self.txs[&txid].participants.clone();
        let lsn = self.log.append(fx, CoordRecord3::PreCommit { txid, participants });
        let tx = self.txs.get_mut(&txid).expect("known");
        tx.payloads = Vec::new();
        tx.phase = Phase::PreCommitting { acked: BTreeSet::new(), lsn };
        tx.deadline = self.now + self.timeouts.acks_ticks;
        self.resend(txid, fx);
    }

    fn on_precommit_ack(&mut self, txid: TxId, from: ParticipantId, fx: &mut CoordEffects3) {
        let tx = self.txs.get_mut(&txid).expect("known");
        if let Phase::PreCommitting { acked, .. } = &mut tx.phase {
            acked.insert(from);
            if acked.len() == tx.participants.len() {
                self.decide(txid, true, fx);
            }
        }
    }

    /// Decides `txid`. A commit, or any decision after the PreCommit record, is forced
    /// first; an abort before it is presumed and not logged.
    fn decide(&mut self, txid: TxId, commit: bool, fx: &mut CoordEffects3) {
        let tx = self.txs.get_mut(&txid).expect("known");
        assert!(!matches!(tx.phase, Phase::Decided { .. }), "3pc {txid}: decided twice");
        let presumed = !commit && matches!(tx.phase, Phase::Voting { .. });
        let participants = tx.participants.clone();
        let lsn = if presumed {
            Lsn::NONE
        } else {
            self.log.append(fx, CoordRecord3::Decided { txid, commit, participants })
        };
        let tx = self.txs.get_mut(&txid).expect("known");
        tx.payloads = Vec::new();
        tx.phase = Phase::Decided { commit, acked: BTreeSet::new(), lsn };
        tx.backoff = self.timeouts.resend_ticks;
        fx.send(lsn, CoordOutput3::Outcome { txid, committed: commit });
        self.resend(txid, fx);
    }

    fn on_decision_ack(&mut self, txid: TxId, from: ParticipantId, fx: &mut CoordEffects3) {
        let tx = self.txs.get_mut(&txid).expect("known");
        let Phase::Decided { acked, lsn, .. } = &mut tx.phase else { return };
        acked.insert(from);
        if acked.len() < tx.participants.len() {
            return;
        }
        if *lsn != Lsn::NONE {
            self.log.append(fx, CoordRecord3::End { txid });
        }
        self.txs.remove(&txid);
    }

    fn answer_decision(&mut self, txid: TxId, from: ParticipantId, fx: &mut CoordEffects3) {
        if let Phase::Decided { commit, lsn, .. } = self.txs[&txid].phase {
            self.send(fx, lsn, from, Message::Decision { txid, commit });
        }
    }

    /// A participant told us the decision (answering our question after a restart, or the
    /// outcome of a termination it ran while it believed us dead): adopt it.
    fn on_decision_heard(&mut self, txid: TxId, from: ParticipantId, commit: bool, fx: &mut CoordEffects3) {
        let tx = self.txs.get_mut(&txid).expect("known");
        match &mut tx.phase {
            Phase::Decided { commit: ours, acked, .. } => {
                if *ours == commit {
                    acked.insert(from);
                } else {
                    let warning = format!("3pc {txid}: {from} decided commit={commit}, this coordinator {ours}");
                    fx.send(Lsn::NONE, CoordOutput3::Warning(warning));
                }
            }
            Phase::Voting { .. } if commit => {
                let warning = format!("3pc {txid}: {from} says commit before every vote arrived");
                fx.send(Lsn::NONE, CoordOutput3::Warning(warning));
            }
            _ => self.decide(txid, commit, fx),
        }
    }

    /// One tick passed: resend what is unanswered, end the waits that ran out.
    pub fn tick(&mut self, fx: &mut CoordEffects3) {
        self.now += 1;
        let due: Vec<TxId> = self
            .txs
            .iter()
            .filter(|(_, tx)| tx.next_resend <= self.now || (tx.waits() && tx.deadline <= self.now))
            .map(|(txid, _)| *txid)
            .collect();
        for txid in due {
            let tx = &self.txs[&txid];
            if tx.waits() && tx.deadline <= self.now {
                match tx.phase {
                    Phase::Voting { .. } => self.decide(txid, false, fx),
                    // The silent ones crashed (the timeouts exceed a live one's answer).
                    Phase::PreCommitting { .. } => self.decide(txid, true, fx),
                    _ => unreachable!("only Voting and PreCommitting wait"),
                }
            } else {
                self.resend(txid, fx);
            }
        }
    }

    /// Sends what the transaction's phase owes to those that have not answered, and sets
    /// the next resend.
    fn resend(&mut self, txid: TxId, fx: &mut CoordEffects3) {
        let tx = self.txs.get_mut(&txid).expect("known");
        let period = match tx.phase {
            Phase::Voting { .. } | Phase::PreCommitting { .. } => self.timeouts.resend_ticks,
            Phase::Decided { .. } | Phase::Recovering => {
                let period = tx.backoff.max(self.timeouts.resend_ticks);
                tx.backoff = (period * 2).min(self.timeouts.resend_ticks * RESEND_BACKOFF_MAX);
                period
            }
        };
        tx.next_resend = self.now + period;
        let mut sends = Vec::new();
        for (index, &participant) in tx.participants.iter().enumerate() {
            let send = match &tx.phase {
                Phase::Voting { yes } if !yes.contains(&participant) => {
                    let message = Message::CanCommit {
                        txid,
                        participants: tx.participants.clone(),
                        payload: tx.payloads[index].clone(),
                    };
                    Some((Lsn::NONE, message))
                }
                Phase::PreCommitting { acked, lsn } if !acked.contains(&participant) => {
                    Some((*lsn, Message::PreCommit { txid, round: 0 }))
                }
                Phase::Decided { commit, acked, lsn } if !acked.contains(&participant) => {
                    Some((*lsn, Message::Decision { txid, commit: *commit }))
                }
                Phase::Recovering => Some((Lsn::NONE, Message::DecisionReq { txid })),
                _ => None,
            };
            if let Some((after, message)) = send {
                sends.push((after, participant, message));
            }
        }
        for (after, participant, message) in sends {
            self.send(fx, after, participant, message);
        }
    }

    fn send(&self, fx: &mut CoordEffects3, after: Lsn, to: ParticipantId, message: Message) {
        fx.send(after, CoordOutput3::Send(Envelope { to: Peer::Participant(to), message }));
    }
}

impl Tx {
    fn new(participants: Vec<ParticipantId>, payloads: Vec<Vec<u8>>, phase: Phase, deadline: u64) -> Tx {
        Tx { participants, payloads, phase, deadline, next_resend: 0, backoff: 0 }
    }

    /// Whether the phase ends at its deadline.
    fn waits(&self) -> bool {
        matches!(self.phase, Phase::Voting { .. } | Phase::PreCommitting { .. })
    }
}
