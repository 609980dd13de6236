//! The bank audit of a database participant (PostgreSQL, MariaDB), in the same terms as the
//! built-in store's: its `accounts` rows are read with SQL straight from the database and fed
//! into the same [`Balances`] the participants' dumps fill, so [`crate::audit`] checks every
//! account against the acknowledged commits once for all participants. On top, per database:
//! `SELECT sum(balance)` must equal the sum of the rows read and the sum expected from the
//! acknowledged commits, and the database must hold nothing prepared for the participant
//! (`pg_prepared_xacts` / `XA RECOVER`).
//!
//! Must not: write to the database, or hold more than one page of rows at a time.

use serde::Serialize;
use twophase_backends::{Connection, DbError, SqlLimits, SqlValue};

use crate::audit::Balances;
use crate::layout::BankLayout;
use crate::load::LoadResult;

/// Accounts read per statement: bounds the rows one page holds.
pub const SQL_AUDIT_PAGE_ROWS: u64 = 10_000;

/// Which SQL the database speaks (the sum's cast differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqlDialect {
    Postgres,
    MariaDb,
}

impl SqlDialect {
    pub fn name(self) -> &'static str {
        match self {
            SqlDialect::Postgres => "postgres",
            SqlDialect::MariaDb => "mariadb",
        }
    }
}

/// What the SQL read of one database participant found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SqlAudit {
    /// The participant's name (p1, p2, ...).
    pub participant: String,
    /// `postgres` or `mariadb`.
    pub database: String,
    /// Rows of `accounts` read.
    pub rows: u64,
    /// `SELECT sum(balance) FROM accounts`.
    pub sum_sql: i64,
    /// The sum of the rows read one by one.
    pub sum_rows: i64,
    /// The sum of this participant's accounts' expected balances (initial + acknowledged).
    pub sum_expected: i64,
    /// Its accounts whose row holds another balance than expected (or is missing).
    pub mismatched_accounts: u64,
    /// Its transactions still prepared in the database.
    pub prepared: u64,
    pub passed: bool,
}

impl SqlAudit {
    /// One line for the demo's report.
    pub fn summary(&self) -> String {
        format!(
            "audit {} ({}): {} — {} rows, sum(balance) {} (rows {}, expected {}), {} mismatched, {} prepared",
            self.participant,
            self.database,
            if self.passed { "PASSED" } else { "FAILED" },
            self.rows,
            self.sum_sql,
            self.sum_rows,
            self.sum_expected,
            self.mismatched_accounts,
            self.prepared
        )
    }
}

/// Reads participant `name`'s accounts from its database (`conn`) into `balances` and checks
/// its sums and that nothing is left prepared.
pub fn sql_audit<C: Connection>(
    conn: &mut C,
    dialect: SqlDialect,
    name: &str,
    layout: &BankLayout,
    result: &LoadResult,
    balances: &mut Balances,
) -> Result<SqlAudit, DbError> {
    let index = layout
        .participants
        .iter()
        .position(|(_, known)| known == name)
        .ok_or_else(|| DbError::invalid(format!("participant {name} is not in the bank's layout")))?;
    balances.mark_read(name);
    let (rows, sum_rows, mut seen) = read_accounts(conn, name, index, layout, balances)?;
    let sum_sql = sum_balances(conn, dialect)?;
    let prepared = conn.recover(name)?.len() as u64;
    let mut sum_expected: i128 = 0;
    let mut mismatched_accounts = 0u64;
    for account in (index as u64..layout.accounts).step_by(layout.participants.len()) {
        let expected = expected_balance(layout, result, account);
        sum_expected += i128::from(expected);
        if seen.next_if(|(id, _)| *id == account).map(|(_, balance)| balance) != Some(expected) {
            mismatched_accounts += 1;
        }
    }
    let sum_expected = i64::try_from(sum_expected).unwrap_or(i64::MAX);
    let passed = mismatched_accounts == 0 && prepared == 0 && sum_sql == sum_rows && sum_sql == sum_expected;
    Ok(SqlAudit {
        participant: name.to_string(),
        database: dialect.name().to_string(),
        rows,
        sum_sql,
        sum_rows,
        sum_expected,
        mismatched_accounts,
        prepared,
        passed,
    })
}

/// An account's balance as the acknowledged commits leave it.
fn expected_balance(layout: &BankLayout, result: &LoadResult, account: u64) -> i64 {
    let delta = result.expected_deltas.get(account as usize).copied().unwrap_or(0);
    layout.initial_balance.saturating_add(delta)
}

/// Every row of `accounts`, page by page in id order, handed to `balances` as the account key
/// and the 8-byte balance the built-in store keeps. Returns the row count, their sum and the
/// (id, balance) pairs of this participant's accounts in id order, for the per-account check.
fn read_accounts<C: Connection>(
    conn: &mut C,
    name: &str,
    index: usize,
    layout: &BankLayout,
    balances: &mut Balances,
) -> Result<(u64, i64, std::iter::Peekable<std::vec::IntoIter<(u64, i64)>>), DbError> {
    let limits = SqlLimits { rows_max: SQL_AUDIT_PAGE_ROWS as usize, ..SqlLimits::default() };
    let (mut rows, mut sum, mut mine) = (0u64, 0i128, Vec::new());
    let mut after: i64 = -1;
    loop {
        // Only integers are spliced into the statement.
        let sql =
            format!("SELECT id, balance FROM accounts WHERE id > {after} ORDER BY id LIMIT {SQL_AUDIT_PAGE_ROWS}");
        let page = conn.execute(&sql, &[], &limits)?;
        for row in &page.rows {
            let (id, balance) = match row.as_slice() {
                [SqlValue::Int(id), SqlValue::Int(balance)] => (*id, *balance),
                other => return Err(DbError::invalid(format!("accounts row {other:?} is not (bigint, bigint)"))),
            };
            after = id;
            rows += 1;
            sum += i128::from(balance);
            let account = u64::try_from(id).map_err(|_| DbError::invalid(format!("negative account id {id}")))?;
            balances.take(name, &layout_key(account), &balance.to_le_bytes());
            if account < layout.accounts && layout.participant_index(account) == index {
                mine.push((account, balance));
            }
        }
        if (page.rows.len() as u64) < SQL_AUDIT_PAGE_ROWS {
            break;
        }
    }
    let sum = i64::try_from(sum).map_err(|_| DbError::invalid("the balances' sum overflows a bigint"))?;
    Ok((rows, sum, mine.into_iter().peekable()))
}

/// The key the built-in store gives `account` (what [`Balances::take`] parses).
fn layout_key(account: u64) -> Vec<u8> {
    format!("acct/{account}").into_bytes()
}

/// `SELECT sum(balance)` as a bigint (both databases widen the sum to a decimal type).
fn sum_balances<C: Connection>(conn: &mut C, dialect: SqlDialect) -> Result<i64, DbError> {
    let sql = match dialect {
        SqlDialect::MariaDb => "SELECT CAST(COALESCE(SUM(balance), 0) AS SIGNED) FROM accounts",
        SqlDialect::Postgres => "SELECT COALESCE(SUM(balance), 0)::bigint FROM accounts",
    };
    let rows = conn.execute(sql, &[], &SqlLimits::default())?;
    match rows.rows.as_slice() {
        [row] => match row.as_slice() {
            [SqlValue::Int(sum)] => Ok(*sum),
            other => Err(DbError::invalid(format!("sum(balance) came back as {other:?}"))),
        },
        other => Err(DbError::invalid(format!("sum(balance) returned {} rows", other.len()))),
    }
}
