//! The compact binary encoding of engine values (little-endian, length-prefixed), shared by
//! log records and wire messages. Every length is checked against [`Limits`] before anything
//! is allocated, and every decoder reports where and why it failed.
//!
//! Layouts (the authority for docs/PROTOCOL.md):
//! - key: `u16 len | bytes`; value: `u32 len | bytes`; optional value: `u8 0` or `u8 1 | value`
//! - list: `u16 count | items`
//! - op kind: `u8 tag` then 0 Get, 1 Put `value`, 2 Delete, 3 Add `i64 delta | i64 floor`,
//!   4 Sql `statement` (layout in [`crate::sql`])
//! - op: `u16 participant | key | kind`; local op: `u16 index | key | kind`
//! - read: `u16 index | optional value`
//! - isolation: `u8` 0 Serializable, 1 ReadCommitted, 2 Optimistic
//! - txid list: `u16 count | u64 txid × count`, at most [`LISTED_TXIDS_MAX`]
//! - abort reason: `u8 tag` then 0 Conflict, 1 InDoubt, 3 NotANumber, 4 Overflow,
//!   13 LockTimeout `u16 participant | key`; 2 Constraint `u16 participant | key | i64 value |
//!   i64 delta | i64 floor`; 5 Timeout, 6 UnknownParticipant, 7 ParticipantBusy, 8 Stale,
//!   10 Unavailable `u16 participant`; 9 Invalid `string`; 11 BadVote `u16 participant |
//!   string`; 12 Deadlock `txid list`; 14 IdleTimeout, 15 RolledBack, 16 NotActive (no body)

use std::fmt;

use bytes::{BufMut, Bytes};

use crate::ops::{
    AbortReason, Isolation, Key, LISTED_TXIDS_MAX, Limits, LocalOp, Op, OpKind, Outcome, Read, Value, Vote,
};
use crate::sql::SqlStatement;
use crate::types::{ParticipantId, TxId};

/// A decoding failure: the byte offset and what was wrong there.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DecodeError {
    pub offset: usize,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed input at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// Reads values out of a shared buffer; keys and values are zero-copy slices of it.
pub struct Reader {
    buf: Bytes,
    pos: usize,
    limits: Limits,
}

impl Reader {
    pub fn new(buf: Bytes, limits: Limits) -> Reader {
        Reader { buf, pos: 0, limits }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn error(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError { offset: self.pos, reason: reason.into() }
    }

    /// Fails unless every byte was consumed: trailing bytes mean a framing bug or an attack.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(self.error(format!("{} unexpected trailing bytes", self.remaining())))
        }
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&[u8], DecodeError> {
        if self.remaining() < len {
            return Err(self.error(format!("truncated {what}: need {len} bytes, have {}", self.remaining())));
        }
        let start = self.pos;
        self.pos += len;
        Ok(&self.buf[start..self.pos])
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    pub fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        Ok(self.u64(what)? as i64)
    }

    /// A zero-copy slice of `len` bytes.
    pub fn slice(&mut self, len: usize, what: &str) -> Result<Bytes, DecodeError> {
        if self.remaining() < len {
            return Err(self.error(format!("truncated {what}: need {len} bytes, have {}", self.remaining())));
        }
        let slice = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(slice)
    }

    pub fn key(&mut self) -> Result<Key, DecodeError> {
        let len = self.u16("key length")? as usize;
        if len > self.limits.max_key_bytes {
            return Err(self.error(format!("key of {len} bytes exceeds the limit of {}", self.limits.max_key_bytes)));
        }
        self.slice(len, "key")
    }

    pub fn value(&mut self) -> Result<Value, DecodeError> {
        let len = self.u32("value length")? as usize;
        if len > self.limits.max_value_bytes {
            return Err(
                self.error(format!("value of {len} bytes exceeds the limit of {}", self.limits.max_value_bytes))
            );
        }
        self.slice(len, "value")
    }

    pub fn optional_value(&mut self) -> Result<Option<Value>, DecodeError> {
        match self.u8("value presence")? {
            0 => Ok(None),
            1 => Ok(Some(self.value()?)),
            other => Err(self.error(format!("value presence flag {other} is neither 0 nor 1"))),
        }
    }

    /// A list count, refused when above `max` (before any allocation) or when the
    /// remaining bytes cannot possibly hold that many items of `min_item_bytes`.
    pub fn count(&mut self, max: usize, min_item_bytes: usize, what: &str) -> Result<usize, DecodeError> {
        let count = self.u16(what)? as usize;
        if count > max {
            return Err(self.error(format!("{count} {what} exceed the limit of {max}")));
        }
        if count.saturating_mul(min_item_bytes) > self.remaining() {
            return Err(self.error(format!("{count} {what} cannot fit in {} bytes", self.remaining())));
        }
        Ok(count)
    }

    pub fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let len = self.u16(what)? as usize;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| DecodeError { offset: self.pos - len, reason: format!("{what} is not UTF-8") })
    }

    pub fn participant(&mut self) -> Result<ParticipantId, DecodeError> {
        Ok(ParticipantId(self.u16("participant")?))
    }
}

/// Appends encodings to a byte buffer.
pub trait Encode {
    fn encode(&self, out: &mut Vec<u8>);

    fn to_bytes(&self) -> Bytes {
        let mut out = Vec::new();
        self.encode(&mut out);
        Bytes::from(out)
    }
}

/// Reads one value with [`Reader`].
pub trait Decode: Sized {
    fn decode(reader: &mut Reader) -> Result<Self, DecodeError>;

    /// Decodes a whole buffer, refusing trailing bytes.
    fn decode_all(buf: Bytes, limits: Limits) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(buf, limits);
        let value = Self::decode(&mut reader)?;
        reader.finish()?;
        Ok(value)
    }
}

pub fn put_key(out: &mut Vec<u8>, key: &[u8]) {
    let len = u16::try_from(key.len()).expect("key length checked against limits");
    out.put_u16_le(len);
    out.put_slice(key);
}

pub fn put_value(out: &mut Vec<u8>, value: &[u8]) {
    let len = u32::try_from(value.len()).expect("value length checked against limits");
    out.put_u32_le(len);
    out.put_slice(value);
}

pub fn put_optional_value(out: &mut Vec<u8>, value: Option<&Value>) {
    match value {
        None => out.put_u8(0),
        Some(value) => {
            out.put_u8(1);
            put_value(out, value);
        }
    }
}

pub fn put_count(out: &mut Vec<u8>, count: usize) {
    out.put_u16_le(u16::try_from(count).expect("list length checked against limits"));
}

/// Writes `text`, cut at a character boundary to at most 65,535 bytes (so it stays UTF-8).
pub fn put_string(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(u16::MAX as usize);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &text.as_bytes()[..end];
    out.put_u16_le(bytes.len() as u16);
    out.put_slice(bytes);
}

/// A list of keys: `u16 count | key × count`.
pub fn put_keys(out: &mut Vec<u8>, keys: &[Key]) {
    put_count(out, keys.len());
    for key in keys {
        put_key(out, key);
    }
}

/// A list of at most `max` keys (each at least its 2-byte length on the wire).
pub fn read_keys(reader: &mut Reader, max: usize, what: &str) -> Result<Vec<Key>, DecodeError> {
    let count = reader.count(max, 2, what)?;
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        keys.push(reader.key()?);
    }
    Ok(keys)
}

pub fn put_list<T: Encode>(out: &mut Vec<u8>, items: &[T]) {
    put_count(out, items.len());
    for item in items {
        item.encode(out);
    }
}

/// A list of at most `max` items, each at least `min_item_bytes` long on the wire.
pub fn read_list<T: Decode>(
    reader: &mut Reader,
    max: usize,
    min_item_bytes: usize,
    what: &str,
) -> Result<Vec<T>, DecodeError> {
    let count = reader.count(max, min_item_bytes, what)?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(T::decode(reader)?);
    }
    Ok(items)
}

impl Encode for OpKind {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            OpKind::Get => out.put_u8(0),
            OpKind::Put(value) => {
                out.put_u8(1);
                put_value(out, value);
            }
            OpKind::Delete => out.put_u8(2),
            OpKind::Add { delta, floor } => {
                out.put_u8(3);
                out.put_i64_le(*delta);
                out.put_i64_le(*floor);
            }
            OpKind::Sql(statement) => {
                out.put_u8(4);
                statement.encode(out);
            }
        }
    }
}

impl Decode for OpKind {
    fn decode(reader: &mut Reader) -> Result<OpKind, DecodeError> {
        match reader.u8("op kind")? {
            0 => Ok(OpKind::Get),
            1 => Ok(OpKind::Put(reader.value()?)),
            2 => Ok(OpKind::Delete),
            3 => Ok(OpKind::Add { delta: reader.i64("add delta")?, floor: reader.i64("add floor")? }),
            4 => Ok(OpKind::Sql(Box::new(SqlStatement::decode(reader)?))),
            other => Err(reader.error(format!("unknown op kind {other}"))),
        }
    }
}

/// Smallest encodings, used to refuse impossible counts before allocating.
pub const MIN_OP_BYTES: usize = 2 + 2 + 1;
pub const MIN_READ_BYTES: usize = 2 + 1;

impl Encode for Op {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_u16_le(self.participant.0);
        put_key(out, &self.key);
        self.kind.encode(out);
    }
}

impl Decode for Op {
    fn decode(reader: &mut Reader) -> Result<Op, DecodeError> {
        Ok(Op { participant: reader.participant()?, key: reader.key()?, kind: OpKind::decode(reader)? })
    }
}

impl Encode for LocalOp {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_u16_le(self.index);
        put_key(out, &self.key);
        self.kind.encode(out);
    }
}

impl Decode for LocalOp {
    fn decode(reader: &mut Reader) -> Result<LocalOp, DecodeError> {
        Ok(LocalOp { index: reader.u16("op index")?, key: reader.key()?, kind: OpKind::decode(reader)? })
    }
}

impl Encode for Read {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_u16_le(self.index);
        put_optional_value(out, self.value.as_ref());
    }
}

impl Decode for Read {
    fn decode(reader: &mut Reader) -> Result<Read, DecodeError> {
        Ok(Read { index: reader.u16("read index")?, value: reader.optional_value()? })
    }
}

pub fn put_reads(out: &mut Vec<u8>, reads: &[Read]) {
    put_list(out, reads);
}

pub fn read_reads(reader: &mut Reader) -> Result<Vec<Read>, DecodeError> {
    let max = reader.limits().max_ops_per_tx;
    read_list(reader, max, MIN_READ_BYTES, "reads")
}

impl Encode for Isolation {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_u8(self.tag());
    }
}

impl Decode for Isolation {
    fn decode(reader: &mut Reader) -> Result<Isolation, DecodeError> {
        let tag = reader.u8("isolation")?;
        Isolation::from_tag(tag).ok_or_else(|| reader.error(format!("unknown isolation {tag}")))
    }
}

/// Writes a txid list; callers keep it within [`LISTED_TXIDS_MAX`].
pub fn put_txids(out: &mut Vec<u8>, txids: &[TxId]) {
    assert!(txids.len() <= LISTED_TXIDS_MAX, "{} txids listed, at most {LISTED_TXIDS_MAX}", txids.len());
    put_count(out, txids.len());
    for txid in txids {
        out.put_u64_le(txid.0);
    }
}

/// Reads a txid list of at most [`LISTED_TXIDS_MAX`], checked before allocating.
pub fn read_txids(reader: &mut Reader, what: &str) -> Result<Vec<TxId>, DecodeError> {
    let count = reader.count(LISTED_TXIDS_MAX, 8, what)?;
    let mut txids = Vec::with_capacity(count);
    for _ in 0..count {
        txids.push(TxId(reader.u64(what)?));
    }
    Ok(txids)
}

impl Encode for AbortReason {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            AbortReason::Conflict { participant, key } => put_tagged_key(out, 0, *participant, key),
            AbortReason::InDoubt { participant, key } => put_tagged_key(out, 1, *participant, key),
            AbortReason::Constraint { participant, key, value, delta, floor } => {
                put_tagged_key(out, 2, *participant, key);
                out.put_i64_le(*value);
                out.put_i64_le(*delta);
                out.put_i64_le(*floor);
            }
            AbortReason::NotANumber { participant, key } => put_tagged_key(out, 3, *participant, key),
            AbortReason::Overflow { participant, key } => put_tagged_key(out, 4, *participant, key),
            AbortReason::Timeout { participant } => put_tagged(out, 5, *participant),
            AbortReason::UnknownParticipant { participant } => put_tagged(out, 6, *participant),
            AbortReason::ParticipantBusy { participant } => put_tagged(out, 7, *participant),
            AbortReason::Stale { participant } => put_tagged(out, 8, *participant),
            AbortReason::Invalid { detail } => {
                out.put_u8(9);
                put_string(out, detail);
            }
            AbortReason::Unavailable { participant } => put_tagged(out, 10, *participant),
            AbortReason::BadVote { participant, detail } => {
                put_tagged(out, 11, *participant);
                put_string(out, detail);
            }
            AbortReason::Deadlock { cycle } => {
                out.put_u8(12);
                put_txids(out, cycle);
            }
            AbortReason::LockTimeout { participant, key } => put_tagged_key(out, 13, *participant, key),
            AbortReason::IdleTimeout => out.put_u8(14),
            AbortReason::RolledBack => out.put_u8(15),
            AbortReason::NotActive => out.put_u8(16),
        }
    }
}

fn put_tagged(out: &mut Vec<u8>, tag: u8, participant: ParticipantId) {
    out.put_u8(tag);
    out.put_u16_le(participant.0);
}

fn put_tagged_key(out: &mut Vec<u8>, tag: u8, participant: ParticipantId, key: &[u8]) {
    put_tagged(out, tag, participant);
    put_key(out, key);
}

impl Decode for AbortReason {
    fn decode(reader: &mut Reader) -> Result<AbortReason, DecodeError> {
        let tag = reader.u8("abort reason")?;
        match tag {
            9 => return Ok(AbortReason::Invalid { detail: reader.string("invalid-request detail")? }),
            12 => return Ok(AbortReason::Deadlock { cycle: read_txids(reader, "deadlock cycle")? }),
            14 => return Ok(AbortReason::IdleTimeout),
            15 => return Ok(AbortReason::RolledBack),
            16 => return Ok(AbortReason::NotActive),
            0..=13 => {}
            _ => return Err(reader.error(format!("unknown abort reason {tag}"))),
        }
        let participant = reader.participant()?;
        if tag == 11 {
            return Ok(AbortReason::BadVote { participant, detail: reader.string("bad-vote detail")? });
        }
        Ok(match tag {
            0 => AbortReason::Conflict { participant, key: reader.key()? },
            1 => AbortReason::InDoubt { participant, key: reader.key()? },
            2 => AbortReason::Constraint {
                participant,
                key: reader.key()?,
                value: reader.i64("constraint value")?,
                delta: reader.i64("constraint delta")?,
                floor: reader.i64("constraint floor")?,
            },
            3 => AbortReason::NotANumber { participant, key: reader.key()? },
            4 => AbortReason::Overflow { participant, key: reader.key()? },
            5 => AbortReason::Timeout { participant },
            6 => AbortReason::UnknownParticipant { participant },
            7 => AbortReason::ParticipantBusy { participant },
            8 => AbortReason::Stale { participant },
            13 => AbortReason::LockTimeout { participant, key: reader.key()? },
            _ => AbortReason::Unavailable { participant },
        })
    }
}

impl Encode for Vote {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Vote::Yes { reads } => {
                out.put_u8(0);
                put_reads(out, reads);
            }
            Vote::ReadOnly { reads } => {
                out.put_u8(1);
                put_reads(out, reads);
            }
            Vote::No { reason } => {
                out.put_u8(2);
                reason.encode(out);
            }
        }
    }
}

impl Decode for Vote {
    fn decode(reader: &mut Reader) -> Result<Vote, DecodeError> {
        match reader.u8("vote")? {
            0 => Ok(Vote::Yes { reads: read_reads(reader)? }),
            1 => Ok(Vote::ReadOnly { reads: read_reads(reader)? }),
            2 => Ok(Vote::No { reason: AbortReason::decode(reader)? }),
            other => Err(reader.error(format!("unknown vote {other}"))),
        }
    }
}

impl Encode for Outcome {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Outcome::Committed { reads } => {
                out.put_u8(0);
                put_reads(out, reads);
            }
            Outcome::Aborted { reason } => {
                out.put_u8(1);
                reason.encode(out);
            }
            Outcome::CommittedReadsUnavailable => out.put_u8(2),
        }
    }
}

impl Decode for Outcome {
    fn decode(reader: &mut Reader) -> Result<Outcome, DecodeError> {
        match reader.u8("outcome")? {
            0 => Ok(Outcome::Committed { reads: read_reads(reader)? }),
            1 => Ok(Outcome::Aborted { reason: AbortReason::decode(reader)? }),
            2 => Ok(Outcome::CommittedReadsUnavailable),
            other => Err(reader.error(format!("unknown outcome {other}"))),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn key(text: &str) -> Key {
        Bytes::copy_from_slice(text.as_bytes())
    }

    pub fn round_trip<T: Encode + Decode + PartialEq + fmt::Debug>(value: &T) {
        let bytes = value.to_bytes();
        let decoded = T::decode_all(bytes.clone(), Limits::default()).expect("decodes");
        assert_eq!(&decoded, value);
        // Every strict prefix must fail cleanly, never panic or succeed.
        for cut in 0..bytes.len() {
            assert!(T::decode_all(bytes.slice(..cut), Limits::default()).is_err(), "prefix {cut} decoded");
        }
    }

    fn all_reasons() -> Vec<AbortReason> {
        let p = ParticipantId(3);
        vec![
            AbortReason::Conflict { participant: p, key: key("a") },
            AbortReason::InDoubt { participant: p, key: key("b") },
            AbortReason::Constraint { participant: p, key: key("c"), value: 1, delta: -2, floor: 0 },
            AbortReason::NotANumber { participant: p, key: key("d") },
            AbortReason::Overflow { participant: p, key: key("e") },
            AbortReason::Timeout { participant: p },
            AbortReason::UnknownParticipant { participant: p },
            AbortReason::ParticipantBusy { participant: p },
            AbortReason::Stale { participant: p },
            AbortReason::Invalid { detail: "no ops".into() },
            AbortReason::Unavailable { participant: p },
            AbortReason::BadVote { participant: p, detail: "read for op 7, which is no Get".into() },
            AbortReason::Deadlock { cycle: vec![TxId(9), TxId(4), TxId(7)] },
            AbortReason::Deadlock { cycle: (0..LISTED_TXIDS_MAX as u64).map(TxId).collect() },
            AbortReason::LockTimeout { participant: p, key: key("f") },
            AbortReason::IdleTimeout,
            AbortReason::RolledBack,
            AbortReason::NotActive,
        ]
    }

    #[test]
    fn values_round_trip_and_prefixes_fail() {
        for reason in all_reasons() {
            round_trip(&reason);
            round_trip(&Vote::No { reason: reason.clone() });
            round_trip(&Outcome::Aborted { reason });
        }
        let reads = vec![Read { index: 0, value: Some(key("v")) }, Read { index: 4, value: None }];
        round_trip(&Vote::Yes { reads: reads.clone() });
        round_trip(&Vote::ReadOnly { reads: reads.clone() });
        round_trip(&Outcome::Committed { reads });
        round_trip(&Outcome::CommittedReadsUnavailable);
        for kind in [OpKind::Get, OpKind::Put(key("value")), OpKind::Delete, OpKind::Add { delta: -5, floor: i64::MIN }]
        {
            round_trip(&Op { participant: ParticipantId(9), key: key("k"), kind: kind.clone() });
            round_trip(&LocalOp { index: 7, key: key("k"), kind });
        }
    }

    #[test]
    fn bad_tags_and_limits_are_refused_with_a_position() {
        let err = OpKind::decode_all(Bytes::from_static(&[9]), Limits::default()).unwrap_err();
        assert_eq!(err.offset, 1);
        assert!(err.reason.contains("unknown op kind 9"));

        let mut oversized = vec![1u8];
        oversized.extend_from_slice(&(1u32 << 30).to_le_bytes());
        let err = OpKind::decode_all(Bytes::from(oversized), Limits::default()).unwrap_err();
        assert!(err.reason.contains("exceeds the limit"), "{err}");

        // A count that cannot fit is refused before allocating.
        let err = Vote::decode_all(Bytes::from_static(&[0, 0xff, 0xff]), Limits::default()).unwrap_err();
        assert!(err.reason.contains("exceed the limit") || err.reason.contains("cannot fit"), "{err}");

        let err = Outcome::decode_all(Bytes::from_static(&[0, 0, 0, 7]), Limits::default()).unwrap_err();
        assert!(err.reason.contains("trailing"), "{err}");

        // A deadlock cycle longer than listed ones may be is refused before allocating.
        let mut long_cycle = vec![12u8];
        long_cycle.extend_from_slice(&(LISTED_TXIDS_MAX as u16 + 1).to_le_bytes());
        long_cycle.extend(std::iter::repeat_n(0u8, 8 * (LISTED_TXIDS_MAX + 1)));
        let err = AbortReason::decode_all(Bytes::from(long_cycle), Limits::default()).unwrap_err();
        assert!(err.reason.contains("exceed the limit"), "{err}");
        let err = AbortReason::decode_all(Bytes::from_static(&[17]), Limits::default()).unwrap_err();
        assert!(err.reason.contains("unknown abort reason 17"), "{err}");
        for isolation in [Isolation::Serializable, Isolation::ReadCommitted, Isolation::Optimistic] {
            round_trip(&isolation);
        }
        let err = Isolation::decode_all(Bytes::from_static(&[3]), Limits::default()).unwrap_err();
        assert!(err.reason.contains("unknown isolation 3"), "{err}");
    }

    #[test]
    fn long_strings_are_cut_on_a_character_boundary() {
        let text = "é".repeat(40_000);
        let mut out = Vec::new();
        put_string(&mut out, &text);
        let decoded = Reader::new(Bytes::from(out), Limits::default()).string("text").unwrap();
        assert_eq!(decoded.len(), 65_534);
        assert!(text.starts_with(&decoded));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let bytes = Bytes::from(data);
            let _ = Vote::decode_all(bytes.clone(), Limits::default());
            let _ = Outcome::decode_all(bytes.clone(), Limits::default());
            let _ = Op::decode_all(bytes, Limits::default());
        }
    }
}
