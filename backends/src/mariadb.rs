//! MariaDB (InnoDB): `XA START 'gid'` … `XA END` + `XA PREPARE`, `XA COMMIT` / `XA ROLLBACK`,
//! recovery from `XA RECOVER`. Since MariaDB 10.5 a prepared XA transaction survives its
//! connection and the server's restart, and any connection may decide it once the one that
//! prepared it is gone; that one can do nothing else until it decides the branch (error 1399
//! XAER_RMFAIL otherwise), so the pool keeps it with the prepared transaction.
//!
//! Reads take shared locks (`LOCK IN SHARE MODE`) and writes row locks, held until the
//! decision, like the built-in store. Keys up to 1024 bytes and values up to 32 KiB: the
//! engine's limits.

use std::time::{Duration, Instant};

use bytes::Bytes;
use mysql::consts::ColumnType;
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, Params, Value};

use crate::conn::{Connection, Connector, OneShot, OneShotFailure, gid_literal, gids_of, one_shot_by_steps};
use crate::error::{DbError, Reason, reason_of_mysql_code};
use crate::gid::Gid;
use crate::kv::{self, KvOp, KvOutcome, Row};
use crate::postgres::check_statement;
use crate::sql::{Rows, SqlLimits, SqlValue};

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS kv (k VARBINARY(1024) PRIMARY KEY, v VARBINARY(32768) NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, \
     CONSTRAINT balance_not_negative CHECK (balance >= 0)) ENGINE=InnoDB",
];

/// The `binary` character set: a column of bytes, not text.
const BINARY_CHARSET: u16 = 63;

/// The session registry: MariaDB shows no client-chosen name of a session to others (no
/// `application_name`; connection attributes only with the performance schema on), so each
/// named session writes its connection id here at connect, with when, and a restarted
/// participant ends the ones still connected (`fence_sessions`). `registered_s` tells rows
/// of an earlier server life (whose ids the server hands out again) from this life's.
const SESSIONS_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS twophase_sessions (\
     session VARBINARY(64) NOT NULL, connection_id BIGINT UNSIGNED NOT NULL, registered_s BIGINT NOT NULL, \
     PRIMARY KEY (session, connection_id)) ENGINE=InnoDB";
const REGISTER_SESSION: &str = "REPLACE INTO twophase_sessions (session, connection_id, registered_s) VALUES (?, CONNECTION_ID(), UNIX_TIMESTAMP())";
/// The sessions named `?` registered in this server life (its start time, from `Uptime`, is
/// known to the second: one second of slack) that are still connected, besides this one.
const LIVE_SESSIONS: &str = "SELECT s.connection_id FROM twophase_sessions s \
     JOIN information_schema.PROCESSLIST p ON p.ID = s.connection_id \
     WHERE s.session = ? AND s.connection_id <> CONNECTION_ID() AND s.registered_s >= \
       UNIX_TIMESTAMP() - (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME') - 1";
/// How often a fence looks again for the sessions it killed.
const FENCE_POLL: Duration = Duration::from_millis(20);

pub struct MariaConnector {
    opts: Opts,
    /// `innodb_lock_wait_timeout` of every session, in whole seconds (0: the server's).
    lock_wait_timeout_s: u64,
    /// The name every session registers under (`twophase_sessions`), if any.
    session_name: Option<String>,
}

impl MariaConnector {
    /// `mysql://user:password@host:port/db`, or with `?socket=/path/mysqld.sock`.
    pub fn new(url: &str) -> Result<MariaConnector, DbError> {
        let opts = Opts::from_url(url).map_err(|e| DbError::invalid(format!("MariaDB URL: {e}")))?;
        Ok(MariaConnector { opts, lock_wait_timeout_s: 0, session_name: None })
    }

    /// Every session registers under `name` (see `conn::session_name`) in the
    /// `twophase_sessions` table, by which a restarted participant finds and ends them
    /// (`Connection::fence_sessions`).
    pub fn with_session_name(mut self, name: &str) -> MariaConnector {
        self.session_name = Some(name.to_owned());
        self
    }

    /// Every session waits at most this long for a row lock (`innodb_lock_wait_timeout`,
    /// whole seconds: rounded up, at least 1), then its statement fails with
    /// `Reason::LockWaitTimeout`. Zero keeps the server's setting (50 s by default).
    pub fn with_lock_wait_timeout(mut self, timeout: std::time::Duration) -> MariaConnector {
        self.lock_wait_timeout_s = if timeout.is_zero() { 0 } else { timeout.as_secs_f64().ceil().max(1.0) as u64 };
        self
    }

    pub fn from_opts(opts: impl Into<Opts>) -> MariaConnector {
        MariaConnector { opts: opts.into(), lock_wait_timeout_s: 0, session_name: None }
    }
}

impl Connector for MariaConnector {
    type Conn = MariaConnection;

    fn connect(&self) -> Result<MariaConnection, DbError> {
        let mut opts = OptsBuilder::from_opts(self.opts.clone()).prefer_socket(true);
        if self.lock_wait_timeout_s > 0 {
            opts = opts.init(vec![format!("SET SESSION innodb_lock_wait_timeout = {}", self.lock_wait_timeout_s)]);
        }
        let conn = Conn::new(opts).map_err(|e| map_error(&e))?;
        let mut conn = MariaConnection { conn, broken: false };
        if let Some(name) = &self.session_name {
            conn.text(SESSIONS_SCHEMA)?;
            conn.run(|c| c.exec_drop(REGISTER_SESSION, (name.as_bytes(),)))?;
        }
        Ok(conn)
    }
}

pub struct MariaConnection {
    conn: Conn,
    broken: bool,
}

impl MariaConnection {
    /// The driver's connection, for tests and tools that need plain SQL.
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Runs a driver call, remembering a broken connection.
    fn run<T>(&mut self, call: impl FnOnce(&mut Conn) -> mysql::Result<T>) -> Result<T, DbError> {
        call(&mut self.conn).map_err(|e| {
            let error = map_error(&e);
            if error.reason == Reason::ConnectionLost {
                self.broken = true;
            }
            error
        })
    }

    fn text(&mut self, sql: &str) -> Result<(), DbError> {
        self.run(|c| c.query_drop(sql))
    }

    /// `XA COMMIT` / `XA ROLLBACK` of a prepared branch. A branch that prepared but only read
    /// (it held its read locks for the decision: `hold_reads`) is answered 1402
    /// XA_RBROLLBACK when decided from another session than the one that prepared it (after
    /// a restart): InnoDB kept nothing to commit, and the branch is gone. That is done.
    fn decide(&mut self, sql: &str) -> Result<(), DbError> {
        match self.text(sql) {
            Err(error) if error.detail.starts_with("1402:") => Ok(()),
            other => other,
        }
    }
}

impl Connection for MariaConnection {
    fn ensure_schema(&mut self) -> Result<(), DbError> {
        SCHEMA.iter().try_for_each(|sql| self.text(sql))
    }

    fn begin(&mut self, gid: &Gid) -> Result<(), DbError> {
        self.text(&format!("XA START {}", gid_literal(gid)))
    }

    fn kv(&mut self, op: &KvOp) -> Result<KvOutcome, DbError> {
        match (op, kv::row_of(op.key())) {
            (KvOp::Get { .. }, Row::Account(id)) => {
                let sql = "SELECT balance FROM accounts WHERE id = ? LOCK IN SHARE MODE";
                let balance: Option<i64> = self.run(|c| c.exec_first(sql, (id,)))?;
                Ok(KvOutcome::Read(balance.map(kv::encode_i64)))
            }
            (KvOp::Get { .. }, Row::Kv(key)) => {
                let sql = "SELECT v FROM kv WHERE k = ? LOCK IN SHARE MODE";
                let value: Option<Vec<u8>> = self.run(|c| c.exec_first(sql, (key,)))?;
                Ok(KvOutcome::Read(value.map(Bytes::from)))
            }
            (KvOp::Put { value, .. }, Row::Account(id)) => {
                let balance = kv::decode_i64(value)?;
                let sql = "INSERT INTO accounts (id, balance) VALUES (?, ?) ON DUPLICATE KEY UPDATE balance = VALUES(balance)";
                self.run(|c| c.exec_drop(sql, (id, balance)))?;
                Ok(KvOutcome::Written)
            }
            (KvOp::Put { value, .. }, Row::Kv(key)) => {
                let sql = "INSERT INTO kv (k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)";
                self.run(|c| c.exec_drop(sql, (key, value.as_ref())))?;
                Ok(KvOutcome::Written)
            }
            (KvOp::Delete { .. }, Row::Account(id)) => {
                self.run(|c| c.exec_drop("DELETE FROM accounts WHERE id = ?", (id,)))?;
                Ok(KvOutcome::Written)
            }
            (KvOp::Delete { .. }, Row::Kv(key)) => {
                self.run(|c| c.exec_drop("DELETE FROM kv WHERE k = ?", (key,)))?;
                Ok(KvOutcome::Written)
            }
            (KvOp::Add { delta, floor, .. }, Row::Account(id)) => {
                // The CHECK refuses a negative balance; a floor above 0 needs the new balance.
                // The CHECK applies to the row proposed for insertion too, so an upsert cannot
                // add a negative delta: update first, insert only a missing account (absent
                // counts as 0; a delta of 0 changes no row and inserts or keeps one).
                let update = "UPDATE accounts SET balance = balance + ? WHERE id = ?";
                let changed = self.run(|c| c.exec_drop(update, (delta, id)).map(|()| c.affected_rows()))?;
                if changed == 0 {
                    let insert = "INSERT INTO accounts (id, balance) VALUES (?, ?) \
                                  ON DUPLICATE KEY UPDATE balance = balance + VALUES(balance)";
                    self.run(|c| c.exec_drop(insert, (id, delta)))?;
                }
                if *floor > 0 {
                    let sql = "SELECT balance FROM accounts WHERE id = ?";
                    let balance: Option<i64> = self.run(|c| c.exec_first(sql, (id,)))?;
                    kv::check_floor(balance.unwrap_or(0), *delta, *floor)?;
                }
                Ok(KvOutcome::Written)
            }
            (KvOp::Add { delta, floor, .. }, Row::Kv(key)) => {
                let sql = "SELECT v FROM kv WHERE k = ? FOR UPDATE";
                let current: Option<Vec<u8>> = self.run(|c| c.exec_first(sql, (key,)))?;
                let next = kv::added(current.as_deref(), *delta, *floor)?;
                let sql = "INSERT INTO kv (k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)";
                self.run(|c| c.exec_drop(sql, (key, &kv::encode_i64(next)[..])))?;
                Ok(KvOutcome::Written)
            }
        }
    }

    fn execute(&mut self, sql: &str, params: &[SqlValue], limits: &SqlLimits) -> Result<Rows, DbError> {
        check_statement(sql, params, limits)?;
        let statement = self.run(|c| c.prep(sql))?;
        if usize::from(statement.num_params()) != params.len() {
            return Err(DbError::invalid(format!(
                "the statement takes {} parameters, {} given",
                statement.num_params(),
                params.len()
            )));
        }
        let columns = statement.columns();
        let params =
            if params.is_empty() { Params::Empty } else { Params::Positional(params.iter().map(to_value).collect()) };
        let rows_max = limits.rows_max;
        let (rows, affected) = self.run(|c| {
            let mut result = c.exec_iter(&statement, params)?;
            // Read before the rows: consuming them moves the result past this statement.
            let affected = result.affected_rows();
            let mut rows = Vec::new();
            for row in result.by_ref() {
                let row = row?;
                if rows.len() == rows_max {
                    return Ok((Err(DbError::invalid(format!("the statement returns more than {rows_max} rows"))), 0));
                }
                rows.push(row.unwrap());
            }
            Ok((Ok(rows), affected))
        })?;
        let rows = rows?
            .into_iter()
            .map(|row| row.into_iter().zip(columns.iter()).map(|(v, c)| from_value(v, c)).collect())
            .collect::<Result<Vec<Vec<SqlValue>>, DbError>>()?;
        let columns = columns.iter().map(|c| c.name_str().into_owned()).collect();
        Ok(Rows { columns, rows, affected })
    }

    fn prepare(&mut self, gid: &Gid) -> Result<(), DbError> {
        let gid = gid_literal(gid);
        self.text(&format!("XA END {gid}"))?;
        self.text(&format!("XA PREPARE {gid}"))
    }

    fn prepare_detaches(&self) -> bool {
        false
    }

    fn rollback(&mut self, gid: &Gid) -> Result<(), DbError> {
        // After a failed statement the branch may already be rolled back (a deadlock) and XA
        // END refused; XA ROLLBACK still ends it. A connection where both fail is dropped
        // by the pool, which rolls the branch back too.
        let gid = gid_literal(gid);
        let end = self.text(&format!("XA END {gid}"));
        let rollback = self.text(&format!("XA ROLLBACK {gid}"));
        if rollback.is_err() && end.is_err() {
            self.broken = true;
        }
        rollback
    }

    fn commit_prepared(&mut self, gid: &Gid) -> Result<(), DbError> {
        self.decide(&format!("XA COMMIT {}", gid_literal(gid)))
    }

    fn rollback_prepared(&mut self, gid: &Gid) -> Result<(), DbError> {
        self.decide(&format!("XA ROLLBACK {}", gid_literal(gid)))
    }

    fn recover(&mut self, participant: &str) -> Result<Vec<Gid>, DbError> {
        // Rows: formatID, gtrid_length, bqual_length, data (gtrid then bqual).
        let rows: Vec<(i64, i64, i64, Vec<u8>)> = self.run(|c| c.query("XA RECOVER"))?;
        let gtrids: Vec<String> = rows
            .into_iter()
            .filter_map(|(_, gtrid_length, _, data)| {
                let gtrid = data.get(..usize::try_from(gtrid_length).ok()?)?;
                String::from_utf8(gtrid.to_vec()).ok()
            })
            .collect();
        Ok(gids_of(participant, gtrids.iter().map(String::as_str)))
    }

    fn is_broken(&self) -> bool {
        self.broken
    }

    /// `KILL CONNECTION` on every other registered session named `session` still connected,
    /// again until none is (a killed session stays listed until its statement and
    /// transaction are rolled back); then forgets the rows of sessions gone. A branch in
    /// the XA PREPARED state survives its session (and is in the scan); an active one is
    /// rolled back with it.
    /// One round trip where it can: `XA START; <statements>; XA END; XA PREPARE` (or `XA
    /// ROLLBACK` when it only read and holds nothing) as one multi-statement text query
    /// ([`one_shot_batch`]: only the validated gid, integers and hex digits are spliced in).
    /// MariaDB stops at the first statement it refuses; the branch is then rolled back and the
    /// transaction run again call by call, which names the op that fails and its reason
    /// exactly as the one-at-a-time path does. So is one whose debit found no account (the
    /// batch's `UPDATE` changed no row, where the call-by-call path inserts the account and
    /// meets the CHECK), after rolling back what the batch prepared.
    fn one_shot(&mut self, gid: &Gid, ops: &[KvOp], hold_reads: bool) -> Result<OneShot, OneShotFailure> {
        let prepares = hold_reads || ops.iter().any(KvOp::writes);
        let Some(batch) = one_shot_batch(gid, ops, prepares) else {
            return one_shot_by_steps(self, gid, ops, hold_reads);
        };
        let failure = |error| OneShotFailure { op: None, error };
        match self.run_batch(&batch) {
            Ok(sets) => match batch_outcomes(ops, &sets) {
                Some(outcomes) => Ok(OneShot { outcomes, prepared: prepares }),
                None => {
                    // A debit of a missing account: undo the prepared branch, then the
                    // call-by-call path reports it.
                    let rolled_back = if prepares {
                        self.text(&format!("XA ROLLBACK {}", gid_literal(gid)))
                    } else {
                        Ok(()) // It ended with its XA ROLLBACK already.
                    };
                    if let Err(error) = rolled_back {
                        // A prepared branch we could not end: the session goes, and the
                        // caller rolls the gid back as after a lost connection.
                        self.broken = true;
                        return Err(failure(DbError::new(Reason::ConnectionLost, error.to_string())));
                    }
                    one_shot_by_steps(self, gid, ops, hold_reads)
                }
            },
            // `XA START` itself refused (the gid is taken, say): there is no branch of ours to
            // end, so none is rolled back (that could end another session's branch).
            Err((0, error)) => Err(failure(error)),
            Err((_, error)) => {
                if self.broken || error.reason == Reason::ConnectionLost {
                    return Err(failure(error));
                }
                // Refused before its PREPARE (MariaDB runs nothing after a refused statement),
                // or at it: whatever is left of the branch is rolled back.
                let _ = self.rollback(gid);
                if self.broken {
                    return Err(failure(error));
                }
                one_shot_by_steps(self, gid, ops, hold_reads)
            }
        }
    }

    fn fence_sessions(&mut self, session: &str, wait: Duration) -> Result<usize, DbError> {
        self.text(SESSIONS_SCHEMA)?;
        let deadline = Instant::now() + wait;
        let mut ended = std::collections::HashSet::new();
        loop {
            let live: Vec<u64> = self.run(|c| c.exec(LIVE_SESSIONS, (session.as_bytes(),)))?;
            if live.is_empty() {
                break;
            }
            for id in &live {
                match self.text(&format!("KILL CONNECTION {id}")) {
                    // ER_NO_SUCH_THREAD: gone since the listing.
                    Err(error) if !error.detail.starts_with("1094:") => return Err(error),
                    _ => {}
                }
            }
            ended.extend(live.iter().copied());
            if Instant::now() >= deadline {
                return Err(DbError::new(
                    Reason::Other,
                    format!("{} sessions named {session} still run {wait:?} after being killed", live.len()),
                ));
            }
            std::thread::sleep(FENCE_POLL);
        }
        let forget = "DELETE FROM twophase_sessions WHERE session = ? AND connection_id <> CONNECTION_ID()";
        self.run(|c| c.exec_drop(forget, (session.as_bytes(),)))?;
        Ok(ended.len())
    }
}

/// What one statement of a batch answered: the rows changed, the first column of its first
/// row (for a `SELECT`).
#[derive(Debug)]
struct SetResult {
    affected: u64,
    first: Option<Value>,
}

impl MariaConnection {
    /// Runs a multi-statement text query, reading every statement's result; the first
    /// statement refused ends it with that error and the number of statements that ran before
    /// it (MariaDB runs none after it).
    fn run_batch(&mut self, batch: &str) -> Result<Vec<SetResult>, (usize, DbError)> {
        let mut sets = Vec::new();
        let ran = self.run(|c| {
            let mut result = c.query_iter(batch)?;
            while let Some(mut set) = result.iter() {
                // Read before the rows: consuming them moves the state to the next statement.
                let affected = set.affected_rows();
                let mut first = None;
                for row in set.by_ref() {
                    let row = row?;
                    if first.is_none() {
                        first = Some(row.unwrap().into_iter().next().unwrap_or(Value::NULL));
                    }
                }
                sets.push(SetResult { affected, first });
            }
            Ok(())
        });
        match ran {
            Ok(()) => Ok(sets),
            Err(error) => Err((sets.len(), error)),
        }
    }
}

/// The statements of a one-shot transaction as one multi-statement text query: `XA START`,
/// one statement per op, `XA END` and `XA PREPARE` when `prepares` (else `XA ROLLBACK`); or
/// None when an op needs an answer before the next statement (an `Add` with a floor above 0,
/// which the `CHECK (balance >= 0)` does not enforce, or an `Add` on a `kv` row: read, then
/// write) or a value that is not an account's 8-byte integer (the call-by-call path reports
/// it). Only integers, `X'<hex>'` literals and the validated gid are spliced in.
fn one_shot_batch(gid: &Gid, ops: &[KvOp], prepares: bool) -> Option<String> {
    use std::fmt::Write as _;
    let gid = gid_literal(gid);
    let mut batch = String::with_capacity(96 + ops.len() * 128);
    write!(batch, "XA START {gid};").expect("writing to a String");
    for op in ops {
        match (op, kv::row_of(op.key())) {
            (KvOp::Get { .. }, Row::Account(id)) => {
                write!(batch, "SELECT balance FROM accounts WHERE id = {id} LOCK IN SHARE MODE;")
            }
            (KvOp::Get { .. }, Row::Kv(key)) => {
                write!(batch, "SELECT v FROM kv WHERE k = {} LOCK IN SHARE MODE;", hex_literal(key))
            }
            (KvOp::Put { value, .. }, Row::Account(id)) => {
                let balance = kv::decode_i64(value).ok()?;
                write!(
                    batch,
                    "INSERT INTO accounts (id, balance) VALUES ({id}, {balance}) \
                     ON DUPLICATE KEY UPDATE balance = VALUES(balance);"
                )
            }
            (KvOp::Put { value, .. }, Row::Kv(key)) => write!(
                batch,
                "INSERT INTO kv (k, v) VALUES ({}, {}) ON DUPLICATE KEY UPDATE v = VALUES(v);",
                hex_literal(key),
                hex_literal(value)
            ),
            (KvOp::Delete { .. }, Row::Account(id)) => write!(batch, "DELETE FROM accounts WHERE id = {id};"),
            (KvOp::Delete { .. }, Row::Kv(key)) => write!(batch, "DELETE FROM kv WHERE k = {};", hex_literal(key)),
            // A credit (or 0): the upsert inserts a missing account with it; the CHECK,
            // which also judges the row proposed for insertion, is met.
            (KvOp::Add { delta, floor, .. }, Row::Account(id)) if *floor <= 0 && *delta >= 0 => write!(
                batch,
                "INSERT INTO accounts (id, balance) VALUES ({id}, {delta}) \
                 ON DUPLICATE KEY UPDATE balance = balance + VALUES(balance);"
            ),
            // A debit: the CHECK (balance >= 0) is the floor. A missing account changes no
            // row, which `batch_outcomes` sees (it counts as 0: the call-by-call path refuses).
            (KvOp::Add { delta, floor, .. }, Row::Account(id)) if *floor <= 0 => {
                write!(batch, "UPDATE accounts SET balance = balance + {delta} WHERE id = {id};")
            }
            (KvOp::Add { .. }, _) => return None,
        }
        .expect("writing to a String");
    }
    if prepares {
        write!(batch, "XA END {gid};XA PREPARE {gid}").expect("writing to a String");
    } else {
        write!(batch, "XA END {gid};XA ROLLBACK {gid}").expect("writing to a String");
    }
    Some(batch)
}

/// `X'<hex>'`: bytes as a literal nothing can escape.
fn hex_literal(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2 + 3);
    out.push_str("X'");
    for byte in bytes {
        write!(out, "{byte:02x}").expect("writing to a String");
    }
    out.push('\'');
    out
}

/// Each op's outcome from the batch's results (`XA START` first, then one per op), or None
/// when a debit found no account (its `UPDATE` changed no row) or the answer has another
/// shape.
fn batch_outcomes(ops: &[KvOp], sets: &[SetResult]) -> Option<Vec<KvOutcome>> {
    if sets.len() != ops.len() + 3 {
        return None;
    }
    let mut outcomes = Vec::with_capacity(ops.len());
    for (op, set) in ops.iter().zip(&sets[1..]) {
        let outcome = match (op, kv::row_of(op.key())) {
            (KvOp::Get { .. }, Row::Account(_)) => match &set.first {
                None | Some(Value::NULL) => KvOutcome::Read(None),
                Some(value) => KvOutcome::Read(Some(kv::encode_i64(mysql::from_value_opt::<i64>(value.clone()).ok()?))),
            },
            (KvOp::Get { .. }, Row::Kv(_)) => match &set.first {
                None | Some(Value::NULL) => KvOutcome::Read(None),
                Some(Value::Bytes(bytes)) => KvOutcome::Read(Some(Bytes::copy_from_slice(bytes))),
                Some(_) => return None,
            },
            (KvOp::Add { delta, .. }, Row::Account(_)) if *delta < 0 && set.affected == 0 => return None,
            _ => KvOutcome::Written,
        };
        outcomes.push(outcome);
    }
    Some(outcomes)
}

fn map_error(error: &mysql::Error) -> DbError {
    match error {
        mysql::Error::MySqlError(e) => DbError::new(reason_of_mysql_code(e.code), format!("{}: {}", e.code, e.message)),
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) => {
            DbError::new(Reason::ConnectionLost, error.to_string())
        }
        mysql::Error::DriverError(
            mysql::DriverError::ConnectTimeout
            | mysql::DriverError::CouldNotConnect(_)
            | mysql::DriverError::PacketOutOfSync
            | mysql::DriverError::UnexpectedPacket,
        ) => DbError::new(Reason::ConnectionLost, error.to_string()),
        mysql::Error::DriverError(mysql::DriverError::MismatchedStmtParams(..)) => DbError::invalid(error.to_string()),
        _ => DbError::new(Reason::Other, error.to_string()),
    }
}

fn to_value(value: &SqlValue) -> Value {
    match value {
        SqlValue::Null => Value::NULL,
        SqlValue::Bool(b) => Value::Int((*b).into()),
        SqlValue::Int(i) => Value::Int(*i),
        SqlValue::Float(f) => Value::Double(*f),
        SqlValue::Text(s) => Value::Bytes(s.as_bytes().to_vec()),
        SqlValue::Bytes(b) => Value::Bytes(b.to_vec()),
    }
}

fn from_value(value: Value, column: &mysql::Column) -> Result<SqlValue, DbError> {
    let name = column.name_str();
    match value {
        Value::NULL => Ok(SqlValue::Null),
        Value::Int(i) => Ok(SqlValue::Int(i)),
        Value::UInt(u) => i64::try_from(u)
            .map(SqlValue::Int)
            .map_err(|_| DbError::invalid(format!("column {name:?}: {u} does not fit an i64"))),
        Value::Float(f) => Ok(SqlValue::Float(f.into())),
        Value::Double(f) => Ok(SqlValue::Float(f)),
        Value::Bytes(bytes) if column.character_set() == BINARY_CHARSET && !is_decimal(column) => {
            Ok(SqlValue::Bytes(bytes.into()))
        }
        Value::Bytes(bytes) => String::from_utf8(bytes)
            .map(SqlValue::Text)
            .map_err(|_| DbError::invalid(format!("column {name:?} is text but not UTF-8"))),
        Value::Date(..) | Value::Time(..) => {
            Err(DbError::invalid(format!("column {name:?} is a date or time: cast it to CHAR")))
        }
    }
}

fn is_decimal(column: &mysql::Column) -> bool {
    matches!(column.column_type(), ColumnType::MYSQL_TYPE_NEWDECIMAL | ColumnType::MYSQL_TYPE_DECIMAL)
}
