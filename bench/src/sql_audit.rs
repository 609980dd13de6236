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
    let (rows, sum_rows, mine) = read_accounts(conn, name, index, layout, balances)?;
    let mut seen = mine.into_iter().peekable();
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
) -> Result<AccountRows, DbError> {
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
    Ok((rows, sum, mine))
}

/// Rows read, their balances' sum, and this participant's (id, balance) pairs in id order.
type AccountRows = (u64, i64, Vec<(u64, i64)>);

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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use twophase_backends::{Gid, KvOp, KvOutcome, Rows};

    use super::*;
    use crate::audit::audit;
    use crate::audit::tests::{layout, result};

    /// An `accounts` table in memory that answers the audit's statements the way a database
    /// does, with a way to make its `sum(balance)` lie and to hold prepared transactions.
    struct Table {
        rows: BTreeMap<i64, i64>,
        sum_offset: i64,
        prepared: Vec<Gid>,
    }

    impl Connection for Table {
        fn ensure_schema(&mut self) -> Result<(), DbError> {
            Ok(())
        }
        fn begin(&mut self, _: &Gid) -> Result<(), DbError> {
            unreachable!("the audit opens no transaction")
        }
        fn kv(&mut self, _: &KvOp) -> Result<KvOutcome, DbError> {
            unreachable!("the audit reads with SQL")
        }
        fn execute(&mut self, sql: &str, _: &[SqlValue], limits: &SqlLimits) -> Result<Rows, DbError> {
            if sql.contains("SUM(balance)") {
                let sum = self.rows.values().sum::<i64>() + self.sum_offset;
                return Ok(Rows { rows: vec![vec![SqlValue::Int(sum)]], ..Rows::default() });
            }
            let after: i64 = sql.split("id > ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
            let rows = self.rows.range(after + 1..).take(limits.rows_max);
            let rows = rows.map(|(id, balance)| vec![SqlValue::Int(*id), SqlValue::Int(*balance)]).collect();
            Ok(Rows { rows, ..Rows::default() })
        }
        fn prepare(&mut self, _: &Gid) -> Result<(), DbError> {
            unreachable!()
        }
        fn prepare_detaches(&self) -> bool {
            true
        }
        fn rollback(&mut self, _: &Gid) -> Result<(), DbError> {
            unreachable!()
        }
        fn commit_prepared(&mut self, _: &Gid) -> Result<(), DbError> {
            unreachable!()
        }
        fn rollback_prepared(&mut self, _: &Gid) -> Result<(), DbError> {
            unreachable!()
        }
        fn recover(&mut self, _: &str) -> Result<Vec<Gid>, DbError> {
            Ok(self.prepared.clone())
        }
        fn is_broken(&self) -> bool {
            false
        }
        fn fence_sessions(&mut self, _: &str, _: std::time::Duration) -> Result<usize, DbError> {
            unreachable!("the audit fences nothing")
        }
    }

    /// p1's accounts (0, 2, 4, 6, 8) as the deltas leave them.
    fn p1_table(deltas: &[i64]) -> Table {
        let rows = (0..10).step_by(2).map(|account| (account as i64, 100 + deltas[account])).collect();
        Table { rows, sum_offset: 0, prepared: Vec::new() }
    }

    /// p2's state as the deltas leave it, from its dump.
    fn with_p2(balances: &mut Balances, deltas: &[i64]) {
        balances.mark_read("p2");
        for account in (1..10).step_by(2) {
            balances.take("p2", format!("acct/{account}").as_bytes(), &(100 + deltas[account]).to_le_bytes());
        }
    }

    fn run(table: &mut Table, deltas: &[i64]) -> (SqlAudit, bool) {
        let (layout, result) = (layout(), result(&layout(), deltas.to_vec()));
        let mut balances = Balances::new(&layout);
        with_p2(&mut balances, deltas);
        let sql = sql_audit(table, SqlDialect::Postgres, "p1", &layout, &result, &mut balances).unwrap();
        (sql, audit(&layout, &result, &balances).passed)
    }

    const DELTAS: [i64; 10] = [-5, 5, 3, -3, 0, 0, 7, 0, -7, 0];

    #[test]
    fn a_table_that_holds_the_acknowledged_commits_passes() {
        let (sql, passed) = run(&mut p1_table(&DELTAS), &DELTAS);
        assert!(sql.passed && passed, "{}", sql.summary());
        assert_eq!((sql.rows, sql.sum_sql, sql.sum_expected), (5, 498, 498));
        assert_eq!((sql.mismatched_accounts, sql.prepared), (0, 0));
    }

    #[test]
    fn a_wrong_or_missing_row_fails_both_audits() {
        let mut wrong = p1_table(&DELTAS);
        *wrong.rows.get_mut(&4).unwrap() += 1;
        let (sql, passed) = run(&mut wrong, &DELTAS);
        assert!(!sql.passed && !passed);
        assert_eq!((sql.mismatched_accounts, sql.sum_sql, sql.sum_expected), (1, 499, 498));

        let mut missing = p1_table(&DELTAS);
        missing.rows.remove(&6);
        let (sql, passed) = run(&mut missing, &DELTAS);
        assert!(!sql.passed && !passed);
        assert_eq!((sql.rows, sql.mismatched_accounts), (4, 1));
    }

    #[test]
    fn a_sum_that_disagrees_with_the_rows_fails() {
        let mut lying = p1_table(&DELTAS);
        lying.sum_offset = 1;
        let (sql, passed) = run(&mut lying, &DELTAS);
        assert!(!sql.passed, "{}", sql.summary());
        assert!(passed, "the rows themselves are right");
        assert_eq!((sql.sum_sql, sql.sum_rows), (499, 498));
    }

    #[test]
    fn a_transaction_left_prepared_fails() {
        let mut holding = p1_table(&DELTAS);
        holding.prepared.push(Gid::new("p1", 1, 7).unwrap());
        let (sql, _) = run(&mut holding, &DELTAS);
        assert!(!sql.passed);
        assert_eq!(sql.prepared, 1);
    }
}
