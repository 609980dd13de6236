//! `Replica`: one member of a Raft group, sans-IO. Input: proposals, peer messages, ticks,
//! the wal's durability. Output: a drain of [`Output`]s (messages to send, committed entries
//! to apply, role changes, snapshots to restore or to take).

use std::collections::VecDeque;

use bytes::Bytes;
use std::path::Path;

use raft::prelude::{Entry, EntryType, Message, MessageType, Ready};
use raft::{RawNode, StateRole};
use twophase_wal::{Lsn, Wal, WalOptions};

use crate::codec;
use crate::config::ReplicaConfig;
use crate::error::{ProposeError, ReplicaError};
use crate::record_log::RecordLog;
use crate::storage::WalStorage;

/// Where a proposal sits in the replicated log: committed once an entry of this term is
/// committed at this index; lost if a later leader put another term's entry there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket {
    /// The Raft term the proposal was appended in (0 for a local, unreplicated log).
    pub term: u64,
    /// Its index in the log (the LSN for a local log).
    pub index: u64,
}

/// A committed entry for the application to apply, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEntry {
    /// Its log index.
    pub index: u64,
    /// The term it was proposed in.
    pub term: u64,
    /// The batch as proposed.
    pub data: Bytes,
}

/// A snapshot the application must load in place of its state before applying anything
/// after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInstall {
    /// The last log index it covers.
    pub index: u64,
    /// That entry's term.
    pub term: u64,
    /// The bytes the application's [`StateMachine::snapshot`] gave.
    pub data: Bytes,
}

/// Who leads, as this replica sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleChange {
    /// The leader's id, if one is known.
    pub leader_id: Option<u64>,
    /// The current term.
    pub term: u64,
    /// Whether this replica is the leader.
    pub is_leader: bool,
}

/// What the replica asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `bytes` (an encoded Raft message) to peer `to`. Loss, delay and reordering are
    /// tolerated; the transport need not retry.
    Send {
        /// The peer's id.
        to: u64,
        /// The message, for [`Replica::step`] on the peer.
        bytes: Vec<u8>,
    },
    /// Apply this committed, locally durable entry.
    Apply(CommittedEntry),
    /// Replace the application's state with this snapshot (at open, or from the leader).
    Restore(SnapshotInstall),
    /// The leader, term or this replica's role changed.
    Role(RoleChange),
    /// The application has applied `index`, and `snapshot_every_entries` entries since the
    /// last snapshot: hand its state at exactly `index` to [`Replica::compact`].
    SnapshotDue {
        /// The last applied index (the one the snapshot must cover).
        index: u64,
    },
}

/// The application's state machine, as far as the replica needs it: apply entries, give and
/// restore snapshots. [`Replica::deliver`] drives it from the output drain.
pub trait StateMachine {
    /// Applies one committed entry.
    fn apply(&mut self, entry: &CommittedEntry);
    /// The state after everything applied so far, as bytes.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, snapshot: &SnapshotInstall);
}

/// A Ready whose records are in the wal but maybe not durable yet.
struct UnpersistedReady {
    number: u64,
    /// Durable this far, the Ready is persisted.
    lsn: Lsn,
    /// Messages that may leave only then (votes, append responses).
    messages: Vec<Message>,
    /// The index of the snapshot it installed, if any: Raft counts it applied only once
    /// persisted.
    snapshot_index: Option<u64>,
}

/// One Raft replica over a wal (or any [`RecordLog`]: the group simulator's disks).
/// Single-threaded; the wal's writer thread is its only companion. See the crate docs for
/// the driving loop.
pub struct Replica<L: RecordLog = Wal> {
    node: RawNode<WalStorage<L>>,
    config: ReplicaConfig,
    outputs: VecDeque<Output>,
    unpersisted: VecDeque<UnpersistedReady>,
    role: RoleChange,
    /// Last entry handed out to apply (index, term).
    applied: (u64, u64),
    /// Index of the latest snapshot (taken or installed).
    snapshot_index: u64,
    snapshot_due_sent: bool,
}

impl Replica<Wal> {
    /// Opens the replica's log in `dir` (creating it if empty) and restarts Raft from it:
    /// hard state, entries, latest snapshot. A recovered snapshot is the first output
    /// ([`Output::Restore`]); the committed entries after it follow as Raft re-commits them.
    pub fn open(config: ReplicaConfig, dir: &Path, wal_options: WalOptions) -> Result<Replica, ReplicaError> {
        config.validate()?;
        let storage = WalStorage::open(dir, wal_options, &config.voters)?;
        Replica::on_storage(config, storage)
    }

    /// The wal (for its doorbell / `on_durable`, and stats).
    pub fn wal(&self) -> &Wal {
        self.node.store().wal()
    }
}

impl<L: RecordLog> Replica<L> {
    /// Restarts Raft from a recovered storage (see [`Replica::open`]; the group simulator
    /// passes one over its simulated disk).
    pub fn on_storage(config: ReplicaConfig, storage: WalStorage<L>) -> Result<Replica<L>, ReplicaError> {
        config.validate()?;
        let snapshot = storage.latest_snapshot().clone();
        let snapshot_index = snapshot.get_metadata().index;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&config.raft_config(snapshot_index), storage, &logger).map_err(ReplicaError::Raft)?;
        let term = node.raft.term;
        let mut replica = Replica {
            node,
            config,
            outputs: VecDeque::new(),
            unpersisted: VecDeque::new(),
            role: RoleChange { leader_id: None, term, is_leader: false },
            applied: (snapshot_index, snapshot.get_metadata().term),
            snapshot_index,
            snapshot_due_sent: false,
        };
        if snapshot_index > 0 {
            replica.outputs.push_back(Output::Restore(SnapshotInstall {
                index: snapshot_index,
                term: snapshot.get_metadata().term,
                data: snapshot.data.clone(),
            }));
        }
        replica.outputs.push_back(Output::Role(replica.role));
        Ok(replica)
    }

    /// Advances Raft's clock by one tick (elections, heartbeats, check-quorum). Call
    /// [`Replica::poll`] afterwards.
    pub fn tick(&mut self) {
        self.node.tick();
    }

    /// Takes a message from a peer; call [`Replica::poll`] after a batch of them. A refused
    /// message ([`ReplicaError::BadMessage`]) changes nothing; any other error is fatal.
    pub fn step(&mut self, bytes: &[u8]) -> Result<(), ReplicaError> {
        self.step_checked(bytes, None)
    }

    /// Like [`Replica::step`], for a message that arrived on a link authenticated as
    /// replica `sender` (its certificate): a message claiming any other sender is refused
    /// ([`ReplicaError::BadMessage`]), so one replica cannot speak for another.
    pub fn step_from(&mut self, sender: u64, bytes: &[u8]) -> Result<(), ReplicaError> {
        self.step_checked(bytes, Some(sender))
    }

    fn step_checked(&mut self, bytes: &[u8], sender: Option<u64>) -> Result<(), ReplicaError> {
        let mut message = codec::decode_message(bytes, self.config.message_bytes_max)?;
        if let Some(sender) = sender
            && message.from != sender
        {
            return Err(ReplicaError::BadMessage(format!(
                "claims to be from {}, the link is {sender}'s",
                message.from
            )));
        }
        self.check_origin(&message)?;
        self.guard_heartbeat_commit(&mut message);
        match self.node.step(message) {
            Ok(()) => Ok(()),
            Err(raft::Error::StepPeerNotFound) => {
                Err(ReplicaError::BadMessage("from a peer raft does not track".into()))
            }
            Err(raft::Error::StepLocalMsg) => Err(ReplicaError::BadMessage("a local message type".into())),
            Err(e) => Err(ReplicaError::Raft(e)),
        }
    }

    fn check_origin(&self, message: &Message) -> Result<(), ReplicaError> {
        if message.to != self.config.id {
            return Err(ReplicaError::BadMessage(format!("addressed to {}, we are {}", message.to, self.config.id)));
        }
        if message.from == self.config.id || !self.config.voters.contains(&message.from) {
            return Err(ReplicaError::BadMessage(format!("from {}, not a peer", message.from)));
        }
        if raft::raw_node::is_local_msg(message.get_msg_type()) {
            return Err(ReplicaError::BadMessage("a local message type".into()));
        }
        Ok(())
    }

    /// A heartbeat tells a follower to commit up to what the leader believes it holds. Only
    /// a replica that lost its log (a wiped directory rejoining under its old id) holds less,
    /// and raft-rs would panic on it; such a heartbeat commits nothing new here instead (not
    /// "up to our last index": entries of an older copy of the log might not match). The
    /// leader's next append or snapshot brings the log back.
    fn guard_heartbeat_commit(&self, message: &mut Message) {
        let raft_log = &self.node.raft.raft_log;
        if message.get_msg_type() == MessageType::MsgHeartbeat && message.commit > raft_log.last_index() {
            message.commit = raft_log.committed;
        }
    }

    /// Asks this leader to hand leadership to `to` (a graceful handoff, or to make a fresh
    /// leader re-learn every follower's log from scratch). Ignored on a follower.
    pub fn transfer_leadership(&mut self, to: u64) {
        if self.is_leader() && to != self.config.id && self.config.voters.contains(&to) {
            self.node.transfer_leader(to);
        }
    }

    /// Proposes one batch (a whole group of the application's records) on the leader; call
    /// [`Replica::poll`] after a batch of proposals (they then share wal records and append
    /// messages). The ticket says where to look for its commit ([`Replica::outcome`]).
    pub fn propose(&mut self, batch: Vec<u8>) -> Result<Ticket, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { leader_id: self.leader_id() });
        }
        if batch.len() > self.config.batch_bytes_max {
            return Err(ProposeError::TooLarge { len: batch.len(), max: self.config.batch_bytes_max });
        }
        if self.is_busy() {
            return Err(ProposeError::Busy);
        }
        if self.node.propose(Vec::new(), batch).is_err() {
            // Dropped: a leadership transfer is under way.
            return Err(ProposeError::NotLeader { leader_id: self.leader_id() });
        }
        Ok(Ticket { term: self.node.raft.term, index: self.node.raft.raft_log.last_index() })
    }

    /// Whether [`Replica::propose`] would answer `Busy` now: `proposals_in_flight_max`
    /// entries are appended but not committed yet. A caller that must not lose a batch
    /// asks before proposing and keeps the batch until this turns false.
    pub fn is_busy(&self) -> bool {
        let raft_log = &self.node.raft.raft_log;
        raft_log.last_index() - raft_log.committed >= self.config.proposals_in_flight_max
    }

    /// Does everything the inputs since the last call made ready: writes new entries, hard
    /// state and snapshots to the wal; tells Raft what became durable and releases the
    /// messages that waited for it; queues messages, entries to apply and role changes.
    /// Call it after inputs and whenever the wal rings ([`Replica::wal`]'s doorbell or
    /// `on_durable`). An error is fatal (the wal failed).
    pub fn poll(&mut self) -> Result<(), ReplicaError> {
        loop {
            self.release_durable()?;
            if !self.node.has_ready() {
                break;
            }
            let ready = self.node.ready();
            self.handle_ready(ready)?;
        }
        self.note_role();
        Ok(())
    }

    fn handle_ready(&mut self, mut ready: Ready) -> Result<(), ReplicaError> {
        // A leader's appends leave at once (they replicate while its own write syncs:
        // Raft thesis 10.2.1); the leader counts itself only once its wal says durable.
        for message in ready.take_messages() {
            self.queue_send(&message);
        }
        let snapshot_index = (!ready.snapshot().is_empty()).then(|| ready.snapshot().get_metadata().index);
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }
        for entry in ready.take_committed_entries() {
            self.queue_apply(entry);
        }
        let store = self.node.mut_store();
        if !ready.entries().is_empty() {
            store.append_entries(ready.entries())?;
        }
        if let Some(hs) = ready.hs() {
            // A commit-only change may be lost (Raft re-learns it): nothing waits for it.
            store.set_hard_state(hs, ready.must_sync())?;
        }
        // Readies persist in order: this one is persisted once every record anything waits
        // for, its own and earlier ones', is durable.
        let wait_for = store.last_urgent_lsn();
        let messages = ready.take_persisted_messages();
        let number = ready.number();
        self.node.advance_append_async(ready);
        self.unpersisted.push_back(UnpersistedReady { number, lsn: wait_for, messages, snapshot_index });
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: raft::prelude::Snapshot) -> Result<(), ReplicaError> {
        let meta = snapshot.get_metadata();
        let install = SnapshotInstall { index: meta.index, term: meta.term, data: snapshot.data.clone() };
        self.node.mut_store().install_snapshot(snapshot)?;
        self.applied = (install.index, install.term);
        self.snapshot_index = install.index;
        self.snapshot_due_sent = false;
        self.outputs.push_back(Output::Restore(install));
        Ok(())
    }

    /// Readies whose records are durable now: Raft learns it, their messages leave.
    fn release_durable(&mut self) -> Result<(), ReplicaError> {
        let durable = self.node.store().durable_lsn()?;
        let mut persisted_number = None;
        let mut persisted_snapshot = None;
        while self.unpersisted.front().is_some_and(|r| r.lsn <= durable) {
            let ready = self.unpersisted.pop_front().expect("checked non-empty");
            persisted_number = Some(ready.number);
            persisted_snapshot = ready.snapshot_index.or(persisted_snapshot);
            for message in &ready.messages {
                self.queue_send(message);
            }
        }
        if let Some(number) = persisted_number {
            self.node.on_persist_ready(number);
        }
        if let Some(index) = persisted_snapshot
            && index > self.node.raft.raft_log.applied
        {
            // raft-rs leaves its applied index below an installed snapshot until told; left
            // there, a campaign would read the compacted entries after it and panic (found by
            // the group simulator).
            self.node.advance_apply_to(index);
        }
        self.node.mut_store().truncate_if_durable(durable)
    }

    fn queue_send(&mut self, message: &Message) {
        self.outputs.push_back(Output::Send { to: message.to, bytes: codec::encode_message(message) });
    }

    /// Hands a committed entry to the application. Entries are committed only once locally
    /// durable (raft-rs caps them at the persisted index), so nothing applied can be lost
    /// here. Raft's own empty entries (a new leader's) and configuration entries (never
    /// proposed: membership is fixed) carry nothing to apply.
    fn queue_apply(&mut self, entry: Entry) {
        assert!(entry.index == self.applied.0 + 1, "entry {} applied after {}", entry.index, self.applied.0);
        self.applied = (entry.index, entry.term);
        if entry.get_entry_type() == EntryType::EntryNormal && !entry.data.is_empty() {
            self.outputs.push_back(Output::Apply(CommittedEntry {
                index: entry.index,
                term: entry.term,
                data: entry.data,
            }));
        }
        // Handed out = applied: the application applies the drain in order before it reads
        // further, so a snapshot it takes after this output covers exactly this index.
        self.node.advance_apply_to(entry.index);
        if !self.snapshot_due_sent && entry.index - self.snapshot_index >= self.config.snapshot_every_entries {
            self.snapshot_due_sent = true;
            self.outputs.push_back(Output::SnapshotDue { index: entry.index });
        }
    }

    fn note_role(&mut self) {
        let raft = &self.node.raft;
        let now = RoleChange {
            leader_id: (raft.leader_id != raft::INVALID_ID).then_some(raft.leader_id),
            term: raft.term,
            is_leader: raft.state == StateRole::Leader,
        };
        if now != self.role {
            self.role = now;
            self.outputs.push_back(Output::Role(now));
        }
    }

    /// Takes the application's snapshot at `index` (an index it got as
    /// [`Output::SnapshotDue`] or any applied one) and compacts the log up to it: the wal
    /// drops the records it covers once the snapshot record is durable.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), ReplicaError> {
        assert!(index <= self.applied.0, "snapshot at {index} beyond the applied index {}", self.applied.0);
        if index <= self.snapshot_index {
            return Ok(());
        }
        self.node.mut_store().compact(index, data)?;
        self.snapshot_index = index;
        self.snapshot_due_sent = false;
        Ok(())
    }

    /// Moves every pending output into `out`, in order.
    pub fn drain_outputs(&mut self, out: &mut Vec<Output>) {
        out.extend(self.outputs.drain(..));
    }

    /// Drives `machine` from the drain: applies entries, restores snapshots, and takes a
    /// snapshot when one is due. Returns the rest (messages to send, role changes), in order.
    pub fn deliver(&mut self, machine: &mut impl StateMachine) -> Result<Vec<Output>, ReplicaError> {
        let mut rest = Vec::new();
        while let Some(output) = self.outputs.pop_front() {
            match output {
                Output::Apply(entry) => machine.apply(&entry),
                Output::Restore(snapshot) => machine.restore(&snapshot),
                Output::SnapshotDue { index } => self.compact(index, machine.snapshot())?,
                other => rest.push(other),
            }
        }
        Ok(rest)
    }

    /// Where a proposal stands: committed (its entry is committed here), lost (another
    /// term's entry took its index, or it was never appended here), pending, or unknown
    /// (compacted into a snapshot before this replica saw its term: the application's
    /// state says).
    pub fn outcome(&self, ticket: Ticket) -> TicketOutcome {
        let raft_log = &self.node.raft.raft_log;
        if ticket.index <= self.snapshot_index {
            // Compacted: only a term recorded at the snapshot's own index can still tell.
            return match raft_log.term(ticket.index) {
                Ok(term) if ticket.index == self.snapshot_index && term == ticket.term => TicketOutcome::Committed,
                _ => TicketOutcome::Unknown,
            };
        }
        if ticket.index > raft_log.last_index() {
            // The log was cut below it by a newer leader.
            return TicketOutcome::Lost;
        }
        match raft_log.term(ticket.index) {
            Ok(term) if term != ticket.term => TicketOutcome::Lost,
            Ok(_) if ticket.index <= self.applied.0 => TicketOutcome::Committed,
            Ok(_) => TicketOutcome::Pending,
            Err(_) => TicketOutcome::Unknown,
        }
    }

    /// The last entry handed out to apply: `(index, term)`.
    pub fn applied(&self) -> (u64, u64) {
        self.applied
    }

    /// This replica's id.
    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// Whether this replica leads (as of the last [`Replica::poll`]).
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// The leader this replica knows of.
    pub fn leader_id(&self) -> Option<u64> {
        let id = self.node.raft.leader_id;
        (id != raft::INVALID_ID).then_some(id)
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// The commit index this replica knows of.
    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// The last index in this replica's log.
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    /// Index of the latest snapshot (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// The storage (for inspection in tests and status).
    pub fn storage(&self) -> &WalStorage<L> {
        self.node.store()
    }
}

/// Where a proposal stands ([`Replica::outcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketOutcome {
    /// Appended, not committed yet.
    Pending,
    /// Committed by a majority and handed out to apply here.
    Committed,
    /// Will never commit: the log holds another term's entry at its index.
    Lost,
    /// Compacted into a snapshot before this replica could tell.
    Unknown,
}
