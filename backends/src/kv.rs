//! The key-value operations mapped onto tables, the same for every database.
//!
//! Keys `acct/<n>` (n canonical decimal, fitting an i64) are the bank's accounts: rows of
//! `accounts(id bigint primary key, balance bigint CHECK (balance >= 0))`, read and written
//! as the 8-byte little-endian integer the built-in store uses. Every other key is a row of
//! `kv(key, value)`. So the bank workload runs unchanged against a database participant, and
//! the database's own CHECK refuses an overdraft.

use bytes::Bytes;

use crate::error::{DbError, Reason};

/// The engine's operations (its `OpKind` maps one to one).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum KvOp {
    Get {
        key: Bytes,
    },
    Put {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    /// Add `delta` to the integer at the key (absent counts as 0); refused with
    /// `Reason::Constraint` when the result would be below `floor`.
    Add {
        key: Bytes,
        delta: i64,
        floor: i64,
    },
}

impl KvOp {
    /// Whether it changes the row (a transaction with one must prepare; reads only end).
    pub fn writes(&self) -> bool {
        !matches!(self, KvOp::Get { .. })
    }

    pub fn key(&self) -> &Bytes {
        match self {
            KvOp::Get { key } | KvOp::Put { key, .. } | KvOp::Delete { key } | KvOp::Add { key, .. } => key,
        }
    }
}

/// What a `KvOp` returns: `Get` its value (None: absent), the others nothing.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum KvOutcome {
    Read(Option<Bytes>),
    Written,
}

/// Where a key lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Row<'k> {
    Account(i64),
    Kv(&'k [u8]),
}

const ACCOUNT_PREFIX: &[u8] = b"acct/";

pub fn row_of(key: &[u8]) -> Row<'_> {
    match key.strip_prefix(ACCOUNT_PREFIX).and_then(canonical_i64) {
        Some(id) => Row::Account(id),
        None => Row::Kv(key),
    }
}

/// Non-negative decimal without leading zeros: `acct/007` is a plain key, not account 7, so
/// that one account has one key.
fn canonical_i64(digits: &[u8]) -> Option<i64> {
    let canonical =
        !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) && (digits == b"0" || digits[0] != b'0');
    if !canonical {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

pub fn encode_i64(value: i64) -> Bytes {
    Bytes::copy_from_slice(&value.to_le_bytes())
}

pub fn decode_i64(value: &[u8]) -> Result<i64, DbError> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| {
        DbError::new(Reason::NotAnInteger, format!("a value of {} bytes is not an 8-byte integer", value.len()))
    })?;
    Ok(i64::from_le_bytes(bytes))
}

/// The value an `Add` leaves, or why it must not happen (the engine's rules).
pub fn added(current: Option<&[u8]>, delta: i64, floor: i64) -> Result<i64, DbError> {
    let current = current.map(decode_i64).transpose()?.unwrap_or(0);
    let next = current
        .checked_add(delta)
        .ok_or_else(|| DbError::new(Reason::Overflow, format!("{current} + {delta} overflows an i64")))?;
    check_floor(next, delta, floor)?;
    Ok(next)
}

pub fn check_floor(next: i64, delta: i64, floor: i64) -> Result<(), DbError> {
    if next < floor {
        return Err(DbError::new(
            Reason::Constraint,
            format!("adding {delta} would leave {next}, below the floor {floor}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_keys_are_canonical_numbers() {
        assert_eq!(row_of(b"acct/0"), Row::Account(0));
        assert_eq!(row_of(b"acct/42"), Row::Account(42));
        assert_eq!(row_of(b"acct/9223372036854775807"), Row::Account(i64::MAX));
        for plain in [&b"acct/007"[..], b"acct/", b"acct/-1", b"acct/1x", b"acct/9223372036854775808", b"other"] {
            assert_eq!(row_of(plain), Row::Kv(plain));
        }
    }

    #[test]
    fn add_follows_the_engine() {
        assert_eq!(added(None, 5, 0).unwrap(), 5);
        assert_eq!(added(Some(&10i64.to_le_bytes()), -10, 0).unwrap(), 0);
        assert_eq!(added(Some(&10i64.to_le_bytes()), -11, 0).unwrap_err().reason, Reason::Constraint);
        assert_eq!(added(Some(b"abc"), 1, 0).unwrap_err().reason, Reason::NotAnInteger);
        assert_eq!(added(Some(&i64::MAX.to_le_bytes()), 1, 0).unwrap_err().reason, Reason::Overflow);
        assert_eq!(decode_i64(&encode_i64(-3)).unwrap(), -3);
    }
}
