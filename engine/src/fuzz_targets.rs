//! Fuzz target bodies for every engine decoder that sees bytes from outside the process:
//! wire messages (`Submit`, `Reply`, `ToParticipant`, `ToCoordinator`), log records, and
//! participant snapshots and coordinator checkpoints. The same functions run under
//! libFuzzer (the `fuzz/` crate, `cargo +nightly fuzz run`) and on stable inside
//! `cargo test` (`engine/tests/decode_random.rs`, through [`drive`]), so they are written
//! once.
//!
//! Each body takes arbitrary bytes and must never panic. The first byte picks the decoder
//! and the mode: *raw* decodes the rest of the input as it is; *structured* builds a valid
//! value from the input ([`Gen`] at a [`Scale`]: small lists and lengths for the everyday
//! targets, up to the real limits for the `limits` target and the stable harness), checks
//! that it decodes to itself, then mutates its encoding (bit flips, cuts, length fields set
//! to boundary values) and decodes that. Whatever decodes, in either mode, must re-encode
//! to exactly the bytes it came from (the encodings are canonical) and decode to the same
//! value again.
//!
//! Not part of the API: hidden from the docs, free to change with the fuzz crate.

use std::fmt::Debug;

use bytes::Bytes;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::codec::{Decode, Encode};
use crate::coordinator::{CoordinatorSnapshot, SessionSnapshot};
use crate::message::{Interactive, RegisterRefusal, RejectReason, Reply, Submit, ToCoordinator, ToParticipant};
use crate::ops::{
    AbortReason, Isolation, Key, LISTED_TXIDS_MAX, Limits, LocalOp, Op, OpKind, Outcome, Read, Value, Vote,
};
use crate::participant::{KvImage, ParticipantSnapshot};
use crate::record::{AnyRecord, CoordRecord, GetAt, LogRecord, PartRecord, RECORD_LIMITS, Write};
use crate::sql::{SQL_PARAMS_MAX, SqlStatement, SqlValue};
use crate::types::{ClientId, Epoch, Lsn, ParticipantId, TxId};

/// How far a [`Gen`] may build: what a fuzz target runs every input at, or the real limits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scale {
    /// Lists and lengths within [`SMALL_BUDGET_BYTES`] in all: an input runs in
    /// microseconds, so a run reaches millions of inputs. The limits still get hit where
    /// a decoder is configured with small ones (the frame targets' small `NetLimits`).
    Small,
    /// Up to the real limits (16 MiB values, 65,535-item lists): what the `limits` fuzz
    /// target and the stable harness run, since each such input costs milliseconds.
    Full,
}

/// Builds values out of fuzzer bytes, reading zeros once they run out (zeros pick the
/// first variant and empty lists), so that a mutation of the input is a mutation of the
/// structure it describes.
pub struct Gen<'a> {
    data: &'a [u8],
    /// What lengths and counts may still add up to, so that one input cannot describe
    /// gigabytes (a list of the largest values at the largest count).
    budget: usize,
    /// Lengths and counts above this need two marker bytes in a row (see [`Gen::pick`]).
    huge: usize,
}

/// [`Scale::Full`]'s budget: enough for one value of the largest record size (16 MiB) and
/// then some.
const GEN_BUDGET: usize = 17 << 20;

/// [`Scale::Small`]'s budget: about 100 list items or 8 KiB of bytes, tens of microseconds
/// to build, encode, decode and compare (the cost of an input grows with its items).
pub const SMALL_BUDGET_BYTES: usize = 8 << 10;

/// [`Scale::Full`]: lengths above this need two marker bytes in a row (see [`Gen::pick`]).
const HUGE_BYTES: usize = 1 << 20;

/// What one list item is charged to the budget: about what it takes decoded.
pub const ITEM_BYTES: usize = 64;

impl<'a> Gen<'a> {
    /// A generator at [`Scale::Small`].
    pub fn new(data: &'a [u8]) -> Gen<'a> {
        Gen::at(Scale::Small, data)
    }

    pub fn at(scale: Scale, data: &'a [u8]) -> Gen<'a> {
        match scale {
            Scale::Small => Gen { data, budget: SMALL_BUDGET_BYTES, huge: SMALL_BUDGET_BYTES },
            Scale::Full => Gen { data, budget: GEN_BUDGET, huge: HUGE_BYTES },
        }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&first, rest)) => {
                self.data = rest;
                first
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A number in `0..=max`.
    pub fn up_to(&mut self, max: usize) -> usize {
        if max == 0 {
            return 0;
        }
        let raw = if max <= u8::MAX as usize {
            self.u8() as usize
        } else if max <= u16::MAX as usize {
            self.u16() as usize
        } else {
            self.u32() as usize
        };
        raw % (max + 1)
    }

    /// A byte length in `0..=max` (see [`Gen::pick`]), charged to the budget byte for byte.
    pub fn len(&mut self, max: usize) -> usize {
        self.charged(max, 1)
    }

    /// A list count in `0..=max` (see [`Gen::pick`]), charged to the budget at
    /// [`ITEM_BYTES`] per item: what each decoded item costs in memory and time.
    pub fn count(&mut self, max: usize) -> usize {
        self.charged(max, ITEM_BYTES)
    }

    fn charged(&mut self, max: usize, unit_bytes: usize) -> usize {
        let n = self.pick(max);
        let cost = n.saturating_mul(unit_bytes);
        if cost > self.budget {
            return 0;
        }
        self.budget -= cost;
        n
    }

    /// A number in `0..=max`: mostly up to 8, sometimes anywhere (log-uniform), and now and
    /// then exactly `max` or one below it, so the real limits get exercised. Zero once the
    /// input is used up.
    fn pick(&mut self, max: usize) -> usize {
        // Huge sizes (a MiB at full scale, for the 16 MiB record limit) cost real time to
        // build and check: they take a second confirming byte.
        let huge = self.huge;
        let huge_ok = |g: &mut Gen| max <= huge || g.u8() == 255;
        match self.u8() {
            255 if huge_ok(self) => max,
            254 if huge_ok(self) => max.saturating_sub(1),
            // Log-uniform: every order of magnitude up to the limit (or the huge size) as likely.
            246..=253 => {
                let cap = max.min(huge);
                let bits = self.u8() as u32 % (usize::BITS - cap.leading_zeros() + 1);
                self.up_to(cap.min((1usize << bits).saturating_sub(1)))
            }
            _ => self.up_to(max.min(8)),
        }
    }

    /// `len` bytes: taken from the input while it lasts, then one repeated byte (so a value
    /// of the largest size costs a byte of input, not megabytes).
    pub fn bytes(&mut self, len: usize) -> Bytes {
        let take = len.min(self.data.len());
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&self.data[..take]);
        self.data = &self.data[take..];
        let fill = self.u8();
        out.resize(len, fill);
        Bytes::from(out)
    }

    /// Text of at most `max_bytes` UTF-8 bytes, sometimes with multi-byte characters.
    pub fn text(&mut self, max_bytes: usize) -> String {
        let chars = self.len(max_bytes);
        let mut text = String::with_capacity(chars);
        for done in 0..chars {
            if self.data.is_empty() {
                // What the loop would do on the zeros that follow, at once: 'é' until full.
                let fits = (max_bytes - text.len()) / 'é'.len_utf8();
                text.push_str(&"é".repeat((chars - done).min(fits)));
                break;
            }
            let c = match self.u8() {
                0 => 'é',
                1 => '€',
                b => char::from(b % 0x80),
            };
            if text.len() + c.len_utf8() > max_bytes {
                break;
            }
            text.push(c);
        }
        text
    }

    /// Everything not consumed yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Length-field values around the limits that matter (the engine's and the frame's).
const BOUNDARY_U32: [u32; 14] = [
    0,
    1,
    0xff,
    0x100,
    1024,
    1025,
    32 * 1024,
    32 * 1024 + 1,
    u16::MAX as u32,
    0x1_0000,
    16 << 20,
    (16 << 20) + 1,
    i32::MAX as u32,
    u32::MAX,
];

/// Applies up to four mutations chosen by `g` to `bytes`: bit flips, overwritten bytes,
/// cuts, inserted bytes, and 16- or 32-bit fields set to boundary values.
pub fn mutate(g: &mut Gen, bytes: &mut Vec<u8>) {
    for _ in 0..g.u8() % 5 {
        let at = g.up_to(bytes.len());
        match g.u8() % 6 {
            0 if at < bytes.len() => bytes[at] ^= 1 << (g.u8() % 8),
            1 if at < bytes.len() => bytes[at] = g.u8(),
            2 => bytes.truncate(at),
            3 => bytes.insert(at, g.u8()),
            4 if at + 4 <= bytes.len() => {
                let value = BOUNDARY_U32[g.up_to(BOUNDARY_U32.len() - 1)];
                bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            5 if at + 2 <= bytes.len() => {
                let value = BOUNDARY_U32[g.up_to(BOUNDARY_U32.len() - 1)] as u16;
                bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
            }
            _ => {}
        }
    }
}

/// Encodes `value`, asserts it decodes to itself, and returns the encoding.
pub fn assert_round_trip<T: Encode + Decode + PartialEq + Debug>(value: &T, limits: Limits) -> Vec<u8> {
    let mut encoded = Vec::new();
    value.encode(&mut encoded);
    match T::decode_all(Bytes::from(encoded.clone()), limits) {
        Ok(decoded) => assert_eq!(&decoded, value, "a valid value decoded differently"),
        Err(err) => panic!("a valid value failed to decode: {err}\n{value:?}"),
    }
    encoded
}

/// Decodes `bytes`; when it decodes, asserts that it re-encodes to exactly `bytes` and
/// decodes to the same value again.
pub fn assert_canonical<T: Encode + Decode + PartialEq + Debug>(bytes: &[u8], limits: Limits) -> Option<T> {
    let value = T::decode_all(Bytes::copy_from_slice(bytes), limits).ok()?;
    let again = assert_round_trip(&value, limits);
    assert_eq!(again, bytes, "a decoded value re-encodes to other bytes: {value:?}");
    Some(value)
}

pub fn gen_key(g: &mut Gen, limits: Limits) -> Key {
    let len = g.len(limits.max_key_bytes);
    g.bytes(len)
}

pub fn gen_value(g: &mut Gen, limits: Limits) -> Value {
    let len = g.len(limits.max_value_bytes);
    g.bytes(len)
}

fn gen_optional_value(g: &mut Gen, limits: Limits) -> Option<Value> {
    if g.u8().is_multiple_of(2) { None } else { Some(gen_value(g, limits)) }
}

pub fn gen_op_kind(g: &mut Gen, limits: Limits) -> OpKind {
    match g.u8() % 5 {
        0 => OpKind::Get,
        1 => OpKind::Put(gen_value(g, limits)),
        2 => OpKind::Delete,
        3 => OpKind::Add { delta: g.u64() as i64, floor: g.u64() as i64 },
        _ => OpKind::Sql(Box::new(gen_sql_statement(g, limits))),
    }
}

/// A statement whose text and parameters together fit `max_value_bytes` (what the decoder
/// demands): parameters are added while they fit.
pub fn gen_sql_statement(g: &mut Gen, limits: Limits) -> SqlStatement {
    let budget = limits.max_value_bytes.saturating_sub(6);
    let mut statement = SqlStatement { sql: g.text(budget), params: Vec::new() };
    for _ in 0..g.count(SQL_PARAMS_MAX) {
        let param = gen_sql_value(g, limits.max_value_bytes.saturating_sub(statement.encoded_bytes()));
        statement.params.push(param);
        if statement.encoded_bytes() > limits.max_value_bytes {
            statement.params.pop();
            break;
        }
    }
    statement
}

/// A value whose text or bytes take at most `bytes_max`.
pub fn gen_sql_value(g: &mut Gen, bytes_max: usize) -> SqlValue {
    let sized_max = bytes_max.saturating_sub(5);
    match g.u8() % 6 {
        0 => SqlValue::Null,
        1 => SqlValue::Bool(g.u8().is_multiple_of(2)),
        2 => SqlValue::Int(g.u64() as i64),
        3 => SqlValue::Float(f64::from_bits(g.u64())),
        4 => SqlValue::Text(g.text(sized_max)),
        _ => {
            let len = g.len(sized_max);
            SqlValue::Bytes(g.bytes(len))
        }
    }
}

pub fn gen_op(g: &mut Gen, limits: Limits) -> Op {
    Op { participant: ParticipantId(g.u16()), key: gen_key(g, limits), kind: gen_op_kind(g, limits) }
}

pub fn gen_local_op(g: &mut Gen, limits: Limits) -> LocalOp {
    LocalOp { index: g.u16(), key: gen_key(g, limits), kind: gen_op_kind(g, limits) }
}

pub fn gen_reads(g: &mut Gen, limits: Limits) -> Vec<Read> {
    let count = g.count(limits.max_ops_per_tx);
    (0..count).map(|_| Read { index: g.u16(), value: gen_optional_value(g, limits) }).collect()
}

pub fn gen_abort_reason(g: &mut Gen, limits: Limits) -> AbortReason {
    let participant = ParticipantId(g.u16());
    match g.u8() % 17 {
        0 => AbortReason::Conflict { participant, key: gen_key(g, limits) },
        1 => AbortReason::InDoubt { participant, key: gen_key(g, limits) },
        2 => AbortReason::Constraint {
            participant,
            key: gen_key(g, limits),
            value: g.u64() as i64,
            delta: g.u64() as i64,
            floor: g.u64() as i64,
        },
        3 => AbortReason::NotANumber { participant, key: gen_key(g, limits) },
        4 => AbortReason::Overflow { participant, key: gen_key(g, limits) },
        5 => AbortReason::Timeout { participant },
        6 => AbortReason::UnknownParticipant { participant },
        7 => AbortReason::ParticipantBusy { participant },
        8 => AbortReason::Stale { participant },
        9 => AbortReason::Invalid { detail: g.text(u16::MAX as usize) },
        10 => AbortReason::BadVote { participant, detail: g.text(u16::MAX as usize) },
        11 => AbortReason::Deadlock { cycle: gen_txids(g) },
        12 => AbortReason::LockTimeout { participant, key: gen_key(g, limits) },
        13 => AbortReason::IdleTimeout,
        14 => AbortReason::RolledBack,
        15 => AbortReason::NotActive,
        _ => AbortReason::Unavailable { participant },
    }
}

fn gen_txids(g: &mut Gen) -> Vec<TxId> {
    let count = g.up_to(LISTED_TXIDS_MAX);
    (0..count).map(|_| TxId(g.u64())).collect()
}

fn gen_isolation(g: &mut Gen) -> Isolation {
    Isolation::from_tag(g.u8() % 3).expect("tags 0..3 are isolations")
}

pub fn gen_vote(g: &mut Gen, limits: Limits) -> Vote {
    match g.u8() % 3 {
        0 => Vote::Yes { reads: gen_reads(g, limits) },
        1 => Vote::ReadOnly { reads: gen_reads(g, limits) },
        _ => Vote::No { reason: gen_abort_reason(g, limits) },
    }
}

pub fn gen_outcome(g: &mut Gen, limits: Limits) -> Outcome {
    match g.u8() % 3 {
        0 => Outcome::Committed { reads: gen_reads(g, limits) },
        1 => Outcome::CommittedReadsUnavailable,
        _ => Outcome::Aborted { reason: gen_abort_reason(g, limits) },
    }
}

pub fn gen_submit(g: &mut Gen, limits: Limits) -> Submit {
    let (client, seq) = (ClientId(g.u64()), g.u64());
    let count = g.count(limits.max_ops_per_tx);
    Submit { client, seq, ops: (0..count).map(|_| gen_op(g, limits)).collect() }
}

pub fn gen_reply(g: &mut Gen, limits: Limits) -> Reply {
    let (client, seq) = (ClientId(g.u64()), g.u64());
    let refusals = [RegisterRefusal::TableFull, RegisterRefusal::IdentityBusy, RegisterRefusal::BadIdentity];
    match g.u8() % 9 {
        0 => Reply::Rejected { client, seq, reason: RejectReason::Busy },
        1 => Reply::Rejected { client, seq, reason: RejectReason::SeqTooOld },
        2 => Reply::Rejected { client, seq, reason: RejectReason::SessionExpired },
        3 => Reply::Rejected { client, seq, reason: RejectReason::NotSessionOwner },
        // A registered session is never 0 (0 is the registration request's client).
        4 => Reply::Registered { nonce: seq, client: ClientId(client.0.max(1)) },
        5 => Reply::RegisterRefused { nonce: seq, reason: refusals[usize::from(g.u8()) % refusals.len()] },
        6 => Reply::Began { client, seq, txid: TxId(g.u64()) },
        7 => Reply::Executed { client, seq, reads: gen_reads(g, limits) },
        _ => Reply::Outcome { client, seq, outcome: gen_outcome(g, limits) },
    }
}

pub fn gen_to_participant(g: &mut Gen, limits: Limits) -> ToParticipant {
    let txid = TxId(g.u64());
    match g.u8() % 6 {
        0 => {
            let count = g.count(limits.max_ops_per_tx);
            let ops = (0..count).map(|_| gen_local_op(g, limits)).collect();
            ToParticipant::Prepare { txid, ops, sole: g.u8().is_multiple_of(2) }
        }
        4 => {
            let isolation = gen_isolation(g);
            let count = g.count(limits.max_ops_per_tx);
            ToParticipant::Execute { txid, isolation, ops: (0..count).map(|_| gen_local_op(g, limits)).collect() }
        }
        5 => ToParticipant::PrepareExecuted { txid, sole: g.u8().is_multiple_of(2) },
        1 => ToParticipant::Commit { txid },
        2 => ToParticipant::Abort { txid },
        _ => ToParticipant::Query { txid },
    }
}

pub fn gen_to_coordinator(g: &mut Gen, limits: Limits) -> ToCoordinator {
    let txid = TxId(g.u64());
    match g.u8() % 5 {
        0 => ToCoordinator::Vote { txid, vote: gen_vote(g, limits) },
        3 => {
            let result =
                if g.u8().is_multiple_of(2) { Ok(gen_reads(g, limits)) } else { Err(gen_abort_reason(g, limits)) };
            ToCoordinator::Executed { txid, result }
        }
        4 => ToCoordinator::WaitFor { waiter: txid, key: gen_key(g, limits), holders: gen_txids(g) },
        1 => ToCoordinator::Ack { txid },
        _ => ToCoordinator::Inquiry { txid },
    }
}

pub fn gen_interactive(g: &mut Gen, limits: Limits) -> Interactive {
    let (client, seq, txid) = (ClientId(g.u64()), g.u64(), TxId(g.u64()));
    match g.u8() % 4 {
        0 => Interactive::Begin { client, seq, isolation: gen_isolation(g), idle_timeout_ms: g.u32() },
        1 => {
            let count = g.count(limits.max_ops_per_tx);
            Interactive::Execute { client, seq, txid, ops: (0..count).map(|_| gen_op(g, limits)).collect() }
        }
        2 => Interactive::Commit { client, seq, txid },
        _ => Interactive::Rollback { client, seq, txid },
    }
}

/// One message type's whole target: build (structured mode) or take (raw mode) the bytes,
/// then decode them.
fn message_case<T: Encode + Decode + PartialEq + Debug>(
    g: &mut Gen,
    structured: bool,
    limits: Limits,
    build: fn(&mut Gen, Limits) -> T,
) {
    let bytes = if structured {
        let value = build(g, limits);
        let mut encoded = assert_round_trip(&value, limits);
        mutate(g, &mut encoded);
        encoded
    } else {
        g.rest().to_vec()
    };
    assert_canonical::<T>(&bytes, limits);
}

/// Wire messages as the codec decodes them inside data frames. Input: `u8 selector`
/// (bit 7: structured; selector % 5: 0 Submit, 1 Reply, 2 ToParticipant, 3 ToCoordinator,
/// 4 Interactive),
/// then the message bytes (raw) or the generator's bytes (structured, at `scale`).
pub fn engine_messages(scale: Scale, data: &[u8]) {
    let mut g = Gen::at(scale, data);
    let selector = g.u8();
    let structured = selector & 0x80 != 0;
    let limits = Limits::default();
    match selector % 5 {
        0 => message_case(&mut g, structured, limits, gen_submit),
        1 => message_case(&mut g, structured, limits, gen_reply),
        2 => message_case(&mut g, structured, limits, gen_to_participant),
        3 => message_case(&mut g, structured, limits, gen_to_coordinator),
        _ => message_case(&mut g, structured, limits, gen_interactive),
    }
}

fn gen_participants(g: &mut Gen) -> Vec<ParticipantId> {
    let count = g.count(u16::MAX as usize);
    (0..count).map(|_| ParticipantId(g.u16())).collect()
}

pub fn gen_coord_record(g: &mut Gen) -> CoordRecord {
    let txid = TxId(g.u64());
    match g.u8() % 6 {
        0 => CoordRecord::Epoch { epoch: Epoch(g.u32()) },
        1 => CoordRecord::Commit {
            txid,
            client: ClientId(g.u64()),
            seq: g.u64(),
            participants: gen_participants(g),
            reads: gen_reads(g, RECORD_LIMITS),
            reads_lost: g.u8().is_multiple_of(2),
        },
        2 => CoordRecord::End { txid },
        3 => CoordRecord::Staged {
            txid,
            client: ClientId(g.u64()),
            seq: g.u64(),
            participants: gen_participants(g),
            gets: gen_gets(g),
        },
        4 => CoordRecord::Register { client: ClientId(g.u64()), identity: gen_identity(g), expired: gen_expired(g) },
        _ => CoordRecord::Abort { txid },
    }
}

fn gen_gets(g: &mut Gen) -> Vec<GetAt> {
    let count = g.count(u16::MAX as usize);
    (0..count).map(|_| GetAt { index: g.u16(), participant: ParticipantId(g.u16()) }).collect()
}

fn gen_identity(g: &mut Gen) -> String {
    let len = g.count(255);
    (0..len).map(|_| char::from(b'a' + g.u8() % 26)).collect()
}

/// `None` or a session id other than 0 (the encoding's "none").
fn gen_expired(g: &mut Gen) -> Option<ClientId> {
    let id = g.u64();
    (id != 0).then_some(ClientId(id))
}

fn gen_writes(g: &mut Gen) -> Vec<Write> {
    let count = g.count(u16::MAX as usize);
    (0..count).map(|_| Write { key: gen_key(g, RECORD_LIMITS), value: gen_optional_value(g, RECORD_LIMITS) }).collect()
}

fn gen_read_keys(g: &mut Gen) -> Vec<Key> {
    (0..g.count(u16::MAX as usize)).map(|_| gen_key(g, RECORD_LIMITS)).collect()
}

pub fn gen_part_record(g: &mut Gen) -> PartRecord {
    let txid = TxId(g.u64());
    match g.u8() % 4 {
        0 => PartRecord::Epoch { epoch: Epoch(g.u32()) },
        1 => PartRecord::Prepared { txid, writes: gen_writes(g).into(), read_keys: gen_read_keys(g) },
        2 => PartRecord::Committed { txid },
        _ => PartRecord::Aborted { txid },
    }
}

fn record_parts(record: &AnyRecord) -> (u8, Vec<u8>) {
    let mut payload = Vec::new();
    let kind = match record {
        AnyRecord::Coordinator(record) => {
            record.encode_payload(&mut payload);
            record.kind()
        }
        AnyRecord::Participant(record) => {
            record.encode_payload(&mut payload);
            record.kind()
        }
    };
    (kind, payload)
}

/// Decodes a record; when it decodes, asserts it re-encodes to the same kind and payload.
pub fn assert_record_canonical(kind: u8, payload: &[u8]) -> Option<AnyRecord> {
    let record = AnyRecord::decode(kind, Bytes::copy_from_slice(payload)).ok()?;
    assert_eq!(record_parts(&record), (kind, payload.to_vec()), "a decoded record re-encodes differently: {record:?}");
    let _ = record.to_string();
    Some(record)
}

/// Log records as `inspect-log` and recovery decode them (`AnyRecord::decode`). Input:
/// `u8 selector` (bit 7: structured, bit 0: participant record when structured), then
/// `u8 kind | payload` (raw) or the generator's bytes (structured, at `scale`).
pub fn engine_records(scale: Scale, data: &[u8]) {
    let mut g = Gen::at(scale, data);
    let selector = g.u8();
    let (kind, payload) = if selector & 0x80 != 0 {
        let record = if selector & 1 == 0 {
            AnyRecord::Coordinator(gen_coord_record(&mut g))
        } else {
            AnyRecord::Participant(gen_part_record(&mut g))
        };
        let (kind, mut payload) = record_parts(&record);
        match AnyRecord::decode(kind, Bytes::from(payload.clone())) {
            Ok(decoded) => assert_eq!(decoded, record),
            Err(err) => panic!("a valid record failed to decode: {err}\n{record:?}"),
        }
        mutate(&mut g, &mut payload);
        let kind = if g.u8() == 0 { g.u8() } else { kind };
        (kind, payload)
    } else {
        (g.u8(), g.rest().to_vec())
    };
    assert_record_canonical(kind, &payload);
}

pub fn gen_participant_snapshot(g: &mut Gen) -> ParticipantSnapshot {
    let (lsn, max_epoch, max_txid_seen) = (Lsn(g.u64()), Epoch(g.u32()), TxId(g.u64()));
    let pairs: Vec<(Key, Value)> =
        (0..g.count(64)).map(|_| (gen_key(g, RECORD_LIMITS), gen_value(g, RECORD_LIMITS))).collect();
    let kv = KvImage::from_pairs(pairs.iter().map(|(key, value)| (&key[..], &value[..])));
    let prepared = (0..g.count(16)).map(|_| (TxId(g.u64()), gen_writes(g).into(), gen_read_keys(g))).collect();
    ParticipantSnapshot { lsn, max_epoch, max_txid_seen, kv, prepared }
}

/// What a checkpoint keeps of a session: committed outcomes only.
fn gen_committed_outcome(g: &mut Gen) -> Outcome {
    if g.u8().is_multiple_of(2) {
        Outcome::Committed { reads: gen_reads(g, RECORD_LIMITS) }
    } else {
        Outcome::CommittedReadsUnavailable
    }
}

pub fn gen_coordinator_snapshot(g: &mut Gen) -> CoordinatorSnapshot {
    let (lsn, max_epoch) = (Lsn(g.u64()), Epoch(g.u32()));
    let sessions = (0..g.count(16))
        .map(|_| SessionSnapshot {
            client: ClientId(g.u64()),
            identity: gen_identity(g),
            floor: g.u64(),
            committed: (0..g.count(16)).map(|_| (g.u64(), gen_committed_outcome(g))).collect(),
        })
        .collect();
    let unfinished = (0..g.count(16))
        .map(|_| {
            let txid = TxId(g.u64());
            let (client, seq) = (ClientId(g.u64()), g.u64());
            let record = if g.u8().is_multiple_of(2) {
                CoordRecord::Commit {
                    txid,
                    client,
                    seq,
                    participants: gen_participants(g),
                    reads: gen_reads(g, RECORD_LIMITS),
                    reads_lost: g.u8().is_multiple_of(2),
                }
            } else {
                CoordRecord::Staged { txid, client, seq, participants: gen_participants(g), gets: gen_gets(g) }
            };
            (Lsn(g.u64()), record)
        })
        .collect();
    CoordinatorSnapshot { lsn, max_epoch, sessions, unfinished }
}

/// The snapshot file bodies a restart decodes (after the file's checksum, which a damaged
/// or hostile file may still pass). Input: `u8 selector` (bit 7: structured, bit 0:
/// coordinator checkpoint, else participant snapshot), then the body (raw) or the
/// generator's bytes (structured, at `scale`).
pub fn engine_snapshots(scale: Scale, data: &[u8]) {
    let mut g = Gen::at(scale, data);
    let selector = g.u8();
    let coordinator = selector & 1 != 0;
    let bytes = if selector & 0x80 != 0 {
        let mut encoded = if coordinator {
            let snapshot = gen_coordinator_snapshot(&mut g);
            let encoded = snapshot.encode();
            assert_eq!(CoordinatorSnapshot::decode(Bytes::from(encoded.clone())).as_ref(), Ok(&snapshot));
            encoded
        } else {
            let snapshot = gen_participant_snapshot(&mut g);
            let encoded = snapshot.encode();
            assert_eq!(ParticipantSnapshot::decode(Bytes::from(encoded.clone())).as_ref(), Ok(&snapshot));
            encoded
        };
        mutate(&mut g, &mut encoded);
        encoded
    } else {
        g.rest().to_vec()
    };
    if coordinator {
        if let Ok(snapshot) = CoordinatorSnapshot::decode(Bytes::copy_from_slice(&bytes)) {
            assert_eq!(snapshot.encode(), bytes, "a decoded checkpoint re-encodes differently");
        }
    } else if let Ok(snapshot) = ParticipantSnapshot::decode(Bytes::copy_from_slice(&bytes)) {
        assert_eq!(snapshot.encode(), bytes, "a decoded snapshot re-encodes differently");
        assert_eq!(snapshot.kv.iter().count() as u64, snapshot.kv.len(), "a decoded image lost entries");
    }
}

/// Seed inputs in raw mode, one per kind of value, from valid sample encodings: what
/// `scripts/fuzz.sh` starts the corpora from and what the stable harness runs first.
/// Returns `(target, input)` pairs.
pub fn seed_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let limits = Limits::default();
    for selector in 0u8..4 {
        // Each selector's generator run on a fixed pattern gives a small valid value.
        for pattern in [&[3u8, 1, 4, 1, 5, 9, 2, 6][..], &[0x42; 40], &[7, 200, 1, 99, 0, 5, 13, 21]] {
            let mut g = Gen::new(pattern);
            let mut input = vec![selector];
            match selector {
                0 => gen_submit(&mut g, limits).encode(&mut input),
                1 => gen_reply(&mut g, limits).encode(&mut input),
                2 => gen_to_participant(&mut g, limits).encode(&mut input),
                _ => gen_to_coordinator(&mut g, limits).encode(&mut input),
            }
            seeds.push(("engine_messages", input));
        }
    }
    for pattern in [&[1u8, 2, 3, 4, 5, 6, 7, 8][..], &[0x42; 40], &[9, 1, 1, 2, 0, 3, 3, 1]] {
        for role in 0..2 {
            let mut g = Gen::new(pattern);
            let record = if role == 0 {
                AnyRecord::Coordinator(gen_coord_record(&mut g))
            } else {
                AnyRecord::Participant(gen_part_record(&mut g))
            };
            let (kind, payload) = record_parts(&record);
            let mut input = vec![0, kind];
            input.extend_from_slice(&payload);
            seeds.push(("engine_records", input));
        }
        let mut g = Gen::new(pattern);
        let mut input = vec![0];
        input.extend_from_slice(&gen_participant_snapshot(&mut g).encode());
        seeds.push(("engine_snapshots", input));
        let mut g = Gen::new(pattern);
        let mut input = vec![1];
        input.extend_from_slice(&gen_coordinator_snapshot(&mut g).encode());
        seeds.push(("engine_snapshots", input));
    }
    seeds
}

/// The stable harness for one target: its valid seeds from `seeds` first (each must survive
/// it), then [`drive`]'s pseudo-random inputs. With `TWOPHASE_FUZZ_SEEDS_DIR` set (e.g.
/// `TWOPHASE_FUZZ_SEEDS_DIR=$PWD/fuzz/corpus cargo test --test decode_random`) it also writes
/// the seeds there, which is how the fuzz crate's committed seeds are regenerated.
pub fn run_seeded(
    name: &str,
    seeds: Vec<(&str, Vec<u8>)>,
    target: impl Fn(&[u8]),
    seed: u64,
    inputs: usize,
    max_len_bytes: usize,
) {
    for (i, (_, input)) in seeds.into_iter().filter(|(of, _)| *of == name).enumerate() {
        target(&input);
        if let Some(dir) = std::env::var_os("TWOPHASE_FUZZ_SEEDS_DIR") {
            let dir = std::path::Path::new(&dir).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{i}")), &input).unwrap();
        }
    }
    drive(target, seed, inputs, max_len_bytes);
}

/// The stable harness's input source: runs `target` on `inputs` pseudo-random inputs from
/// `seed`, most of them short, one in ten up to `max_len_bytes` long, every one also
/// tried in structured mode (selector bit 7 set) and in raw mode.
pub fn drive(target: impl Fn(&[u8]), seed: u64, inputs: usize, max_len_bytes: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut input = Vec::new();
    for _ in 0..inputs {
        let len = match rng.gen_range(0..10) {
            0..=5 => rng.gen_range(0..64),
            6..=8 => rng.gen_range(0..4096),
            _ => rng.gen_range(0..=max_len_bytes),
        };
        input.resize(len.max(1), 0);
        rng.fill_bytes(&mut input);
        input[0] |= 0x80;
        target(&input);
        input[0] &= 0x7f;
        target(&input);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_seeds_decode() {
        for (target, input) in seed_inputs() {
            let ok = match target {
                "engine_messages" => {
                    let bytes = &input[1..];
                    match input[0] % 4 {
                        0 => assert_canonical::<Submit>(bytes, Limits::default()).is_some(),
                        1 => assert_canonical::<Reply>(bytes, Limits::default()).is_some(),
                        2 => assert_canonical::<ToParticipant>(bytes, Limits::default()).is_some(),
                        _ => assert_canonical::<ToCoordinator>(bytes, Limits::default()).is_some(),
                    }
                }
                "engine_records" => assert_record_canonical(input[1], &input[2..]).is_some(),
                _ if input[0] & 1 == 0 => ParticipantSnapshot::decode(Bytes::copy_from_slice(&input[1..])).is_ok(),
                _ => CoordinatorSnapshot::decode(Bytes::copy_from_slice(&input[1..])).is_ok(),
            };
            assert!(ok, "seed of {target} does not decode: {input:?}");
        }
    }

    #[test]
    fn gen_reaches_the_limits_and_reads_zeros_when_exhausted() {
        let mut g = Gen::at(Scale::Full, &[255, 0xaa]);
        let value = gen_value(&mut g, Limits::default());
        assert_eq!(value.len(), Limits::default().max_value_bytes, "selector 255 picks the limit itself");
        assert_eq!(value[0], 0xaa);
        assert!(value.iter().all(|&b| b == 0xaa || b == 0));
        assert_eq!(g.u64(), 0);
    }

    #[test]
    fn small_scale_stays_within_its_budget() {
        // Every length and count at its maximum: a full-scale generator would build MiBs.
        let input = [0xffu8; 4096];
        let mut g = Gen::at(Scale::Small, &input);
        let value = gen_value(&mut g, RECORD_LIMITS);
        assert!(value.len() <= SMALL_BUDGET_BYTES, "{} bytes", value.len());
        let snapshot = gen_participant_snapshot(&mut Gen::at(Scale::Small, &input));
        assert!(snapshot.encode().len() <= 2 * SMALL_BUDGET_BYTES, "{} bytes", snapshot.encode().len());
        let full = gen_participant_snapshot(&mut Gen::at(Scale::Full, &input));
        // The first key takes the whole input (a 65,535-byte key), zeros follow.
        assert!(full.encode().len() > u16::MAX as usize, "full scale reaches the limits");
    }

    #[test]
    fn text_from_exhausted_input_is_what_the_zeros_spell() {
        let mut g = Gen::at(Scale::Full, &[255, b'a']);
        let text = g.text(u16::MAX as usize);
        assert_eq!(text.len(), u16::MAX as usize, "'a', then 'é' up to the limit");
        assert!(text.starts_with("aé") && text[1..].chars().all(|c| c == 'é'));
        let mut g = Gen::at(Scale::Full, &[255]);
        assert_eq!(g.text(u16::MAX as usize).len(), u16::MAX as usize - 1, "'é' until one byte short");
    }

    #[test]
    fn mutations_of_a_checkpoint_at_the_count_field_are_refused_cleanly() {
        let mut g = Gen::new(&[1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 2]);
        let snapshot = gen_coordinator_snapshot(&mut g);
        let mut bytes = snapshot.encode();
        bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(CoordinatorSnapshot::decode(Bytes::from(bytes)).is_err());
    }
}
