//! PostgreSQL and MariaDB as two-phase-commit participants (issue 19).
//!
//! Owns: global transaction ids (`gid`), the mapping of the key-value operations onto
//! tables (`kv`), parameterised SQL values and rows (`sql`), database errors as reasons
//! (`error`), the blocking backends (`postgres`, `mariadb`, behind `conn::Connection`), the
//! executor that runs them on a bounded pool of threads and connections for a caller that
//! never blocks (`pool`), and throwaway servers for tests, the demo and the baseline
//! (`testserver`).
//!
//! Invariants: every gid parses back to itself and fits XA's 64-byte gtrid; nothing but a
//! validated gid, integers and hex digits is ever spliced into SQL; a caller's `submit` never waits (a full queue is
//! `Busy`); connections, open transactions, queued requests and unread completions are all
//! bounded; decisions (`COMMIT PREPARED`, `XA COMMIT`) always have a connection reserved; a
//! participant's sessions carry its name (`conn::session_name`), so that its next incarnation
//! ends them (`Request::FenceSessions`) before it lists what is prepared.
//!
//! Must not: depend on the engine or the node runtime (the participant maps its txids and
//! operations onto `Gid` and `KvOp`), decide anything about the protocol (a prepared
//! transaction is committed or rolled back only when asked), or run a database call on the
//! caller's thread.

pub mod conn;
pub mod error;
pub mod gid;
pub mod kv;
pub mod mariadb;
pub mod pool;
pub mod postgres;
pub mod sql;
pub mod testserver;

pub use conn::{Connection, Connector, OneShot, OneShotFailure};
pub use error::{DbError, Reason};
pub use gid::Gid;
pub use kv::{KvOp, KvOutcome};
pub use mariadb::{MariaConnection, MariaConnector};
pub use pool::{Completion, Executor, PoolConfig, Reply, Request};
pub use postgres::{PgConnection, PgConnector};
pub use sql::{Rows, SqlLimits, SqlValue};
