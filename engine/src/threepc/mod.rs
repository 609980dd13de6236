//! Three-phase commit (Skeen), sans-IO: a coordinator (CanCommit → PreCommit → DoCommit)
//! and participants that, when the coordinator is lost, elect a recovery coordinator
//! ("backup") among themselves and run the termination protocol.
//!
//! Owns: the 3PC messages ([`Message`], addressed to a [`Peer`]: the coordinator or a
//! participant id, so participant-to-participant traffic is ordinary output), the records
//! of every forced write ([`CoordRecord3`], [`PartRecord3`]), the tick-driven timeouts
//! ([`Timeouts`]), their binary encodings (`codec`; as wal records with kinds 64–66 and
//! 72–74: `log`) and the two state machines ([`ThreePcCoordinator`],
//! [`ThreePcParticipant`]).
//!
//! Invariants:
//! - Forced writes: a participant's Yes leaves only once its `Uncertain` record is durable,
//!   its PreCommit acknowledgement once `PreCommitted` is, anything it says about a decision
//!   once `Decided` is; the coordinator's PreCommit messages wait for its `PreCommit`
//!   record, its DoCommit for `Decided`. Outputs carry the LSN they wait for.
//! - Time is the caller's ticks: every `tick` call is one tick; no clock is read.
//! - Termination (when the coordinator is silent past its bound): round `r ≥ 1` is run by
//!   the backup `participants[(r - 1) % n]`; a participant answers the highest round it
//!   has heard of and ignores older rounds' PreCommits. The backup collects states and
//!   decides: any committed → commit; any aborted → abort; any pre-committed → pre-commit
//!   the uncertain, then commit; all uncertain → abort. A participant that crashed while
//!   undecided ("recovered") takes no part: it only asks everyone for the decision.
//! - Decisions are final: a participant never changes one; a conflicting decision it hears
//!   is reported ([`PartOutput::SplitDecision`]), never applied.
//!
//! Limitation (the reason 3PC is rarely used): it is non-blocking and atomic only in a
//! synchronous network, where every message between live nodes arrives within a bound the
//! timeouts exceed ([`Timeouts::for_network`]). A partition breaks that bound: the two
//! sides can terminate differently (docs/PROTOCOLS.md; the simulator's partition mode
//! reproduces it).

mod codec;
mod coordinator;
mod log;
mod participant;

pub use coordinator::{BeginError, CoordOutput3, ThreePcCoordinator};
pub use log::{
    KIND_3PC_COORD_DECIDED, KIND_3PC_COORD_END, KIND_3PC_COORD_PRECOMMIT, KIND_3PC_PART_DECIDED,
    KIND_3PC_PART_PRECOMMITTED, KIND_3PC_PART_UNCERTAIN, PartLog3,
};
pub use participant::{PartOutput, ThreePcParticipant};

use crate::effects::Effects;
use crate::types::{ParticipantId, TxId};

/// Participants of one 3PC transaction at most (bounds every per-transaction list).
pub const PARTICIPANTS_MAX: usize = 64;

/// Bytes of one participant's CanCommit payload at most.
pub const PAYLOAD_BYTES_MAX: usize = 1 << 20;

/// Where a message goes (or came from).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Peer {
    Coordinator,
    Participant(ParticipantId),
}

/// A participant's state for one transaction, as reported to a backup.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReportedState {
    Uncertain,
    PreCommitted,
    Committed,
    Aborted,
    /// Crashed while undecided since it voted: takes no part in termination.
    Recovering,
}

/// Every 3PC message. `round` 0 is the original coordinator; round `r ≥ 1` is the backup
/// `participants[(r - 1) % n]`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message {
    /// Coordinator → participant: can you commit `payload` (opaque to 3PC; the driver's
    /// resource manager prepares it)?
    CanCommit { txid: TxId, participants: Vec<ParticipantId>, payload: Vec<u8> },
    /// Participant → coordinator.
    Vote { txid: TxId, yes: bool },
    /// Coordinator (round 0) or backup → participant.
    PreCommit { txid: TxId, round: u32 },
    /// Participant → the sender of the PreCommit.
    PreCommitAck { txid: TxId, round: u32 },
    /// The decision, from whoever knows it (DoCommit is `commit: true`).
    Decision { txid: TxId, commit: bool },
    /// Participant → the coordinator: the decision is applied here.
    DecisionAck { txid: TxId },
    /// Participant → the backup of `round`: the ones before you are silent; run your round.
    Elect { txid: TxId, round: u32 },
    /// Backup → participant: report your state for `round`.
    StateReq { txid: TxId, round: u32 },
    /// Participant → backup.
    StateReport { txid: TxId, round: u32, state: ReportedState },
    /// A recovered node → everyone: what was decided? (Answered only by who knows.)
    DecisionReq { txid: TxId },
}

impl Message {
    pub fn txid(&self) -> TxId {
        match self {
            Message::CanCommit { txid, .. }
            | Message::Vote { txid, .. }
            | Message::PreCommit { txid, .. }
            | Message::PreCommitAck { txid, .. }
            | Message::Decision { txid, .. }
            | Message::DecisionAck { txid }
            | Message::Elect { txid, .. }
            | Message::StateReq { txid, .. }
            | Message::StateReport { txid, .. }
            | Message::DecisionReq { txid } => *txid,
        }
    }
}

/// A message and where it goes: what a driver carries (coordinator ↔ participant and
/// participant ↔ participant connections).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Envelope {
    pub to: Peer,
    pub message: Message,
}

/// The coordinator's log records.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum CoordRecord3 {
    /// Forced before any PreCommit leaves: from here on a restart may not decide alone.
    PreCommit { txid: TxId, participants: Vec<ParticipantId> },
    /// Forced before the decision leaves (an abort is logged only after a PreCommit).
    Decided { txid: TxId, commit: bool, participants: Vec<ParticipantId> },
    /// Every participant acknowledged the decision (not forced): nothing left to resend.
    End { txid: TxId },
}

/// A participant's log records.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PartRecord3 {
    /// Voted Yes (forced before the vote leaves): uncertain from here.
    Uncertain { txid: TxId, participants: Vec<ParticipantId> },
    /// Forced before the PreCommit acknowledgement leaves.
    PreCommitted { txid: TxId },
    /// Forced before anything says so.
    Decided { txid: TxId, commit: bool },
}

pub type CoordEffects3 = Effects<CoordRecord3, CoordOutput3>;
pub type PartEffects3 = Effects<PartRecord3, PartOutput>;

/// Timeouts and resend periods, in ticks. Safety needs the waits to exceed what a live
/// peer can take: build them with [`Timeouts::for_network`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Unanswered messages are resent this often.
    pub resend_ticks: u64,
    /// The coordinator waits this long for votes, then aborts.
    pub votes_ticks: u64,
    /// The coordinator (or a backup) waits this long for PreCommit acknowledgements, then
    /// commits (the silent ones crashed; they learn the decision when they recover).
    pub acks_ticks: u64,
    /// A backup waits this long for state reports.
    pub collect_ticks: u64,
    /// An uncertain participant suspects the coordinator after this long since its vote.
    pub uncertain_ticks: u64,
    /// A pre-committed participant suspects the coordinator after this long.
    pub precommitted_ticks: u64,
    /// A participant suspects the backup of its round after this long without hearing
    /// from it.
    pub backup_ticks: u64,
}

impl Timeouts {
    /// Timeouts safe for a network where a message arrives within `delay_ticks_max`, and
    /// where at most `drops_max` consecutive sends of one message are lost: with resends
    /// every `resend_ticks`, a message from a live sender arrives within
    /// `delivery = drops_max × resend + delay`, a question is answered within
    /// `2 × delivery + resend`. Each wait exceeds what the live peer it waits for can take.
    pub fn for_network(delay_ticks_max: u64, drops_max: u64, resend_ticks: u64) -> Timeouts {
        let delivery = drops_max * resend_ticks + delay_ticks_max;
        let round_trip = 2 * delivery + 2 * resend_ticks;
        let votes_ticks = round_trip;
        let acks_ticks = round_trip;
        Timeouts {
            resend_ticks,
            votes_ticks,
            acks_ticks,
            collect_ticks: round_trip,
            uncertain_ticks: votes_ticks + delivery + round_trip,
            precommitted_ticks: acks_ticks + delivery + round_trip,
            // A backup collects, pre-commits, then decides: silent in between for at most
            // collect + acks (its messages to me are resent) and a delivery.
            backup_ticks: 2 * round_trip + delivery + round_trip,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts::for_network(5, 2, 4)
    }
}

/// The backup of `round ≥ 1` among `participants` (sorted).
pub fn backup_of(participants: &[ParticipantId], round: u32) -> ParticipantId {
    assert!(round >= 1 && !participants.is_empty(), "round 0 is the coordinator's");
    participants[(round as usize - 1) % participants.len()]
}

#[cfg(test)]
mod tests;
