//! Parameterised SQL inside interactive transactions (issue 19): a statement is an op
//! (`OpKind::Sql`) addressed to a database participant, and its result, the rows, comes back
//! as that op's read (`Read::value` holds the [`Rows`] encoding), so the coordinator routes,
//! bounds and remembers it exactly like a `Get`'s value.
//!
//! Layouts (docs/PROTOCOL.md, "SQL statements"):
//! - statement (op kind 4): `u32 text length | UTF-8 text | u16 param count | value × count`
//! - value: `u8 tag` then 0 Null, 1 Bool `u8 0|1`, 2 Int `i64`, 3 Float `f64 bits`,
//!   4 Text `u32 length | UTF-8`, 5 Bytes `u32 length | bytes`
//! - rows: `u16 column count | (u16 length | UTF-8 name) × columns | u32 row count |
//!   value × columns × rows | u64 affected`
//!
//! Bounds: a statement's text and parameters together take at most the request's
//! `max_value_bytes` (the same budget as a `Put`'s value, so a request of `max_ops_per_tx`
//! statements fits its frame as one of puts does), at most [`SQL_PARAMS_MAX`] parameters; the
//! rows of one statement at most `max_value_bytes` encoded (they travel as one read's value).
//! Decoders check every count and length against the bytes left before allocating.

use std::fmt;

use bytes::{BufMut, Bytes};

use crate::codec::{DecodeError, Reader};

/// Parameters of one statement at most.
pub const SQL_PARAMS_MAX: usize = 256;

/// Columns of one result at most.
pub const SQL_COLUMNS_MAX: usize = 1024;

/// A parameter or a column value. The database participant refuses columns of other types
/// with a message asking for a cast (e.g. `numeric::text`).
#[derive(Clone, Debug)]
pub enum SqlValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Bytes),
}

/// Floats compare by their bits, so that equality is an equivalence (a `NaN` parameter
/// equals itself) and ops stay `Eq`.
impl PartialEq for SqlValue {
    fn eq(&self, other: &SqlValue) -> bool {
        match (self, other) {
            (SqlValue::Null, SqlValue::Null) => true,
            (SqlValue::Bool(a), SqlValue::Bool(b)) => a == b,
            (SqlValue::Int(a), SqlValue::Int(b)) => a == b,
            (SqlValue::Float(a), SqlValue::Float(b)) => a.to_bits() == b.to_bits(),
            (SqlValue::Text(a), SqlValue::Text(b)) => a == b,
            (SqlValue::Bytes(a), SqlValue::Bytes(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for SqlValue {}

impl fmt::Display for SqlValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlValue::Null => write!(f, "NULL"),
            SqlValue::Bool(b) => write!(f, "{b}"),
            SqlValue::Int(i) => write!(f, "{i}"),
            SqlValue::Float(x) => write!(f, "{x}"),
            SqlValue::Text(text) => write!(f, "{text}"),
            SqlValue::Bytes(bytes) => {
                write!(f, "\\x")?;
                bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

/// One parameterised statement (`$1` placeholders for PostgreSQL, `?` for MariaDB).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SqlStatement {
    pub sql: String,
    pub params: Vec<SqlValue>,
}

impl SqlStatement {
    /// Bytes of its encoding after the op kind tag: what counts against `max_value_bytes`.
    pub fn encoded_bytes(&self) -> usize {
        4 + self.sql.len() + 2 + self.params.iter().map(value_bytes).sum::<usize>()
    }

    /// Checks the statement against the bounds a request must respect.
    pub fn check(&self, value_bytes_max: usize) -> Result<(), String> {
        if self.sql.trim().is_empty() {
            return Err("an empty SQL statement".into());
        }
        if self.params.len() > SQL_PARAMS_MAX {
            return Err(format!("{} SQL parameters exceed the limit of {SQL_PARAMS_MAX}", self.params.len()));
        }
        let bytes = self.encoded_bytes();
        if bytes > value_bytes_max {
            return Err(format!(
                "an SQL statement of {bytes} bytes (text and parameters) exceeds the limit of {value_bytes_max}"
            ));
        }
        Ok(())
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        put_text(out, &self.sql);
        out.put_u16_le(u16::try_from(self.params.len()).expect("params checked against SQL_PARAMS_MAX"));
        for param in &self.params {
            put_sql_value(out, param);
        }
    }

    /// Decodes a statement, refusing one above the reader's `max_value_bytes` (text and
    /// parameters together) or [`SQL_PARAMS_MAX`] before allocating it.
    pub fn decode(reader: &mut Reader) -> Result<SqlStatement, DecodeError> {
        let mut budget = Budget::new(reader.limits().max_value_bytes);
        let sql = read_text(reader, &mut budget, "SQL text")?;
        budget.spend(reader, 2, "SQL parameter count")?;
        let count = reader.u16("SQL parameter count")? as usize;
        if count > SQL_PARAMS_MAX {
            return Err(reader.error(format!("{count} SQL parameters exceed the limit of {SQL_PARAMS_MAX}")));
        }
        if count > reader.remaining() {
            return Err(reader.error(format!("{count} SQL parameters cannot fit in {} bytes", reader.remaining())));
        }
        let mut params = Vec::with_capacity(count);
        for _ in 0..count {
            params.push(read_sql_value(reader, &mut budget)?);
        }
        Ok(SqlStatement { sql, params })
    }
}

/// A statement's result: column names, rows (empty for statements without rows), and the
/// number of rows it changed.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
    pub affected: u64,
}

impl Rows {
    /// Bytes of its encoding.
    pub fn encoded_bytes(&self) -> usize {
        2 + self.columns.iter().map(|name| 2 + name.len()).sum::<usize>()
            + 4
            + self.rows.iter().flatten().map(value_bytes).sum::<usize>()
            + 8
    }

    /// Whether the rows may travel as one statement's read: at most [`SQL_COLUMNS_MAX`]
    /// columns and `value_bytes_max` bytes encoded.
    pub fn check(&self, value_bytes_max: usize) -> Result<(), String> {
        if self.columns.len() > SQL_COLUMNS_MAX {
            return Err(format!("{} columns exceed the limit of {SQL_COLUMNS_MAX}", self.columns.len()));
        }
        let bytes = self.encoded_bytes();
        if bytes > value_bytes_max {
            return Err(format!(
                "the result of {} rows takes {bytes} bytes, more than the limit of {value_bytes_max} a statement may return (add a LIMIT)",
                self.rows.len()
            ));
        }
        Ok(())
    }

    /// The encoding a statement's read carries ([`check`](Self::check) it first). Column
    /// names longer than 65,535 bytes are cut (no database allows such names).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.encoded_bytes());
        let columns = self.columns.len();
        assert!(columns <= SQL_COLUMNS_MAX, "{columns} columns: check the rows before encoding them");
        out.put_u16_le(columns as u16);
        for name in &self.columns {
            let name = cut(name, u16::MAX as usize);
            out.put_u16_le(name.len() as u16);
            out.put_slice(name.as_bytes());
        }
        // Rows of no columns carry nothing: none are sent (the decoder could not bound them).
        let rows = if columns == 0 { &[][..] } else { &self.rows[..] };
        out.put_u32_le(u32::try_from(rows.len()).expect("rows bounded by the value limit"));
        for row in rows {
            assert_eq!(row.len(), columns, "a row of {} values for {columns} columns", row.len());
            row.iter().for_each(|value| put_sql_value(&mut out, value));
        }
        out.put_u64_le(self.affected);
        out.into()
    }

    /// Decodes rows from a read's value (itself bounded by `max_value_bytes`): every count
    /// is checked against the bytes left before allocating.
    pub fn from_bytes(bytes: Bytes) -> Result<Rows, DecodeError> {
        let len = bytes.len();
        let mut reader = Reader::new(bytes, crate::ops::Limits { max_value_bytes: len, ..Default::default() });
        let mut budget = Budget::new(len);
        let columns_count = reader.u16("column count")? as usize;
        if columns_count > SQL_COLUMNS_MAX || columns_count.saturating_mul(2) > reader.remaining() {
            return Err(reader.error(format!("{columns_count} columns cannot fit in {} bytes", reader.remaining())));
        }
        let mut columns = Vec::with_capacity(columns_count);
        for _ in 0..columns_count {
            columns.push(reader.string("column name")?);
        }
        let rows_count = reader.u32("row count")? as usize;
        // A value takes at least one byte; a row of no columns none, so those are refused.
        let row_bytes_min = columns_count.max(1);
        if rows_count.saturating_mul(row_bytes_min) > reader.remaining() {
            return Err(reader.error(format!("{rows_count} rows cannot fit in {} bytes", reader.remaining())));
        }
        let mut rows = Vec::with_capacity(rows_count);
        for _ in 0..rows_count {
            let mut row = Vec::with_capacity(columns_count);
            for _ in 0..columns_count {
                row.push(read_sql_value(&mut reader, &mut budget)?);
            }
            rows.push(row);
        }
        let affected = reader.u64("affected rows")?;
        reader.finish()?;
        Ok(Rows { columns, rows, affected })
    }
}

/// Bytes left of a statement's or a result's allowance while decoding it.
struct Budget {
    left: usize,
}

impl Budget {
    fn new(bytes_max: usize) -> Budget {
        Budget { left: bytes_max }
    }

    fn spend(&mut self, reader: &Reader, bytes: usize, what: &str) -> Result<(), DecodeError> {
        match self.left.checked_sub(bytes) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => {
                Err(reader.error(format!("{what} of {bytes} bytes exceeds what is left of the limit ({})", self.left)))
            }
        }
    }
}

fn value_bytes(value: &SqlValue) -> usize {
    1 + match value {
        SqlValue::Null => 0,
        SqlValue::Bool(_) => 1,
        SqlValue::Int(_) | SqlValue::Float(_) => 8,
        SqlValue::Text(text) => 4 + text.len(),
        SqlValue::Bytes(bytes) => 4 + bytes.len(),
    }
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    out.put_u32_le(u32::try_from(text.len()).expect("text bounded by the value limit"));
    out.put_slice(text.as_bytes());
}

fn put_sql_value(out: &mut Vec<u8>, value: &SqlValue) {
    match value {
        SqlValue::Null => out.put_u8(0),
        SqlValue::Bool(b) => {
            out.put_u8(1);
            out.put_u8(u8::from(*b));
        }
        SqlValue::Int(i) => {
            out.put_u8(2);
            out.put_i64_le(*i);
        }
        SqlValue::Float(x) => {
            out.put_u8(3);
            out.put_u64_le(x.to_bits());
        }
        SqlValue::Text(text) => {
            out.put_u8(4);
            put_text(out, text);
        }
        SqlValue::Bytes(bytes) => {
            out.put_u8(5);
            out.put_u32_le(u32::try_from(bytes.len()).expect("bytes bounded by the value limit"));
            out.put_slice(bytes);
        }
    }
}

/// `u32 length | bytes`, the length charged to `budget` before the bytes are taken.
fn read_sized(reader: &mut Reader, budget: &mut Budget, what: &str) -> Result<Bytes, DecodeError> {
    budget.spend(reader, 4, what)?;
    let len = reader.u32(what)? as usize;
    budget.spend(reader, len, what)?;
    reader.slice(len, what)
}

fn read_text(reader: &mut Reader, budget: &mut Budget, what: &str) -> Result<String, DecodeError> {
    let bytes = read_sized(reader, budget, what)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| reader.error(format!("{what} is not UTF-8")))
}

fn read_sql_value(reader: &mut Reader, budget: &mut Budget) -> Result<SqlValue, DecodeError> {
    budget.spend(reader, 1, "SQL value tag")?;
    match reader.u8("SQL value tag")? {
        0 => Ok(SqlValue::Null),
        1 => {
            budget.spend(reader, 1, "SQL bool")?;
            match reader.u8("SQL bool")? {
                0 => Ok(SqlValue::Bool(false)),
                1 => Ok(SqlValue::Bool(true)),
                other => Err(reader.error(format!("SQL bool {other} is neither 0 nor 1"))),
            }
        }
        2 => {
            budget.spend(reader, 8, "SQL integer")?;
            Ok(SqlValue::Int(reader.i64("SQL integer")?))
        }
        3 => {
            budget.spend(reader, 8, "SQL float")?;
            Ok(SqlValue::Float(f64::from_bits(reader.u64("SQL float")?)))
        }
        4 => Ok(SqlValue::Text(read_text(reader, budget, "SQL text value")?)),
        5 => Ok(SqlValue::Bytes(read_sized(reader, budget, "SQL bytes value")?)),
        other => Err(reader.error(format!("unknown SQL value tag {other}"))),
    }
}

/// The longest prefix of `text` of at most `bytes_max` bytes that ends on a character.
fn cut(text: &str, bytes_max: usize) -> &str {
    let mut end = text.len().min(bytes_max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Decode, Encode};
    use crate::ops::{Limits, OpKind};

    fn every_value() -> Vec<SqlValue> {
        vec![
            SqlValue::Null,
            SqlValue::Bool(true),
            SqlValue::Bool(false),
            SqlValue::Int(-7),
            SqlValue::Float(1.5),
            SqlValue::Float(f64::NAN),
            SqlValue::Text("héllo".into()),
            SqlValue::Bytes(Bytes::from_static(&[0, 255])),
        ]
    }

    #[test]
    fn statements_round_trip_as_op_kinds() {
        let statement =
            SqlStatement { sql: "UPDATE accounts SET balance = $1 WHERE id = $2".into(), params: every_value() };
        let kind = OpKind::Sql(Box::new(statement.clone()));
        let decoded = OpKind::decode_all(kind.to_bytes(), Limits::default()).unwrap();
        assert_eq!(decoded, kind);
        assert_eq!(kind.to_bytes().len(), 1 + statement.encoded_bytes());
    }

    #[test]
    fn oversized_statements_are_refused_at_decode_and_by_check() {
        let limits = Limits { max_value_bytes: 64, ..Limits::default() };
        let long = SqlStatement { sql: "x".repeat(100), params: vec![] };
        let err = OpKind::decode_all(OpKind::Sql(Box::new(long.clone())).to_bytes(), limits).unwrap_err();
        assert!(err.reason.contains("SQL text of 100 bytes exceeds"), "{err}");
        assert!(long.check(64).unwrap_err().contains("exceeds the limit of 64"));
        // The text fits, the parameters together do not.
        let params = vec![SqlValue::Text("y".repeat(50)); 2];
        let heavy = SqlStatement { sql: "SELECT $1, $2".into(), params };
        let err = OpKind::decode_all(OpKind::Sql(Box::new(heavy)).to_bytes(), limits).unwrap_err();
        assert!(err.reason.contains("SQL text value of 50 bytes exceeds what is left"), "{err}");
        // A parameter count above the limit, claimed in a short buffer.
        let mut claim = vec![4u8];
        claim.extend_from_slice(&1u32.to_le_bytes());
        claim.push(b'x');
        claim.extend_from_slice(&(SQL_PARAMS_MAX as u16 + 1).to_le_bytes());
        let err = OpKind::decode_all(Bytes::from(claim), Limits::default()).unwrap_err();
        assert!(err.reason.contains("exceed the limit of 256"), "{err}");
        assert!(SqlStatement { sql: "  ".into(), params: vec![] }.check(64).unwrap_err().contains("empty"));
    }

    #[test]
    fn rows_round_trip_and_refuse_impossible_counts() {
        let rows = Rows {
            columns: vec!["a".into(), "b".into()],
            rows: vec![vec![SqlValue::Int(1), SqlValue::Null], vec![SqlValue::Text("t".into()), SqlValue::Bool(true)]],
            affected: 2,
        };
        let bytes = rows.to_bytes();
        assert_eq!(bytes.len(), rows.encoded_bytes());
        assert_eq!(Rows::from_bytes(bytes.clone()).unwrap(), rows);
        assert_eq!(Rows::from_bytes(Rows::default().to_bytes()).unwrap(), Rows::default());
        // A row count claiming more than the bytes hold.
        let mut forged = Vec::new();
        forged.extend_from_slice(&0u16.to_le_bytes());
        forged.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = Rows::from_bytes(Bytes::from(forged)).unwrap_err();
        assert!(err.reason.contains("rows cannot fit"), "{err}");
        for len in 0..bytes.len() {
            assert!(Rows::from_bytes(bytes.slice(..len)).is_err(), "a prefix of {len} bytes decoded");
        }
    }
}
