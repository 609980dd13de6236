//! twophase-engine: the protocol core of twophase, sans-IO.
//!
//! Owns: identifiers and operations ([`types`], [`ops`]; SQL statements and their rows, [`sql`]), the binary encoding of log records
//! and messages ([`codec`], [`record`], [`message`]), the coordinator and participant state
//! machines ([`coordinator`], [`participant`]) with the built-in key-value resource manager and
//! lock table, the coordinator's wait-for graph of interactive transactions ([`deadlock`]), the table of transactions in flight by txid (`txtable`), the durability gate
//! ([`effects`]), three-phase commit with its termination protocol ([`threepc`]), and the deterministic simulator with its invariant checker ([`sim`]).
//! `fuzz_targets` (hidden) holds the decoder fuzz bodies shared by `fuzz/` and the stable
//! random-input harness.
//!
//! Invariants:
//! - Deterministic: the same inputs in the same order give the same outputs. Time comes in
//!   as a [`types::Time`]; maps hash with a seed from the configuration.
//! - Every output that must not escape before a log record is durable carries that record's
//!   LSN ([`effects::Gated`]); drivers release it only once the log is durable that far.
//! - LSNs a state machine hands out are consecutive; the log must store them as given.
//!
//! Must not: touch files, sockets, threads or clocks (none of std's filesystem, network,
//! thread or current-time APIs), or depend on another twophase crate.
//! The node runtime, the wal and the network drive this crate; never the other way round.

pub mod codec;
pub mod coordinator;
pub mod deadlock;
pub mod effects;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod hash;
pub mod message;
pub mod ops;
pub mod participant;
pub mod record;
pub mod sim;
pub mod sql;
pub mod threepc;
mod txtable;
pub mod types;

pub use coordinator::{ClientOrigin, CoordEffects, CoordOutput, Coordinator, CoordinatorConfig};
pub use effects::{DurabilityGate, Effects, Gated};
pub use message::{Interactive, RegisterRefusal, RejectReason, Reply, Submit, ToCoordinator, ToParticipant};
pub use ops::{AbortReason, Isolation, Key, Limits, LocalOp, Op, OpKind, Outcome, Read, Value, Vote};
pub use participant::{PartEffects, Participant, ParticipantConfig};
pub use record::{AnyRecord, CoordRecord, GetAt, LogRecord, PartRecord, Write};
pub use sql::{Rows, SqlStatement, SqlValue};
pub use types::{ClientId, Epoch, Lsn, ParticipantId, Seq, Time, TxId};
