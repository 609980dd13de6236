//! The resource-manager seam: what the participant's protocol logic (votes, prepare
//! durability, stale checks, in-doubt resolution, inquiries, recovery) asks of the store
//! that holds the data. The built-in key-value store ([`KvResource`](super::KvResource)) is
//! the first implementation; a PostgreSQL or MariaDB backend would be another.
//!
//! Dispatch is static (`Participant<R: ResourceManager>`), and a prepared transaction's
//! state is the resource manager's own type held inside the participant's table, so the
//! seam costs no allocation and no second lookup per transaction.
//!
//! Invariants every implementation keeps:
//! - Between a successful prepare and `commit` / `abort` of that transaction, nothing it
//!   wrote may be lost or be changed by another transaction (its locks are held).
//! - `commit` and `abort` of a prepared transaction cannot fail.
//! - A failed or refused request leaves nothing held.
//!
//! Must not: log, send, or decide anything; the participant does (it owns the log and the
//! protocol). A resource manager that prepares asynchronously answers `Prepare::Pending`
//! and its driver later calls [`Participant::on_prepare_done`](super::Participant::on_prepare_done).

use std::fmt::Debug;
use std::sync::Arc;

use crate::ops::{AbortReason, Isolation, Key, LocalOp, Read};
use crate::record::Write;
use crate::types::TxId;

use super::KvImage;

/// How a prepare ended.
#[derive(Debug)]
pub enum PrepareResult<P> {
    /// Prepared: `prepared` holds what the transaction keeps here until its decision.
    Yes { reads: Vec<Read>, prepared: P },
    /// Nothing written here and the transaction's only participant (`sole`): nothing held,
    /// no second phase needed. With several participants a prepare that only reads answers
    /// `Yes` holding its read locks (its `read_keys`) until the decision.
    ReadOnly { reads: Vec<Read> },
    /// Refused: nothing held.
    No { reason: AbortReason },
}

/// What a resource manager did with an interactive `Execute`.
#[derive(Debug, PartialEq, Eq)]
pub enum Execution {
    /// Every op ran: the reads of its `Get`s.
    Done { reads: Vec<Read> },
    /// Waiting for a lock: an [`RmEvent::Waits`] says for whom; an [`RmEvent::Executed`]
    /// brings the result.
    Waiting,
    /// Failed: the transaction is rolled back here (nothing held).
    Failed { reason: AbortReason },
}

/// What happened inside the resource manager that the participant must report.
#[derive(Debug, PartialEq, Eq)]
pub enum RmEvent {
    /// `waiter`'s execute waits on `key` for `holders` (the lock holders and queued requests
    /// ahead of it that it conflicts with), or no longer waits (`holders` empty).
    Waits { waiter: TxId, key: Key, holders: Vec<TxId> },
    /// A waiting execute finished; an error means the transaction is rolled back here.
    Executed { txid: TxId, result: Result<Vec<Read>, AbortReason> },
}

/// What a resource manager did with a prepare.
#[derive(Debug)]
pub enum Prepare<P> {
    Done(PrepareResult<P>),
    /// A key is held by `holder`: nothing is held, and the ops come back so the participant
    /// can wait for the holder's decision or refuse.
    Blocked {
        holder: TxId,
        key: Key,
        ops: Vec<LocalOp>,
    },
    /// Under way outside the engine: the driver reports the result with
    /// [`Participant::on_prepare_done`](super::Participant::on_prepare_done).
    Pending,
}

pub trait ResourceManager: Debug {
    /// What a prepared transaction holds here until its decision (its write set, its locks).
    type Prepared: Debug;

    /// Whether a prepare that answered `Yes` is already durable in the resource itself, and
    /// listed again after a crash of this process (a database's `PREPARE TRANSACTION` /
    /// `XA PREPARE`, found in `pg_prepared_xacts` / `XA RECOVER`). Then the `Yes` waits only
    /// for the latest `Epoch` record (the coordinator it answers must survive a restart
    /// here), not for the `Prepared` record: one sync fewer on every transaction's path. The
    /// driver must then rebuild, at recovery, every transaction the resource holds prepared
    /// that no durable record names, as in doubt (its Yes may have left).
    const PREPARE_DURABLE: bool = false;

    /// Locks (without waiting) and evaluates a one-shot transaction's `ops`; on `Yes` the
    /// locks stay held until `commit` or `abort`. `ReadOnly` (release at once) only when
    /// `sole` (this is the transaction's only participant).
    fn prepare(&mut self, txid: TxId, ops: Vec<LocalOp>, sole: bool) -> Prepare<Self::Prepared>;

    /// Runs `ops` inside the open transaction `txid` (opened by its first execute), waiting
    /// for locks as `isolation` requires. At most one execute per transaction at a time.
    fn execute(&mut self, txid: TxId, isolation: Isolation, ops: Vec<LocalOp>) -> Execution;

    /// Prepares what the executes of the open transaction `txid` did (it must not be waiting);
    /// it is no longer open afterwards. `ReadOnly` only when `sole`, as for `prepare`.
    /// `None`: under way, answered through
    /// [`Participant::on_prepare_done`](super::Participant::on_prepare_done).
    fn prepare_open(&mut self, txid: TxId, sole: bool) -> Option<PrepareResult<Self::Prepared>>;

    /// Rolls back the open transaction `txid`: drops its writes, releases its locks (waking
    /// the requests they held up), withdraws its waiting request. Nothing if it is not open.
    fn rollback(&mut self, txid: TxId);

    /// The next event to report, oldest first.
    fn pop_event(&mut self) -> Option<RmEvent>;

    /// Whether an event waits to be reported: asked after every message, nearly always
    /// false, so a resource manager that can answer cheaply spares the caller `pop_event`.
    fn has_events(&self) -> bool {
        true
    }

    /// The write set the `Prepared` record logs (and a snapshot keeps) for `prepared`:
    /// shared, not copied, on every prepare.
    fn writes(prepared: &Self::Prepared) -> Arc<[Write]>;

    /// The keys `prepared` holds shared (read, not written): logged in the `Prepared` record
    /// and kept in a snapshot, so that a restart locks them again. Empty, without
    /// allocating, for a transaction that only writes.
    fn read_keys(prepared: &Self::Prepared) -> Vec<Key>;

    /// Applies a prepared transaction's writes and releases what it held.
    fn commit(&mut self, txid: TxId, prepared: Self::Prepared);

    /// Forgets a prepared transaction's writes and releases what it held.
    fn abort(&mut self, txid: TxId, prepared: Self::Prepared);

    /// A prepared transaction rebuilt from its record at recovery; it holds nothing yet.
    fn recovered(&mut self, txid: TxId, writes: Arc<[Write]>, read_keys: Vec<Key>) -> Self::Prepared;

    /// Takes again the locks of a transaction recovered in doubt: exclusive on its writes,
    /// shared on its read keys.
    fn relock(&mut self, txid: TxId, prepared: &mut Self::Prepared);

    /// The committed state, for a snapshot.
    fn image(&self) -> KvImage;

    /// Loads the committed state of a snapshot (into an empty resource manager).
    fn restore(&mut self, image: &KvImage);

    /// A planted bug: releases a prepared transaction's locks early.
    #[cfg(test)]
    fn release_locks(&mut self, txid: TxId, prepared: &mut Self::Prepared);

    /// A planted bug: releases a prepared transaction's shared (read) locks early.
    #[cfg(test)]
    fn release_read_locks(&mut self, txid: TxId, prepared: &mut Self::Prepared);
}
