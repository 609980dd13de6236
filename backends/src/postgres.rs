//! PostgreSQL: `BEGIN` … `PREPARE TRANSACTION 'gid'`, `COMMIT PREPARED` / `ROLLBACK PREPARED`,
//! recovery from `pg_prepared_xacts`. Needs `max_prepared_transactions` above 0.
//!
//! Reads take `FOR SHARE` locks and writes row locks, held until the decision: strict
//! two-phase locking on the rows a transaction touches, like the built-in store.

use std::error::Error as StdError;

use bytes::{Bytes, BytesMut};
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls, Statement};

use crate::conn::{Connection, Connector, gid_literal, gids_of};
use crate::error::{DbError, Reason, reason_of_sqlstate};
use crate::gid::Gid;
use crate::kv::{self, KvOp, KvOutcome, Row};
use crate::sql::{Rows, SqlLimits, SqlValue};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (key bytea PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
";

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
