//! `twophase-replica`: a Raft-replicated decision log for the coordinator, on raft-rs
//! (TiKV's `raft` crate) with its log stored in our wal.
//!
//! # What it owns
//!
//! * [`Replica`]: one member of a Raft group, sans-IO. The driver feeds it
//!   [`Replica::propose`] (one batch = a whole group of coordinator records),
//!   [`Replica::step`] (peer messages as bytes), [`Replica::tick`] (every `tick_ms` of the
//!   driver's choosing), then calls [`Replica::poll`] (also whenever the wal rings) and takes
//!   the [`Output`] drain: messages to send (peer id + bytes), committed entries to apply
//!   (index, term, bytes), role/term/leader changes, snapshots to restore or to take
//!   ([`Replica::deliver`] drives a [`StateMachine`] from it). Check-quorum and pre-vote
//!   are always on.
//! * [`WalStorage`]: raft-rs's `Storage` on a twophase wal (or any [`RecordLog`]: the group
//!   simulator's disks; [`Replica::on_storage`] runs a replica on one). Entries, hard state and
//!   snapshots are wal records (`codec`: kinds 1, 2, 3; the wal stores them as opaque
//!   bytes); the entries since the latest snapshot are cached in memory, rebuilt on open.
//!   A snapshot makes the records it covers unneeded: the wal drops their segments once the
//!   snapshot record is durable.
//! * [`DecisionLog`]: the small interface the coordinator will append its batches through,
//!   implemented by [`LocalLog`] (one coordinator: the wal, decided = durable) and by
//!   [`Replica`] (decided = committed by a majority).
//!
//! # Invariants
//!
//! * Raft is told a Ready is persisted (`on_persist_ready`) only once the wal's durable LSN
//!   passed every record written for it; the messages Raft holds until then (votes, append
//!   responses) leave only then. A vote or term change is written urgently (starts a group);
//!   a commit-only hard state rides with the next group (Raft tolerates losing it).
//! * An entry is handed out to apply only once committed and locally durable (raft-rs caps
//!   committed entries at the persisted index); entries are handed out in index order,
//!   each once, after any snapshot they follow.
//! * A leader that has not heard from a majority for an election timeout steps down
//!   (`check_quorum`); a partitioned minority commits nothing.
//! * Every input from the wire is checked before use: message length against
//!   `message_bytes_max` before decoding, addressee, sender among the voters, no local
//!   message types. A refused message is dropped with [`ReplicaError::BadMessage`];
//!   nothing else changes. Proposals are bounded in size and in number in flight.
//!
//! # What it must not do
//!
//! No sockets, clocks, threads or randomness of its own (raft-rs randomises election
//! timeouts internally unless `ReplicaConfig::election_randomized` is false; the wal has its
//! writer thread). It must not depend on the binary,
//! net or bench crates, nor on the engine: it replicates opaque batches and knows nothing of
//! two-phase commit. Membership is fixed: no configuration changes are proposed.

mod codec;
mod config;
mod error;
mod log;
mod record_log;
mod replica;
mod storage;

pub use codec::{KIND_ENTRIES, KIND_HARD_STATE, KIND_SNAPSHOT};
pub use config::ReplicaConfig;
pub use error::{ProposeError, ReplicaError};
pub use log::{AppendError, DecisionLog, KIND_LOCAL_BATCH, LocalLog};
pub use record_log::RecordLog;
pub use replica::{CommittedEntry, Output, Replica, RoleChange, SnapshotInstall, StateMachine, Ticket, TicketOutcome};
pub use storage::WalStorage;
