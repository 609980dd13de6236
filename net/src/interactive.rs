//! Interactive transactions in the blocking client: `BEGIN`, statements, `COMMIT`.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use twophase_net::{Client, ClientOptions};
//! let mut client = Client::connect("127.0.0.1:7000", ClientOptions::default())?;
//! let mut t = client.begin()?;
//! let balance = t.get_i64("p1", "acct/1")?.unwrap_or(0);
//! if balance >= 5 {
//!     t.add("p1", "acct/1", -5)?;
//!     t.add("p2", "acct/2", 5)?;
//! }
//! t.commit()?;
//! # Ok(())
//! # }
//! ```
//!
//! Each request (`Begin`, `Execute`, `Commit`, `Rollback`) travels in an `Interactive`
//! frame under the next `(client, seq)` of the [`Client`]'s session and goes through the
//! client's own retry loop ([`Client`]'s `exchange`): a retry after a lost connection or a
//! `Busy` carries the same `(client, seq)`, so the coordinator answers it with the reply it
//! gave, never running the statement twice.
//!
//! A statement that fails ends the transaction (the coordinator has already rolled it back
//! everywhere it went, like PostgreSQL's "current transaction is aborted"): it returns
//! [`TxError::Aborted`] with the reason — [`AbortReason::Deadlock`] (this transaction was the
//! youngest of a wait-for cycle), [`AbortReason::LockTimeout`], [`AbortReason::IdleTimeout`],
//! [`AbortReason::NotActive`], or a reason one-shot transactions know too — and every later
//! call on it returns the same error without a round trip. A [`Transaction`] dropped without
//! `commit` or `rollback` sends a `Rollback` best-effort (without waiting); if that is lost
//! the coordinator's idle timeout rolls it back.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use twophase_engine::message::Interactive;
use twophase_engine::ops::Isolation;
use twophase_engine::{AbortReason, Op, OpKind, Outcome, Read, Reply, Rows, SqlStatement, SqlValue, TxId, Value};

use crate::client::{Client, ClientError, Directory, unexpected_reply};
use crate::frame::BatchWriter;

/// The longest idle timeout a transaction may ask for (the coordinator's bound).
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an interactive request failed.
#[derive(Debug)]
pub enum TxError {
    /// The transaction is over and rolled back (or never began): the coordinator's reason.
    Aborted(AbortReason),
    /// The request could not be run or its answer was not heard; whether the transaction is
    /// still open is unknown (the coordinator's idle timeout ends it if it is).
    Client(ClientError),
}

impl TxError {
    /// The reason the transaction ended, when it did.
    pub fn abort_reason(&self) -> Option<&AbortReason> {
        match self {
            TxError::Aborted(reason) => Some(reason),
            TxError::Client(_) => None,
        }
    }

    /// Whether the transaction is over: aborted, or left behind on a coordinator node the
    /// client no longer talks to ([`ClientError::CoordinatorChanged`]).
    pub fn transaction_is_over(&self) -> bool {
        matches!(self, TxError::Aborted(_) | TxError::Client(ClientError::CoordinatorChanged { .. }))
    }

    /// Whether running the whole transaction again may succeed (a deadlock victim or a
    /// lock-wait timeout, say).
    pub fn is_retryable(&self) -> bool {
        self.abort_reason().is_some_and(AbortReason::is_retryable)
    }
}

impl fmt::Display for TxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxError::Aborted(reason) => write!(f, "transaction aborted: {reason}"),
            TxError::Client(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for TxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TxError::Aborted(_) => None,
            TxError::Client(err) => Some(err),
        }
    }
}

impl From<ClientError> for TxError {
    fn from(err: ClientError) -> TxError {
        TxError::Client(err)
    }
}

impl Client {
    /// Begins a serializable transaction with the coordinator's default idle timeout.
    pub fn begin(&mut self) -> Result<Transaction<'_>, TxError> {
        self.begin_with(Isolation::Serializable, None)
    }

    /// Begins a transaction at `isolation`, rolled back by the coordinator when no request
    /// of it arrives for `idle_timeout` (`None`: the coordinator's default, 10 s; at most
    /// [`MAX_IDLE_TIMEOUT`]).
    pub fn begin_with(
        &mut self,
        isolation: Isolation,
        idle_timeout: Option<Duration>,
    ) -> Result<Transaction<'_>, TxError> {
        let idle_timeout_ms = match idle_timeout {
            None => 0,
            Some(timeout) if timeout.is_zero() || timeout > MAX_IDLE_TIMEOUT => {
                let detail =
                    format!("an idle timeout must be above 0 and at most {MAX_IDLE_TIMEOUT:?}, not {timeout:?}");
                return Err(TxError::Aborted(AbortReason::Invalid { detail }));
            }
            Some(timeout) => timeout.as_millis().max(1) as u32,
        };
        let seq = self.next_seq();
        let request = Interactive::Begin { client: self.client_id(), seq, isolation, idle_timeout_ms };
        match send(self, seq, &request, None)? {
            Reply::Began { txid, .. } => {
                let node = (self.node_changes(), self.coordinator());
                Ok(Transaction { client: self, txid, isolation, ended: None, open: true, node })
            }
            Reply::Outcome { outcome: Outcome::Aborted { reason }, .. } => Err(TxError::Aborted(reason)),
            other => Err(unexpected_reply(&other).into()),
        }
    }
}

/// Encodes `request` within the coordinator's limits and runs it through the client's
/// retry loop; a request of an open transaction (`pinned`: its txid and node) is never sent
/// to another coordinator node than the one it began on.
fn send(
    client: &mut Client,
    seq: twophase_engine::Seq,
    request: &Interactive,
    pinned: Option<(TxId, (u64, Option<SocketAddr>))>,
) -> Result<Reply, ClientError> {
    let mut writer = BatchWriter::<Interactive>::new(&client.server_limits);
    writer.push(request)?;
    client.exchange(seq, writer.finish(), pinned.map(|(txid, (node, addr))| (txid, node, addr)))
}

/// An open interactive transaction: statements run at once (waiting for locks), the
/// outcome comes with [`commit`](Self::commit).
pub struct Transaction<'c> {
    client: &'c mut Client,
    txid: TxId,
    isolation: Isolation,
    /// Why the transaction ended, once a statement failed: later calls return it.
    ended: Option<AbortReason>,
    /// Whether it may still be open at the coordinator (then drop rolls it back).
    open: bool,
    /// The coordinator node it lives on: the client's node-change count and address at
    /// `Begin`. Its requests go nowhere else.
    node: (u64, Option<SocketAddr>),
}

impl Transaction<'_> {
    pub fn txid(&self) -> TxId {
        self.txid
    }

    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// The coordinator's participants, to name them in [`Op`]s.
    pub fn directory(&self) -> &Directory {
        self.client.directory()
    }

    /// Runs `ops` (on any participants) in one round trip and returns the values of its
    /// `Get`s, each [`Read`] indexed by the op's position in `ops`. Waits while a lock is
    /// held by another transaction; an error ends the transaction.
    pub fn execute(&mut self, ops: Vec<Op>) -> Result<Vec<Read>, TxError> {
        if let Some(reason) = &self.ended {
            return Err(TxError::Aborted(reason.clone()));
        }
        // Not sent, and the transaction stays open: the coordinator never saw it.
        crate::client::check_sizes(&self.client.server_limits, &ops)?;
        let seq = self.client.next_seq();
        let request = Interactive::Execute { client: self.client.client_id(), seq, txid: self.txid, ops };
        match self.send_pinned(seq, &request)? {
            Reply::Executed { reads, .. } => Ok(reads),
            Reply::Outcome { outcome: Outcome::Aborted { reason }, .. } => {
                self.ended = Some(reason.clone());
                self.open = false;
                Err(TxError::Aborted(reason))
            }
            other => Err(unexpected_reply(&other).into()),
        }
    }

    /// The value at `key` on `participant` (`None`: absent).
    pub fn get(&mut self, participant: &str, key: impl AsRef<[u8]>) -> Result<Option<Value>, TxError> {
        let op = self.op(participant, key, OpKind::Get)?;
        let reads = self.execute(vec![op])?;
        match reads.into_iter().find(|read| read.index == 0) {
            Some(read) => Ok(read.value),
            None => Err(TxError::Client(ClientError::Protocol(crate::ProtocolError::new(
                crate::ErrorCode::UnexpectedFrame,
                "the coordinator answered a GET without its value",
            )))),
        }
    }

    /// [`get`](Self::get) of an integer as `Add` stores it (8 bytes, little-endian);
    /// a value of another size is reported as `NotANumber`-like protocol error.
    pub fn get_i64(&mut self, participant: &str, key: impl AsRef<[u8]>) -> Result<Option<i64>, TxError> {
        match self.get(participant, key)? {
            None => Ok(None),
            Some(value) => match <[u8; 8]>::try_from(value.as_ref()) {
                Ok(bytes) => Ok(Some(i64::from_le_bytes(bytes))),
                Err(_) => Err(TxError::Client(ClientError::Protocol(crate::ProtocolError::new(
                    crate::ErrorCode::Malformed,
                    format!("the value read is {} bytes long, not an 8-byte integer", value.len()),
                )))),
            },
        }
    }

    pub fn put(&mut self, participant: &str, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), TxError> {
        let op = self.op(participant, key, OpKind::Put(Bytes::copy_from_slice(value.as_ref())))?;
        self.execute(vec![op]).map(drop)
    }

    /// Adds `delta` to the integer at `key` (a missing key counts as 0).
    pub fn add(&mut self, participant: &str, key: impl AsRef<[u8]>, delta: i64) -> Result<(), TxError> {
        self.add_with_floor(participant, key, delta, i64::MIN)
    }

    /// Adds `delta`, aborting the transaction (`Constraint`) if the result would be below
    /// `floor`.
    pub fn add_with_floor(
        &mut self,
        participant: &str,
        key: impl AsRef<[u8]>,
        delta: i64,
        floor: i64,
    ) -> Result<(), TxError> {
        let op = self.op(participant, key, OpKind::Add { delta, floor })?;
        self.execute(vec![op]).map(drop)
    }

    /// Runs one parameterised SQL statement on the database participant `participant`
    /// (`$1` placeholders for PostgreSQL, `?` for MariaDB) inside this transaction and
    /// returns its rows (column names, values, rows changed). A statement the database
    /// refuses (a syntax error, a CHECK violation, ...) ends the transaction like any failed
    /// statement, with the database's message in [`AbortReason::Invalid`]; so does one sent
    /// to a participant that is not a database. Bounds: text and parameters at most the
    /// coordinator's `max_value_bytes` (32 KiB by default), at most 256 parameters, and the
    /// rows returned at most `max_value_bytes` encoded (more fails the statement: page with
    /// `LIMIT`).
    pub fn sql(&mut self, participant: &str, sql: &str, params: &[SqlValue]) -> Result<Rows, TxError> {
        let statement = SqlStatement { sql: sql.to_owned(), params: params.to_vec() };
        let value_bytes_max = self.client.server_limits.engine.max_value_bytes;
        if let Err(detail) = statement.check(value_bytes_max) {
            // Refused here, before anything is sent: the transaction stays open.
            return Err(TxError::Client(ClientError::Protocol(crate::ProtocolError::new(
                crate::ErrorCode::Malformed,
                detail,
            ))));
        }
        let op = self.op(participant, b"", OpKind::Sql(Box::new(statement)))?;
        let reads = self.execute(vec![op])?;
        let Some(Read { value: Some(value), .. }) = reads.into_iter().find(|read| read.index == 0) else {
            return Err(TxError::Client(ClientError::Protocol(crate::ProtocolError::new(
                crate::ErrorCode::UnexpectedFrame,
                "the coordinator answered an SQL statement without its rows",
            ))));
        };
        Rows::from_bytes(value).map_err(|error| {
            TxError::Client(ClientError::Protocol(crate::ProtocolError::new(
                crate::ErrorCode::Malformed,
                format!("the rows of an SQL statement do not decode: {error}"),
            )))
        })
    }

    pub fn delete(&mut self, participant: &str, key: impl AsRef<[u8]>) -> Result<(), TxError> {
        let op = self.op(participant, key, OpKind::Delete)?;
        self.execute(vec![op]).map(drop)
    }

    /// Commits: `Ok` once the commit is durable; [`TxError::Aborted`] with the reason when
    /// the transaction could not commit (and is rolled back everywhere).
    pub fn commit(mut self) -> Result<(), TxError> {
        if let Some(reason) = &self.ended {
            return Err(TxError::Aborted(reason.clone()));
        }
        let seq = self.client.next_seq();
        let request = Interactive::Commit { client: self.client.client_id(), seq, txid: self.txid };
        let reply = self.send_pinned(seq, &request)?;
        match reply {
            Reply::Outcome { outcome, .. } => {
                self.open = false;
                match outcome {
                    Outcome::Committed { .. } | Outcome::CommittedReadsUnavailable => Ok(()),
                    Outcome::Aborted { reason } => Err(TxError::Aborted(reason)),
                }
            }
            other => Err(unexpected_reply(&other).into()),
        }
    }

    /// Rolls back: `Ok` when this rolled it back; [`TxError::Aborted`] with the reason when
    /// it had already ended otherwise (an idle timeout, a deadlock, ...): rolled back too.
    pub fn rollback(mut self) -> Result<(), TxError> {
        if let Some(reason) = &self.ended {
            return Err(TxError::Aborted(reason.clone()));
        }
        let seq = self.client.next_seq();
        let request = Interactive::Rollback { client: self.client.client_id(), seq, txid: self.txid };
        let reply = self.send_pinned(seq, &request);
        // Whatever was heard, drop must not send another.
        self.open = false;
        match reply? {
            Reply::Outcome { outcome: Outcome::Aborted { reason: AbortReason::RolledBack }, .. } => Ok(()),
            Reply::Outcome { outcome: Outcome::Aborted { reason }, .. } => Err(TxError::Aborted(reason)),
            other => Err(unexpected_reply(&other).into()),
        }
    }

    /// Sends a request of this transaction to its own node only; once the connection has
    /// moved, the transaction is over (nothing more to roll back from here).
    fn send_pinned(&mut self, seq: twophase_engine::Seq, request: &Interactive) -> Result<Reply, ClientError> {
        let result = send(self.client, seq, request, Some((self.txid, self.node)));
        if let Err(ClientError::CoordinatorChanged { .. }) = &result {
            self.open = false;
        }
        result
    }

    fn op(&self, participant: &str, key: impl AsRef<[u8]>, kind: OpKind) -> Result<Op, ClientError> {
        let participant = self.client.directory().require_participant(participant)?;
        Ok(Op { participant, key: Bytes::copy_from_slice(key.as_ref()), kind })
    }
}

impl Drop for Transaction<'_> {
    /// Rolls back best-effort: one send on the current connection, no wait, no retry.
    fn drop(&mut self) {
        if !self.open || self.client.node_changes() != self.node.0 {
            return;
        }
        let seq = self.client.next_seq();
        let request = Interactive::Rollback { client: self.client.client_id(), seq, txid: self.txid };
        let mut writer = BatchWriter::<Interactive>::new(&self.client.server_limits);
        if writer.push(&request).is_ok() {
            self.client.send_without_reply(writer.finish());
        }
    }
}
