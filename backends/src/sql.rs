//! Parameterised SQL: the values that go in and the rows that come out, the same for every
//! database.

use bytes::Bytes;

/// A parameter or a column value. Columns of other types are refused with a message asking
/// for a cast (e.g. `numeric::text`), never guessed at.
#[derive(Clone, PartialEq, Debug)]
pub enum SqlValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Bytes),
}

/// A statement's result: column names and rows (empty for statements without rows), and the
/// number of rows it changed.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
    pub affected: u64,
}

/// Bounds on one statement, checked before it reaches the database.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SqlLimits {
    pub sql_bytes_max: usize,
    pub params_max: usize,
    /// Rows beyond this fail the statement (the result travels back in one frame).
    pub rows_max: usize,
}

impl Default for SqlLimits {
    fn default() -> SqlLimits {
        SqlLimits { sql_bytes_max: 64 * 1024, params_max: 256, rows_max: 10_000 }
    }
}
