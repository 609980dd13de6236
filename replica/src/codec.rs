//! The replica's wal records and wire messages: encodings, and decoding checked against
//! limits before anything is allocated.
//!
//! The wal stores opaque `(kind, payload)` records; these kinds are this crate's:
//! - [`KIND_ENTRIES`]: `u32 count`, then per entry `u32 len | protobuf Entry` (consecutive
//!   indexes, one Ready's entries or a part of them);
//! - [`KIND_HARD_STATE`]: `u64 term | u64 vote | u64 commit`;
//! - [`KIND_SNAPSHOT`]: a protobuf `Snapshot` (metadata: index, term, voters; data: the
//!   application's snapshot bytes).

use protobuf::Message as _;
use raft::prelude::{Entry, HardState, Message, Snapshot};

use crate::error::ReplicaError;

/// Wal record kind: a run of Raft log entries.
pub const KIND_ENTRIES: u8 = 1;
/// Wal record kind: the Raft hard state (term, vote, commit).
pub const KIND_HARD_STATE: u8 = 2;
/// Wal record kind: a snapshot (metadata and the application's bytes).
pub const KIND_SNAPSHOT: u8 = 3;

const HARD_STATE_BYTES: usize = 24;
const ENTRY_HEADER_BYTES: usize = 4;

/// Bytes an entry takes in a [`KIND_ENTRIES`] record.
pub fn entry_record_bytes(entry: &Entry) -> usize {
    ENTRY_HEADER_BYTES + entry.compute_size() as usize
}

/// Encodes a run of entries as one [`KIND_ENTRIES`] payload.
pub fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let bytes: usize = 4 + entries.iter().map(entry_record_bytes).sum::<usize>();
    let mut out = Vec::with_capacity(bytes);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for entry in entries {
        let encoded = entry.write_to_bytes().expect("encoding a raft entry into memory cannot fail");
        out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        out.extend_from_slice(&encoded);
    }
    out
}

/// Decodes a [`KIND_ENTRIES`] payload; every length is checked against what is left.
pub fn decode_entries(payload: &[u8]) -> Result<Vec<Entry>, ReplicaError> {
    let mut rest = payload;
    let count = take_u32(&mut rest, "entry count")? as usize;
    // Each entry needs at least its length field: a count beyond that is damage, refused
    // before allocating for it.
    if count > rest.len() / ENTRY_HEADER_BYTES {
        return Err(corrupt(format!("entry count {count} does not fit in {} bytes", rest.len())));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let len = take_u32(&mut rest, "entry length")? as usize;
        if len > rest.len() {
            return Err(corrupt(format!("entry of {len} bytes, {} left", rest.len())));
        }
        let (encoded, tail) = rest.split_at(len);
        rest = tail;
        let entry = Entry::parse_from_bytes(encoded).map_err(|e| corrupt(format!("entry: {e}")))?;
        if let Some(previous) = entries.last().map(|e: &Entry| e.index)
            && entry.index != previous + 1
        {
            return Err(corrupt(format!("entry {} follows entry {previous}", entry.index)));
        }
        entries.push(entry);
    }
    if !rest.is_empty() {
        return Err(corrupt(format!("{} bytes after the entries", rest.len())));
    }
    Ok(entries)
}

/// Encodes a [`KIND_HARD_STATE`] payload.
pub fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    let mut out = Vec::with_capacity(HARD_STATE_BYTES);
    out.extend_from_slice(&hs.term.to_le_bytes());
    out.extend_from_slice(&hs.vote.to_le_bytes());
    out.extend_from_slice(&hs.commit.to_le_bytes());
    out
}

/// Decodes a [`KIND_HARD_STATE`] payload.
pub fn decode_hard_state(payload: &[u8]) -> Result<HardState, ReplicaError> {
    if payload.len() != HARD_STATE_BYTES {
        return Err(corrupt(format!("hard state of {} bytes", payload.len())));
    }
    let word = |k: usize| u64::from_le_bytes(payload[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
    Ok(HardState { term: word(0), vote: word(1), commit: word(2), ..HardState::default() })
}

/// Encodes a [`KIND_SNAPSHOT`] payload.
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    snapshot.write_to_bytes().expect("encoding a raft snapshot into memory cannot fail")
}

/// Decodes a [`KIND_SNAPSHOT`] payload.
pub fn decode_snapshot(payload: &[u8]) -> Result<Snapshot, ReplicaError> {
    Snapshot::parse_from_bytes(payload).map_err(|e| corrupt(format!("snapshot: {e}")))
}

/// Encodes a Raft message for the wire.
pub fn encode_message(message: &Message) -> Vec<u8> {
    message.write_to_bytes().expect("encoding a raft message into memory cannot fail")
}

/// Decodes a Raft message from the wire, refusing one longer than `bytes_max` before
/// parsing it.
pub fn decode_message(bytes: &[u8], bytes_max: usize) -> Result<Message, ReplicaError> {
    if bytes.len() > bytes_max {
        return Err(ReplicaError::BadMessage(format!("{} bytes, limit {bytes_max}", bytes.len())));
    }
    Message::parse_from_bytes(bytes).map_err(|e| ReplicaError::BadMessage(format!("undecodable: {e}")))
}

fn take_u32(rest: &mut &[u8], what: &str) -> Result<u32, ReplicaError> {
    if rest.len() < 4 {
        return Err(corrupt(format!("{what} cut short")));
    }
    let (head, tail) = rest.split_at(4);
    *rest = tail;
    Ok(u32::from_le_bytes(head.try_into().expect("4 bytes")))
}

fn corrupt(why: String) -> ReplicaError {
    ReplicaError::Corrupt(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry { index, term, data: data.to_vec().into(), ..Entry::default() }
    }

    #[test]
    fn entries_round_trip() {
        let entries = vec![entry(7, 2, b"a"), entry(8, 2, b""), entry(9, 3, &[0xFF; 300])];
        let payload = encode_entries(&entries);
        assert_eq!(payload.len(), 4 + entries.iter().map(entry_record_bytes).sum::<usize>());
        assert_eq!(decode_entries(&payload).unwrap(), entries);
    }

    #[test]
    fn entries_refuse_damage() {
        let payload = encode_entries(&[entry(1, 1, b"x"), entry(2, 1, b"y")]);
        for cut in 0..payload.len() {
            assert!(decode_entries(&payload[..cut]).is_err(), "cut at {cut} accepted");
        }
        let mut huge_count = payload.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_entries(&huge_count), Err(ReplicaError::Corrupt(_))));
        let gap = encode_entries(&[entry(1, 1, b"x"), entry(3, 1, b"y")]);
        assert!(decode_entries(&gap).is_err());
    }

    #[test]
    fn hard_state_round_trip_and_length_check() {
        let hs = HardState { term: 5, vote: 2, commit: 99, ..HardState::default() };
        assert_eq!(decode_hard_state(&encode_hard_state(&hs)).unwrap(), hs);
        assert!(decode_hard_state(&[0; 23]).is_err());
    }

    #[test]
    fn message_limit_is_checked_before_parsing() {
        let m = Message { to: 2, from: 1, term: 4, entries: vec![entry(1, 4, &[1; 100])].into(), ..Message::default() };
        let bytes = encode_message(&m);
        assert_eq!(decode_message(&bytes, bytes.len()).unwrap(), m);
        assert!(matches!(decode_message(&bytes, bytes.len() - 1), Err(ReplicaError::BadMessage(_))));
        assert!(decode_message(&[0xFF, 0xFF, 0xFF], 1024).is_err());
    }
}
