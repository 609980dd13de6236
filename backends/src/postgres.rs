//! PostgreSQL: `BEGIN` … `PREPARE TRANSACTION 'gid'`, `COMMIT PREPARED` / `ROLLBACK PREPARED`,
//! recovery from `pg_prepared_xacts`. Needs `max_prepared_transactions` above 0.
//!
//! Reads take `FOR SHARE` locks and writes row locks, held until the decision: strict
//! two-phase locking on the rows a transaction touches, like the built-in store.

use std::error::Error as StdError;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls, SimpleQueryMessage, Statement};

use crate::conn::{Connection, Connector, OneShot, OneShotFailure, gid_literal, gids_of, one_shot_by_steps};
use crate::error::{DbError, Reason, reason_of_sqlstate};
use crate::gid::Gid;
use crate::kv::{self, KvOp, KvOutcome, Row};
use crate::sql::{Rows, SqlLimits, SqlValue};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (key bytea PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
";

/// How often a fence looks again for the sessions it terminated.
const FENCE_POLL: Duration = Duration::from_millis(20);

/// Connects with a libpq-style string (`host=/tmp/x port=5432 user=postgres dbname=postgres`).
pub struct PgConnector {
    config: postgres::Config,
    /// `lock_timeout` of every session, in milliseconds (0: the server's setting).
    lock_timeout_ms: u64,
}

impl PgConnector {
    pub fn new(dsn: &str) -> Result<PgConnector, DbError> {
        let config = dsn.parse().map_err(|e| DbError::invalid(format!("PostgreSQL connection string: {e}")))?;
        Ok(PgConnector { config, lock_timeout_ms: 0 })
    }

    /// Every session carries `name` as its `application_name` (see `conn::session_name`), by
    /// which a restarted participant finds and ends them (`Connection::fence_sessions`).
    pub fn with_session_name(mut self, name: &str) -> PgConnector {
        self.config.application_name(name);
        self
    }

    /// Every session waits at most this long for a row lock (`SET lock_timeout`), then its
    /// statement fails with `Reason::LockWaitTimeout`: this ends the lock waits no detector
    /// sees (a cycle through two databases). Zero keeps the server's setting.
    pub fn with_lock_wait_timeout(mut self, timeout: std::time::Duration) -> PgConnector {
        self.lock_timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }
}

impl Connector for PgConnector {
    type Conn = PgConnection;

    fn connect(&self) -> Result<PgConnection, DbError> {
        let mut client = self.config.connect(NoTls).map_err(map_error)?;
        if self.lock_timeout_ms > 0 {
            client.batch_execute(&format!("SET lock_timeout = {}", self.lock_timeout_ms)).map_err(map_error)?;
        }
        Ok(PgConnection { client, statements: None })
    }
}

/// The key-value statements, prepared once per connection.
struct Statements {
    get_account: Statement,
    put_account: Statement,
    delete_account: Statement,
    add_account: Statement,
    insert_account: Statement,
    get_kv: Statement,
    get_kv_for_update: Statement,
    put_kv: Statement,
    delete_kv: Statement,
}

pub struct PgConnection {
    client: Client,
    statements: Option<Statements>,
}

impl PgConnection {
    /// The driver's client, for tests and tools that need plain SQL.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    fn statements(&mut self) -> Result<&Statements, DbError> {
        if self.statements.is_none() {
            let c = &mut self.client;
            let mut prepare = |sql: &str| c.prepare(sql).map_err(map_error);
            self.statements = Some(Statements {
                get_account: prepare("SELECT balance FROM accounts WHERE id = $1 FOR SHARE")?,
                put_account: prepare(
                    "INSERT INTO accounts (id, balance) VALUES ($1, $2) \
                     ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance",
                )?,
                delete_account: prepare("DELETE FROM accounts WHERE id = $1")?,
                add_account: prepare("UPDATE accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance")?,
                // PostgreSQL checks the CHECK on the row proposed for insertion before it
                // meets the conflict, so an upsert cannot add a negative delta: update first,
                // insert only a missing account (absent counts as 0).
                insert_account: prepare(
                    "INSERT INTO accounts (id, balance) VALUES ($1, $2) \
                     ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + EXCLUDED.balance \
                     RETURNING balance",
                )?,
                get_kv: prepare("SELECT value FROM kv WHERE key = $1 FOR SHARE")?,
                get_kv_for_update: prepare("SELECT value FROM kv WHERE key = $1 FOR UPDATE")?,
                put_kv: prepare(
                    "INSERT INTO kv (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                )?,
                delete_kv: prepare("DELETE FROM kv WHERE key = $1")?,
            });
        }
        Ok(self.statements.as_ref().expect("just prepared"))
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.client.batch_execute(sql).map_err(map_error)
    }
}

impl Connection for PgConnection {
    fn ensure_schema(&mut self) -> Result<(), DbError> {
        self.batch(SCHEMA)
    }

    fn begin(&mut self, _gid: &Gid) -> Result<(), DbError> {
        // The gid is given at PREPARE TRANSACTION; until then the transaction is anonymous.
        self.batch("BEGIN")
    }

    fn kv(&mut self, op: &KvOp) -> Result<KvOutcome, DbError> {
        let s = self.statements()?;
        let (get_account, put_account, delete_account) =
            (s.get_account.clone(), s.put_account.clone(), s.delete_account.clone());
        let (add_account, insert_account) = (s.add_account.clone(), s.insert_account.clone());
        let (get_kv, get_kv_for_update, put_kv, delete_kv) =
            (s.get_kv.clone(), s.get_kv_for_update.clone(), s.put_kv.clone(), s.delete_kv.clone());
        let c = &mut self.client;
        match (op, kv::row_of(op.key())) {
            (KvOp::Get { .. }, Row::Account(id)) => {
                let row = c.query_opt(&get_account, &[&id]).map_err(map_error)?;
                Ok(KvOutcome::Read(row.map(|r| kv::encode_i64(r.get(0)))))
            }
            (KvOp::Get { .. }, Row::Kv(key)) => {
                let row = c.query_opt(&get_kv, &[&key]).map_err(map_error)?;
                Ok(KvOutcome::Read(row.map(|r| Bytes::from(r.get::<_, Vec<u8>>(0)))))
            }
            (KvOp::Put { value, .. }, Row::Account(id)) => {
                let balance = kv::decode_i64(value)?;
                c.execute(&put_account, &[&id, &balance]).map_err(map_error)?;
                Ok(KvOutcome::Written)
            }
            (KvOp::Put { value, .. }, Row::Kv(key)) => {
                c.execute(&put_kv, &[&key, &value.as_ref()]).map_err(map_error)?;
                Ok(KvOutcome::Written)
            }
            (KvOp::Delete { .. }, Row::Account(id)) => {
                c.execute(&delete_account, &[&id]).map_err(map_error)?;
                Ok(KvOutcome::Written)
            }
            (KvOp::Delete { .. }, Row::Kv(key)) => {
                c.execute(&delete_kv, &[&key]).map_err(map_error)?;
                Ok(KvOutcome::Written)
            }
            (KvOp::Add { delta, floor, .. }, Row::Account(id)) => {
                // The CHECK refuses a negative balance (also for a new account and a negative
                // delta); a floor above 0 is checked on the balance the row now holds.
                let row = match c.query_opt(&add_account, &[&id, delta]).map_err(map_error)? {
                    Some(row) => row,
                    None => c.query_one(&insert_account, &[&id, delta]).map_err(map_error)?,
                };
                kv::check_floor(row.get(0), *delta, *floor)?;
                Ok(KvOutcome::Written)
            }
            (KvOp::Add { delta, floor, .. }, Row::Kv(key)) => {
                let row = c.query_opt(&get_kv_for_update, &[&key]).map_err(map_error)?;
                let current: Option<Vec<u8>> = row.map(|r| r.get(0));
                let next = kv::added(current.as_deref(), *delta, *floor)?;
                c.execute(&put_kv, &[&key, &&kv::encode_i64(next)[..]]).map_err(map_error)?;
                Ok(KvOutcome::Written)
            }
        }
    }

    fn execute(&mut self, sql: &str, params: &[SqlValue], limits: &SqlLimits) -> Result<Rows, DbError> {
        check_statement(sql, params, limits)?;
        let statement = self.client.prepare(sql).map_err(map_error)?;
        if statement.params().len() != params.len() {
            return Err(DbError::invalid(format!(
                "the statement takes {} parameters, {} given",
                statement.params().len(),
                params.len()
            )));
        }
        let columns: Vec<(String, Type)> =
            statement.columns().iter().map(|c| (c.name().to_owned(), c.type_().clone())).collect();
        for (name, ty) in &columns {
            check_column_type(name, ty)?;
        }
        let params: Vec<PgParam<'_>> = params.iter().map(PgParam).collect();
        let mut iter = self.client.query_raw(&statement, params.iter()).map_err(map_error)?;
        let mut rows = Vec::new();
        while let Some(row) = iter.next().map_err(map_error)? {
            if rows.len() == limits.rows_max {
                return Err(DbError::invalid(format!("the statement returns more than {} rows", limits.rows_max)));
            }
            let values = columns.iter().enumerate().map(|(i, (_, ty))| column_value(&row, i, ty));
            rows.push(values.collect::<Result<Vec<_>, _>>()?);
        }
        let affected = iter.rows_affected().unwrap_or(0);
        Ok(Rows { columns: columns.into_iter().map(|(name, _)| name).collect(), rows, affected })
    }

    fn prepare(&mut self, gid: &Gid) -> Result<(), DbError> {
        self.batch(&format!("PREPARE TRANSACTION {}", gid_literal(gid)))
    }

    fn prepare_detaches(&self) -> bool {
        true
    }

    fn rollback(&mut self, _gid: &Gid) -> Result<(), DbError> {
        self.batch("ROLLBACK")
    }

    fn commit_prepared(&mut self, gid: &Gid) -> Result<(), DbError> {
        self.batch(&format!("COMMIT PREPARED {}", gid_literal(gid)))
    }

    fn rollback_prepared(&mut self, gid: &Gid) -> Result<(), DbError> {
        self.batch(&format!("ROLLBACK PREPARED {}", gid_literal(gid)))
    }

    fn recover(&mut self, participant: &str) -> Result<Vec<Gid>, DbError> {
        let rows = self
            .client
            .query(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, $1)",
                &[&Gid::prefix_of(participant)],
            )
            .map_err(map_error)?;
        let listed: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(gids_of(participant, listed.iter().map(String::as_str)))
    }

    fn is_broken(&self) -> bool {
        self.client.is_closed()
    }

    /// `pg_terminate_backend` on every other session of this database named `session`,
    /// again until `pg_stat_activity` lists none (each query its own transaction, so each
    /// sees a fresh view). A backend ends a statement that waits for a lock at once; it
    /// cannot stop inside `PREPARE TRANSACTION`, which therefore either completed (and the
    /// scan lists it) or never ran.
    fn fence_sessions(&mut self, session: &str, wait: Duration) -> Result<usize, DbError> {
        const OTHERS: &str = "SELECT pid FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = current_database() AND pid <> pg_backend_pid()";
        let terminate = format!("SELECT pid, pg_terminate_backend(pid) FROM ({OTHERS}) AS others");
        let deadline = Instant::now() + wait;
        let mut ended = std::collections::HashSet::new();
        loop {
            let rows = self.client.query(&terminate, &[&session]).map_err(map_error)?;
            if rows.is_empty() {
                return Ok(ended.len());
            }
            ended.extend(rows.iter().map(|row| row.get::<_, i32>(0)));
            if Instant::now() >= deadline {
                return Err(DbError::new(
                    Reason::Other,
                    format!("{} sessions named {session} still run {wait:?} after being terminated", rows.len()),
                ));
            }
            std::thread::sleep(FENCE_POLL);
        }
    }

    /// In one round trip where every op can be written as a literal statement (one simple
    /// query: `BEGIN; ...; PREPARE TRANSACTION 'gid'`), else one call at a time. When the
    /// database refuses a statement it skips the rest of the query (so nothing prepares):
    /// the transaction is rolled back and run again call by call, which names the op that
    /// fails and its reason exactly as the one-at-a-time path does.
    fn one_shot(&mut self, gid: &Gid, ops: &[KvOp], hold_reads: bool) -> Result<OneShot, OneShotFailure> {
        let prepares = hold_reads || ops.iter().any(KvOp::writes);
        let Some(query) = one_shot_query(gid, ops, prepares) else {
            return one_shot_by_steps(self, gid, ops, hold_reads);
        };
        match self.client.simple_query(&query) {
            Ok(messages) => {
                let outcomes = one_shot_outcomes(ops, &messages).map_err(|error| OneShotFailure { op: None, error })?;
                Ok(OneShot { outcomes, prepared: prepares })
            }
            Err(error) => {
                let error = map_error(error);
                if self.is_broken() || error.reason == Reason::ConnectionLost {
                    return Err(OneShotFailure { op: None, error });
                }
                self.batch("ROLLBACK").map_err(|error| OneShotFailure { op: None, error })?;
                one_shot_by_steps(self, gid, ops, hold_reads)
            }
        }
    }
}

/// The statements of a one-shot transaction as one simple query, ending in its `PREPARE
/// TRANSACTION` when `prepares` (else a `ROLLBACK`), or None when an op needs
/// an answer before the next statement (an `Add` with a floor above 0, which the `CHECK
/// (balance >= 0)` does not enforce, or an `Add` on a `kv` row: read, then write) or a value
/// that is not an account's 8-byte integer (the call-by-call path reports it). Only integers
/// and hex digits are spliced in, besides the validated gid.
fn one_shot_query(gid: &Gid, ops: &[KvOp], prepares: bool) -> Option<String> {
    use std::fmt::Write as _;
    let mut query = String::with_capacity(64 + ops.len() * 128);
    query.push_str("BEGIN;");
    for op in ops {
        match (op, kv::row_of(op.key())) {
            (KvOp::Get { .. }, Row::Account(id)) => {
                write!(query, "SELECT balance FROM accounts WHERE id = {id} FOR SHARE;")
            }
            (KvOp::Get { .. }, Row::Kv(key)) => {
                write!(query, "SELECT encode(value, 'hex') FROM kv WHERE key = {} FOR SHARE;", bytea_literal(key))
            }
            (KvOp::Put { value, .. }, Row::Account(id)) => {
                let balance = kv::decode_i64(value).ok()?;
                write!(
                    query,
                    "INSERT INTO accounts (id, balance) VALUES ({id}, {balance}) \
                     ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance;"
                )
            }
            (KvOp::Put { value, .. }, Row::Kv(key)) => write!(
                query,
                "INSERT INTO kv (key, value) VALUES ({}, {}) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;",
                bytea_literal(key),
                bytea_literal(value)
            ),
            (KvOp::Delete { .. }, Row::Account(id)) => write!(query, "DELETE FROM accounts WHERE id = {id};"),
            (KvOp::Delete { .. }, Row::Kv(key)) => {
                write!(query, "DELETE FROM kv WHERE key = {};", bytea_literal(key))
            }
            // The CHECK refuses a balance below 0, which is the floor here (or stricter than
            // a floor below 0, as on the call-by-call path). A missing account is inserted
            // (absent counts as 0; a concurrent insert meets the conflict clause).
            (KvOp::Add { delta, floor, .. }, Row::Account(id)) if *floor <= 0 => write!(
                query,
                "WITH updated AS (UPDATE accounts SET balance = balance + {delta} WHERE id = {id} RETURNING id) \
                 INSERT INTO accounts (id, balance) SELECT {id}, {delta} WHERE NOT EXISTS (SELECT 1 FROM updated) \
                 ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + EXCLUDED.balance;"
            ),
            (KvOp::Add { .. }, _) => return None,
        }
        .expect("writing to a String");
    }
    if prepares {
        write!(query, "PREPARE TRANSACTION {}", gid_literal(gid)).expect("writing to a String");
    } else {
        query.push_str("ROLLBACK");
    }
    Some(query)
}

/// `decode('<hex>', 'hex')`: bytes as a literal nothing can escape.
fn bytea_literal(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2 + 20);
    out.push_str("decode('");
    for byte in bytes {
        write!(out, "{byte:02x}").expect("writing to a String");
    }
    out.push_str("', 'hex')");
    out
}

/// Each op's outcome from the simple query's messages: one `CommandComplete` per statement
/// (`BEGIN` first), a `Get`'s row (if any) before its own.
fn one_shot_outcomes(ops: &[KvOp], messages: &[SimpleQueryMessage]) -> Result<Vec<KvOutcome>, DbError> {
    let mut statements = messages.split(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)));
    let unexpected = || DbError::new(Reason::Other, "a one-shot query answered with an unexpected shape");
    statements.next().ok_or_else(unexpected)?; // BEGIN
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        let messages = statements.next().ok_or_else(unexpected)?;
        if !op.writes() {
            let value = messages.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row.get(0)),
                _ => None,
            });
            let value = match (value.flatten(), kv::row_of(op.key())) {
                (None, _) => None,
                (Some(text), Row::Account(_)) => {
                    let balance: i64 = text.parse().map_err(|_| unexpected())?;
                    Some(kv::encode_i64(balance))
                }
                (Some(hex), Row::Kv(_)) => Some(decode_hex(hex).ok_or_else(unexpected)?),
            };
            outcomes.push(KvOutcome::Read(value));
        } else {
            outcomes.push(KvOutcome::Written);
        }
    }
    Ok(outcomes)
}

fn decode_hex(hex: &str) -> Option<Bytes> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let digits = hex.as_bytes();
    let value = |digit: u8| (digit as char).to_digit(16).map(|v| v as u8);
    (0..digits.len() / 2)
        .map(|i| Some((value(digits[2 * i])? << 4) | value(digits[2 * i + 1])?))
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

pub(crate) fn check_statement(sql: &str, params: &[SqlValue], limits: &SqlLimits) -> Result<(), DbError> {
    if sql.len() > limits.sql_bytes_max {
        return Err(DbError::invalid(format!("statement of {} bytes exceeds {}", sql.len(), limits.sql_bytes_max)));
    }
    if params.len() > limits.params_max {
        return Err(DbError::invalid(format!("{} parameters exceed {}", params.len(), limits.params_max)));
    }
    Ok(())
}

fn map_error(error: postgres::Error) -> DbError {
    if let Some(db) = error.as_db_error() {
        let code = db.code().code();
        return DbError::new(reason_of_sqlstate(code), format!("{code}: {}", db.message()));
    }
    if error.to_string().starts_with("error serializing parameter") {
        // A parameter that does not fit its column (ours are checked in `PgParam::to_sql`).
        return DbError::invalid(error.to_string());
    }
    if error.is_closed() || error.source().is_some_and(|s| s.is::<std::io::Error>()) {
        return DbError::new(Reason::ConnectionLost, error.to_string());
    }
    DbError::new(Reason::Other, error.to_string())
}

const SUPPORTED: [Type; 9] = [
    Type::BOOL,
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::TEXT,
    Type::VARCHAR,
    Type::BYTEA,
];

fn check_column_type(name: &str, ty: &Type) -> Result<(), DbError> {
    if SUPPORTED.contains(ty) || *ty == Type::NAME || *ty == Type::BPCHAR {
        return Ok(());
    }
    Err(DbError::invalid(format!("column {name:?} has type {ty}: cast it to text, bigint, float8 or bytea")))
}

fn column_value(row: &postgres::Row, index: usize, ty: &Type) -> Result<SqlValue, DbError> {
    let value = match *ty {
        Type::BOOL => row.try_get::<_, Option<bool>>(index).map(|v| v.map(SqlValue::Bool)),
        Type::INT2 => row.try_get::<_, Option<i16>>(index).map(|v| v.map(|i| SqlValue::Int(i.into()))),
        Type::INT4 => row.try_get::<_, Option<i32>>(index).map(|v| v.map(|i| SqlValue::Int(i.into()))),
        Type::INT8 => row.try_get::<_, Option<i64>>(index).map(|v| v.map(SqlValue::Int)),
        Type::FLOAT4 => row.try_get::<_, Option<f32>>(index).map(|v| v.map(|f| SqlValue::Float(f.into()))),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(index).map(|v| v.map(SqlValue::Float)),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(index).map(|v| v.map(|b| SqlValue::Bytes(b.into()))),
        _ => row.try_get::<_, Option<String>>(index).map(|v| v.map(SqlValue::Text)),
    };
    Ok(value.map_err(|e| DbError::invalid(format!("column {index}: {e}")))?.unwrap_or(SqlValue::Null))
}

/// A parameter converted to the type the statement declares for it (an `Int` binds to
/// int2/int4/int8 with a range check), refusing a mismatch rather than sending wrong bytes.
#[derive(Debug)]
struct PgParam<'a>(&'a SqlValue);

type BoxError = Box<dyn StdError + Sync + Send>;

fn bind<T: ToSql>(value: T, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    if !T::accepts(ty) {
        return Err(format!("a {} cannot bind to a parameter of type {ty}", std::any::type_name::<T>()).into());
    }
    value.to_sql(ty, out)
}

impl ToSql for PgParam<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self.0 {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Bool(b) => bind(*b, ty, out),
            SqlValue::Int(i) => match *ty {
                Type::INT2 => bind(i16::try_from(*i)?, ty, out),
                Type::INT4 => bind(i32::try_from(*i)?, ty, out),
                Type::FLOAT8 => bind(*i as f64, ty, out),
                _ => bind(*i, ty, out),
            },
            SqlValue::Float(f) => match *ty {
                Type::FLOAT4 => bind(*f as f32, ty, out),
                _ => bind(*f, ty, out),
            },
            SqlValue::Text(s) => bind(s.as_str(), ty, out),
            SqlValue::Bytes(b) => bind(b.as_ref(), ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: i64) -> Bytes {
        Bytes::from(format!("acct/{id}"))
    }

    #[test]
    fn a_one_shot_is_one_query_ending_in_its_prepare() {
        let gid = Gid::new("pg1", 2, 7).unwrap();
        let ops = [
            KvOp::Add { key: account(1), delta: -5, floor: 0 },
            KvOp::Put { key: Bytes::from_static(b"k'; DROP"), value: Bytes::from_static(b"\x00") },
            KvOp::Get { key: account(2) },
        ];
        let query = one_shot_query(&gid, &ops, true).expect("every op fits one query");
        assert!(query.starts_with("BEGIN;"), "{query}");
        assert!(query.ends_with("PREPARE TRANSACTION 'tp1:pg1:2:7'"), "{query}");
        assert!(query.contains("balance + -5 WHERE id = 1"), "{query}");
        // Keys and values only as hex: no quote of theirs reaches the SQL.
        assert!(query.contains("decode('6b273b2044524f50', 'hex')"), "{query}");
        assert_eq!(query.matches('\'').count(), 4 * 2 + 2, "quotes: the hex literals' and the gid's: {query}");
    }

    #[test]
    fn a_one_shot_that_only_reads_ends_in_a_rollback() {
        let gid = Gid::new("pg1", 1, 1).unwrap();
        let query = one_shot_query(&gid, &[KvOp::Get { key: account(3) }], false).unwrap();
        assert!(query.ends_with("FOR SHARE;ROLLBACK"), "{query}");
        // Not the transaction's sole participant: its read locks last until the decision.
        let query = one_shot_query(&gid, &[KvOp::Get { key: account(3) }], true).unwrap();
        assert!(query.ends_with("FOR SHARE;PREPARE TRANSACTION 'tp1:pg1:1:1'"), "{query}");
    }

    #[test]
    fn ops_that_need_an_answer_first_are_left_to_the_steps() {
        let gid = Gid::new("pg1", 1, 1).unwrap();
        let floored = KvOp::Add { key: account(1), delta: -5, floor: 10 };
        let on_kv = KvOp::Add { key: Bytes::from_static(b"counter"), delta: 1, floor: i64::MIN };
        let not_an_integer = KvOp::Put { key: account(1), value: Bytes::from_static(b"abc") };
        for op in [floored, on_kv, not_an_integer] {
            assert_eq!(one_shot_query(&gid, std::slice::from_ref(&op), true), None, "{op:?}");
        }
    }

    #[test]
    fn hex_decodes_what_encode_wrote() {
        assert_eq!(decode_hex("00ff41"), Some(Bytes::from_static(b"\x00\xffA")));
        assert_eq!(decode_hex(""), Some(Bytes::new()));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
    }
}
